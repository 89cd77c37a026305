"""``gitmq dlq list|show|replay|purge [PATH] QUEUE``: the dead letters of a queue.

QUEUE is the queue whose dead letters they are; they live in ``QUEUE.dlq``
unless ``--dead-letter NAME`` names another. What replay and purge write is
described in ``gitmq/dlq.py`` and docs/format.md ("Dead letters").
"""

from __future__ import annotations

import argparse
import json
import sys

from gitmq import names
from gitmq.cli import progress, where
from gitmq.cli.show import message_json, plural
from gitmq.dlq import DeadLetter, DeadLetterQueue
from gitmq.errors import NotFoundError
from gitmq.storage import Storage


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dlq", help="list, show, replay or purge a queue's dead letters")
    actions = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    for name, func, summary in (
        ("list", cmd_list, "one line per pending dead letter"),
        ("show", cmd_show, "one dead letter with every header and its payload"),
        ("replay", cmd_replay, "publish dead letters back to the queue, with new ids"),
        ("purge", cmd_purge, "drop dead letters from the list (they stay in history)"),
    ):
        a = actions.add_parser(name, help=summary, description=summary)
        where.add_storage(a)
        a.add_argument("queue", metavar="QUEUE", help="the queue whose dead letters they are")
        a.add_argument(
            "--dead-letter", metavar="NAME", help="its dead-letter queue (default: QUEUE.dlq)"
        )
        a.set_defaults(func=func)
    actions.choices["list"].add_argument("--json", action="store_true", help="one JSON per line")
    show = actions.choices["show"]
    show.add_argument("id", metavar="ID", help="the dead letter's id, original id or commit")
    show.add_argument("--json", action="store_true", help="one JSON object")
    for name in ("replay", "purge"):
        a = actions.choices[name]
        which = a.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--id", action="append", dest="ids", metavar="ID", help="this one (repeatable)"
        )
        which.add_argument("--all", action="store_true", help="every pending dead letter")
        a.add_argument("--dry-run", action="store_true", help=f"say what would {name}, do nothing")
    actions.choices["replay"].add_argument(
        "--quiet", action="store_true", help="no progress bar on a terminal"
    )
    actions.choices["purge"].add_argument(
        "--yes", action="store_true", help="do not ask (needed when stdin is no terminal)"
    )


def _open(args: argparse.Namespace, storage: Storage) -> DeadLetterQueue:
    where.check_queue(args, args.queue)
    dlq = DeadLetterQueue(storage, args.queue, args.dead_letter)
    queue_exists = storage.read_ref(names.queue_ref(args.queue)) is not None
    if not queue_exists and not dlq.exists():
        raise NotFoundError(
            f"queue {args.queue!r} does not exist in {storage.path} and has no dead-letter "
            f"queue {dlq.name}; check the name"
        )
    return dlq


def _line(letter: DeadLetter) -> str:
    s = letter.summary()
    return (
        f"{s['id']}  {s['original_id'] or '-'}  {s['time']}  {s['consumer'] or '-'}  "
        f"{plural(letter.attempts, 'attempt')}  {s['reason'] or '-'}"
    )


def cmd_list(args: argparse.Namespace) -> int:
    with Storage(where.storage_path(args), create=False) as storage:
        letters = _open(args, storage).pending()
    for letter in letters:
        print(json.dumps(letter.summary()) if args.json else _line(letter))
    if not letters and not args.json:
        print(f"no dead letters of {args.queue}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with Storage(where.storage_path(args), create=False) as storage:
        letter = _open(args, storage).find(args.id)
    message = letter.message
    if args.json:
        print(json.dumps({**letter.summary(), "message": message_json(message)}))
        return 0
    state = letter.state + (f" as {letter.replayed_as}" if letter.replayed_as else "")
    lines = [
        f"dead letter {letter.id} ({state})",
        f"commit: {message.sha}",
        f"time: {message.time.isoformat()}",
        f"author: {message.author}",
        *(f"{key}: {value}" for key, value in message.headers.items()),
        "",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(message.payload + (b"" if message.payload.endswith(b"\n") else b"\n"))
    return 0


def _chosen(args: argparse.Namespace, dlq: DeadLetterQueue, verb: str, to: str) -> list[DeadLetter]:
    """The dead letters ``args`` name, or none after saying why nothing is done (none
    pending, or ``--dry-run``: what would be)."""
    letters = dlq.select(args.ids or [])
    if not letters:
        print(f"nothing to {verb}: no pending dead letters of {args.queue} in {dlq.name}")
    elif args.dry_run:
        for letter in letters:
            print(f"would {verb} {letter.id} (original {letter.original_id}){to}")
        return []
    return letters


def cmd_replay(args: argparse.Namespace) -> int:
    with Storage(where.storage_path(args), create=False) as storage:
        dlq = _open(args, storage)
        letters = _chosen(args, dlq, "replay", f" to {args.queue}")
        if not letters:
            return 0
        with progress.progress("replaying", len(letters), quiet=args.quiet) as advance:
            done = dlq.replay(letters, advance)
    for letter, copy in done:
        new = copy if isinstance(copy, str) else copy.id
        print(f"replayed {letter.id} (original {letter.original_id}) to {args.queue} as {new}")
    print(f"replayed {plural(len(done), 'dead letter')} to {args.queue}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    with Storage(where.storage_path(args), create=False) as storage:
        dlq = _open(args, storage)
        letters = _chosen(args, dlq, "purge", "")
        if not letters:
            return 0
        count = plural(len(letters), "dead letter")
        question = f"purge {count} of {args.queue} from {dlq.name}?"
        if not progress.confirm(question, args.yes, f"purge of {count} of {args.queue} not done"):
            print("not confirmed: nothing was purged", file=sys.stderr)
            return 1
        dlq.purge(letters)
    print(f"purged {count} of {args.queue} (they stay in the history of {dlq.name})")
    return 0
