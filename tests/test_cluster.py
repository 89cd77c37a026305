"""Several ``gitmq node`` processes against one remote: order, exactly-once, crashes, outages.

Slow: each test runs real node processes for several sync cycles. What landed
on the remote is read with plain git; what each consumer received is read from
the log its shell handler appends to.
"""

from __future__ import annotations

import itertools
import shutil
import sys
import threading
from pathlib import Path

import pytest
from nodes import (
    Cluster,
    TestNode,
    assert_landed_once,
    git_children,
    in_producer_order,
    landed_ids,
)
from servers import GitDaemon
from util import GITMQ, WORKERS, kill_all, ok, rev_parse, run, start, wait_for

from gitmq import Identity, Producer, Storage
from gitmq.consumer import ACK_BATCH

pytestmark = pytest.mark.slow

DELIVERY_TIMEOUT = 180.0
BACKLOG = 1000  # messages per round of the kill test: enough for a push to take a while


def publish_backlog(node: TestNode, tag: str, first: int, count: int) -> list[str]:
    """``count`` messages ``TAG:i`` in one batch through the Python API."""
    payloads = [f"{tag}:{i}" for i in range(first, first + count)]
    with Storage(node.storage) as storage:
        author = Identity(f"Producer {tag}", f"{tag}@test")
        Producer(storage, "orders", author=author).publish_many(payloads)
    return payloads


def wait_until_received(nodes: list[TestNode], count: int, *, distinct: bool = False) -> None:
    def done() -> bool:
        return all(
            len(set(got) if distinct else got) >= count
            for node in nodes
            for got in (node.received(c) for c in node.consumers)
        )

    running = [n.proc for n in nodes if n.proc is not None and n.proc.poll() is None]
    wait_for(done, DELIVERY_TIMEOUT, f"{count} messages at every consumer", procs=running)


def wait_started(node: TestNode) -> None:
    """The node's first sync cycle has run (it was started with --log-format json)."""
    assert node.proc is not None
    wait_for(lambda: node.sync_records(), what=f"{node.name}'s first sync", procs=[node.proc])


def test_three_nodes_producing_at_once_deliver_everything_once_in_one_order(
    cluster: Cluster, central: Path, tmp_path: Path
) -> None:
    nodes = [cluster.node(n, [f"{n}-ship", f"{n}-bill"], jitter="100ms") for n in "abc"]
    for node in nodes:
        node.start("--log-format", "json")
    for node in nodes:
        wait_started(node)
    go, count = tmp_path / "go", 40
    producers = [
        start(
            [sys.executable, WORKERS, "produce", n.storage, "orders", f"p{n.name}", str(count), go]
        )
        for n in nodes
    ]
    try:
        go.touch()
        for proc in producers:
            assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        total = count * len(nodes)
        wait_until_received(nodes, total)
    finally:
        kill_all(producers)
    assert [node.stop() for node in nodes] == [0, 0, 0]

    expected = [f"p{n}:{i}" for n in "abc" for i in range(count)]
    landed = assert_landed_once(central, "orders", expected)
    assert in_producer_order([m.payload for m in landed])
    order = [m.id for m in landed]
    for node in nodes:
        for consumer in node.consumers:
            assert node.received(consumer) == order, f"{consumer} on {node.name}"
            assert rev_parse(central, f"refs/tags/{consumer}") == landed[-1].sha
        assert rev_parse(node.storage, "refs/heads/orders") == landed[-1].sha


def test_ten_nodes_running_once_at_the_same_moment_land_everything_once(
    cluster: Cluster, central: Path
) -> None:
    nodes = [cluster.node(f"n{i}", [f"n{i}-ship"], max_push_attempts=30) for i in range(10)]
    expected = [p for node in nodes for p in publish_backlog(node, node.name, 0, 20)]
    procs = [node.start("--once") for node in nodes]
    codes = [proc.wait(DELIVERY_TIMEOUT) for proc in procs]
    assert codes == [0] * 10, "\n".join(n.log_text() for n in nodes)
    landed = assert_landed_once(central, "orders", expected)
    assert in_producer_order([m.payload for m in landed])
    assert any("push rejected" in node.log_text() for node in nodes)  # they did collide

    for node in nodes:  # a second pass delivers what each node had not seen yet
        ok(node.once())
    order = [m.id for m in landed]
    for node in nodes:
        assert node.received(f"{node.name}-ship") == order


def test_the_remote_down_for_several_cycles_loses_and_duplicates_nothing(
    cluster: Cluster, central: Path, git_daemon: GitDaemon
) -> None:
    nodes = [cluster.node(n, [f"{n}-ship"], interval="100ms", jitter="0s") for n in "ab"]
    for node in nodes:  # debug: a remote that stays down logs its failed cycles only there
        node.start("--log-format", "json", "--log-level", "debug")
    for node in nodes:
        wait_started(node)
    sent = 0
    for i in range(3):
        for node in nodes:
            node.publish("orders", f"{node.name}:{i}")
    sent += 3
    wait_until_received(nodes, 2 * sent)

    git_daemon.stop()
    failed_before = {n.name: sum(1 for r in n.sync_records() if r["error"]) for n in nodes}
    for cycle in range(1, 4):  # several failed cycles, producers publishing all along
        for node in nodes:
            node.publish("orders", f"{node.name}:{sent}")

        def failed(node: TestNode, cycle: int = cycle) -> bool:
            errors = sum(1 for r in node.sync_records() if r["error"])
            return errors >= failed_before[node.name] + cycle

        for node in nodes:
            wait_for(lambda node=node: failed(node), what=f"{node.name} failing a sync")
        sent += 1
    for node in nodes:  # nothing unconfirmed was delivered meanwhile
        assert all(len(node.received(c)) == 2 * 3 for c in node.consumers)
    assert len(landed_ids(central)) == 2 * 3
    git_daemon.start()

    wait_until_received(nodes, 2 * sent)
    assert [node.stop() for node in nodes] == [0, 0]
    expected = [f"{n}:{i}" for n in "ab" for i in range(sent)]
    landed = assert_landed_once(central, "orders", expected)
    assert in_producer_order([m.payload for m in landed])
    for node in nodes:
        assert node.received(f"{node.name}-ship") == [m.id for m in landed]
    url = git_daemon.url("central.git")
    errors = [r["error"] for node in nodes for r in node.sync_records() if r["error"]]
    assert errors and all(e.startswith(f"remote {url}: ") for e in errors), errors
    assert any("unable to connect" in e for e in errors), errors


def _kill_at(node: TestNode, moment: str) -> None:
    """SIGKILL the node at ``moment``: while a git push or fetch of it runs
    (with or without its git children), or as soon as it has started."""
    assert node.proc is not None
    proc = node.proc
    if moment.startswith(("push", "fetch")):
        command = moment.split("-")[0]
        wait_for(
            lambda: git_children(proc.pid, command) or proc.poll() is not None,
            DELIVERY_TIMEOUT,
            f"a git {command} of {node.name}",
            interval=0.002,
        )
    assert proc.poll() is None, f"{node.name} exited {proc.returncode} before {moment}"
    node.kill(group=not moment.endswith("-alone"))


def test_a_node_killed_during_sync_loses_and_duplicates_nothing(
    cluster: Cluster, central: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = cluster.node("a", ["a-ship"], interval="100ms", jitter="0s", python_handler=True)
    monkeypatch.setenv("GITMQ_TEST_RECORD", str(a.consumer_log("a-ship")))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    b = cluster.node("b", interval="100ms", jitter="0s")
    b.start()
    moments = ["push", "fetch-alone", "push-alone", "started", "push", "fetch"]
    expected: list[str] = []
    first = 0
    for round_, moment in enumerate(moments):
        expected += publish_backlog(a, "a", first, BACKLOG)
        first += BACKLOG
        b.publish("orders", f"b:{round_}")  # the remote moves: a must fetch and re-parent
        expected.append(f"b:{round_}")
        a.start()
        _kill_at(a, moment)

    a.start()
    wait_for(
        lambda: len(landed_ids(central)) == len(expected), DELIVERY_TIMEOUT, "everything landed"
    )
    wait_until_received([a], len(expected), distinct=True)
    assert a.stop() == 0 and b.stop() == 0
    landed = assert_landed_once(central, "orders", expected)
    assert in_producer_order([m.payload for m in landed])
    got = a.received("a-ship")
    firsts = list(dict.fromkeys(got))
    assert firsts == [m.id for m in landed]  # resumed from its tag each time, in order
    # A kill redelivers what was handled since the tag last moved: at most one
    # batch of acks (ACK_BATCH messages, or ACK_EVERY's worth) per kill.
    assert len(got) - len(firsts) <= len(moments) * ACK_BATCH
    assert rev_parse(central, "refs/tags/a-ship") == landed[-1].sha


def test_a_node_redeployed_on_an_empty_disk_resumes_where_the_cluster_left_off(
    cluster: Cluster, central: Path
) -> None:
    a = cluster.node("a", ["a-ship"], interval="100ms", jitter="0s")
    b = cluster.node("b", interval="100ms", jitter="0s")
    a.start()
    b.start()
    b.publish("orders", *[f"b:{i}" for i in range(5)])
    wait_until_received([a], 5)
    assert a.stop() == 0
    shutil.rmtree(a.storage)
    b.publish("orders", *[f"b:{i}" for i in range(5, 8)])
    a.start()
    a.publish("orders", "a:0")
    wait_until_received([a], 9)
    assert a.stop() == 0 and b.stop() == 0
    landed = assert_landed_once(central, "orders", [f"b:{i}" for i in range(8)] + ["a:0"])
    assert a.received("a-ship") == [m.id for m in landed]


def test_two_nodes_running_one_consumer_name_never_move_a_tag_backwards(
    cluster: Cluster, central: Path
) -> None:
    nodes = [cluster.node(n, ["shared"], interval="100ms", jitter="50ms") for n in "ab"]
    places = [central, *(n.storage for n in nodes)]
    seen: dict[Path, list[str]] = {place: [] for place in places}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.005):
            for place in places:
                value = rev_parse(place, "refs/tags/shared") if place.exists() else None
                if value and (not seen[place] or seen[place][-1] != value):
                    seen[place].append(value)

    watcher = threading.Thread(target=watch)
    for node in nodes:
        node.start()
    watcher.start()
    try:
        for i in range(0, 30, 3):
            for node in nodes:
                publish_backlog(node, node.name, i, 3)

        def done() -> bool:  # all 60 first: only then is the tip final
            if len(landed_ids(central)) != 60:
                return False
            tag = rev_parse(central, "refs/tags/shared")
            return tag is not None and tag == rev_parse(central, "refs/heads/orders")

        wait_for(
            done,
            DELIVERY_TIMEOUT,
            "the shared tag at the end of the queue",
        )
    finally:
        stop.set()
        watcher.join()
    assert [node.stop() for node in nodes] == [0, 0]
    landed = assert_landed_once(central, "orders", [f"{n}:{i}" for n in "ab" for i in range(30)])
    index = {m.sha: i for i, m in enumerate(landed)}
    for place, values in seen.items():
        history = [index.get(v, v) for v in values]  # queue positions, as seen over time
        for older, newer in itertools.pairwise(values):
            back = run(["git", f"--git-dir={central}", "merge-base", "--is-ancestor", older, newer])
            assert back.status == 0, f"the tag went back in {place.name}: {history}"
    delivered = {mid for node in nodes for mid in node.received("shared")}
    assert delivered == {m.id for m in landed}  # between them, they handled every message
    position = {m.id: i for i, m in enumerate(landed)}
    for node in nodes:
        got = [position[mid] for mid in node.received("shared")]
        assert got == sorted(set(got)), f"{node.name} went back in the queue"


def test_the_demo_runs_and_finishes_ok() -> None:
    result = run([*GITMQ, "demo"], timeout=300)
    assert result.status == 0, str(result)
    lines = result.out.splitlines()
    assert lines[-1] == "demo finished: OK", str(result)
    assert "same order everywhere: yes" in result.out
    assert sum("received" in line for line in lines) == 27, result.out
    assert "exit codes: {'a': 0, 'b': 0, 'c': 0}" in lines
