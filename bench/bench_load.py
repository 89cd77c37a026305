"""GitMQ sync under load (issue 8): a busy cluster, and sync cycles that producers race.

1. Cluster: R rounds; each starts a fresh remote and 4 ``gitmq node`` processes
   (interval 1 s), each with a consumer of its own and a producer process that
   publishes single messages into its storage as fast as it can for D seconds
   (60; 15 with ``--quick``). Measured: the messages per second that reached
   every consumer on every node (acknowledged publishes / time from the first
   publish to the last delivery on the slowest node), the largest unpushed
   backlog any node had at a push (``pushed_messages + unpushed`` of its JSON
   sync lines), failed cycles and rejections. Baseline, in the same round
   (before the cluster): one producer process publishing into a storage with no
   node at all for 10 s: the single-node publish rate.
2. Cycle: one node with 200 unpushed messages after another node pushed first
   (so the cycle must re-parent), and a producer process publishing meanwhile at
   a pace chosen so that about 0, 100 or 1,000 messages arrive during the
   cycle; ``sync_once`` is timed. The three loads alternate within each round;
   the ratio is to the 0-message cycle of the same round.

Nothing here asserts a speed: it prints a table (and writes JSON with ``--json``).
Run: ``.venv/bin/python bench/bench_load.py [--quick] [--repeats N] [--json FILE]``
(see bench/README.md). ``produce`` is the producer process's own entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_sync import Lab, Node, count_lines, read_received
from common import code_version

from gitmq import Identity, Producer, Storage
from gitmq.storage.remote import Credentials
from gitmq.sync import SyncTarget, sync_once

QUEUE = "orders"
NODES = 4
BACKLOG = 200
ARRIVALS = (0, 100, 1000)
IDENTITY = Identity("GitMQ Bench", "bench@example.invalid")


# ------------------------------------------------------------ the producer process


def produce(storage: str, seconds: float, out: str, rate: float, stop_file: str | None) -> int:
    """Publish for ``seconds`` (or until ``stop_file`` exists), as fast as possible or at
    ``rate``/s; then write ``ID UNIXTIME`` per acknowledged publish to ``out``."""
    lines = []
    with Storage(storage) as s:
        producer = Producer(s, QUEUE, author=IDENTITY)
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            if stop_file and os.path.exists(stop_file):
                break
            if rate:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            message = producer.publish(f"p:{n}")
            lines.append(f"{message.id} {time.time():.6f}\n")
            n += 1
    Path(out).write_text("".join(lines))
    return 0


def start_producer(
    storage: Path, seconds: float, out: Path, rate: float = 0.0, stop_file: Path | None = None
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "produce", str(storage), str(seconds), str(out)]
    argv += ["--rate", str(rate)] + (["--stop-file", str(stop_file)] if stop_file else [])
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


def acked(out: Path) -> dict[str, float]:
    return read_received(out)


# ------------------------------------------------------------------ 1. the cluster


@dataclass
class ClusterRound:
    single_rate: float  # baseline: one producer, no node (msg/s)
    published: int
    publish_rate: float  # what the 4 producers published together (msg/s)
    delivered_rate: float  # reached every consumer (msg/s)
    max_backlog: dict[str, int]
    cycles: dict[str, int]
    failed_cycles: dict[str, int]
    rejections: dict[str, int]
    duplicates: int


def sync_records(node: Node) -> list[dict[str, Any]]:
    out = []
    for line in node.log.read_text("utf-8", "replace").splitlines():
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data.get("sync"), dict):
                out.append(data["sync"])
    return out


def single_rate(lab: Lab, r: int, seconds: float) -> float:
    out = lab.root / f"single{r}.txt"
    proc = start_producer(lab.root / f"single{r}.git", seconds, out)
    lab.procs.append(proc)
    proc.wait(seconds + 120)
    return len(acked(out)) / seconds


def cluster_round(lab: Lab, r: int, seconds: float, say: Callable[[str], None]) -> ClusterRound:
    say(f"  round {r + 1}: single-node publish rate, 10 s")
    baseline = single_rate(lab, r, 10.0)
    _, url = lab.bare_repo(f"cluster{r}.git")
    nodes = [lab.node(f"c{r}-{i}", url, QUEUE, consumer=True) for i in range(NODES)]
    for node in nodes:
        lab.start(node)
    for node in nodes:
        lab.wait_for(f"{node.name}'s first sync", lambda n=node: bool(sync_records(n)), 60, nodes)
    say(f"  round {r + 1}: {NODES} nodes publishing as fast as they can for {seconds:g} s")
    outs = [node.dir / "acked.txt" for node in nodes]
    t0 = time.time()
    producers = [
        start_producer(n.storage, seconds, out) for n, out in zip(nodes, outs, strict=True)
    ]
    lab.procs += producers
    for proc in producers:
        proc.wait(seconds + 300)
    sent: dict[str, float] = {}
    for out in outs:
        sent.update(acked(out))
    say(f"  round {r + 1}: {len(sent)} published; waiting for every consumer")
    lab.wait_for(
        "every message on every node",
        lambda: all(set(sent) <= n.received().keys() for n in nodes),
        600,
        nodes,
    )
    last = max(max(got[m] for m in sent) for got in (n.received() for n in nodes))
    lab.stop(*nodes)
    records = {n.name: sync_records(n) for n in nodes}
    return ClusterRound(
        single_rate=baseline,
        published=len(sent),
        publish_rate=len(sent) / seconds,
        delivered_rate=len(sent) / (last - t0),
        max_backlog={
            k: max((s["pushed_messages"] + s.get("unpushed", 0) for s in v), default=0)
            for k, v in records.items()
        },
        cycles={k: len(v) for k, v in records.items()},
        failed_cycles={k: sum(s["error"] is not None for s in v) for k, v in records.items()},
        rejections={k: sum(s["rejections"] for s in v) for k, v in records.items()},
        duplicates=sum(count_lines(n.received_file) - len(n.received()) for n in nodes),
    )


# ------------------------------------------------------------------- 2. the cycle


@dataclass
class CycleRun:
    wanted: int
    arrived: int
    seconds: float
    reparented: int
    pushed: int


def cycle_run(lab: Lab, r: int, wanted: int, pace: float) -> CycleRun:
    """One timed ``sync_once`` on node a while a producer process publishes."""
    _, url = lab.bare_repo(f"cycle{r}-{wanted}.git")
    a_path, b_path = lab.root / f"cy{r}-{wanted}-a.git", lab.root / f"cy{r}-{wanted}-b.git"

    def target(node: str) -> SyncTarget:
        return SyncTarget(
            "central", url, (QUEUE,), (), Identity(node, f"{node}@b"), Credentials(timeout=60)
        )

    with Storage(a_path) as a, Storage(b_path) as b:
        Producer(b, QUEUE, author=IDENTITY).publish("first")
        sync_once(b, target("b"))
        Producer(a, QUEUE, author=IDENTITY).publish_many([f"u:{i}" for i in range(BACKLOG)])
        out, stop = lab.root / f"cy{r}-{wanted}.txt", lab.root / f"cy{r}-{wanted}.stop"
        proc = None
        if wanted:
            proc = start_producer(a_path, 600, out, rate=wanted / pace, stop_file=stop)
            lab.procs.append(proc)
            time.sleep(0.3)  # the producer process is up and publishing
        start = time.time()
        report = sync_once(a, target("a"))
        end = time.time()
        if proc is not None:
            stop.touch()
            proc.wait(60)
        arrived = sum(start <= t <= end for t in acked(out).values()) if proc else 0
    if not report.ok:
        raise RuntimeError(report.line())
    return CycleRun(wanted, arrived, end - start, report.reparented, report.pushed_messages)


# ------------------------------------------------------------------------- report


@dataclass
class Results:
    machine: dict[str, Any]
    cluster: list[ClusterRound] = field(default_factory=list)
    cycles: list[CycleRun] = field(default_factory=list)


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"


def report(res: Results, interval: float) -> str:
    out = ["", "1. cluster: 4 nodes, each producing as fast as it can (median (min-max))"]

    def row(label: str, values: Sequence[float], fmt: str = "{:.0f}", unit: str = "") -> None:
        out.append(f"   {label:<40} {spread(values, fmt)} {unit}".rstrip())

    c = res.cluster
    if c:
        row("single-node publish rate (baseline)", [x.single_rate for x in c], unit="msg/s")
        row("published by the 4 producers together", [x.publish_rate for x in c], unit="msg/s")
        row("reached every consumer on every node", [x.delivered_rate for x in c], unit="msg/s")
        row("... against the baseline", [x.delivered_rate / x.single_rate for x in c], "{:.2f}x")
        row("largest unpushed backlog at a push", [max(x.max_backlog.values()) for x in c])
        row(
            "... in intervals of one node's rate",
            [max(x.max_backlog.values()) / (x.publish_rate / NODES * interval) for x in c],
            "{:.1f}",
        )
        row("cycles (all nodes)", [sum(x.cycles.values()) for x in c])
        row("failed cycles", [sum(x.failed_cycles.values()) for x in c])
        row("rejected pushes", [sum(x.rejections.values()) for x in c])
        row("duplicate deliveries", [x.duplicates for x in c])
    out.append("")
    out.append(f"2. one sync cycle re-parenting {BACKLOG} messages while a producer publishes")
    zero = [r.seconds for r in res.cycles if r.wanted == 0]
    for wanted in ARRIVALS:
        runs = [r for r in res.cycles if r.wanted == wanted]
        if not runs:
            continue
        ratio = [r.seconds / z for r, z in zip(runs, zero, strict=False)]
        out.append(
            f"   ~{wanted:>4} arriving: arrived {spread([r.arrived for r in runs])}, "
            f"cycle {spread([r.seconds * 1000 for r in runs])} ms = "
            f"{spread(ratio, '{:.2f}x')} the cycle without, pushed "
            f"{spread([r.pushed for r in runs])}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("produce", help="(internal) the producer process")
    p.add_argument("storage")
    p.add_argument("seconds", type=float)
    p.add_argument("out")
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--stop-file")
    parser.add_argument("--quick", action="store_true", help="one short round of each")
    parser.add_argument("--repeats", type=int, help="rounds of each measure (3; 1 with --quick)")
    parser.add_argument("--seconds", type=float, help="cluster producing time (60; 15 quick)")
    parser.add_argument("--interval", type=float, default=1.0, help="the nodes' sync.interval")
    parser.add_argument("--jitter", type=float, default=0.2, help="the nodes' sync.jitter")
    parser.add_argument("--only", choices=("cluster", "cycle"))
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--tmpdir", help="where the lab directory goes")
    args = parser.parse_args(argv)
    if args.command == "produce":
        return produce(args.storage, args.seconds, args.out, args.rate, args.stop_file)
    repeats = args.repeats or (1 if args.quick else 3)
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    res = Results(
        machine={
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "code": code_version(),
            "load_at_start": os.getloadavg()[0],
        }
    )

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    lab = Lab(args.tmpdir, args.interval, args.jitter)
    try:
        lab.start_daemon()
        for r in range(repeats):
            if args.only in (None, "cycle"):
                say(f"cycle round {r + 1}/{repeats}")
                idle = cycle_run(lab, r, 0, 1.0)
                res.cycles.append(idle)
                pace = max(idle.seconds, 0.05)  # the cycle's length with no producer
                for wanted in ARRIVALS[1:]:
                    res.cycles.append(cycle_run(lab, r, wanted, pace))
            if args.only in (None, "cluster"):
                say(f"cluster round {r + 1}/{repeats}")
                res.cluster.append(cluster_round(lab, r, seconds, say))
    finally:
        lab.close()
    res.machine["load_at_end"] = os.getloadavg()[0]
    m = res.machine
    print(
        f"GitMQ sync under load, code {m['code']}, Python {m['python']}, {m['cpus']} CPUs, "
        f"load {m['load_at_start']:.1f} -> {m['load_at_end']:.1f}, {repeats} round(s)"
    )
    print(report(res, args.interval))
    if args.json:
        args.json.write_text(json.dumps(asdict(res), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
