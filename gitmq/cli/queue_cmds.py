"""``gitmq publish | consume | log | seek``: a queue on one storage."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

from gitmq import names, offsets
from gitmq.cli import progress, where
from gitmq.cli.errors import count
from gitmq.cli.signals import SignalStop
from gitmq.consumer import Consumer
from gitmq.errors import NotFoundError, UsageError
from gitmq.handlers import command_handler, header_variable
from gitmq.message import Identity, Message
from gitmq.producer import Producer, default_identity
from gitmq.retry import RetryPolicy
from gitmq.screen import Screen
from gitmq.segments import QueueSource
from gitmq.storage import Storage
from gitmq.units import parse_duration


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

    p = sub.add_parser("consume", help="print or handle each message as it arrives")
    where.add_storage(p)
    p.add_argument("queue", metavar="QUEUE", help="queue (branch) name")
    p.add_argument(
        "consumer", metavar="CONSUMER", help="consumer name (its offset is the tag refs/tags/NAME)"
    )
    p.add_argument(
        "--exec",
        dest="exec_cmd",
        metavar="CMD",
        help="run CMD (no shell) per message: payload on stdin, GITMQ_* env; exit 0 acks",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per message")
    p.add_argument("--drain", action="store_true", help="exit 0 once nothing is pending")
    p.add_argument("--count", type=positive, metavar="N", help="exit 0 after N messages")
    p.add_argument(
        "--timeout", type=duration, metavar="DURATION", help="exit 0 once idle this long (30s)"
    )
    p.add_argument(
        "--from",
        dest="from_",
        metavar="TARGET",
        help="where a new consumer starts: beginning | end | MESSAGE-ID | ISO-TIME",
    )
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--dead-letter", metavar="QUEUE", help="dead-letter queue (QUEUE.dlq)")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("log", help="browse a queue, newest first")
    where.add_storage(p)
    p.add_argument("queue", metavar="QUEUE", help="queue (branch) name")
    p.add_argument("-n", "--limit", type=count, default=20, help="at most N messages (0: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "-f", "--follow", action="store_true", help="then print new messages until SIGINT/SIGTERM"
    )
    p.set_defaults(func=cmd_log)

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


def positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, found {value}")
    return value


def duration(text: str) -> float:
    """An argparse type: a duration (``units.parse_duration``), more than 0."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {exc}, found {text!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, found {text!r}")
    return seconds


#: What Ruby's String#strip removes (gitmq-produce strips lines as the gem does).
RUBY_WHITESPACE = b" \t\n\v\f\r\x00"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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
            print(f"published {plural(published, 'message')} to {args.queue}")
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


def cmd_consume(args: argparse.Namespace) -> int:
    where.check_queue(args, args.queue)
    names.check_consumer(args.consumer)
    with Storage(where.storage_path(args)) as storage:
        storage.require_writable()  # before a message is delivered that cannot be acked
        consumer = Consumer(
            storage,
            args.consumer,
            args.queue,
            retry=RetryPolicy(max_attempts=args.max_attempts),
            dead_letter=args.dead_letter,
        )
        handler: Callable[[Message], object]
        if args.exec_cmd is not None:
            handler = command_handler(_exec_argv(args.exec_cmd), args.queue, args.consumer)
        else:
            handler = _Printer(consumer, args.json, puts=getattr(args, "puts", False))
        if args.from_ is not None:
            _place(storage, consumer, args.from_)
        watch = Watch(consumer, handler, args.count)
        code = run_consumer(consumer, watch, args.drain, args.timeout)
    if isinstance(handler, _Printer) and handler.closed:
        raise BrokenPipeError  # the reader went away: the CLI edge ends quietly
    return code


def _exec_argv(command: str) -> list[str]:
    """``--exec CMD`` split as a shell would, without running one."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"--exec {command!r} cannot be split into words: {exc}") from None
    if not argv:
        raise UsageError("--exec needs a command (it was empty); leave --exec out to print")
    return argv


def _place(storage: Storage, consumer: Consumer, target: str) -> None:
    """``--from``: where a consumer without an offset starts. One with an offset (here,
    or on the remote of a synced queue) is refused: ``--from`` would silently not
    apply, or silently move it; moving a consumer is ``gitmq consumer reset``."""
    position = consumer.position
    if position is None and consumer.remote is not None:
        position = storage.read_ref(offsets.remote_tag_ref(consumer.remote, consumer.name))
    if position is not None:
        raise UsageError(
            f"consumer {consumer.name!r} already has an offset (at {position[:12]}); --from "
            f"only places a new consumer: move this one with 'gitmq consumer reset "
            f"{consumer.branch} {consumer.name} {target}' (nothing was consumed)"
        )
    consumer.seek(target)


class Watch:
    """The handler, watched: it stops the consumer once ``count`` messages are done
    (handled, or failed on their last attempt), from the consumer's own thread, so
    that no further message starts; and it knows how long nothing arrived."""

    def __init__(
        self, consumer: Consumer, handler: Callable[[Message], object], count: int | None
    ) -> None:
        self.consumer, self.handler, self.count = consumer, handler, count
        self.done, self.busy, self.last = 0, False, time.monotonic()
        self._current: str | None = None
        self._tries = 0

    def __call__(self, message: Message) -> None:
        if message.sha != self._current:
            self._current, self._tries = message.sha, 0
        self._tries += 1
        self.busy = True
        try:
            self.handler(message)
        except Exception:
            if self._tries >= self.consumer.retry.max_attempts:
                self._finished()
            raise
        else:
            self._finished()
        finally:
            self.busy, self.last = False, time.monotonic()

    def _finished(self) -> None:
        self.done += 1
        if self.count is not None and self.done >= self.count:
            self.consumer.stop()

    def idle_for(self, seconds: float | None) -> bool:
        return seconds is not None and not self.busy and time.monotonic() - self.last >= seconds


def run_consumer(
    consumer: Consumer, watch: Watch, drain: bool, timeout: float | None = None
) -> int:
    """Deliver until SIGTERM/SIGINT (exit 0), ``watch.count`` messages, ``timeout``
    seconds without a message, or, with ``drain``, until caught up."""
    if drain:
        while consumer.deliver_pending(watch):  # after ``count``, the next pass delivers none
            pass
        return 0
    stop = SignalStop()
    consumer.consume(watch)
    try:
        while consumer.running and not watch.idle_for(timeout) and not stop.wait(0.05):
            pass
    finally:
        consumer.stop()
    return 0


class _Printer:
    """Prints each message on stdout.

    Once the reader is gone (``gitmq consume ... | head -1``) nothing can be
    printed, and that is not the message's fault: stop the consumer and leave
    the message unacknowledged instead of failing it into the dead-letter queue.
    """

    def __init__(self, consumer: Consumer, as_json: bool, puts: bool = False) -> None:
        self.consumer = consumer
        self.as_json = as_json
        self.puts = puts  # gitmq-consume: Ruby's puts adds a newline only if missing
        self.closed = False

    def __call__(self, message: Message) -> None:
        line = json.dumps(message_json(message)).encode() if self.as_json else message.payload
        end = b"" if self.puts and line.endswith(b"\n") else b"\n"
        try:
            sys.stdout.buffer.write(line + end)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            self.closed = True
            self.consumer.stop()
            raise


def message_json(message: Message) -> dict[str, Any]:
    try:
        payload: dict[str, str] = {"payload": message.payload.decode("utf-8")}
    except UnicodeDecodeError:
        payload = {"payload_base64": base64.b64encode(message.payload).decode()}
    return {
        "id": message.id,
        "sha": message.sha,
        "time": message.time.isoformat(),
        "author": str(message.author),
        "headers": dict(message.headers),
        **payload,
        **({"undecodable": message.undecodable} if message.undecodable is not None else {}),
        **({"duplicate_of": message.duplicate_of} if message.duplicate_of is not None else {}),
    }


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
            print(_entry(message, args.json))
        if args.follow:
            _follow(storage, ref, tip, screen, args.json)
    return 0


def _entry(message: Message, as_json: bool) -> str:
    if as_json:
        return json.dumps(message_json(message))
    return f"{message.id}  {message.time.isoformat()}  {message.author}  {_shown(message)}"


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
            print(_entry(screen.mark(storage.read(sha)), as_json), flush=True)
        tip = new


def _shown(message: Message) -> str:
    shown = _preview(message.payload)
    if message.undecodable is not None:
        return f"[undecodable: {message.undecodable}] {shown}"
    if message.duplicate_of is not None:
        return f"[copy of {message.duplicate_of[:12]}] {shown}"
    return shown


def _preview(payload: bytes, width: int = 60) -> str:
    text = payload.decode("utf-8", "replace")
    flat = " ".join(text.split()) if text.strip() else repr(text)
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def cmd_seek(args: argparse.Namespace) -> int:
    where.check_queue(args, args.queue)
    with Storage(where.storage_path(args), create=False) as storage:
        consumer = Consumer(storage, args.consumer, args.queue)
        if consumer.source.tip() is None and storage.read_ref(names.queue_ref(args.queue)) is None:
            raise NotFoundError(
                f"queue {args.queue!r} does not exist in {storage.path}; check the name "
                f"('gitmq status {storage.path}' lists the queues); nothing was changed"
            )
        value = consumer.seek(args.target)
    shown = value[:12] if value else "the beginning"
    print(f"consumer {args.consumer} now at {shown}")
    return 0
