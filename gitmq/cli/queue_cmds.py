"""``gitmq publish | consume | log | status | seek``: a queue on one storage."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from gitmq import names
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
from gitmq.status import storage_status
from gitmq.storage import Storage


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("publish", help="publish one message (argument or stdin)")
    _storage_queue(p)
    p.add_argument("payload", nargs="?", help="the payload; read from stdin when omitted")
    p.add_argument("--header", action="append", default=[], metavar="K=V", help="a header")
    p.add_argument("--lines", action="store_true", help="one message per line of stdin")
    p.add_argument("--author", metavar="'NAME <EMAIL>'", help="author identity")
    p.add_argument("--max-payload", type=count, default=1 << 20, metavar="BYTES")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("consume", help="print or handle each message as it arrives")
    _storage_queue(p)
    p.add_argument("consumer", help="consumer name (its offset is the tag refs/tags/NAME)")
    p.add_argument(
        "--exec",
        dest="exec_cmd",
        metavar="CMD",
        help="run CMD (no shell) per message: payload on stdin, GITMQ_* env; exit 0 acks",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per message")
    p.add_argument("--drain", action="store_true", help="exit 0 once nothing is pending")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--dead-letter", metavar="QUEUE", help="dead-letter queue (QUEUE.dlq)")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("log", help="browse a queue, newest first")
    _storage_queue(p)
    p.add_argument("-n", "--limit", type=count, default=20, help="at most N messages (0: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("status", help="queues with counts, consumers with position and lag")
    p.add_argument("path", help="storage path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("seek", help="move a consumer's offset")
    _storage_queue(p)
    p.add_argument("consumer")
    p.add_argument(
        "target",
        help="beginning | end | MESSAGE-ID | COMMIT | ISO-TIME (next delivered is that message)",
    )
    p.set_defaults(func=cmd_seek)


def _storage_queue(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="storage path (a bare git repository, created if missing)")
    p.add_argument("queue", help="queue (branch) name")


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


def cmd_publish(args: argparse.Namespace) -> int:
    names.check_queue(args.queue)
    headers = parse_headers(args.header)
    author = parse_identity(args.author)
    with Storage(args.path) as storage:
        producer = Producer(storage, args.queue, author=author, max_payload=args.max_payload)
        if args.lines:
            count = 0
            strip = getattr(args, "strip", False)  # gitmq-produce: as the gem does
            for line in sys.stdin.buffer:
                payload = line.rstrip(b"\n").removesuffix(b"\r")
                producer.publish(payload.strip(RUBY_WHITESPACE) if strip else payload, headers)
                count += 1
            print(f"published {plural(count, 'message')} to {args.queue}")
            return 0
        # os.fsencode gives back the argument's original bytes, even if not UTF-8.
        payload = os.fsencode(args.payload) if args.payload is not None else sys.stdin.buffer.read()
        message = producer.publish(payload, headers)
        print(message.id)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    names.check_queue(args.queue)
    names.check_consumer(args.consumer)
    with Storage(args.path) as storage:
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
        code = run_consumer(consumer, handler, drain=args.drain)
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


def run_consumer(consumer: Consumer, handler: Callable[[Message], object], drain: bool) -> int:
    """Deliver until SIGTERM/SIGINT (exit 0) or, with ``drain``, until caught up."""
    if drain:
        while consumer.deliver_pending(handler):
            pass
        return 0
    stop = SignalStop()
    consumer.consume(handler)
    try:
        while not stop.wait(0.2) and consumer.running:
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
    ref = names.queue_ref(args.queue)
    with Storage(args.path, create=False) as storage:
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
            if args.json:
                print(json.dumps(message_json(message)))
            else:
                when, who = message.time.isoformat(), message.author
                print(f"{message.id}  {when}  {who}  {_shown(message)}")
    return 0


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


def cmd_status(args: argparse.Namespace) -> int:
    with Storage(args.path, create=False) as storage:
        status = storage_status(storage)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    node = status["node"]
    if node is not None:
        since = datetime.fromtimestamp(node["started"], UTC).isoformat(timespec="seconds")
        print(f"node: {node['node']} (process {node['pid']}, running since {since})")
        for remote, line in sorted(node["remotes"].items()):
            print(f"  {remote}: {line}")
    print("queues:")
    for queue in status["queues"]:
        line = f"  {queue['name']}: {plural(queue['messages'], 'message')}"
        if "remote" in queue:
            line += f" ({queue['confirmed']} confirmed by {queue['remote']}, "
            line += f"{queue['unpushed']} unpushed)"
        print(line)
    print("consumers:")
    for c in status["consumers"]:
        where = f"{c['queue']} lag {c['lag']}" if c["queue"] else "not on any queue"
        print(f"  {c['name']}: at {c['position'][:12]} ({where})")
    return 0


def cmd_seek(args: argparse.Namespace) -> int:
    with Storage(args.path, create=False) as storage:
        consumer = Consumer(storage, args.consumer, args.queue)
        if consumer.source.tip() is None and storage.read_ref(names.queue_ref(args.queue)) is None:
            raise NotFoundError(
                f"queue {args.queue!r} does not exist in {storage.path}; check the name "
                f"('gitmq status {args.path}' lists the queues); nothing was changed"
            )
        value = consumer.seek(args.target)
    shown = value[:12] if value else "the beginning"
    print(f"consumer {args.consumer} now at {shown}")
    return 0
