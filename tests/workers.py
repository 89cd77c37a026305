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
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from gitmq import Consumer, Message, Producer, Storage
from gitmq.cli.signals import stop_event_on_signals


def produce(path: str, branch: str, tag: str, count: int, go: Path) -> None:
    with Storage(path) as storage:
        producer = Producer(storage, branch)
        while not go.exists():
            time.sleep(0.001)
        for i in range(count):
            producer.publish(f"{tag}:{i}")


def consume(path: str, branch: str, name: str, log: Path, block_on: str | None) -> None:
    stop = stop_event_on_signals()
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
    args = parser.parse_args()
    if args.command == "produce":
        produce(args.path, args.branch, args.tag, args.count, args.go)
    else:
        consume(args.path, args.branch, args.name, args.log, args.block_on)
    return 0


if __name__ == "__main__":
    sys.exit(main())
