"""``gitmq publish | log``: write to a queue on one storage, and browse it."""

from __future__ import annotations

import argparse
import os
import stat
import sys

from gitmq import names
from gitmq.cli import progress, show, where
from gitmq.cli.errors import count
from gitmq.cli.signals import SignalStop
from gitmq.errors import NotFoundError, UsageError
from gitmq.handlers import header_variable
from gitmq.message import Identity
from gitmq.producer import Producer, default_identity
from gitmq.screen import Screen
from gitmq.segments import QueueSource
from gitmq.storage import Storage


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help="publish one message (argument or stdin)")
    where.add_storage(p)
    p.add_argument("queue", metavar="QUEUE", help="queue (branch) name")
    p.add_argument(
        "payload",
        metavar="PAYLOAD",
        nargs="?",
        help="the payload; '-' or none: read stdin (see docs/cli.md)",
    )
    p.add_argument("--header", action="append", default=[], metavar="K=V", help="a header")
    p.add_argument("--lines", action="store_true", help="one message per line of stdin")
    p.add_argument("--author", metavar="'NAME <EMAIL>'", help="author identity")
    p.add_argument("--max-payload", type=count, default=1 << 20, metavar="BYTES")
    p.add_argument("--quiet", action="store_true", help="no progress bar for --lines")
    p.set_defaults(func=_publish_from_cli)

    p = sub.add_parser("log", help="browse a queue, newest first")
    where.add_storage(p)
    p.add_argument("queue", metavar="QUEUE", help="queue (branch) name")
    p.add_argument("-n", "--limit", type=count, default=20, help="at most N messages (0: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "-f", "--follow", action="store_true", help="then print new messages until SIGINT/SIGTERM"
    )
    p.set_defaults(func=cmd_log)


#: What Ruby's String#strip removes (gitmq-produce strips lines as the gem does).
RUBY_WHITESPACE = b" \t\n\v\f\r\x00"


def parse_identity(text: str | None) -> Identity:
    if not text:
        return default_identity()
    name, sep, rest = text.partition("<")
    if not sep or not rest.endswith(">"):
        raise UsageError(f"invalid --author {text!r}: use 'Name <email>'")
    return Identity(name.strip(), rest[:-1].strip())


def parse_headers(items: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    variables: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid --header {item!r}: use NAME=VALUE")
        if key in headers:
            raise UsageError(f"--header {key!r} is given twice; give each header once")
        variable = header_variable(key)
        if variable in variables:
            raise UsageError(
                f"--header {variables[variable]!r} and {key!r} would both reach --exec "
                f"handlers as {variable}; rename one"
            )
        headers[key], variables[variable] = value, key
    return headers


def _publish_from_cli(args: argparse.Namespace) -> int:
    """``gitmq publish``: two words are QUEUE PAYLOAD when the storage is given elsewhere."""
    where.shift_words(args, ("queue", "payload"))
    return cmd_publish(args)


def cmd_publish(args: argparse.Namespace) -> int:
    where.check_queue(args, args.queue)
    from_stdin = args.payload in (None, "-")
    if args.lines and not from_stdin:
        raise UsageError(
            f"--lines reads the messages from stdin, but a payload ({args.payload!r}) is given "
            f"too; leave it out (or give '-')"
        )
    headers = parse_headers(args.header)
    author = parse_identity(args.author)
    with Storage(where.storage_path(args)) as storage:
        producer = Producer(storage, args.queue, author=author, max_payload=args.max_payload)
        if args.lines:
            published = _publish_lines(args, producer, headers)
            print(f"published {show.plural(published, 'message')} to {args.queue}")
            return 0
        # os.fsencode gives back the argument's original bytes, even if not UTF-8.
        payload = sys.stdin.buffer.read() if from_stdin else os.fsencode(args.payload)
        message = producer.publish(payload, headers)
        print(message.id)
    return 0


def _publish_lines(args: argparse.Namespace, producer: Producer, headers: dict[str, str]) -> int:
    """Publish each line of stdin; a progress bar on a terminal, by bytes read."""
    strip = getattr(args, "strip", False)  # gitmq-produce: as the gem does
    stdin = sys.stdin.buffer
    info = os.fstat(stdin.fileno())
    total = info.st_size if stat.S_ISREG(info.st_mode) else None
    published = 0
    with progress.progress(f"publishing to {args.queue} (bytes)", total, quiet=args.quiet) as bar:
        for line in stdin:
            payload = line.rstrip(b"\n").removesuffix(b"\r")
            producer.publish(payload.strip(RUBY_WHITESPACE) if strip else payload, headers)
            published += 1
            bar(len(line))
    return published


def cmd_log(args: argparse.Namespace) -> int:
    ref = names.queue_ref(where.check_queue(args, args.queue))
    with Storage(where.storage_path(args), create=False) as storage:
        tip = storage.read_ref(ref)
        if tip is None:
            raise NotFoundError(f"queue {args.queue!r} does not exist in {storage.path}")
        # Copies are found oldest first (a screen follows the history), then the listing
        # goes newest first: only the copies are kept between the two passes.
        shas = storage.recent_commits(tip, args.limit)
        screen = Screen(QueueSource(storage, args.queue))
        marked = (screen.mark(storage.read(sha)) for sha in reversed(shas))
        copies = {m.sha: m for m in marked if m.duplicate_of is not None}
        for message in (copies.get(sha) or storage.read(sha) for sha in shas):
            print(show.entry(message, args.json))
        if args.follow:
            _follow(storage, ref, tip, screen, args.json)
    return 0


def _follow(storage: Storage, ref: str, tip: str, screen: Screen, as_json: bool) -> None:
    """``log --follow``: print each new message, oldest first, until SIGTERM/SIGINT."""
    sys.stdout.flush()
    stop = SignalStop()
    while not stop.wait(0.05):
        new = storage.read_ref(ref)
        if new is None or new == tip:
            storage.release_deleted_packs()
            continue
        for sha in storage.commits_between(tip, new):
            print(show.entry(screen.mark(storage.read(sha)), as_json), flush=True)
        tip = new
