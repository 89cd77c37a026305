"""``gitmq consumer delete``: remove a consumer's offset, here and on the cluster."""

from __future__ import annotations

import argparse

from gitmq import names
from gitmq.consumer import Consumer
from gitmq.errors import NotFoundError
from gitmq.storage import Storage


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("consumer", help="manage consumers")
    csub = p.add_subparsers(dest="consumer_command", metavar="ACTION", required=True)
    d = csub.add_parser(
        "delete",
        help="delete a consumer's offset (on a synced queue: on every node, at their next sync)",
    )
    d.add_argument("path", help="storage path")
    d.add_argument("queue", help="the queue the consumer reads")
    d.add_argument("consumer", help="consumer name (its offset is the tag refs/tags/NAME)")
    d.set_defaults(func=cmd_delete)


def cmd_delete(args: argparse.Namespace) -> int:
    names.check_queue(args.queue)
    names.check_consumer(args.consumer)
    with Storage(args.path, create=False) as storage:
        consumer = Consumer(storage, args.consumer, args.queue)
        old = consumer.delete()
        remote = consumer.remote
        if old is None:
            raise NotFoundError(
                f"consumer {args.consumer!r} has no offset in {storage.path} (no tag "
                f"refs/tags/{args.consumer}); nothing to delete"
            )
    where = f"; its tag on {remote} goes at the next sync" if remote else ""
    print(f"consumer {args.consumer} deleted (it was at {old[:12]}){where}")
    return 0
