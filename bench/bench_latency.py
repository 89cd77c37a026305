"""Delivery latency inside one storage: publish in one process, handler in another.

Issue 2 asks that a new message reach a running consumer within 100 ms, from
any process. A producer process publishes N messages at a steady pace, each
carrying its publish time; a consumer (``Consumer.consume``) records when its
handler sees each one. The baseline, in the same run, is what a naive
implementation does: poll ``git rev-parse`` on the branch every 20 ms and read
new commits with ``git log``. Prints p50/p99/max for both and their ratio.

    .venv/bin/python bench/bench_latency.py [--messages 200] [--rate 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gitmq import Consumer, Storage
from gitmq.message import Message

PRODUCER = """
import sys, time
from gitmq import Producer, Storage
path, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Storage(path) as storage:
    producer = Producer(storage, "q")
    for i in range(count):
        producer.publish(f"{i} {time.time():.6f}")
        time.sleep(1 / rate)
"""


def publish(path: Path, count: int, rate: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", PRODUCER, str(path), str(count), str(rate)])


def gitmq_latencies(path: Path, count: int, rate: float) -> list[float]:
    seen: list[float] = []
    done = threading.Event()

    def handler(message: Message) -> None:
        seen.append(time.time() - float(message.text.split()[1]))
        if len(seen) == count:
            done.set()

    with Storage(path) as storage:
        consumer = Consumer(storage, "bench", "q").consume(handler)
        proc = publish(path, count, rate)
        try:
            if not done.wait(count / rate + 60):
                raise SystemExit(f"gitmq consumer saw {len(seen)} of {count}")
        finally:
            consumer.stop()
            proc.wait()
    return seen


def naive_latencies(path: Path, count: int, rate: float) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    git = ["git", f"--git-dir={path}"]
    seen: list[float] = []
    last = None
    proc = publish(path, count, rate)
    deadline = time.monotonic() + count / rate + 60
    try:
        while len(seen) < count and time.monotonic() < deadline:
            tip = subprocess.run(
                [*git, "rev-parse", "-q", "--verify", "refs/heads/q"],
                capture_output=True,
                text=True,
                env=env,
            ).stdout.strip()
            if tip and tip != last:
                spec = [tip] if last is None else [f"{last}..{tip}"]
                log = subprocess.run(
                    [*git, "log", "--reverse", "--format=%B%x00", *spec],
                    capture_output=True,
                    text=True,
                    env=env,
                ).stdout
                now = time.time()
                seen += [now - float(b.split()[1]) for b in log.split("\x00") if b.strip()]
                last = tip
            time.sleep(0.02)
    finally:
        proc.wait()
    return seen


def row(name: str, values: list[float], base: float | None) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    ratio = f"{p50 / base:.2f}x of naive" if base else "1x"
    return f"{name:<44} {p50 * 1000:8.1f} {p99 * 1000:8.1f} {ordered[-1] * 1000:8.1f}  {ratio}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitmq-bench-latency-") as tmp:
        naive = naive_latencies(Path(tmp) / "naive.git", args.messages, args.rate)
        ours = gitmq_latencies(Path(tmp) / "gitmq.git", args.messages, args.rate)
    print(
        f"delivery latency, {args.messages} messages at {args.rate:g}/s, one storage, "
        f"two processes; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'measure':<44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  ratio (p50)   goal")
    base = statistics.median(naive)
    print(row("naive: poll git rev-parse + git log /20 ms", naive, None))
    print(
        row("GitMQ Consumer.consume (20 ms ref poll)", ours, base)
        + "   p99 <= 100 ms: "
        + ("met" if sorted(ours)[max(0, int(len(ours) * 0.99) - 1)] <= 0.1 else "MISSED")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
