"""GitMQ observability benchmark (issue 11): what a /metrics scrape and ``gitmq status``
cost on a queue with a large backlog.

For each size N, one storage holds a queue of N messages (built with
``publish_many``, packed) and three consumers: one at the end, one at the
beginning (its whole backlog is pending: the worst case for lag) and one half
way. Then, in interleaved rounds:

- baseline: ``git rev-list --first-parent --count`` of the queue, the cheapest
  way git itself has to say how long the queue is (one process, one walk);
- scrape: the node's ``/metrics`` body, rendered by prometheus-client from the
  node's collector as the HTTP handler does (queue counts and ages, a consumer's
  lag in messages and seconds), for a consumer that is caught up: the common
  case, where a scrape counts only what changed since the last one;
- backlog: the same with a consumer at the beginning and one half way (a lag
  costs a walk of the messages pending: it grows with the backlog);
- status: ``storage_status`` (what ``gitmq status --json`` computes, from
  nothing remembered).

It prints min/median/max seconds per size and the ratio to the baseline of the
same round. Nothing asserts anything; it prints numbers.

Run: ``.venv/bin/python bench/bench_observe.py [--quick] [--large] [--rounds N]``
(``--large`` adds a 1,000,000-message queue: about a minute to build).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import code_version
from prometheus_client import CollectorRegistry, generate_latest

from gitmq import Consumer, Identity, Producer, Storage
from gitmq.metrics import Figures
from gitmq.status import storage_status

QUEUE = "bench"
IDENTITY = Identity("GitMQ Bench", "bench@example.invalid")
BATCH = 1000


def build(path: Path, count: int) -> Storage:
    storage = Storage(path)
    producer = Producer(storage, QUEUE, author=IDENTITY)
    for first in range(0, count, BATCH):
        producer.publish_many([f'{{"seq": {i}}}' for i in range(first, min(first + BATCH, count))])
    storage.wait_for_packing()
    storage.repack_now()
    tip = storage.read_ref(f"refs/heads/{QUEUE}") or ""
    Consumer(storage, "half", QUEUE).seek(storage.back(tip, count // 2))
    Consumer(storage, "end", QUEUE).seek("end")
    return storage


def baseline(storage: Storage) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    subprocess.run(
        ["git", f"--git-dir={storage.git_dir}", "rev-list", "--first-parent", "--count", QUEUE],
        check=True,
        capture_output=True,
        env=env,
    )


def scraper(storage: Storage, names: tuple[str, ...]) -> Callable[[], None]:
    consumers = [Consumer(storage, name, QUEUE) for name in names]
    registry = CollectorRegistry()
    registry.register(Figures(storage, [QUEUE], consumers, {}))

    def scrape() -> None:
        body = generate_latest(registry)
        assert b"gitmq_consumer_lag_messages" in body

    return scrape


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def measure(storage: Storage, rounds: int) -> dict[str, list[float]]:
    """Seconds of each way to learn the figures, in interleaved rounds."""
    caught_up, backlog = scraper(storage, ("end",)), scraper(storage, ("beginning", "half"))
    caught_up()  # a node's first scrape counts whole queues; later ones what changed
    rows: dict[str, list[float]] = {"baseline": [], "scrape": [], "backlog": [], "status": []}
    for _ in range(rounds):
        rows["baseline"].append(timed(lambda: baseline(storage)))
        rows["scrape"].append(timed(caught_up))
        rows["backlog"].append(timed(backlog))
        rows["status"].append(timed(lambda: storage_status(storage, time.time())))
    return rows


def spread(values: list[float]) -> str:
    return f"{min(values):8.4f} {statistics.median(values):8.4f} {max(values):8.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    parser.add_argument("--large", action="store_true", help="add a 1,000,000-message queue")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.quick else [10_000, 100_000]
    sizes += [1_000_000] if args.large else []
    rounds = 3 if args.quick else args.rounds
    print(
        f"# bench_observe: GitMQ {code_version()}, Python {platform.python_version()}, "
        f"{rounds} interleaved rounds"
    )
    print(
        f"{'messages':>9}  {'what':<9} {'min':>8} {'median':>8} {'max':>8}   x baseline "
        f"median (min-max)"
    )
    with tempfile.TemporaryDirectory(prefix="gitmq-bench-observe-") as tmp:
        for size in sizes:
            print(f"building {size} messages", file=sys.stderr)
            storage = build(Path(tmp) / f"q{size}.git", size)
            rows = measure(storage, rounds)
            for what, values in rows.items():
                ratios = [v / b for v, b in zip(values, rows["baseline"], strict=True)]
                ratio = (
                    ""
                    if what == "baseline"
                    else f"{statistics.median(ratios):6.1f} ({min(ratios):.1f}-{max(ratios):.1f})"
                )
                print(f"{size:>9}  {what:<9} {spread(values)}   {ratio}")
            storage.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
