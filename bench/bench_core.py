"""GitMQ core benchmark (issue 2): rates, cost against history, and disk.

Everything is compared in ONE run against the baseline of a shell loop of
``git commit --allow-empty -m MSG`` (what a naive implementation does), so the
machine's noise hits both sides alike. Each rate is measured ``--repeats``
times, interleaved with the baseline, and printed as min/median/max; a ratio
is computed per repeat against that repeat's baseline and also shown as
min/median/max. Nothing here asserts a speed: it prints a table (and writes
JSON with ``--json``).

Run: ``.venv/bin/python bench/bench_core.py [--quick] [--repeats N] [--json FILE]``
(see bench/README.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import code_version

from gitmq import Consumer, Identity, Producer, Storage
from gitmq.storage import packing

IDENTITY = Identity("GitMQ Bench", "bench@example.invalid")
BATCH = 1000
#: Baseline and GitMQ (or 0 and N history) alternate this many times per repeat.
CHUNKS = 5
_LOOSE_DIR = re.compile(r"^[0-9a-f]{2}$")


def payload(i: int) -> str:
    """The message body both sides write (about 45 bytes of JSON)."""
    return f'{{"seq": {i}, "body": "benchmark message"}}'


@dataclass(frozen=True)
class Sizes:
    baseline: int  # commits per baseline repeat
    single: int  # single publish() calls per repeat
    batches: int  # publish_many batches of BATCH per repeat
    backlog: int  # messages a consumer works through
    history: int  # messages of history for the cost-vs-history test
    probe: int  # messages published/consumed at each history size
    disk: int  # single publish() calls before measuring disk
    warmup: int  # single publishes on another queue before a history probe


FULL = Sizes(500, 2000, 20, 10_000, 100_000, 1000, 100_000, 2000)
QUICK = Sizes(100, 500, 5, 2000, 10_000, 300, 5000, 600)


# --------------------------------------------------------------------- helpers


@dataclass
class Workspace:
    """Temporary directories, and the storages whose packing must end before removal."""

    root: Path
    counter: int = 0
    repos: list[Path] = field(default_factory=list)

    def new_dir(self, name: str) -> Path:
        self.counter += 1
        path = self.root / f"{self.counter:03d}-{name}"
        self.repos.append(path)
        return path

    def remove(self, *paths: Path) -> None:
        """Remove repositories early (the disk test wants the space)."""
        for path in paths:
            wait_packing_idle(path, timeout=600)
            shutil.rmtree(path, ignore_errors=True)
            self.repos.remove(path)

    def cleanup(self) -> None:
        for repo in self.repos:
            wait_packing_idle(repo, timeout=600)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def workspace(parent: str | None) -> Iterator[Workspace]:
    ws = Workspace(Path(tempfile.mkdtemp(prefix="gitmq-bench-", dir=parent)))
    try:
        yield ws
    finally:
        ws.cleanup()


def wait_packing_idle(git_dir: Path, storage: Storage | None = None, timeout: float = 900) -> float:
    """Wait until no GitMQ background repack runs on ``git_dir``; return seconds waited."""
    if storage is not None:
        return storage.wait_for_packing(timeout)
    return packing.wait_idle(git_dir, timeout)


def timed(fn: Callable[[], int]) -> float:
    """Run ``fn`` (which returns how many messages it handled); return messages/s."""
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def disk_usage(path: Path) -> dict[str, int]:
    """Apparent bytes (``du -sb``), allocated bytes (``du -s -B1``), packs and loose objects."""

    def du(*flags: str) -> int:
        out = subprocess.run(["du", "-s", *flags, str(path)], capture_output=True, check=True)
        return int(out.stdout.split()[0])

    objects = path / "objects"
    loose = sum(
        1
        for d in objects.iterdir()
        if d.is_dir() and _LOOSE_DIR.match(d.name)
        for f in d.iterdir()
        if not f.name.startswith("tmp_")
    )
    return {
        "apparent_bytes": du("-b"),
        "allocated_bytes": du("--block-size=1"),
        "packs": len(list((objects / "pack").glob("*.pack"))),
        "loose_objects": loose,
    }


# ------------------------------------------------------------------- baseline


def baseline_env(home: Path) -> dict[str, str]:
    """A hermetic environment for the naive ``git commit`` loop."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": IDENTITY.name,
        "GIT_AUTHOR_EMAIL": IDENTITY.email,
        "GIT_COMMITTER_NAME": IDENTITY.name,
        "GIT_COMMITTER_EMAIL": IDENTITY.email,
        "GIT_TERMINAL_PROMPT": "0",
        "PREFIX": '{"seq": ',
        "SUFFIX": ', "body": "benchmark message"}',
    }


def bench_publish(ws: Workspace, sizes: Sizes) -> tuple[float, float]:
    """Rates of the baseline loop and of ``Producer.publish``, measured in alternating chunks.

    The baseline is a shell loop of ``git commit --allow-empty -m`` in a fresh
    non-bare repository; GitMQ publishes one message at a time into a fresh
    storage (including the background repacks it triggers). Alternating
    chunks keep both sides under the same disk and CPU weather.
    """
    repo = ws.new_dir("baseline")
    repo.mkdir()
    env = baseline_env(ws.root)
    subprocess.run(["git", "init", "-q", str(repo)], env=env, check=True)
    path = ws.new_dir("single")
    spent = {"baseline": 0.0, "single": 0.0}
    with Storage(path) as storage:
        producer = Producer(storage, "bench", author=IDENTITY)

        def baseline_chunk(chunk: int) -> None:
            first = chunk * sizes.baseline // CHUNKS + 1
            last = (chunk + 1) * sizes.baseline // CHUNKS
            script = (
                f"for i in $(seq {first} {last}); do "
                f'git commit --allow-empty -q -m "$PREFIX$i$SUFFIX" || exit 1; done'
            )
            subprocess.run(["bash", "-c", script], cwd=repo, env=env, check=True)

        def single_chunk(chunk: int) -> None:
            for i in range(chunk * sizes.single // CHUNKS, (chunk + 1) * sizes.single // CHUNKS):
                producer.publish(payload(i))

        sides = {"baseline": baseline_chunk, "single": single_chunk}
        for chunk in range(CHUNKS):
            for side in sorted(sides, reverse=chunk % 2 == 1):
                start = time.perf_counter()
                sides[side](chunk)
                spent[side] += time.perf_counter() - start
        wait_packing_idle(path, storage)
    return sizes.baseline / spent["baseline"], sizes.single / spent["single"]


# --------------------------------------------------------------------- GitMQ


def bench_batch(ws: Workspace, batches: int) -> float:
    """``Producer.publish_many`` of BATCH-message batches into a fresh storage."""
    path = ws.new_dir("batch")
    with Storage(path) as storage:
        producer = Producer(storage, "bench", author=IDENTITY)
        items = [[payload(b * BATCH + i) for i in range(BATCH)] for b in range(batches)]

        def run() -> int:
            for batch in items:
                producer.publish_many(batch)
            return batches * BATCH

        rate = timed(run)
        wait_packing_idle(path, storage)
    return rate


def fill(storage: Storage, path: Path, count: int) -> None:
    """Publish ``count`` messages in batches (untimed) and let packing settle."""
    producer = Producer(storage, "bench", author=IDENTITY)
    for start in range(0, count, BATCH):
        producer.publish_many([payload(i) for i in range(start, min(count, start + BATCH))])
    wait_packing_idle(path, storage)


def poll_and_ack(consumer: Consumer, limit: int | None = None) -> int:
    done = 0
    for message in itertools.islice(consumer.poll(), limit):
        consumer.ack(message)
        done += 1
    return done


def consume_thread(consumer: Consumer, expected: int) -> int:
    """``Consumer.consume`` with a trivial handler, until ``expected`` are acked."""
    consumer.consume(lambda message: None)
    try:
        while consumer.delivered < expected:
            if not consumer.running:
                raise RuntimeError(f"consumer thread died: {consumer.last_error}")
            time.sleep(0.001)
    finally:
        consumer.stop()
    return consumer.delivered


def bench_consume(storage: Storage, backlog: int, repeat: int) -> tuple[float, float]:
    """Consume-and-ack rates of the backlog: poll()+ack(), then consume()."""
    pull = Consumer(storage, f"pull-{repeat}", "bench")
    rate_pull = timed(lambda: poll_and_ack(pull))
    push = Consumer(storage, f"push-{repeat}", "bench")
    rate_push = timed(lambda: consume_thread(push, backlog))
    return rate_pull, rate_push


def warm_up(storage: Storage, count: int) -> None:
    """Single publishes to another queue, then packing, untimed.

    A brand-new repository is slower than a used one for a while (in one test
    1,000 us per publish for its first 500 messages, 590 us after 1,000), and
    a directory made minutes earlier is faster than one made just now (806 vs
    990 us), whatever the history. So both sides of the history probe are
    made at the same moment and get the same warm-up: only history differs."""
    producer = Producer(storage, "warmup", author=IDENTITY)
    for i in range(count):
        producer.publish(payload(i))
    wait_packing_idle(storage.git_dir, storage)


#: The sides of the history probe: (key, which storage, which queue).
PROBE_SIDES = (("0", "fresh", "bench"), ("q0", "big", "empty"), ("n", "big", "bench"))


def probe_history(fresh: Path, big: Path, sizes: Sizes, repeat: int) -> dict[str, float]:
    """Microseconds per message of single publishes, then of poll()+ack() of them.

    Three sides, in rotating order over 5 chunks: the queue of a fresh storage
    (``0``), a new empty queue in the storage with history (``q0``: the same
    file system state as ``n``, so any difference is the queue's own
    history), and the queue holding the history (``n``)."""
    keys = [key for key, _, _ in PROBE_SIDES]
    spent = {f"{what}_at_{key}": 0.0 for what in ("publish", "consume") for key in keys}
    step = sizes.probe // CHUNKS
    with Storage(fresh) as s0, Storage(big) as sn:
        storages = {"fresh": s0, "big": sn}
        for storage in storages.values():
            warm_up(storage, sizes.warmup)
        sides = {}
        for key, where, queue in PROBE_SIDES:
            storage = storages[where]
            consumer = Consumer(storage, f"probe-{repeat}-{key}", queue)
            if storage.read_ref(f"refs/heads/{queue}") is not None:
                consumer.seek("end")
            sides[key] = (Producer(storage, queue, author=IDENTITY), consumer)
        for chunk in range(CHUNKS):
            for key in keys[chunk % 3 :] + keys[: chunk % 3]:
                producer = sides[key][0]
                start = time.perf_counter()
                for i in range(chunk * step, (chunk + 1) * step):
                    producer.publish(payload(i))
                spent[f"publish_at_{key}"] += time.perf_counter() - start
        for storage in storages.values():
            wait_packing_idle(storage.git_dir, storage)
        for chunk in range(CHUNKS):
            for key in keys[chunk % 3 :] + keys[: chunk % 3]:
                consumer = sides[key][1]
                start = time.perf_counter()
                done = poll_and_ack(consumer, limit=step)
                spent[f"consume_at_{key}"] += time.perf_counter() - start
                if done != step:
                    raise RuntimeError(f"probe consumed {done} messages, expected {step}")
        for storage in storages.values():
            wait_packing_idle(storage.git_dir, storage)
    return {k: v / (step * CHUNKS) * 1e6 for k, v in spent.items()}


def bench_disk(ws: Workspace, n: int, progress: Callable[[str], None]) -> dict[str, object]:
    """``n`` single publishes, GitMQ's own background packing, then ``du``."""
    path = ws.new_dir("disk")
    with Storage(path) as storage:
        producer = Producer(storage, "bench", author=IDENTITY)
        start = time.perf_counter()
        for i in range(n):
            producer.publish(payload(i))
            if i and i % 20_000 == 0:
                progress(f"  disk: {i} published")
        elapsed = time.perf_counter() - start
        waited = wait_packing_idle(path, storage)
        automatic = disk_usage(path)
        start = time.perf_counter()
        storage.repack_now()
        repack_seconds = time.perf_counter() - start
        final = disk_usage(path)
    return {
        "messages": n,
        "publish_rate": n / elapsed,
        "wait_for_background_packing_s": waited,
        "after_background_packing": automatic,
        "repack_now_s": repack_seconds,
        "after_repack_now": final,
    }


# --------------------------------------------------------------------- report


@dataclass
class Results:
    """Everything measured; filled as the run goes, so a failure still reports."""

    mode: str
    repeats: int
    sizes: Sizes
    machine: dict[str, object]
    rates: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("baseline", "single", "batch", "pull", "push")}
    )
    history: dict[str, list[float]] = field(
        default_factory=lambda: {
            f"{what}_at_{key}": [] for what in ("publish", "consume") for key, _, _ in PROBE_SIDES
        }
    )
    history_layout: dict[str, int] = field(default_factory=dict)
    disk: dict[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        out = dict(self.__dict__)
        out["sizes"] = self.sizes.__dict__
        return out


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def row(name: str, unit: str, values: list[float], ratio: str = "", goal: str = "") -> str:
    s = spread(values)
    cells = f"{num(s['min']):>9} {num(s['median']):>9} {num(s['max']):>9}"
    return f"{name:<40} {unit:<6} {cells}  {ratio:<26} {goal}"


def ratio_cell(
    values: list[float], against: list[float], goal: float, *, at_most: bool = False, of: str = ""
) -> tuple[str, str]:
    """Per-repeat ratios ``values/against`` as text, and the goal with its verdict."""
    r = spread([v / a for v, a in zip(values, against, strict=True)])
    met = r["median"] <= goal if at_most else r["median"] >= goal
    text = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}){of}"
    sign = "<=" if at_most else ">="
    return text, f"{sign} {goal:g}x: {'met' if met else 'MISSED'}"


def report(res: Results) -> str:
    rule = "-" * 124
    out = [
        f"{'measure':<40} {'unit':<6} {'min':>9} {'median':>9} {'max':>9}  "
        f"{'ratio median (min-max)':<26} goal",
        rule,
    ]
    r = res.rates
    n = min(len(v) for v in r.values())  # repeats completed by every measure
    if n:
        base = r["baseline"][:n]
        out.append(row("git commit --allow-empty loop (baseline)", "msg/s", base, "1x"))
        out.append(
            row(
                "Producer.publish",
                "msg/s",
                r["single"][:n],
                *ratio_cell(r["single"][:n], base, 10, of=" of base"),
            )
        )
        out.append(
            row(
                f"publish_many ({BATCH:,}/batch)",
                "msg/s",
                r["batch"][:n],
                *ratio_cell(r["batch"][:n], base, 100, of=" of base"),
            )
        )
        for key, label in (("pull", "poll()+ack()"), ("push", "consume(no-op handler)")):
            out.append(
                row(
                    f"consume {res.sizes.backlog:,} backlog: {label}",
                    "msg/s",
                    r[key][:n],
                    *ratio_cell(r[key][:n], r["single"][:n], 1, of=" of pub"),
                )
            )
    h = res.history
    m = min(len(v) for v in h.values())
    if m:
        out.append(rule)
        n_text = f"{res.sizes.history:,}"
        for key, label in (("publish", "publish()"), ("consume", "poll()+ack()")):
            at0, atq, atn = (h[f"{key}_at_{side}"][:m] for side in ("0", "q0", "n"))
            lines = (
                (f"{label}: fresh storage, new queue", at0, None, ""),
                (f"{label}: {n_text}-msg storage, new queue", atq, at0, " of fresh"),
                (f"{label}: {n_text}-msg storage+queue", atn, at0, " of fresh"),
            )
            for name, values, against, of in lines:
                cells = ratio_cell(values, against, 1.2, at_most=True, of=of) if against else ()
                out.append(row(name, "us/msg", values, *cells))
            same = [n / q for n, q in zip(atn, atq, strict=True)]
            text, goal = ratio_cell(atn, atq, 1.2, at_most=True, of=" of new q")
            out.append(row("  (queue history alone: same storage)", "ratio", same, text, goal))
    if res.disk:
        out.extend([rule, *disk_lines(res.disk)])
    return "\n".join(out)


def disk_lines(disk: dict[str, object]) -> list[str]:
    n = int(disk["messages"])  # type: ignore[call-overload]
    lines = [
        f"disk after {n:,} single publish() calls ({disk['publish_rate']:,.0f} msg/s, one run; "
        f"then {disk['wait_for_background_packing_s']:.1f}s waiting for background packing)"
    ]
    for key, label in (
        ("after_background_packing", "GitMQ automatic background packing"),
        ("after_repack_now", f"+ Storage.repack_now() ({disk['repack_now_s']:.1f}s)"),
    ):
        d: dict[str, int] = disk[key]  # type: ignore[assignment]
        alloc, apparent = d["allocated_bytes"] / n, d["apparent_bytes"] / n
        lines.append(
            f"  {label:<42} du -B1 {alloc:6.1f} B/msg   du -sb {apparent:6.1f} B/msg   "
            f"packs {d['packs']:3d}   loose objects {d['loose_objects']:6d}   "
            f"<= 300 B/msg: {'met' if alloc <= 300 else 'MISSED'}"
        )
    return lines


# ----------------------------------------------------------------------- main


def headline(res: Results) -> str:
    m = res.machine
    start: tuple[float, ...] = m["load_average_at_start"]  # type: ignore[assignment]
    end: tuple[float, ...] = m["load_average_at_end"]  # type: ignore[assignment]
    return (
        f"GitMQ core benchmark ({res.mode}, {res.repeats} repeats) of gitmq {m['gitmq_commit']}; "
        f"{m['git']}, Python {m['python']}, {m['cpus']} CPUs; "
        f"1-minute load average {start[0]:.1f} at start, {end[0]:.1f} at end"
    )


def run(res: Results, tmpdir: str | None) -> None:
    sizes = res.sizes

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with workspace(tmpdir) as ws:
        say(f"workspace {ws.root}; {sizes}")
        for r in range(res.repeats):
            say(f"repeat {r + 1}/{res.repeats}: baseline, publish, publish_many, consume")
            base, single = bench_publish(ws, sizes)
            res.rates["baseline"].append(base)
            res.rates["single"].append(single)
            res.rates["batch"].append(bench_batch(ws, sizes.batches))
            path = ws.new_dir("backlog")
            with Storage(path) as storage:
                fill(storage, path, sizes.backlog)
                pull, push = bench_consume(storage, sizes.backlog, r)
                wait_packing_idle(path, storage)
            res.rates["pull"].append(pull)
            res.rates["push"].append(push)
        for r in range(res.repeats):
            say(f"history repeat {r + 1}/{res.repeats}: {sizes.history:,} messages, then probes")
            fresh, big = ws.new_dir("history0"), ws.new_dir("history")
            with Storage(big) as storage:
                fill(storage, big, sizes.history)
            res.history_layout = disk_usage(big)
            costs = probe_history(fresh, big, sizes, r)
            for key, value in costs.items():
                res.history[key].append(value)
            ws.remove(fresh, big)
        say(f"disk: {sizes.disk:,} single publishes")
        res.disk = bench_disk(ws, sizes.disk, say)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (about 15 s)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measure (default 3)")
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument("--tmpdir", help="where to create the temporary repositories")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    res = Results(
        mode="quick" if args.quick else "full",
        repeats=args.repeats,
        sizes=QUICK if args.quick else FULL,
        machine={
            "python": platform.python_version(),
            "git": git_version.strip(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "gitmq_commit": code_version(),
            "load_average_at_start": os.getloadavg(),
        },
    )
    try:
        run(res, args.tmpdir)
    finally:  # on a failure, still show (and save) what was measured
        res.machine["load_average_at_end"] = os.getloadavg()
        print(headline(res))
        print(report(res))
        if args.json:
            args.json.write_text(json.dumps(res.as_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
