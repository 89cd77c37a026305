"""GitHub fit (issue 10): eager-sync latency, and a cluster held to its budget.

Real ``gitmq node`` processes against a ``git daemon`` on 127.0.0.1 that logs
every request (``--verbose``): a ref listing or a fetch is one upload-pack
request (a *read*), a push one receive-pack request.

1. Latency, R rounds; each runs both variants on fresh remotes, the order
   alternating: *eager* (interval 30 s, a budget with room: 6,000 reads and
   600 pushes a minute; B polls every 100 ms, which that budget carries) and
   *scheduled* (the example
   config's schedule: interval 5 s, poll 1 s, no budget, so no eager sync).
   N messages (200) at 5/s are published on A; B's handler records when it
   sees each one; p50/p99/max of publish -> handler.
2. Cluster: 16 nodes on one remote, each publishing a message every 8 s and
   consuming everything, interval 5 s, poll 1 s; once with a budget of 600 reads
   and 120 pushes a minute, once with none (the baseline), interleaved over the
   rounds. Reads and pushes a minute seen by the server over the steady part,
   and the p50 latency from a publish to each other node's handler.

Nothing here asserts a speed: it prints a table.
Run: ``.venv/bin/python bench/bench_budget.py [--quick] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_sync import IDENTITY, Lab, Node, percentile, read_received, row
from common import code_version

from gitmq import Producer, Storage

QUEUE = "orders"
ROOM = {"budget": {"reads_per_minute": 6000, "pushes_per_minute": 600}}
CLUSTER_BUDGET = {"budget": {"reads_per_minute": 600, "pushes_per_minute": 120}}


@dataclass(frozen=True)
class Sizes:
    messages: int  # latency: messages per variant and round
    rate: float  # their pace, messages/s
    nodes: int  # cluster size
    seconds: float  # cluster: steady window per variant
    every: float  # cluster: seconds between one node's publishes


FULL = Sizes(200, 5.0, 16, 120.0, 8.0)
QUICK = Sizes(40, 5.0, 6, 40.0, 6.0)


def requests(log: Path) -> tuple[int, int]:
    """(reads, pushes) the daemon logged so far."""
    text = log.read_text("utf-8", "replace") if log.exists() else ""
    return text.count("Request upload-pack for "), text.count("Request receive-pack for ")


def publish_paced(node: Node, count: int, rate: float) -> dict[str, float]:
    """Publish ``count`` messages on ``node`` at ``rate``/s; their ids and times."""
    sent: dict[str, float] = {}
    with Storage(node.storage) as storage:
        producer = Producer(storage, QUEUE, author=IDENTITY)
        start = time.time()
        for i in range(count):
            delay = start + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            stamp = time.time()
            sent[producer.publish(f"m{i}").id] = stamp
    return sent


# ------------------------------------------------------------------ 1. latency


def latency_variant(lab: Lab, tag: str, eager: bool, sizes: Sizes) -> list[float]:
    _, url = lab.bare_repo(f"{tag}.git")
    if eager:
        sync_a: dict[str, Any] = {"interval": "30s"}
        sync_b: dict[str, Any] = {"interval": "30s", "poll": "100ms"}
        remote: dict[str, Any] = ROOM
    else:
        sync_a = sync_b = {"interval": "5s", "poll": "1s"}
        remote = {}
    a = lab.node(f"{tag}-a", url, QUEUE, consumer=False, remote=remote, sync=sync_a)
    b = lab.node(f"{tag}-b", url, QUEUE, consumer=True, remote=remote, sync=sync_b)
    for node in (a, b):
        lab.start(node)
    warm = publish_paced(a, 1, 1.0)
    lab.wait_for("the warm-up on B", lambda: set(warm) <= b.received().keys(), 60, [a, b])
    sent = publish_paced(a, sizes.messages, sizes.rate)
    lab.wait_for("every message on B", lambda: set(sent) <= b.received().keys(), 120, [a, b])
    lab.stop(a, b)
    got = b.received()
    return [got[m] - t for m, t in sent.items()]


# ------------------------------------------------------------------ 2. cluster


@dataclass
class ClusterRun:
    reads_per_minute: float
    pushes_per_minute: float
    p50: float
    missing: int


def cluster_variant(
    lab: Lab, tag: str, budget: bool, sizes: Sizes, say: Callable[[str], None]
) -> ClusterRun:
    _, url = lab.bare_repo(f"{tag}.git")
    remote = CLUSTER_BUDGET if budget else {}
    sync = {"interval": "5s", "poll": "1s"}
    nodes = [
        lab.node(f"{tag}-n{i}", url, QUEUE, consumer=True, remote=remote, sync=sync)
        for i in range(sizes.nodes)
    ]
    first = publish_paced(nodes[0], 1, 1.0)
    for node in nodes:
        lab.start(node)
    lab.wait_for(
        "the first message everywhere",
        lambda: all(set(first) <= n.received().keys() for n in nodes),
        120,
        nodes,
    )
    # One daemon serves the whole lab: count its requests from here on.
    lab_log = lab.daemon_log
    assert lab_log is not None
    reads0, pushes0 = requests(lab_log)
    t0 = time.time()
    sent: dict[str, tuple[float, int]] = {}
    storages = [Storage(n.storage) for n in nodes]
    try:
        producers = [Producer(s, QUEUE, author=IDENTITY) for s in storages]
        step = sizes.every / sizes.nodes
        i = 0
        while time.time() - t0 < sizes.seconds:
            delay = t0 + i * step - time.time()
            if delay > 0:
                time.sleep(delay)
            k = i % sizes.nodes
            sent[producers[k].publish(f"{tag} {i}").id] = (time.time(), k)
            i += 1
    finally:
        for s in storages:
            s.close()
    reads1, pushes1 = requests(lab_log)
    minutes = (time.time() - t0) / 60
    say(f"  {tag}: {i} published; waiting for every node to have them")
    lab.wait_for(
        "every message on every node",
        lambda: all(set(sent) <= n.received().keys() for n in nodes),
        300,
        nodes,
    )
    lab.stop(*nodes)
    latencies, missing = [], 0
    for j, node in enumerate(nodes):
        got = read_received(node.received_file)
        for mid, (stamp, origin) in sent.items():
            if origin == j:
                continue
            if mid in got:
                latencies.append(got[mid] - stamp)
            else:
                missing += 1
    return ClusterRun(
        (reads1 - reads0) / minutes,
        (pushes1 - pushes0) / minutes,
        statistics.median(latencies),
        missing,
    )


# ------------------------------------------------------------------ the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--repeats", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--tmpdir", default=None, help="where the lab goes")
    parser.add_argument("--only", choices=("latency", "cluster"), default=None)
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    lab = Lab(args.tmpdir, interval=5.0, jitter=0.0)
    lab.start_daemon(lab.root / "daemon.log")
    load0 = os.getloadavg()[0]
    lat: dict[str, list[list[float]]] = {"eager": [], "scheduled": []}
    runs: dict[str, list[ClusterRun]] = {"budget": [], "none": []}
    try:
        for r in range(args.repeats):
            if args.only in (None, "latency"):
                order = ["eager", "scheduled"] if r % 2 == 0 else ["scheduled", "eager"]
                for variant in order:
                    say(f"round {r + 1}: latency, {variant}")
                    lat[variant].append(
                        latency_variant(lab, f"lat{r}-{variant}", variant == "eager", sizes)
                    )
            if args.only in (None, "cluster"):
                order = ["budget", "none"] if r % 2 == 0 else ["none", "budget"]
                for variant in order:
                    say(f"round {r + 1}: {sizes.nodes} nodes, budget: {variant}")
                    runs[variant].append(
                        cluster_variant(lab, f"c{r}-{variant}", variant == "budget", sizes, say)
                    )
    finally:
        lab.close()
    print(
        f"GitMQ {code_version()}, {os.cpu_count()} CPUs, load {load0:.1f} -> "
        f"{os.getloadavg()[0]:.1f}, {args.repeats} round(s)"
    )
    head = f"{'measure':<48} {'unit':<7} {'min':>8} {'median':>8} {'max':>8}  note"
    print(head + "\n" + "-" * 100)
    if lat["eager"]:
        print(f"1. latency A -> B, {sizes.messages} messages at {sizes.rate:g}/s per round")
        for variant, goal in (("eager", "goal p50 <= 0.3 s, p99 <= 1 s"), ("scheduled", "")):
            rounds = lat[variant]
            for q in (50, 99):
                values = [percentile(x, q) for x in rounds]
                print(row(f"  {variant}: p{q}", "s", values, goal if q == 50 else ""))
            print(row(f"  {variant}: max", "s", [max(x) for x in rounds]))
        ratio = [
            percentile(e, 50) / percentile(s, 50)
            for e, s in zip(lat["eager"], lat["scheduled"], strict=True)
        ]
        print(row("  p50 eager / p50 scheduled (same round)", "x", ratio))
    if runs["budget"]:
        print(
            f"2. {sizes.nodes} nodes, a publish every {sizes.every / sizes.nodes:.2f} s, "
            f"interval 5 s, poll 1 s, {sizes.seconds:g} s per run"
        )
        for variant, note in (("budget", "budget 600 reads, 120 pushes"), ("none", "baseline")):
            done = runs[variant]
            print(row(f"  {variant}: reads a minute at the server", "/min",
                      [x.reads_per_minute for x in done], note))  # fmt: skip
            print(row(f"  {variant}: pushes a minute at the server", "/min",
                      [x.pushes_per_minute for x in done]))  # fmt: skip
            print(row(f"  {variant}: p50 publish -> other nodes", "s", [x.p50 for x in done]))
            print(f"  {variant}: missing deliveries: {sum(x.missing for x in done)}")
        ratio = [
            b.reads_per_minute / n.reads_per_minute
            for b, n in zip(runs["budget"], runs["none"], strict=True)
        ]
        print(row("  reads: budget / none (same round)", "x", ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
