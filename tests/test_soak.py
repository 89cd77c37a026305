"""Soak (issue 8): two nodes under steady load with pruning stay within bounds.

Two ``gitmq node`` processes sync with one git daemon every second, each with
one consumer and a producer process publishing 10 msg/s into its storage (as
in the issue's soak), and each prunes its local queue to 2,000 messages every
30 s. The issue's soak kept 5,000; with 20 msg/s reaching each local queue that
limit is only passed after 250 s, too late in a 10-minute run to leave a steady
phase long enough to compare; 2,000 is passed after 100 s. The test runs 10
minutes (``--soak-hours H`` for longer runs by hand), then checks that every
acknowledged message reached the remote once and every consumer in its order.

Every 10 s it samples each node: its storage's disk use (every file's blocks,
as ``du``; read every second in between, keeping the lowest and highest), the
messages on its local branch, the node process's resident memory (VmRSS), open
descriptors and child processes (zombies included). Warm-up lasts 180 s and at
least until each node's prune dropped something and ran once more; the rest is
the steady phase, whose first and last thirds are compared. After warm-up:

- storage: the lowest reading of the last third at most 0.4 MB above the lowest
  of the first third. Loose objects (4 KiB each) take the disk use up by 5-8 MB
  between two repacks, so only the troughs (everything packed) are comparable;
  in 20-minute and 1-hour runs they stayed at 0.39-0.66 MB. In a 10-minute run
  the thirds are about 280 s apart, so the issue's 8-9 MB/hour would add 0.6-0.7
  MB;
- resident memory: the median of the last third at most 2 MB above the median
  of the first third (the median ignores single steps of the allocator). The
  issue's 30-37 MB/hour would add 2.3-2.9 MB in 280 s. Here the node still
  settles in that time: 10-minute runs rose 0.5-1.7 MB; a 1-hour run went from
  38.9 MB at 2 minutes to 43.7 at 14, 45.3 at 26 and 45.9 (node a, flat from
  then on) or 45.4 MB (node b, still creeping) at 60 minutes, so a run of an
  hour or more fails this bound (+3.1 and +2.2 MB between its thirds);
- descriptors: the fewest of the last third (no child running) at most 2 above
  the fewest of the first third, and never more than 32 (11-22 were seen: each
  running git child holds a few pipes);
- child processes: never more than 5 (0-3 were seen: the object reader, a git
  fetch or push, a repack), the fewest of the last third at most 1 above the
  fewest of the first third (a child never waited for stays as a zombie);
- the local branch never holds more than the prune limit plus what both
  producers add in two prune periods (a prune waits for the sync lock and takes
  a while itself: up to 2,810 messages were seen, 40 s worth above the limit).

A leak of these sizes in hours-long runs (``--soak-hours``) fails as well: the
bounds are on growth, whatever the duration.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from nodes import (
    Cluster,
    ProcessSample,
    TestNode,
    assert_landed_once,
    disk_usage,
    in_producer_order,
    parametrize_duration,
    sample_process,
    start_paced,
    start_recording,
    table,
    wait_synced,
)
from util import git_text, kill_all, rev_parse, wait_for

pytestmark = pytest.mark.slow

RATE = 10.0  # msg/s of each node's producer
PRUNE_LIMIT = 2000
PRUNE_EVERY = 30.0
DEFAULT_SECONDS = 600.0
SAMPLE_EVERY = 10.0
TICK = 1.0  # how often the storages are read
WARMUP = 180.0
DRAIN_TIMEOUT = 120.0
MB = 1e6

STORAGE_GROWTH = 0.4 * MB
RSS_GROWTH = 2.0 * MB
FDS_GROWTH, MAX_FDS = 2, 32
CHILDREN_GROWTH, MAX_CHILDREN = 1, 5
MAX_MESSAGES = PRUNE_LIMIT + 2 * RATE * 2 * PRUNE_EVERY
MAX_TABLE_ROWS = 120


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    hours = metafunc.config.getoption("soak_hours")
    seconds = DEFAULT_SECONDS if hours is None else hours * 3600
    parametrize_duration(metafunc, "soak_seconds", seconds, DRAIN_TIMEOUT + 600)


@dataclass(frozen=True)
class Sample:
    """One node over one sampling period."""

    at: float  # seconds since the producers started
    disk_low: int  # the least and most bytes its storage took on disk in the period
    disk_high: int
    messages: int  # on the local branch (what pruning keeps)
    process: ProcessSample


class Sampler:
    """Samples every node every ``SAMPLE_EVERY`` seconds; reads the storages every
    ``TICK`` in between, so that a sample has the lowest and highest disk use of its
    period (a reading every 10 s alone would mostly miss the troughs)."""

    def __init__(self, nodes: list[TestNode]) -> None:
        self.nodes = nodes
        self.started = time.time()
        self.samples: dict[str, list[Sample]] = {node.name: [] for node in nodes}
        self._disk: dict[str, list[int]] = {node.name: [] for node in nodes}

    def tick(self) -> None:
        for node in self.nodes:
            self._disk[node.name].append(disk_usage(node.storage))
        if time.time() >= self.started + len(self.samples[self.nodes[0].name]) * SAMPLE_EVERY:
            self.sample()

    def sample(self) -> None:
        for node in self.nodes:
            assert node.proc is not None
            tip = rev_parse(node.storage, "refs/heads/orders")
            count = int(git_text(node.storage, "rev-list", "--count", tip)) if tip else 0
            disk, self._disk[node.name] = self._disk[node.name] or [disk_usage(node.storage)], []
            at = time.time() - self.started
            sample = Sample(at, min(disk), max(disk), count, sample_process(node.proc.pid))
            self.samples[node.name].append(sample)

    def table(self) -> str:
        return samples_table(self.samples)


def test_two_nodes_under_steady_load_with_pruning_stay_within_bounds(
    cluster: Cluster, central: Path, tmp_path: Path, soak_seconds: float
) -> None:
    prune = {"max_messages": PRUNE_LIMIT, "schedule": f"{PRUNE_EVERY:g}s"}
    queues = {"orders": {"remote": "central", "prune": prune}}
    nodes = [
        cluster.node(n, [f"c-{n}"], interval="1s", python_handler=True, extra={"queues": queues})
        for n in "ab"
    ]
    for node in nodes:
        start_recording(node, "--log-format", "json")
    for node in nodes:
        wait_synced(node)
    go = tmp_path / "go"
    producers = [start_paced(node, node.name, RATE, soak_seconds, go) for node in nodes]
    alive = [node.proc for node in nodes if node.proc is not None]
    sampler = Sampler(nodes)
    try:
        go.touch()
        while any(p.proc.poll() is None for p in producers):
            due = time.monotonic() + TICK
            sampler.tick()
            wait_for(lambda due=due: time.monotonic() >= due, TICK + 30, "a tick", procs=alive)
        sampler.sample()
        for producer in producers:
            assert producer.proc.returncode == 0, (
                producer.proc.stderr.read() if producer.proc.stderr else ""
            )
        acked = [ack for p in producers for ack in p.acked()]
        wait_for(
            lambda: all(len(n.received(c)) >= len(acked) for n in nodes for c in n.consumers),
            DRAIN_TIMEOUT,
            f"{len(acked)} messages at every consumer",
            interval=1.0,
            procs=alive,
        )
    finally:
        kill_all([p.proc for p in producers])
        print(sampler.table())
    assert [node.stop() for node in nodes] == [0, 0]

    landed = assert_landed_once(central, "orders", [payload for _, payload in acked])
    assert in_producer_order([m.payload for m in landed])
    order = [m.id for m in landed]
    for node in nodes:
        assert node.received(f"c-{node.name}") == order, node.name

    pruned = [first_dropping_prune(node, sampler.started) for node in nodes]
    assert None not in pruned, f"a node's prune never dropped anything: {pruned}"
    warm = max(WARMUP, *(at + PRUNE_EVERY for at in pruned if at is not None))
    verdicts = [verdict(n, s, warm) for n, s in sampler.samples.items()]
    print(f"warm-up until {warm:.0f} s (first dropping prune at {pruned} s)")
    print("\n".join(line for lines, _ in verdicts for line in lines))
    failed = [line for _, bad in verdicts for line in bad]
    assert failed == [], "\n".join(["bounds exceeded after warm-up:", *failed])


def verdict(name: str, samples: list[Sample], warm: float) -> tuple[list[str], list[str]]:
    """Each bound with what was measured against it, and the ones exceeded."""
    steady = [s for s in samples if s.at >= warm]
    third = len(steady) // 3
    assert third >= 6, (
        f"too short for a steady phase: {len(steady)} samples after the warm-up "
        f"({warm:.0f} s); run at least {warm + 18 * SAMPLE_EVERY:.0f} s"
    )
    first, last = steady[:third], steady[-third:]

    def growth(
        what: str, pick: Callable[[list[Sample]], float], bound: float, unit: float = 1
    ) -> tuple[str, bool]:
        before, after = pick(first) / unit, pick(last) / unit
        change = f"{before:.2f} -> {after:.2f} (+{after - before:.2f}, bound +{bound / unit:g})"
        return f"{name}: {what}: {change}", after - before <= bound / unit

    checks = [
        growth("lowest disk use, MB", lambda w: min(s.disk_low for s in w), STORAGE_GROWTH, MB),
        growth(
            "median RSS, MB", lambda w: statistics.median(s.process.rss for s in w), RSS_GROWTH, MB
        ),
        growth("fewest descriptors", lambda w: min(s.process.fds for s in w), FDS_GROWTH),
        growth("fewest children", lambda w: min(s.process.children for s in w), CHILDREN_GROWTH),
    ]
    for what, value, bound in [
        ("most descriptors", max(s.process.fds for s in steady), MAX_FDS),
        ("most children", max(s.process.children for s in steady), MAX_CHILDREN),
        ("most messages on the local branch", max(s.messages for s in steady), MAX_MESSAGES),
    ]:
        checks.append((f"{name}: {what}: {value} (bound {bound:g})", value <= bound))
    return [line for line, _ in checks], [line for line, ok in checks if not ok]


def first_dropping_prune(node: TestNode, started: float) -> float | None:
    """When (seconds after ``started``) the node's prune job first dropped messages."""
    for line in node.json_log():
        if "prune" in line and line["prune"]["dropped"] > 0:
            return datetime.fromisoformat(line["time"]).timestamp() - started
    return None


def samples_table(samples: dict[str, list[Sample]]) -> str:
    """The samples, one line per moment, each node's columns side by side; long runs
    show every n-th moment (and the last)."""
    head: list[object] = ["t_s"]
    for name in samples:
        head += [f"{name}_disk_MB", f"{name}_msgs", f"{name}_rss_MB", f"{name}_fds", f"{name}_kids"]
    moments = list(zip(*samples.values(), strict=True))
    step = max(1, -(-len(moments) // MAX_TABLE_ROWS))
    rows = [head]
    for index, moment in enumerate(moments):
        if index % step and index != len(moments) - 1:
            continue
        row: list[object] = [f"{moment[0].at:.0f}"]
        for s in moment:
            row += [f"{s.disk_low / MB:.2f}-{s.disk_high / MB:.2f}", s.messages]
            row += [f"{s.process.rss / MB:.1f}", s.process.fds, s.process.children]
        rows.append(row)
    return table(rows)
