"""The cluster's request budget, eager sync and waking a node (issue 10).

Real ``gitmq node`` processes against a real git daemon that logs every
request, so the budget is checked where it matters: at the server.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import Cluster, TestNode
from servers import GitDaemon, make_bare
from util import fails, gitmq, ok, wait_for

from gitmq import Producer, Storage
from gitmq.budget import Budget, Pace, is_github
from gitmq.registry import EXPIRE, REFRESH, Registry

# ----------------------------------------------------------------- the arithmetic


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_pace_splits_the_budget_among_the_nodes_and_refills_at_its_share() -> None:
    clock = Clock()
    pace = Pace(Budget(120, 30), demand=60, clock=clock)
    assert pace.share(8, 4)
    assert (pace.reads_per_minute, pace.pushes_per_minute) == (15, 7.5)
    assert "asks for 60 reads a minute, but this node's share of the budget is 15.0" in (
        pace.shortfall() or ""
    )
    for _ in range(3):  # the burst
        assert pace.try_read()
    assert not pace.try_read()
    clock.now += 4.0  # 15 a minute: one every 4 s
    assert pace.try_read() and not pace.try_read()
    assert pace.room() == pytest.approx(4.0)
    assert not pace.share(8, 4)  # unchanged
    assert pace.share(2, 2) and pace.reads_per_minute == 60 and pace.shortfall() is None
    assert 0 <= pace.backoff(3) <= 60 / 15 * 3


def test_without_a_budget_nothing_waits() -> None:
    pace = Pace(Budget())
    assert all(pace.try_read() for _ in range(1000))
    assert pace.room() == 0 and pace.backoff(5) == 0 and pace.line() == "no budget"


@pytest.mark.parametrize(
    ("url", "github"),
    [
        ("https://github.com/acme/queues.git", True),
        ("git@github.com:acme/queues.git", True),
        ("ssh://git@ssh.github.com:443/acme/queues.git", True),
        ("https://gitlab.com/acme/queues.git", False),
        ("git://127.0.0.1:9418/q.git", False),
        ("/srv/queues.git", False),
    ],
)
def test_which_remotes_are_github(url: str, github: bool) -> None:
    assert is_github(url) is github


def test_node_refs_count_live_nodes_and_expire() -> None:
    registry = Registry("a", "central")
    now = 10_000.0
    refs = {
        "refs/gitmq/nodes/b/9900.p": "1" * 40,
        "refs/gitmq/nodes/c/9900.r": "1" * 40,
        f"refs/gitmq/nodes/d/{int(now - EXPIRE - 1)}.p": "1" * 40,  # stale
        "refs/heads/orders": "2" * 40,
    }
    assert registry.count(refs, now) == (3, 1)  # a, b, c; a has not pushed yet
    first = registry.updates(refs, now, [], lambda: "3" * 40)
    assert [(u.ref, u.sha, u.lease) for u in first] == [
        ("refs/gitmq/nodes/a/10000.r", "3" * 40, "")
    ]
    refs["refs/gitmq/nodes/a/10000.r"] = "3" * 40
    assert registry.updates(refs, now + 1, [], lambda: "3" * 40) == []  # fresh: nothing
    later = registry.updates(refs, now + REFRESH, [], lambda: "3" * 40)
    assert [(u.ref, u.delete) for u in later] == [
        (f"refs/gitmq/nodes/a/{int(now + REFRESH)}.r", False),
        ("refs/gitmq/nodes/a/10000.r", True),
    ]
    leaving = registry.updates(refs, now + 2, [], lambda: "3" * 40, leaving=True)
    assert [(u.ref, u.delete, u.lease) for u in leaving] == [
        ("refs/gitmq/nodes/a/10000.r", True, "3" * 40)
    ]


# ------------------------------------------------------------- nodes and a server


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[GitDaemon]:
    """A git daemon that logs each request (``requests()``)."""
    root = tmp_path / "counted" / "repos"
    root.mkdir(parents=True)
    with GitDaemon(root, tmp_path / "counted", verbose=True) as server:
        make_bare(server.root, "central.git")
        yield server


def budget_node(cluster: Cluster, name: str, budget: dict[str, int], **sync: str) -> TestNode:
    """A node with ``budget`` whose scheduled cycles are 30 s apart (``sync``: more)."""
    return cluster.node(
        name,
        [f"c-{name}"],
        remote={"budget": budget},
        extra={"sync": {"interval": "30s", **sync}},
    )


def node_file(node: TestNode) -> dict[str, object] | None:
    try:
        return json.loads((node.storage / "gitmq-node.json").read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None


def test_a_publish_syncs_at_once_and_shares_a_push(tmp_path: Path, counted: GitDaemon) -> None:
    with Cluster(tmp_path / "nodes", counted.url("central.git")) as cluster:
        room = {"reads_per_minute": 6000, "pushes_per_minute": 600}
        a = budget_node(cluster, "a", room)
        b = budget_node(cluster, "b", room, poll="250ms")
        for node in (a, b):
            node.start("--log-format", "json")
        wait_for(lambda: all(node_file(n) for n in (a, b)), timeout=30)
        a.publish("orders", "first")
        sent = time.monotonic()
        wait_for(lambda: b.payloads("c-b") == ["first"], timeout=10)
        assert time.monotonic() - sent < 1.0 + 0.5  # the interval is 30 s; 0.5 s: gitmq publish

        with Storage(a.storage, create=False) as storage:
            producer = Producer(storage, "orders")
            for n in range(5):  # a few milliseconds apart
                producer.publish(f"burst {n}".encode())
        wanted = ["first", *(f"burst {n}" for n in range(5))]
        wait_for(lambda: b.payloads("c-b") == wanted, timeout=10)
        status = ok(gitmq("status", a.storage)).out.splitlines()
        assert status[0].startswith("node: a (process ")
        assert re.fullmatch(  # b pushes (is counted as pushing) once it moved its tag
            r"  central  6000 reads and 600 pushes a minute for the cluster; 2 node\(s\) seen, "
            r"([12]) pushing; this node: 3000 reads and (600|300) pushes a minute",
            status[status.index("pace:") + 2],
        ), status
        pushes = [r for r in a.sync_records() if r["pushed_messages"]]
        assert [r["pushed_messages"] for r in pushes][:1] == [1]
        assert sum(r["pushed_messages"] for r in pushes[1:]) == 5 and len(pushes[1:]) <= 2
        for node in (a, b):
            assert node.stop() == 0
            assert node_file(node) is None


def test_gitmq_sync_wake_makes_a_running_node_fetch(cluster: Cluster, central: Path) -> None:
    a = cluster.node("a", ["c-a"], interval="30s")
    b = cluster.node("b", ["c-b"], interval="30s")
    b.start()
    wait_for(lambda: node_file(b) is not None, timeout=30)
    a.publish("orders", "hello")
    ok(gitmq("sync", "--config", a.config))  # a pushes (it runs no node)
    woke = ok(gitmq("sync", "--config", b.config, "--wake"))
    assert woke.out == "asked node b to sync with every remote now\n"
    wait_for(lambda: b.payloads("c-b") == ["hello"], timeout=10)
    assert "woken from outside: syncing central" in b.log_text()
    assert b.stop() == 0
    fails(
        gitmq("sync", "--config", b.config, "--wake"),
        4,
        f"no node is running on {b.storage} (no gitmq-node.json there); start one with "
        f"'gitmq node --config FILE'",
    )


def test_a_schedule_the_budget_cannot_carry_is_said_once_with_the_numbers(
    tmp_path: Path, counted: GitDaemon
) -> None:
    with Cluster(tmp_path / "nodes", counted.url("central.git")) as cluster:
        node = cluster.node(
            "a", ["c-a"], remote={"budget": {"reads_per_minute": 30}}, interval="500ms"
        )
        node.start()
        node.publish("orders", "one")
        wait_for(lambda: node.payloads("c-a") == ["one"], timeout=30)
        assert node.stop() == 0
    said = [ln for ln in node.log_text().splitlines() if "asks for" in ln]
    assert len(said) == 1, said
    assert said[0].endswith(
        "budget central: the sync schedule asks for 120 reads a minute, but this node's share "
        "of the budget is 30.0 (30 for 1 node(s)): cycles are spaced to fit (raise the budget, "
        "or lengthen sync.interval and sync.poll)"
    )
    assert "budget central: 30 reads and unlimited pushes a minute for the cluster" in (
        node.log_text()
    )


def reads_per_minute(samples: list[tuple[float, int, int]], since: float) -> list[float]:
    """Reads in each full minute after ``since`` (samples: time, reads, pushes)."""
    out = []
    start = since
    while start + 60 <= samples[-1][0]:
        inside = [s for s in samples if start <= s[0] <= start + 60]
        out.append(inside[-1][1] - inside[0][1])
        start += 60
    return out


@pytest.mark.slow
def test_eight_nodes_keep_to_the_budget_and_four_left_speed_up(
    tmp_path: Path, counted: GitDaemon
) -> None:
    budget = {"reads_per_minute": 120, "pushes_per_minute": 30}
    with Cluster(tmp_path / "nodes", counted.url("central.git")) as cluster:
        nodes = [budget_node(cluster, f"n{i}", budget, poll="250ms") for i in range(8)]
        nodes[0].publish("orders", "seed")
        ok(gitmq("sync", "--config", nodes[0].config))
        for node in nodes:
            node.start()
        samples: list[tuple[float, int, int]] = []
        began = time.monotonic()

        def sample_until(seconds: float) -> None:
            while True:
                samples.append((time.monotonic() - began, *counted.requests()))
                if samples[-1][0] >= seconds:
                    return
                time.sleep(1.0)

        sent = ["seed"]
        for second in range(0, 180, 20):  # each node publishes now and then
            node = nodes[second // 20 % 8]
            node.publish("orders", f"m{second}")
            sent.append(f"m{second}")
            sample_until(second + 20)
        minutes = reads_per_minute(samples, 30.0)  # after a warm-up: nodes learn the count
        assert minutes and max(minutes) <= 120 * 1.1, minutes
        pushes = samples[-1][2] - next(s for s in samples if s[0] >= 30)[2]
        assert pushes <= 30 * 1.1 * (samples[-1][0] - 30) / 60, pushes
        for node in nodes:
            wait_for(
                lambda node=node: sorted(node.payloads(f"c-{node.name}")) == sorted(sent),
                timeout=120,
            )

        for node in nodes[4:]:
            assert node.stop() == 0
        stopped = time.monotonic() - began

        def pace_of(node: TestNode) -> str:
            info = node_file(node) or {}
            return str(info.get("remotes", {}).get("central", ""))  # type: ignore[union-attr]

        for node in nodes[:4]:
            wait_for(lambda node=node: "4 node(s) seen" in pace_of(node), timeout=60)
            assert "this node: 30 reads" in pace_of(node), pace_of(node)
        sample_until(stopped + 70)
        after = reads_per_minute(samples, stopped + 10)
        assert after and 120 * 0.6 <= after[-1] <= 120 * 1.1, after  # 4 nodes use the budget
        print(f"reads a minute: 8 nodes {minutes}, then 4 nodes {after}; pushes {pushes}")


def test_a_github_remote_gets_the_default_budget_unless_it_sets_one(tmp_path: Path) -> None:
    from gitmq.config import load

    def budget_of(remote: str) -> Budget:
        text = (
            "node:\n  name: n1\nstorage:\n  path: s.git\nremotes:\n  origin:\n"
            f"    url: https://github.com/acme/queues.git\n{remote}"
        )
        (tmp_path / "node.yml").write_text(text)
        return load(tmp_path / "node.yml").remotes["origin"].budget

    assert budget_of("") == Budget(600, 120, default=True)
    assert budget_of("    budget: unlimited\n") == Budget()
    assert budget_of("    budget: {reads_per_minute: 60}\n") == Budget(60, 120)
    assert Budget(600, 120, default=True).line() == (
        "600 reads and 120 pushes a minute for the cluster (the default for github.com)"
    )


def test_a_cycle_that_waited_for_the_budget_and_had_nothing_to_push_is_ok(
    tmp_path: Path,
) -> None:
    """The wait for the budget is no part of the retry window: a cycle that waited
    longer than three intervals for its turn, then found nothing to push, is ok."""
    from gitmq.message import Identity
    from gitmq.sync import SyncTarget, sync_once

    remote = tmp_path / "central.git"
    ok(gitmq("publish", remote, "orders", "seed"))
    pace = Pace(Budget(60, 60))  # one read and one push a second for this single node
    while pace.try_read():
        pass  # the burst is spent: the next cycle waits about a second
    target = SyncTarget(
        "central", str(remote), ("orders",), (), Identity("n", "n@x"), interval=0.1, pace=pace
    )
    with Storage(tmp_path / "node.git") as storage:
        began = time.monotonic()
        report = sync_once(storage, target)
        waited = time.monotonic() - began
    assert report.ok and report.error is None, report.line()
    assert report.fetched == 1 and waited >= 0.5
