"""``gitmq prune``: apply the queues' history-pruning policies now."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from gitmq import config as node_config
from gitmq.cli import progress
from gitmq.errors import UsageError
from gitmq.prune import prune_queue
from gitmq.storage import Storage


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prune", help="drop old local history by each queue's prune policy")
    p.add_argument("--config", required=True, metavar="FILE", help="the node's YAML config")
    p.add_argument("--queue", help="only this queue (it must have a prune policy)")
    p.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    p.add_argument("--quiet", action="store_true", help="no progress on a terminal")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    config = node_config.load(args.config)
    queues = [q for q in config.queues.values() if q.prune is not None]
    if args.queue:
        if args.queue not in config.queues:
            raise UsageError(f"queue {args.queue!r} is not in {args.config}")
        queues = [q for q in queues if q.name == args.queue]
        if not queues:
            raise UsageError(f"queue {args.queue!r} has no prune policy in {args.config}")
    if not queues:
        print(f"no queue in {args.config} has a prune policy; nothing to do")
        return 0
    with Storage(config.storage_path, fsync=config.fsync) as storage:
        for queue in queues:
            assert queue.prune is not None
            with progress.stages(f"prune {queue.name}", quiet=args.quiet) as step:
                report = prune_queue(
                    storage,
                    queue.name,
                    queue.prune,
                    now=datetime.now(UTC),
                    consumers=[c.name for c in config.consumers.values() if c.queue == queue.name],
                    remote=queue.remote,
                    dry_run=args.dry_run,
                    progress=step,
                )
            print(report.line())
    return 0
