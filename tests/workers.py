"""Worker processes for the multi-process tests: ``python tests/workers.py COMMAND ARGS``.

``produce PATH BRANCH TAG COUNT GO``
    Wait until the file GO exists (so that every producer starts at once), then
    publish ``TAG:0`` .. ``TAG:COUNT-1`` one message at a time.

``consume PATH BRANCH NAME LOG [--block-on PAYLOAD]``
    Run a consumer. For each message append ``begin SHA PAYLOAD`` to LOG when
    the handler starts and ``end SHA PAYLOAD`` when it returns. On the message
    PAYLOAD, write PAYLOAD into ``LOG.inside`` and hang in the handler (the
    test kills the process there). Creates ``LOG.ready`` once consuming;
    exits 0 on SIGTERM.

``pace PATH BRANCH TAG RATE SECONDS ACKS GO``
    Wait until the file GO exists, then publish ``TAG:0``, ``TAG:1``, ... one
    message at a time at RATE per second for SECONDS: message i is due at
    start + i / RATE on the monotonic clock, so a late publish is followed by
    the next one at once and the pace catches up instead of drifting. After
    each publish returns, appends ``ID TAG:i`` to ACKS (the acknowledged
    messages); at the end writes ``ACKS.done`` (JSON: how many, the wall-clock
    start and end, the worst lateness).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from gitmq import Consumer, Message, Producer, Storage
from gitmq.cli.signals import SignalStop


def produce(path: str, branch: str, tag: str, count: int, go: Path) -> None:
    with Storage(path) as storage:
        producer = Producer(storage, branch)
        while not go.exists():
            time.sleep(0.001)
        for i in range(count):
            producer.publish(f"{tag}:{i}")


def pace(
    path: str, branch: str, tag: str, rate: float, seconds: float, acks: Path, go: Path
) -> None:
    fd = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    count, late = 0, 0.0
    with Storage(path) as storage:
        producer = Producer(storage, branch)
        while not go.exists():
            time.sleep(0.001)
        started, wall = time.monotonic(), time.time()
        while count < rate * seconds:
            ahead = started + count / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            late = max(late, -ahead)
            message = producer.publish(f"{tag}:{count}")
            os.write(fd, f"{message.id} {tag}:{count}\n".encode())
            count += 1
        elapsed = time.monotonic() - started
        summary = {"count": count, "start": wall, "end": time.time(), "seconds": elapsed}
        summary["max_late"] = late
    os.close(fd)
    done = acks.with_name(acks.name + ".done")
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, done)


def consume(path: str, branch: str, name: str, log: Path, block_on: str | None) -> None:
    stop = SignalStop()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handler(message: Message) -> None:
        payload = message.payload.decode()
        os.write(fd, f"begin {message.sha} {payload}\n".encode())
        if payload == block_on:
            inside = log.with_name(log.name + ".inside")
            tmp = inside.with_name(inside.name + ".tmp")
            tmp.write_text(payload)
            os.replace(tmp, inside)
            threading.Event().wait()  # hang here until SIGKILL
        os.write(fd, f"end {message.sha} {payload}\n".encode())

    with Storage(path) as storage:
        consumer = Consumer(storage, name, branch, poll_interval=0.005)
        consumer.consume(handler)
        log.with_name(log.name + ".ready").touch()
        while not stop.wait(0.5):  # an untimed wait can miss a signal (see gitmq.node)
            pass
        consumer.stop()
    os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("produce")
    for arg in ("path", "branch", "tag"):
        p.add_argument(arg)
    p.add_argument("count", type=int)
    p.add_argument("go", type=Path)
    c = sub.add_parser("consume")
    for arg in ("path", "branch", "name"):
        c.add_argument(arg)
    c.add_argument("log", type=Path)
    c.add_argument("--block-on")
    r = sub.add_parser("pace")
    for arg in ("path", "branch", "tag"):
        r.add_argument(arg)
    r.add_argument("rate", type=float)
    r.add_argument("seconds", type=float)
    r.add_argument("acks", type=Path)
    r.add_argument("go", type=Path)
    args = parser.parse_args()
    if args.command == "produce":
        produce(args.path, args.branch, args.tag, args.count, args.go)
    elif args.command == "pace":
        pace(args.path, args.branch, args.tag, args.rate, args.seconds, args.acks, args.go)
    else:
        consume(args.path, args.branch, args.name, args.log, args.block_on)
    return 0


if __name__ == "__main__":
    sys.exit(main())
