"""Many producers and consumers on one storage, in threads and in real OS processes.

Every ref update is a compare-and-swap under git's lock-file protocol: nothing
is lost, nothing is written twice, each producer's messages keep its order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from util import GITMQ, WORKERS, branch_shas, fsck, git, kill_all, lines_of, rev_parse, start, stop
from util import wait_for as wait_until

from gitmq import Consumer, Producer, Storage


def payloads_in_branch_order(path: Path, branch: str) -> list[str]:
    """Every message payload of ``branch``, oldest first, read by git itself."""
    out = git(path, "log", "--reverse", "--format=%B%x00", f"refs/heads/{branch}")
    return [p.strip("\n") for p in out.decode().split("\x00")[:-1]]


def assert_each_producer_in_order(payloads: list[str], producers: dict[str, int]) -> None:
    """Exactly the expected messages, once each, each producer's in publish order."""
    assert len(payloads) == sum(producers.values())
    assert len(set(payloads)) == len(payloads), "a message was written twice"
    by_producer: dict[str, list[int]] = defaultdict(list)
    for payload in payloads:
        tag, _, index = payload.rpartition(":")
        by_producer[tag].append(int(index))
    assert {tag: len(v) for tag, v in by_producer.items()} == producers
    for tag, indexes in by_producer.items():
        assert indexes == list(range(producers[tag])), f"{tag}'s messages are out of order"


def assert_linear(path: Path, branch: str) -> None:
    """One chain: every commit reachable from the tip is on its first-parent line."""
    everything = git(path, "rev-list", f"refs/heads/{branch}").split()
    first_parent = git(path, "rev-list", "--first-parent", f"refs/heads/{branch}").split()
    assert everything == first_parent
    merges = git(path, "rev-list", "--min-parents=2", f"refs/heads/{branch}").split()
    assert merges == []


# ------------------------------------------------------------------ threads


def test_producers_in_threads_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "q"
    threads_per_kind, count = 4, 60
    errors: list[BaseException] = []
    go = threading.Barrier(2 * threads_per_kind + 1)

    def shared(producer: Producer, tag: str) -> None:
        try:
            go.wait()
            for i in range(0, count, 3):
                producer.publish(f"{tag}:{i}")
                producer.publish_many([f"{tag}:{i + 1}", f"{tag}:{i + 2}"])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def own_storage(tag: str) -> None:
        try:
            with Storage(path) as storage:
                producer = Producer(storage, "orders")
                go.wait()
                for i in range(count):
                    producer.publish(f"{tag}:{i}")
        except BaseException as exc:
            errors.append(exc)

    with Storage(path) as storage:
        producer = Producer(storage, "orders")
        threads = [
            threading.Thread(target=shared, args=(producer, f"shared{n}"))
            for n in range(threads_per_kind)
        ] + [
            threading.Thread(target=own_storage, args=(f"own{n}",)) for n in range(threads_per_kind)
        ]
        for thread in threads:
            thread.start()
        go.wait()
        for thread in threads:
            thread.join(60)
    assert errors == []
    expected = {f"{kind}{n}": count for kind in ("shared", "own") for n in range(threads_per_kind)}
    assert_each_producer_in_order(payloads_in_branch_order(path, "orders"), expected)
    assert_linear(path, "orders")
    fsck(path)


def test_consumers_in_threads_each_see_everything_while_producers_run(tmp_path: Path) -> None:
    with Storage(tmp_path / "q") as storage:
        seen: dict[str, list[str]] = {name: [] for name in ("a", "b", "c")}
        consumers = [
            Consumer(storage, name, "orders").consume(lambda m, name=name: seen[name].append(m.sha))
            for name in seen
        ]
        try:
            producer = Producer(storage, "orders")
            for i in range(30):
                producer.publish_many([f"p:{3 * i}", f"p:{3 * i + 1}", f"p:{3 * i + 2}"])
            shas = branch_shas(storage.path, "orders")
            wait_until(
                lambda: all(len(v) >= len(shas) for v in seen.values()),
                what="every consumer to see all 90 messages",
            )
        finally:
            for consumer in consumers:
                consumer.stop()
        assert seen == dict.fromkeys(seen, shas)


# ---------------------------------------------------------------- processes


def producer_processes(
    path: Path, tmp_path: Path, count: int, per_process: int
) -> tuple[list[subprocess.Popen[bytes]], Path]:
    go = tmp_path / "go"
    procs = [
        start(
            [
                sys.executable,
                WORKERS,
                "produce",
                path,
                "orders",
                f"p{n}",
                str(per_process),
                go,
            ]
        )
        for n in range(count)
    ]
    return procs, go


@pytest.mark.slow
def test_four_processes_times_500_messages_on_one_branch(tmp_path: Path) -> None:
    path = tmp_path / "q"
    Storage(path).close()
    procs, go = producer_processes(path, tmp_path, 4, 500)
    try:
        go.touch()  # all four start publishing at once
        for proc in procs:
            assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        kill_all(procs)
    payloads = payloads_in_branch_order(path, "orders")
    assert_each_producer_in_order(payloads, {f"p{n}": 500 for n in range(4)})
    assert_linear(path, "orders")
    with Storage(path) as storage:
        ids = [storage.read(sha).id for sha in branch_shas(path, "orders")]
    assert len(set(ids)) == 2000
    fsck(path)


@pytest.mark.slow
def test_three_fanout_consumer_processes_each_see_all_2000_in_branch_order(
    tmp_path: Path,
) -> None:
    """Consumers start before the branch exists; four producers then publish at once."""
    path = tmp_path / "q"
    Storage(path).close()
    logs = {name: tmp_path / f"{name}.log" for name in ("billing", "shipping", "audit")}
    consumers = [
        start(
            [sys.executable, WORKERS, "consume", path, "orders", name, log],
            stdout=subprocess.DEVNULL,
        )
        for name, log in logs.items()
    ]
    producers: list[subprocess.Popen[bytes]] = []
    try:
        for log in logs.values():
            ready = log.with_name(log.name + ".ready")
            wait_until(ready.exists, 60, f"{ready.name}", procs=consumers)
        assert rev_parse(path, "refs/heads/orders") is None
        producers, go = producer_processes(path, tmp_path, 4, 500)
        go.touch()
        for proc in producers:
            assert proc.wait(120) == 0
        shas = branch_shas(path, "orders")
        assert len(shas) == 2000
        for name, log in logs.items():
            wait_until(
                lambda log=log: rev_parse(path, f"refs/tags/{log.stem}") == shas[-1],
                120,
                f"consumer {name} to finish all 2000 messages",
                procs=consumers,
            )
        for proc in consumers:
            assert stop(proc) == 0
    finally:
        kill_all(consumers + producers)
    payloads = payloads_in_branch_order(path, "orders")
    for name, log in logs.items():
        ends = [line.split(" ", 2)[1:] for line in lines_of(log) if line.startswith("end ")]
        assert [sha for sha, _ in ends] == shas, f"{name} did not see the branch in order"
        assert [payload for _, payload in ends] == payloads
        assert rev_parse(path, f"refs/tags/{name}") == shas[-1]


@pytest.mark.slow
def test_consumer_killed_mid_handler_redelivers_that_message_and_skips_none(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q"
    with Storage(path) as storage:
        sent = Producer(storage, "orders").publish_many([f"m{i}" for i in range(20)])
    log = tmp_path / "billing.log"
    inside = tmp_path / "billing.log.inside"
    argv = [sys.executable, WORKERS, "consume", path, "orders", "billing", log]
    first = start([*argv, "--block-on", "m7"])
    try:
        wait_until(inside.exists, 60, "the handler to be inside m7", procs=[first])
        assert inside.read_text() == "m7"
        assert stop(first, signal.SIGKILL) == -signal.SIGKILL
    finally:
        kill_all([first])
    # The tag moves after handlers ran, in batches: it is somewhere at or before
    # m6 (m7 never finished); everything after it must come again.
    tag = rev_parse(path, "refs/tags/billing")
    resume = 0 if tag is None else [m.sha for m in sent].index(tag) + 1
    assert resume <= 7
    assert not list((path / "refs" / "tags").glob("*.lock"))
    before_restart = len(lines_of(log))
    assert lines_of(log)[-1] == f"begin {sent[7].sha} m7"

    second = start(argv)
    try:
        wait_until(
            lambda: rev_parse(path, "refs/tags/billing") == sent[-1].sha,
            60,
            "the restarted consumer to finish",
            procs=[second],
        )
        assert stop(second) == 0
    finally:
        kill_all([second])
    lines = lines_of(log)
    first_run, second_run = lines[:before_restart], lines[before_restart:]
    assert first_run == [
        f"{event} {m.sha} {m.payload.decode()}" for m in sent[:7] for event in ("begin", "end")
    ] + [f"begin {sent[7].sha} m7"]
    assert second_run == [
        f"{event} {m.sha} {m.payload.decode()}" for m in sent[resume:] for event in ("begin", "end")
    ]
    fsck(path)


def test_processes_creating_one_storage_at_once_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "new" / "q"
    procs = [start([*GITMQ, "publish", path, "orders", f"p{n}:0"]) for n in range(4)]
    try:
        for proc in procs:
            assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        kill_all(procs)
    assert sorted(payloads_in_branch_order(path, "orders")) == [f"p{n}:0" for n in range(4)]
    assert [p.name for p in path.parent.iterdir()] == ["q"]  # no temporary left behind
    fsck(path)
