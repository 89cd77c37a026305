"""``gitmq consume``: print or handle each message of a queue as it arrives."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from gitmq import figures, names, offsets
from gitmq.cli import progress, show, where
from gitmq.cli.errors import count
from gitmq.cli.signals import SignalStop
from gitmq.consumer import Consumer
from gitmq.errors import UsageError
from gitmq.handlers import command_handler
from gitmq.message import Message
from gitmq.retry import RetryPolicy
from gitmq.storage import Storage
from gitmq.units import parse_duration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--quiet", action="store_true", help="no progress bar over the backlog")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--dead-letter", metavar="QUEUE", help="dead-letter queue (QUEUE.dlq)")
    p.set_defaults(func=cmd_consume)


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
        with _catching_up(storage, consumer, args) as advance:
            watch = Watch(consumer, handler, args.count, advance)
            code = run_consumer(consumer, watch, args.drain, args.timeout)
    if isinstance(handler, _Printer) and handler.closed:
        raise BrokenPipeError  # the reader went away: the CLI edge ends quietly
    return code


def _catching_up(
    storage: Storage, consumer: Consumer, args: argparse.Namespace
) -> AbstractContextManager[progress.Advance]:
    """A bar over the backlog a consumer starts with, on stderr, while the messages
    themselves go elsewhere (``--exec``, or stdout not the terminal)."""
    if args.quiet or not progress.wanted(False) or (args.exec_cmd is None and sys.stdout.isatty()):
        return progress.backlog("", 0)
    pending = figures.consumer_lag(storage, consumer.name, consumer.branch, time.time()).messages
    total = min(pending, args.count) if args.count else pending
    return progress.backlog(f"catching up on {consumer.branch}", total)


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
        self,
        consumer: Consumer,
        handler: Callable[[Message], object],
        count: int | None,
        advance: progress.Advance = progress.nothing,
    ) -> None:
        self.consumer, self.handler, self.count, self.advance = consumer, handler, count, advance
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
        self.advance()
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
        line = json.dumps(show.message_json(message)).encode() if self.as_json else message.payload
        end = b"" if self.puts and line.endswith(b"\n") else b"\n"
        try:
            sys.stdout.buffer.write(line + end)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            self.closed = True
            self.consumer.stop()
            raise
