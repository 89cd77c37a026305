"""GitMQ prune benchmark (issue 4): time and disk of local history pruning.

For each repeat, one storage of N messages is built with ``publish_many`` (its
time is the first reference) and packed by GitMQ (``Storage.repack_now``). Then,
for each policy (``max_messages`` K), two copies of that same repository are
pruned to the newest K messages:

- GitMQ: ``prune_queue`` (shallow boundary, explicit drop set, pack rewrite);
- baseline: what plain git offers, on the copy: the boundary written to
  ``$GIT_DIR/shallow``, then ``git repack -a -d`` and ``git prune --expire=now``
  (reachability-based: it is what GitMQ must not run beside live writers).

The table shows seconds (min/median/max over the repeats), the ratio to the
baseline and to the publish time (computed per repeat, median and range), and
the repository's allocated size (``du -B1``, 4 KiB blocks) before and after,
per message kept. Nothing here asserts anything; it prints numbers.

Run: ``.venv/bin/python bench/bench_prune.py [--quick] [--repeats N] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gitmq import Identity, Producer, Storage
from gitmq.config import PrunePolicy
from gitmq.prune import prune_queue

QUEUE = "bench"
IDENTITY = Identity("GitMQ Bench", "bench@example.invalid")
BATCH = 1000


def payload(i: int) -> str:
    """About 45 bytes of JSON, as in bench_core.py."""
    return f'{{"seq": {i}, "body": "benchmark message"}}'


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0")
    return env


def git(git_dir: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args],
        capture_output=True,
        text=True,
        env=git_env(),
        check=True,
    )
    return out.stdout


def allocated(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, check=True)
    return int(out.stdout.split()[0])


@dataclass
class Case:
    keep: int
    prune: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    vs_baseline: list[float] = field(default_factory=list)
    vs_publish: list[float] = field(default_factory=list)
    before: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    baseline_after: list[int] = field(default_factory=list)


@dataclass
class Results:
    messages: int
    repeats: int
    publish: list[float] = field(default_factory=list)
    cases: dict[int, Case] = field(default_factory=dict)


def build(path: Path, count: int) -> float:
    """Publish ``count`` messages in batches; return the seconds it took (not the packing)."""
    with Storage(path) as storage:
        producer = Producer(storage, QUEUE, author=IDENTITY)
        start = time.perf_counter()
        for first in range(0, count, BATCH):
            producer.publish_many([payload(i) for i in range(first, min(first + BATCH, count))])
        seconds = time.perf_counter() - start
        storage.wait_for_packing()
        storage.repack_now()
    return seconds


def gitmq_prune(source: Path, copy: Path, keep: int) -> tuple[float, int]:
    shutil.copytree(source, copy, symlinks=True)
    with Storage(copy) as storage:
        start = time.perf_counter()
        report = prune_queue(storage, QUEUE, PrunePolicy(max_messages=keep), now=datetime.now(UTC))
        seconds = time.perf_counter() - start
    assert report.kept == keep, report.line()
    return seconds, allocated(copy)


def baseline_prune(source: Path, copy: Path, keep: int) -> tuple[float, int]:
    shutil.copytree(source, copy, symlinks=True)
    start = time.perf_counter()
    boundary = git(copy, "rev-list", "--first-parent", f"--skip={keep - 1}", "-1", QUEUE).strip()
    (copy / "shallow").write_text(boundary + "\n")
    git(copy, "repack", "-a", "-d", "-q")
    git(copy, "prune", "--expire=now")
    seconds = time.perf_counter() - start
    kept = int(git(copy, "rev-list", "--count", QUEUE))
    assert kept == keep, kept
    return seconds, allocated(copy)


def run(res: Results, keeps: list[int], tmpdir: str | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="gitmq-bench-prune-", dir=tmpdir))

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        for repeat in range(res.repeats):
            source = root / f"{repeat}-source"
            say(f"repeat {repeat + 1}/{res.repeats}: publishing {res.messages:,} messages")
            publish = build(source, res.messages)
            res.publish.append(publish)
            size = allocated(source)
            for keep in keeps:
                case = res.cases.setdefault(keep, Case(keep))
                # alternate which side goes first, so a noisy minute hits both
                order = ["gitmq", "baseline"] if repeat % 2 == 0 else ["baseline", "gitmq"]
                for side in order:
                    copy = root / f"{repeat}-{keep}-{side}"
                    say(f"  keep {keep:,}: {side}")
                    if side == "gitmq":
                        seconds, after = gitmq_prune(source, copy, keep)
                        case.prune.append(seconds)
                        case.after.append(after)
                    else:
                        seconds, after = baseline_prune(source, copy, keep)
                        case.baseline.append(seconds)
                        case.baseline_after.append(after)
                    shutil.rmtree(copy)
                case.before.append(size)
                case.vs_baseline.append(case.prune[-1] / case.baseline[-1])
                case.vs_publish.append(case.prune[-1] / publish)
            shutil.rmtree(source)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def report(res: Results) -> str:
    publish = res.publish
    lines = [
        f"GitMQ prune benchmark: {res.messages:,} messages, {res.repeats} repeats, "
        f"git {git(Path('.'), '--version').split()[-1]}, Python {platform.python_version()}",
        "",
        f"publish_many reference: {spread(publish)} s (min / median / max) "
        f"= {res.messages / statistics.median(publish):,.0f} messages/s",
        "",
        "| keep | GitMQ prune s | baseline s | prune / baseline | prune / publish "
        "| before | after | B per kept | baseline after | B per kept (baseline) |",
        "| ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for keep, case in sorted(res.cases.items()):
        before = statistics.median(case.before)
        after = statistics.median(case.after)
        base_after = statistics.median(case.baseline_after)
        lines.append(
            f"| {keep:,} | {spread(case.prune)} | {spread(case.baseline)} "
            f"| {ratio(case.vs_baseline)} | {ratio(case.vs_publish)} "
            f"| {before / 1e6:.2f} MB | {after / 1e6:.3f} MB | {after / keep:.0f} "
            f"| {base_after / 1e6:.3f} MB | {base_after / keep:.0f} |"
        )
    packed = statistics.median(res.cases[min(res.cases)].before) / res.messages
    lines += [
        "",
        "Sizes are allocated bytes (du -B1, whole repository, 4 KiB blocks); 'before' is the "
        f"packed {res.messages:,}-message repository, {packed:.0f} B per message.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 messages: a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmpdir", help="where the repositories go (default: system temp)")
    parser.add_argument("--json", help="also write the raw numbers to this file")
    args = parser.parse_args(argv)
    messages = 10_000 if args.quick else 100_000
    keeps = [messages // 100, messages // 2]
    res = Results(messages, args.repeats)
    run(res, keeps, args.tmpdir)
    print(report(res))
    if args.json:
        data = {
            "messages": res.messages,
            "publish_seconds": res.publish,
            "cases": {str(k): vars(c) for k, c in res.cases.items()},
        }
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
