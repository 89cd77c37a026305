"""``gitmq consumer list|delete|reset`` and ``gitmq seek``: consumers and their offsets.

A consumer's offset is the tag ``refs/tags/NAME``; a tag does not say which
queue it belongs to, so ``list`` finds the queue whose history holds it (or
takes it from ``--config``'s node config, which also names consumers that have
no tag yet). On a synced queue ``delete`` and ``reset`` are recorded moves
back: the next sync pushes them with a lease and every node follows
(docs/semantics.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gitmq import names, presence, status
from gitmq.cli import progress, where
from gitmq.consumer import Consumer
from gitmq.errors import NotFoundError
from gitmq.storage import Storage


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("consumer", help="list, reset or delete consumers")
    csub = p.add_subparsers(dest="consumer_command", metavar="ACTION", required=True)
    a = csub.add_parser("list", help="every consumer with its queue, position and lag")
    where.add_storage(a)
    a.add_argument("queue", metavar="QUEUE", nargs="?", help="only the consumers of this queue")
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a.set_defaults(func=cmd_list)

    d = csub.add_parser(
        "delete",
        help="delete a consumer's offset (on a synced queue: on every node, at their next sync)",
    )
    _storage_queue_consumer(d)
    d.set_defaults(func=cmd_delete)

    r = csub.add_parser(
        "reset", help="move a consumer's offset (a seek that asks first; synced: on every node)"
    )
    _storage_queue_consumer(r)
    r.add_argument(
        "target",
        metavar="TARGET",
        help="beginning | end | MESSAGE-ID | COMMIT | ISO-TIME (next delivered is that message)",
    )
    r.add_argument("--yes", action="store_true", help="do not ask (needed without a terminal)")
    r.set_defaults(func=cmd_reset)

    p = sub.add_parser("seek", help="move a consumer's offset")
    where.add_storage(p)
    p.add_argument("queue", metavar="QUEUE", help="queue (branch) name")
    p.add_argument("consumer", metavar="CONSUMER", help="consumer name")
    p.add_argument(
        "target",
        metavar="TARGET",
        help="beginning | end | MESSAGE-ID | COMMIT | ISO-TIME (next delivered is that message)",
    )
    p.set_defaults(func=cmd_seek)


def _storage_queue_consumer(p: argparse.ArgumentParser) -> None:
    where.add_storage(p)
    p.add_argument("queue", metavar="QUEUE", help="the queue the consumer reads")
    p.add_argument(
        "consumer", metavar="CONSUMER", help="consumer name (its offset is the tag refs/tags/NAME)"
    )


def cmd_list(args: argparse.Namespace) -> int:
    where.shift_words(args, ("queue",))
    if args.queue is not None:
        where.check_queue(args, args.queue)
    path = where.storage_path(args)
    configured: dict[str, str] = {}
    if args.config is not None:
        from gitmq import config as node_config

        configured = {c.name: c.queue for c in node_config.load(args.config).consumers.values()}
    with Storage(path, create=False) as storage:
        node = presence.read(storage)
        running = node.get("consumers") if node else None
        rows = status.consumers(storage, time.time(), configured, running or {})
    rows = [r for r in rows if args.queue is None or r["queue"] == args.queue]
    for row in rows:
        print(json.dumps(row) if args.json else _line(row))
    if not rows and not args.json:
        print("no consumers" + (f" of {args.queue}" if args.queue else ""))
    return 0


def _line(row: dict[str, Any]) -> str:
    position = row["position"][:12] if row["position"] else "beginning"
    if row["lag"] is None:
        return f"{row['name']}  {row['queue'] or '-'}  {position}  ({row['problem']})"
    return (
        f"{row['name']}  {row['queue']}  {position}  lag {row['lag']} ({row['lag_seconds']:.0f}s)"
    )


def cmd_delete(args: argparse.Namespace) -> int:
    where.check_queue(args, args.queue)
    names.check_consumer(args.consumer)
    with Storage(where.storage_path(args), create=False) as storage:
        consumer = Consumer(storage, args.consumer, args.queue)
        old = consumer.delete()
        remote = consumer.remote
        if old is None:
            raise NotFoundError(
                f"consumer {args.consumer!r} has no offset in {storage.path} (no tag "
                f"refs/tags/{args.consumer}); nothing to delete"
            )
    synced = f"; its tag on {remote} goes at the next sync" if remote else ""
    print(f"consumer {args.consumer} deleted (it was at {old[:12]}){synced}")
    return 0


def _existing(storage: Storage, args: argparse.Namespace) -> Consumer:
    """The consumer ``args`` name, on a queue that exists (else NotFoundError)."""
    consumer = Consumer(storage, args.consumer, args.queue)
    if consumer.source.tip() is None and storage.read_ref(names.queue_ref(args.queue)) is None:
        raise NotFoundError(
            f"queue {args.queue!r} does not exist in {storage.path}; check the name "
            f"('gitmq status {storage.path}' lists the queues); nothing was changed"
        )
    return consumer


def cmd_seek(args: argparse.Namespace) -> int:
    where.check_queue(args, args.queue)
    with Storage(where.storage_path(args), create=False) as storage:
        value = _existing(storage, args).seek(args.target)
    shown = value[:12] if value else "the beginning"
    print(f"consumer {args.consumer} now at {shown}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    where.check_queue(args, args.queue)
    names.check_consumer(args.consumer)
    with Storage(where.storage_path(args), create=False) as storage:
        consumer = _existing(storage, args)
        old = consumer.position
        was = old[:12] if old else "the beginning"
        question = f"move consumer {args.consumer} of {args.queue} from {was} to {args.target}?"
        refusal = f"reset of consumer {args.consumer} not done"
        if not progress.confirm(question, args.yes, refusal):
            print("not confirmed: nothing was changed", file=sys.stderr)
            return 1
        value = consumer.seek(args.target)
        remote = consumer.remote
    shown = value[:12] if value else "the beginning"
    synced = f"; the move reaches {remote} at the next sync" if remote else ""
    print(f"consumer {args.consumer} now at {shown} (was at {was}){synced}")
    return 0
