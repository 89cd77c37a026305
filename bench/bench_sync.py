"""GitMQ sync benchmark (issue 3): latency, throughput and push rate between nodes.

Everything is real: a ``git daemon`` on 127.0.0.1 serves the central bare
repositories, nodes are ``gitmq node --config FILE --log-format json``
processes, messages are published into node A's storage with the Python API
from this process, and node B's consumer runs :func:`record` (a Python
handler, imported from this file through PYTHONPATH) which appends
``ID TIME`` to the file named by ``$GITMQ_BENCH_RECORD``. Timings come from
wall-clock times on one machine: publish times taken here, handler times
written by node B, and each sync cycle's end time and duration from the
nodes' JSON log lines.

1. Latency: R rounds; each starts a fresh remote and nodes A and B, B's sync
   phase set to r/R of the interval (0 in round 1: both nodes list the remote
   at the same moment), then publishes N messages at a steady pace on A and
   matches them by id on B (p50/p99).
2. Throughput: R rounds of 10,000 messages published with ``publish_many``
   on a stopped node A; then A starts and its first sync pushes them; timed
   to the last handler call on B. Against plain ``git push`` + ``git fetch``
   of the same commits over the same daemon, interleaved in the same round.
3. Pushes per minute per node, idle (after each latency round) and under the
   steady load of the latency rounds, from the ``pushes`` of the sync lines.

Nothing here asserts a speed: it prints a table (and writes JSON with ``--json``).
Run: ``.venv/bin/python bench/bench_sync.py [--quick] [--repeats N] [--json FILE]``
(see bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from common import code_version

from gitmq import Identity, Message, Producer, Storage
from gitmq.storage import packing
from gitmq.storage.daemon import start_git_daemon
from gitmq.storage.gitcli import hermetic_env

IDENTITY = Identity("GitMQ Bench", "bench@example.invalid")
RECORD_ENV = "GITMQ_BENCH_RECORD"
BENCH_DIR = Path(__file__).resolve().parent
HANDLER = f"{Path(__file__).stem}:record"
QUEUE = "orders"
BULK = "bulk"


# ------------------------------------------------------ the handler (node B)


def record(message: Message) -> None:
    """Node B's handler: append ``ID UNIXTIME`` to the file named by $GITMQ_BENCH_RECORD,
    in one write (no process per message)."""
    line = f"{message.id} {time.time():.6f}\n".encode()
    fd = os.open(os.environ[RECORD_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# -------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    latency_messages: int  # messages per latency round
    rate: float  # their publish pace, messages/s
    bulk: int  # messages per throughput round
    idle_seconds: float  # idle window after each latency round


FULL = Sizes(200, 8.0, 10_000, 15.0)
QUICK = Sizes(40, 10.0, 2_000, 5.0)


def payload(i: int) -> str:
    return f'{{"seq": {i}, "body": "benchmark message"}}'


# ------------------------------------------------------------ sync log lines


@dataclass(frozen=True)
class Cycle:
    """One sync cycle as the node logged it (``--log-format json``)."""

    start: float
    end: float
    pushes: int
    rejections: int
    fetched: int
    pushed_messages: int
    pushed_tags: int
    ok: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


def read_cycles(log: Path) -> list[Cycle]:
    out = []
    try:
        text = log.read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        sync = data.get("sync")
        if not isinstance(sync, dict):
            continue
        end = datetime.fromisoformat(data["time"]).timestamp()
        out.append(
            Cycle(
                start=end - float(sync["seconds"]),
                end=end,
                pushes=int(sync["pushes"]),
                rejections=int(sync["rejections"]),
                fetched=int(sync["fetched"]),
                pushed_messages=int(sync["pushed_messages"]),
                pushed_tags=int(sync["pushed_tags"]),
                ok=sync.get("error") is None,
            )
        )
    return out


def read_received(path: Path) -> dict[str, float]:
    """Message id -> first handler time on node B (repeats ignored here, counted apart)."""
    out: dict[str, float] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        mid, _, stamp = line.partition(" ")
        if stamp and mid not in out:
            out[mid] = float(stamp)
    return out


def count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------ the lab


@dataclass
class Node:
    """A node's directory, config, log, record file and (when started) process."""

    name: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    launched: float = 0.0

    @property
    def config(self) -> Path:
        return self.dir / "node.yml"

    @property
    def storage(self) -> Path:
        return self.dir / "storage.git"

    @property
    def log(self) -> Path:
        return self.dir / "node.log"

    @property
    def received_file(self) -> Path:
        return self.dir / "received.txt"

    def cycles(self) -> list[Cycle]:
        return read_cycles(self.log)

    def received(self) -> dict[str, float]:
        return read_received(self.received_file)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Lab:
    """One temporary directory, one git daemon serving it, the nodes started in it.

    :meth:`close` kills every process group started here (daemon, nodes and
    their git children) and removes the directory, whatever happened.
    """

    def __init__(
        self, parent: str | None, interval: float, jitter: float, poll: float | None = None
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gitmq-bench-sync-", dir=parent))
        self.interval, self.jitter, self.poll = interval, jitter, poll
        self.procs: list[subprocess.Popen[bytes]] = []
        self.storages: list[Path] = []
        self.port = 0
        self.daemon_log: Path | None = None

    # git daemon ---------------------------------------------------------
    def start_daemon(self, log: Path | None = None) -> None:
        """Start the lab's daemon; with ``log`` it records each request there."""
        proc, self.port = start_git_daemon(self.root, log)
        self.daemon_log = log
        self.procs.append(proc)

    def bare_repo(self, rel: str) -> tuple[Path, str]:
        """A new empty bare repository under the lab and its git:// url."""
        path = self.root / rel
        git(None, "init", "-q", "--bare", str(path))
        return path, f"git://127.0.0.1:{self.port}/{rel}"

    # nodes --------------------------------------------------------------
    def node(
        self,
        name: str,
        url: str,
        queue: str,
        *,
        consumer: bool,
        remote: dict[str, Any] | None = None,
        sync: dict[str, Any] | None = None,
    ) -> Node:
        """A node of ``queue`` on ``url``; ``remote`` and ``sync``: more config keys."""
        node = Node(name, self.root / name)
        node.dir.mkdir(parents=True)
        data: dict[str, Any] = {
            "node": {"name": name, "identity": {"name": f"Bench {name}", "email": f"{name}@b"}},
            "storage": {"path": "storage.git"},
            "remotes": {"central": {"url": url, "timeout": "30s", **(remote or {})}},
            "sync": {"interval": self.interval, "jitter": self.jitter}
            | ({"poll": self.poll} if self.poll else {})
            | (sync or {}),
            "queues": {queue: {"remote": "central"}},
        }
        if consumer:
            data["consumers"] = {
                f"{name}-consumer": {
                    "queue": queue,
                    "handler": {"python": HANDLER},
                    "retry": {"max_attempts": 3, "initial_delay": "10ms", "max_delay": "100ms"},
                }
            }
        node.config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.storages.append(node.storage)
        return node

    def start(self, node: Node) -> None:
        path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, RECORD_ENV: str(node.received_file)}
        argv = [sys.executable, "-m", "gitmq.cli.main", "node", "--config", str(node.config)]
        with node.log.open("ab") as log:
            node.launched = time.time()
            node.proc = subprocess.Popen(
                [*argv, "--log-format", "json"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.procs.append(node.proc)

    def stop(self, *nodes: Node, timeout: float = 60.0) -> None:
        """SIGTERM (the node pushes what is pending and exits 0); SIGKILL if it hangs."""
        running = [n.proc for n in nodes if n.proc is not None and n.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            _kill_group(proc)  # git children left behind, if any

    def close(self) -> None:
        for proc in reversed(self.procs):
            _kill_group(proc)
        for storage in self.storages:
            packing.wait_idle(storage, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_for(
        self, what: str, done: Callable[[], bool], timeout: float, nodes: Sequence[Node] = ()
    ) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for node in nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(
                        f"waiting for {what}: node {node.name} exited {node.proc.returncode}; "
                        f"its log ends with:\n{node.log_tail()}"
                    )
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n.name}:\n{n.log_tail()}" for n in nodes)
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}\n{tails}")
            time.sleep(0.05)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group (every process here starts its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def git(git_dir: Path | None, *args: str) -> float:
    """Run plain git (hermetic environment, no GitMQ code); return seconds taken."""
    argv = ["git", *([f"--git-dir={git_dir}"] if git_dir else []), *args]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=hermetic_env(), capture_output=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def first_cycle(node: Node, since: float = 0.0) -> Callable[[], bool]:
    """Whether ``node`` logged a sync cycle that started at or after ``since``."""
    return lambda: any(c.start >= since for c in node.cycles())


# ------------------------------------------------------------- 1. latency


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


@dataclass
class LatencyRound:
    phase: float  # (B's first cycle start - A's first cycle start) mod interval
    latencies: list[float]
    missing: int
    duplicates: int
    wait_a: list[float]  # publish -> start of A's next cycle
    remote_to_b: list[float]  # end of A's push cycle -> start of the B cycle fetching it
    b_to_handler: list[float]  # start of B's fetching cycle -> handler
    cycles: dict[str, dict[str, list[float]]]  # node -> kind -> durations
    load: dict[str, dict[str, float]]  # node -> pushes/min, attempts per cycle...
    idle: dict[str, dict[str, float]]


def latency_round(
    lab: Lab, r: int, rounds: int, sizes: Sizes, say: Callable[[str], None]
) -> LatencyRound:
    period = lab.interval
    _, url = lab.bare_repo(f"lat{r}-central.git")
    a = lab.node(f"lat{r}-a", url, QUEUE, consumer=False)
    b = lab.node(f"lat{r}-b", url, QUEUE, consumer=True)
    lab.start(a)
    lab.wait_for("node A's first sync", first_cycle(a), 60, [a])
    a0 = a.cycles()[0].start
    # Start B so that its cycles fall at a chosen fraction r/R of A's period (round 1:
    # both sync at the same moment, as nodes started together do). With no jitter the
    # phase between the two schedules stays put, and decides how long a pushed
    # message waits for B's next look at the remote. Node start-up time varies with
    # the machine's load, so B is restarted (up to 8 times) until the phase is close.
    target = period * r / rounds
    startup = a0 - a.launched
    for attempt in range(8):
        launch = a0 + target - startup
        while launch < time.time() + 0.05:
            launch += period
        time.sleep(launch - time.time())
        lab.start(b)
        since = b.launched
        lab.wait_for("node B's first sync", first_cycle(b, since), 60, [a, b])
        first = next(c.start for c in b.cycles() if c.start >= since)
        phase = (first - a0) % period
        error = (phase - target + period / 2) % period - period / 2
        if lab.jitter or abs(error) <= 0.03 * period or attempt == 7:
            break
        say(f"  round {r + 1}: B's phase {phase:.2f}s, wanted {target:.2f}s; restarting B")
        startup = first - since
        lab.stop(b)
    say(f"  round {r + 1}: B's sync phase {phase:.2f}s after A's; warming up")
    with Storage(a.storage) as storage:
        producer = Producer(storage, QUEUE, author=IDENTITY)
        warm = producer.publish("warm-up")
        lab.wait_for("the warm-up message on B", lambda: warm.id in b.received(), 60, [a, b])
        say(f"  round {r + 1}: publishing {sizes.latency_messages} at {sizes.rate:g}/s")
        sent: dict[str, float] = {}
        t0 = time.time()
        for i in range(sizes.latency_messages):
            delay = t0 + i / sizes.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            stamp = time.time()
            sent[producer.publish(payload(i)).id] = stamp
        t1 = time.time()
    lab.wait_for(
        "every message on B", lambda: set(sent) <= b.received().keys(), 60 + 5 * period, [a, b]
    )
    # Settle (B pushes its consumer tag after the last delivery), then stay idle.
    time.sleep(3 * period)
    idle0 = time.time()
    say(f"  round {r + 1}: all delivered; idle for {sizes.idle_seconds:g}s")
    time.sleep(sizes.idle_seconds)
    idle1 = time.time()
    lab.stop(a, b)

    received = b.received()
    duplicates = count_lines(b.received_file) - len(received)
    lat = [received[m] - t for m, t in sent.items() if m in received]
    a_cycles, b_cycles = a.cycles(), b.cycles()
    a_starts = sorted(c.start for c in a_cycles)
    b_fetches = sorted((c for c in b_cycles if c.fetched), key=lambda c: c.start)
    a_pushes = sorted((c for c in a_cycles if c.pushed_messages), key=lambda c: c.end)
    wait_a = [next((s - t for s in a_starts if s >= t), float("nan")) for t in sent.values()]
    b_to_handler = []
    for mid in sent:
        if mid in received:
            before = [c.start for c in b_fetches if c.start <= received[mid]]
            if before:
                b_to_handler.append(received[mid] - before[-1])
    # The push a B cycle fetched landed before B's ls-remote answered, which takes
    # about as long as one of B's idle cycles.
    listing = median_of([c.seconds for c in b_cycles if not (c.pushes or c.fetched)])
    remote_to_b = []
    for c in b_fetches:
        pushed = [p.end for p in a_pushes if p.end <= c.start + listing]
        if pushed and t0 <= c.start <= t1 + 5 * period:
            remote_to_b.append(c.start - pushed[-1])
    return LatencyRound(
        phase=phase,
        latencies=lat,
        missing=len(sent) - len(lat),
        duplicates=duplicates,
        wait_a=[w for w in wait_a if w == w],
        remote_to_b=remote_to_b,
        b_to_handler=b_to_handler,
        cycles={
            "A": {
                "idle": [c.seconds for c in a_cycles if not (c.pushes or c.fetched)],
                "push": [c.seconds for c in a_cycles if c.pushed_messages],
            },
            "B": {
                "idle": [c.seconds for c in b_cycles if not (c.pushes or c.fetched)],
                "fetch": [c.seconds for c in b_cycles if c.fetched],
            },
        },
        load={"A": push_rate(a_cycles, t0, t1), "B": push_rate(b_cycles, t0, t1)},
        idle={"A": push_rate(a_cycles, idle0, idle1), "B": push_rate(b_cycles, idle0, idle1)},
    )


def push_rate(cycles: Iterable[Cycle], start: float, end: float) -> dict[str, float]:
    """Pushes in the cycles that started in [start, end]."""
    inside = [c for c in cycles if start <= c.start <= end]
    minutes = (end - start) / 60
    return {
        "cycles": len(inside),
        "pushes": sum(c.pushes for c in inside),
        "pushes_per_minute": sum(c.pushes for c in inside) / minutes,
        "cycles_per_minute": len(inside) / minutes,
        "max_attempts_per_cycle": max((c.pushes + c.rejections for c in inside), default=0),
        "fetches": sum(1 for c in inside if c.fetched),
        "failed": sum(1 for c in inside if not c.ok),
    }


# ---------------------------------------------------------- 2. throughput


@dataclass
class ThroughputRound:
    messages: int
    baseline_push: float
    baseline_fetch: float
    a_cycle: float  # A's first sync (list + push of everything)
    wait_b: float  # end of A's push cycle -> start of B's fetching cycle
    b_cycle: float  # B's cycle that fetched them
    first_delivery: float  # from A's cycle start
    delivery: float  # first -> last handler call on B
    total: float  # A's cycle start -> last handler call on B
    confirmed: float  # A's cycle start -> end of B's fetching cycle
    order: str

    @property
    def baseline(self) -> float:
        return self.baseline_push + self.baseline_fetch


def throughput_round(lab: Lab, r: int, sizes: Sizes, say: Callable[[str], None]) -> ThroughputRound:
    n = sizes.bulk
    _, url = lab.bare_repo(f"tp{r}-central.git")
    a = lab.node(f"tp{r}-a", url, BULK, consumer=False)
    b = lab.node(f"tp{r}-b", url, BULK, consumer=True)
    lab.start(b)
    lab.wait_for("node B's first sync", first_cycle(b), 60, [b])
    with Storage(a.storage) as storage:  # node A is not running yet
        messages = Producer(storage, BULK, author=IDENTITY).publish_many(
            [payload(i) for i in range(n)]
        )
    packing.wait_idle(a.storage, timeout=300)
    ids, tip = {m.id for m in messages}, messages[-1].sha
    # The baseline moves the very same commits between plain repositories.
    src, _ = lab.bare_repo(f"tp{r}-plain-src.git")
    git(src, "fetch", "-q", "--no-tags", str(a.storage), f"refs/heads/{BULK}:refs/heads/{BULK}")
    dst, _ = lab.bare_repo(f"tp{r}-plain-dst.git")
    _, plain_url = lab.bare_repo(f"tp{r}-plain-central.git")
    times: dict[str, float] = {}

    def baseline() -> None:
        spec = f"refs/heads/{BULK}:refs/heads/{BULK}"
        times["push"] = git(src, "push", "-q", plain_url, spec)
        times["fetch"] = git(dst, "fetch", "-q", "--no-tags", plain_url, spec)
        got = subprocess.run(
            ["git", f"--git-dir={dst}", "rev-parse", f"refs/heads/{BULK}"],
            env=hermetic_env(),
            capture_output=True,
            text=True,
        ).stdout.strip()
        if got != tip:
            raise RuntimeError(f"baseline fetched {got}, expected {tip}")

    def gitmq() -> None:
        lab.start(a)
        lab.wait_for(f"{n:,} messages on B", lambda: count_lines(b.received_file) >= n, 600, [a, b])

    sides = [("baseline", baseline), ("gitmq", gitmq)]
    if r % 2:
        sides.reverse()
    for label, side in sides:
        say(f"  round {r + 1}: {label}")
        side()
    lab.stop(a, b)
    received = b.received()
    missing = ids - received.keys()
    if missing:
        raise RuntimeError(f"{len(missing)} of {n} messages never reached node B")
    push = next(c for c in a.cycles() if c.pushed_messages)
    fetch = next(c for c in b.cycles() if c.fetched)
    stamps = [received[m] for m in ids]
    return ThroughputRound(
        messages=n,
        baseline_push=times["push"],
        baseline_fetch=times["fetch"],
        a_cycle=push.seconds,
        wait_b=fetch.start - push.end,
        b_cycle=fetch.seconds,
        first_delivery=min(stamps) - push.start,
        delivery=max(stamps) - min(stamps),
        total=max(stamps) - push.start,
        confirmed=fetch.end - push.start,
        order=" then ".join(label for label, _ in sides),
    )


# ------------------------------------------------------------------ report


@dataclass
class Results:
    mode: str
    repeats: int
    interval: float
    jitter: float
    sizes: Sizes
    poll: float | None
    machine: dict[str, Any]
    latency: list[LatencyRound] = field(default_factory=list)
    throughput: list[ThroughputRound] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "repeats": self.repeats,
            "interval": self.interval,
            "jitter": self.jitter,
            "poll": self.poll,
            "sizes": vars(self.sizes),
            "machine": self.machine,
            "latency": [vars(r) for r in self.latency],
            "throughput": [{**vars(r), "baseline": r.baseline} for r in self.throughput],
        }


def num(value: float) -> str:
    if value != value:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def row(name: str, unit: str, values: Sequence[float], note: str = "", goal: str = "") -> str:
    if values:
        cells = f"{num(min(values)):>8} {num(statistics.median(values)):>8} {num(max(values)):>8}"
    else:
        cells = f"{'-':>8} {'-':>8} {'-':>8}"
    return f"{name:<48} {unit:<7} {cells}  {note:<24} {goal}".rstrip()


def verdict(values: Sequence[float], limit: float, unit: str = "") -> str:
    """The goal checked on the median over the repeats (worst repeat shown too)."""
    if not values:
        return ""
    med, worst = statistics.median(values), max(values)
    state = "met" if med <= limit else "MISSED"
    tail = "" if worst <= limit else f" (worst repeat {num(worst)}{unit})"
    return f"<= {limit:g}{unit}: {state}{tail}"


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(res: Results) -> str:
    rule = "-" * 118
    head = (
        f"{'measure':<48} {'unit':<7} {'min':>8} {'median':>8} {'max':>8}  "
        f"{'ratio / note':<24} goal"
    )
    out = [head, rule]
    lat = res.latency
    if lat:
        n = res.sizes.latency_messages
        p50 = [percentile(x.latencies, 50) for x in lat]
        p99 = [percentile(x.latencies, 99) for x in lat]
        by_phase = ", ".join(
            f"{round(x.phase, 2) % res.interval:.2f}s: {v:.2f}s"
            for x, v in zip(lat, p50, strict=True)
        )
        out.append(
            f"1. latency A -> B, {len(lat)} round(s) of {n} messages at {res.sizes.rate:g}/s, "
            f"interval {res.interval:g}s, jitter {res.jitter:g}s, poll {res.poll or 0:g}s "
            f"(p50 by B's sync phase after A's: {by_phase})"
        )
        out.append(row("  publish on A -> handler on B: p50", "s", p50, "", verdict(p50, 1.5, "s")))
        out.append(row("  publish on A -> handler on B: p99", "s", p99, "", verdict(p99, 3.0, "s")))
        out.append(row("  publish on A -> handler on B: max", "s", [max(x.latencies) for x in lat]))
        lost = sum(x.missing for x in lat)
        dups = sum(x.duplicates for x in lat)
        out.append(f"  {'missing / duplicate deliveries (all rounds)':<46} {lost} / {dups}")
        out.append("  where the time goes (median per round):")
        parts = (
            ("publish -> A's next cycle start", [median_of(x.wait_a) for x in lat]),
            (
                "A's push cycle end -> B's fetching cycle start",
                [median_of(x.remote_to_b) for x in lat],
            ),
            (
                "B's cycle start -> handler (list+fetch+poll)",
                [median_of(x.b_to_handler) for x in lat],
            ),
            ("A cycle, nothing to do (ls-remote)", [median_of(x.cycles["A"]["idle"]) for x in lat]),
            ("A cycle that pushed", [median_of(x.cycles["A"]["push"]) for x in lat]),
            ("B cycle, nothing to do (ls-remote)", [median_of(x.cycles["B"]["idle"]) for x in lat]),
            ("B cycle that fetched", [median_of(x.cycles["B"]["fetch"]) for x in lat]),
        )
        for label, values in parts:
            out.append(row(f"    {label}", "s", values))
    tp = res.throughput
    if tp:
        out.append(rule)
        base = [x.baseline for x in tp]
        out.append(
            f"2. throughput: {tp[0].messages:,} messages published with publish_many on "
            f"stopped node A, then A started ({len(tp)} round(s), sides alternating)"
        )
        out.append(row("  baseline: plain git push", "s", [x.baseline_push for x in tp]))
        out.append(row("  baseline: plain git fetch", "s", [x.baseline_fetch for x in tp]))
        out.append(row("  baseline: push + fetch", "s", base, "1x"))
        out.append(row("  A's first sync cycle (ls-remote + push)", "s", [x.a_cycle for x in tp]))
        out.append(
            row("  A's push cycle end -> B's fetching cycle start", "s", [x.wait_b for x in tp])
        )
        out.append(row("  B's cycle that fetched them", "s", [x.b_cycle for x in tp]))
        out.append(
            row("  A's cycle start -> first handler call on B", "s", [x.first_delivery for x in tp])
        )
        out.append(row("  first -> last handler call on B", "s", [x.delivery for x in tp]))
        rates = [x.messages / x.delivery for x in tp if x.delivery > 0]
        out.append(row("  B's delivery rate", "msg/s", rates))
        work = [x.a_cycle + x.b_cycle for x in tp]
        ratio_work = [w / x.baseline for w, x in zip(work, tp, strict=True)]
        out.append(
            row(
                "  A's cycle + B's fetching cycle (no waiting)",
                "s",
                work,
                f"{median_of(ratio_work):.2f}x ({min(ratio_work):.2f}-{max(ratio_work):.2f})",
                "(git work only, for reference)",
            )
        )
        conf = [x.confirmed / x.baseline for x in tp]
        out.append(
            row(
                "  A's cycle start -> end of B's fetching cycle",
                "s",
                [x.confirmed for x in tp],
                f"{median_of(conf):.2f}x ({min(conf):.2f}-{max(conf):.2f})",
                f"(sync only) {verdict(conf, 2.0, 'x')}",
            )
        )
        ratio = [x.total / x.baseline for x in tp]
        out.append(
            row(
                "  A's cycle start -> last handler call on B",
                "s",
                [x.total for x in tp],
                f"{median_of(ratio):.2f}x ({min(ratio):.2f}-{max(ratio):.2f})",
                verdict(ratio, 2.0, "x"),
            )
        )
    if lat:
        out.append(rule)
        out.append(
            f"3. pushes per node (A publishes, B consumes and pushes its consumer tag); "
            f"idle: {res.sizes.idle_seconds:g}s after each latency round; load: while publishing"
        )
        for node in ("A", "B"):
            idle = [x.idle[node] for x in lat]
            cycles = sum(int(i["cycles"]) for i in idle)
            out.append(
                row(
                    f"  node {node} idle: pushes per minute",
                    "/min",
                    [i["pushes_per_minute"] for i in idle],
                    f"{sum(int(i['pushes']) for i in idle)} in {cycles} cycles",
                    "== 0: met" if all(i["pushes"] == 0 for i in idle) else "== 0: MISSED",
                )
            )
        for node in ("A", "B"):
            load = [x.load[node] for x in lat]
            attempts = max(int(i["max_attempts_per_cycle"]) for i in load)
            out.append(
                row(
                    f"  node {node} under load: pushes per minute",
                    "/min",
                    [i["pushes_per_minute"] for i in load],
                    f"cycles/min {num(median_of([i['cycles_per_minute'] for i in load]))}",
                    f"max {attempts} push attempt(s) per cycle; <= 1: "
                    + ("met" if attempts <= 1 else "MISSED"),
                )
            )
        failed = sum(int(x.load[k]["failed"] + x.idle[k]["failed"]) for x in lat for k in "AB")
        if failed:
            out.append(f"  WARNING: {failed} sync cycles failed during the measured windows")
    return "\n".join(out)


def headline(res: Results) -> str:
    m = res.machine
    start, end = m["load_average_at_start"], m.get("load_average_at_end", (float("nan"),))
    return (
        f"GitMQ sync benchmark ({res.mode}, {res.repeats} repeats) of gitmq {m['gitmq_commit']}; "
        f"{m['git']}, Python {m['python']}, {m['cpus']} CPUs; "
        f"1-minute load average {start[0]:.1f} at start, {end[0]:.1f} at end"
    )


# --------------------------------------------------------------------- main


def run(res: Results, tmpdir: str | None, parts: Sequence[str]) -> None:
    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    lab = Lab(tmpdir, res.interval, res.jitter, res.poll)
    try:
        lab.start_daemon()
        say(f"lab {lab.root}; git daemon on 127.0.0.1:{lab.port}; {res.sizes}")
        if "latency" in parts:
            say("1+3. latency rounds (then idle)")
            for r in range(res.repeats):
                res.latency.append(latency_round(lab, r, res.repeats, res.sizes, say))
        if "throughput" in parts:
            say("2. throughput rounds")
            for r in range(res.repeats):
                res.throughput.append(throughput_round(lab, r, res.sizes, say))
    finally:
        lab.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (under a minute)")
    parser.add_argument(
        "--repeats", type=int, help="rounds of each measure (default 3, or 1 with --quick)"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="sync interval, s (1)")
    parser.add_argument("--jitter", type=float, default=0.0, help="sync jitter, s (0)")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.25,
        help="sync.poll, s: fetch-only cycles in between (0.25; 0 turns them off)",
    )
    parser.add_argument(
        "--only",
        choices=("latency", "throughput"),
        help="run only the latency rounds (with the push counts) or the throughput rounds",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument("--tmpdir", help="where to create the temporary repositories")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    res = Results(
        mode="quick" if args.quick else "full",
        repeats=repeats,
        interval=args.interval,
        jitter=args.jitter,
        sizes=QUICK if args.quick else FULL,
        poll=args.poll or None,
        machine={
            "python": platform.python_version(),
            "git": git_version.strip(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "gitmq_commit": code_version(),
            "load_average_at_start": os.getloadavg(),
        },
    )
    # SIGTERM runs the cleanup too (every process group, the temporary directory).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(res, args.tmpdir, [args.only] if args.only else ["latency", "throughput"])
    finally:  # on a failure, still show (and save) what was measured
        res.machine["load_average_at_end"] = os.getloadavg()
        print(headline(res))
        print(report(res))
        if args.json:
            args.json.write_text(json.dumps(res.as_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
