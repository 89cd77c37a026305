"""``gitmq repair``: a queue whose remote branch was rewritten (docs/operations.md)."""

from __future__ import annotations

import argparse
import os

from gitmq import config as node_config
from gitmq import repair
from gitmq.errors import UsageError
from gitmq.segments import segment_number
from gitmq.storage import Storage


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "repair", help="repair a queue whose remote branch was rewritten: restore or adopt"
    )
    p.add_argument("--config", required=True, metavar="FILE", help="the node's YAML config")
    p.add_argument("queue", help="the queue (or segment branch) that sync holds back")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--restore",
        dest="action",
        action="store_const",
        const=repair.RESTORE,
        help="push this node's confirmed history back over the remote's",
    )
    how.add_argument(
        "--adopt-remote",
        dest="action",
        action="store_const",
        const=repair.ADOPT,
        help="take the remote's history: re-parent unpushed messages, move consumer tags",
    )
    p.set_defaults(func=cmd_repair)


def cmd_repair(args: argparse.Namespace) -> int:
    from gitmq.node import credentials  # the node's own reading of a remote's settings

    config = node_config.load(args.config)
    owner = next(
        (
            q
            for q in config.queues.values()
            if args.queue == q.name or (q.rotate and segment_number(q.name, args.queue))
        ),
        None,
    )
    if owner is None:
        raise UsageError(
            f"queue {args.queue!r} is not in {args.config} (queues there: "
            f"{', '.join(config.queues) or 'none'})"
        )
    if owner.remote is None:
        raise UsageError(
            f"queue {owner.name!r} is local only in {args.config}: no remote to repair"
        )
    remote = config.remotes[owner.remote]
    target = repair.Remote(
        owner.remote, remote.url, credentials(remote, os.environ, config.github), config.identity
    )
    consumers = [c.name for c in config.consumers.values() if c.queue == owner.name]
    with Storage(config.storage_path, fsync=config.fsync) as storage:
        report = repair.Repair(storage, target, args.queue, consumers).run(args.action)
    print(report.line())
    return 0
