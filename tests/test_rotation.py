"""Remote retention (issue 4): rotating queues into segments that are deleted whole.

Nodes are storages synced with ``sync_once`` against a real git daemon, each
with a producer and a consumer reading the confirmed (remote-tracking) refs;
the slow test at the end runs three ``gitmq node`` processes instead. What the
remote holds is read with ``git ls-remote`` over the daemon and with plain git
in the served repository.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nodes import Cluster, TestNode, in_producer_order
from servers import GitDaemon
from util import EMPTY_TREE, fsck, git, git_text, rev_parse, run, wait_for

from gitmq import Consumer, Identity, Producer, Storage, rotation, segments, sync
from gitmq.message import Message
from gitmq.segments import RotationPolicy
from gitmq.storage.remote import Credentials
from gitmq.sync import SyncReport, SyncTarget, sync_once, tracking_ref

REMOTE = "central"
QUEUE = "orders"
SEGMENT = 10  # messages per segment in these tests
POLICY = RotationPolicy(max_messages=SEGMENT, keep_segments=1)


@dataclass
class SimNode:
    """One node: a storage, its sync target, a producer and (optionally) a consumer."""

    name: str
    storage: Storage
    target: SyncTarget
    producer: Producer
    consumer: Consumer | None
    got: list[str] = field(default_factory=list)  # payloads, in delivery order
    published: list[str] = field(default_factory=list)
    reports: list[SyncReport] = field(default_factory=list)

    def publish(self, count: int) -> None:
        start = len(self.published)
        payloads = [f"{self.name}:{i}" for i in range(start, start + count)]
        for payload in payloads:
            self.producer.publish(payload)
        self.published += payloads

    def sync(self, sleep: Callable[[float], None] | None = None) -> SyncReport:
        report = sync_once(self.storage, self.target, sleep=sleep or (lambda _: None))
        assert report.ok, report.line()
        assert report.conflicts == [], report.conflicts
        self.reports.append(report)
        return report

    def deliver(self) -> int:
        if self.consumer is None:
            return 0
        return self.consumer.deliver_pending(self._record)

    def _record(self, message: Message) -> None:
        self.got.append(message.payload.decode())

    def cycle(self) -> None:
        """What ``gitmq node --once`` does: sync, deliver, sync (to push the tag)."""
        self.sync()
        self.deliver()
        self.sync()

    def total(self, field_name: str) -> int:
        return sum(getattr(r, field_name) for r in self.reports)


class Nodes:
    """Opens nodes against one remote; closes their storages at the end."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.all: list[SimNode] = []

    def node(
        self,
        name: str,
        *,
        consumer: bool = True,
        rotations: dict[str, RotationPolicy] | None = None,
        queues: tuple[str, ...] = (QUEUE,),
    ) -> SimNode:
        storage = Storage(self.root / f"{name}.git")
        identity = Identity(f"Node {name}", f"{name}@test")
        target = SyncTarget(
            remote=REMOTE,
            url=self.url,
            queues=queues,
            consumers=(f"c{name}",) if consumer else (),
            committer=identity,
            credentials=Credentials(timeout=20),
            max_attempts=10,
            rotations={QUEUE: POLICY} if rotations is None else rotations,
        )
        reader = (
            Consumer(storage, f"c{name}", QUEUE, source_ref=tracking_ref(REMOTE, QUEUE))
            if consumer
            else None
        )
        node = SimNode(name, storage, target, Producer(storage, QUEUE, author=identity), reader)
        self.all.append(node)
        return node

    def close(self) -> None:
        for node in self.all:
            node.storage.close()


@pytest.fixture
def nodes(tmp_path: Path, git_daemon: GitDaemon, central: Path) -> Iterator[Nodes]:
    opened = Nodes(tmp_path / "nodes", git_daemon.url("central.git"))
    yield opened
    opened.close()


def remote_heads(url: str) -> dict[str, str]:
    """The branches on the remote as ``git ls-remote`` shows them (name -> commit)."""
    result = run(["git", "ls-remote", "--heads", url])
    assert result.status == 0, str(result)
    heads = {}
    for line in result.out.splitlines():
        sha, ref = line.split("\t")
        heads[ref.removeprefix("refs/heads/")] = sha
    return heads


def segment_numbers(url: str, queue: str = QUEUE) -> list[int]:
    """The segments of ``queue`` on the remote; 0 is the plain branch."""
    numbers = []
    for branch in remote_heads(url):
        if branch == queue:
            numbers.append(0)
        elif branch.startswith(f"{queue}.seg."):
            numbers.append(int(branch.rsplit(".", 1)[1]))
    return sorted(numbers)


def settle(group: list[SimNode], rounds: int = 3) -> None:
    """Cycle every node until nothing is left to deliver or push."""
    for _ in range(rounds):
        for node in group:
            node.cycle()


def objects_in(repo: Path) -> int:
    """Objects in a repository after ``git gc --prune=now`` (the server's housekeeping)."""
    git(repo, "gc", "-q", "--prune=now")
    counts = dict(line.split(": ") for line in git_text(repo, "count-objects", "-v").splitlines())
    return int(counts["count"]) + int(counts["in-pack"])


def disk_bytes(repo: Path) -> int:
    return int(run(["du", "-sB1", str(repo)]).out.split()[0])


def assert_same_order_everywhere(group: list[SimNode], published: list[str]) -> None:
    """Every consumer got every published message exactly once, all in one order."""
    first = group[0].got
    assert len(first) == len(set(first)), "a message was delivered twice"
    assert sorted(first) == sorted(published), (
        f"missing {sorted(set(published) - set(first))[:10]}, "
        f"unexpected {sorted(set(first) - set(published))[:10]}"
    )
    for node in group[1:]:
        assert node.got == first, f"node {node.name} saw another order than {group[0].name}"
    assert in_producer_order(first)


# ---------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_three_nodes_cross_segments_in_one_order_and_old_segments_are_deleted(
    nodes: Nodes, central: Path
) -> None:
    group = [nodes.node(n) for n in "abc"]
    for round_ in range(8):
        for node in group:
            node.publish(1 + (round_ + ord(node.name)) % 5)
            node.cycle()
    settle(group)
    published = [p for node in group for p in node.published]
    assert_same_order_everywhere(group, published)
    numbers = segment_numbers(nodes.url)
    newest = numbers[-1]
    assert newest >= 5, f"only {newest} rotations for {len(published)} messages"
    # segment 0 stays (the gem's branch), plus keep_segments=1 closed one and the live one
    assert numbers == [0, newest - 1, newest]
    assert sum(node.total("segments_deleted") for node in group) >= newest - 2
    for node in group:  # each node dropped the deleted segments locally too
        local = [r for r in node.storage.list_refs("refs/heads/") if ".seg." in r]
        assert sorted(local) == [f"refs/heads/{QUEUE}.seg.{n:06d}" for n in numbers[1:]]
    fsck(central)


def test_every_segment_ends_at_one_close_marker_and_the_next_records_it(
    nodes: Nodes, central: Path
) -> None:
    """The chain of segments on the remote: close marker, then an open marker naming it."""
    node = nodes.node("a", rotations={QUEUE: RotationPolicy(max_messages=5, keep_segments=10)})
    for _ in range(4):
        node.publish(6)
        node.cycle()
    numbers = segment_numbers(nodes.url)
    assert numbers == list(range(len(numbers))) and len(numbers) >= 4
    for number in numbers[:-1]:
        branch = QUEUE if number == 0 else f"{QUEUE}.seg.{number:06d}"
        close = git(central, "cat-file", "commit", f"refs/heads/{branch}").decode()
        assert "\ngitmq-control close\n" in close
        after = f"refs/heads/{QUEUE}.seg.{number + 1:06d}"
        root = git_text(central, "rev-list", "--max-parents=0", after)
        opened = git(central, "cat-file", "commit", root).decode()
        close_id = next(ln.split()[1] for ln in close.splitlines() if ln.startswith("gitmq-id "))
        assert "\ngitmq-control open\n" in opened
        assert f"\ngitmq-previous {close_id}\n" in opened
        raw = git_text(central, "log", "--format=raw", f"refs/heads/{branch}")
        assert raw.count("gitmq-control close") == 1
        assert raw.count("gitmq-control open") == (1 if number else 0)
    settle([node])
    assert node.got == node.published


@pytest.mark.slow
def test_the_remote_stays_bounded_as_messages_grow(nodes: Nodes, central: Path) -> None:
    """After the server's own gc, 3x more messages do not make the remote bigger."""
    node = nodes.node("a", rotations={QUEUE: RotationPolicy(max_messages=20, keep_segments=1)})

    def run_messages(count: int) -> None:
        for _ in range(count // 10):
            node.publish(10)
            node.cycle()

    run_messages(100)
    first_objects, first_bytes = objects_in(central), disk_bytes(central)
    run_messages(300)
    later_objects, later_bytes = objects_in(central), disk_bytes(central)
    settle([node])
    assert node.got == node.published  # 400 delivered
    # bounded by segment 0 + one kept closed segment + the live one (20 + markers each)
    seg0 = len(git_text(central, "rev-list", f"refs/heads/{QUEUE}").split())
    assert later_objects <= seg0 + 2 * (20 + 3) + 1, later_objects  # + the empty tree
    assert later_objects <= first_objects * 1.2, (first_objects, later_objects)
    assert later_bytes <= first_bytes * 1.5, (first_bytes, later_bytes)
    fsck(central)


def test_without_rotation_the_remote_grows_with_the_messages(nodes: Nodes, central: Path) -> None:
    """The contrast that shows the bound above is rotation's doing."""
    node = nodes.node("a", rotations={})
    node.publish(100)
    node.cycle()
    first = objects_in(central)
    node.publish(300)
    node.cycle()
    assert objects_in(central) >= first + 300


def test_a_queue_without_rotate_never_gets_segment_branches(nodes: Nodes, central: Path) -> None:
    """Only the rotating queue gets segments; the other keeps the gem's layout."""
    policy = {"audit": RotationPolicy(max_messages=5)}
    a = nodes.node("a", rotations=policy, queues=(QUEUE, "audit"))
    b = nodes.node("b", rotations=policy, queues=(QUEUE, "audit"))
    audit = Producer(a.storage, "audit")
    for _ in range(5):
        a.publish(10)
        b.publish(10)
        for _ in range(8):
            audit.publish("audited")
        a.cycle()
        b.cycle()
    heads = remote_heads(nodes.url)
    assert [h for h in heads if h.startswith(QUEUE)] == [QUEUE]
    assert any(h.startswith("audit.seg.") for h in heads)
    history = git_text(central, "log", "--format=%B%x00", f"refs/heads/{QUEUE}")
    assert "gitmq-control" not in git_text(central, "log", "--format=raw", f"refs/heads/{QUEUE}")
    assert len([m for m in history.split("\x00") if m.strip()]) == 100
    assert git_text(central, "rev-list", "--max-parents=0", f"refs/heads/{QUEUE}").count("\n") == 0
    for node in (a, b):
        assert [r for r in node.storage.list_refs("refs/") if ".seg." in r and QUEUE in r] == []
    settle([a, b])
    assert a.got == b.got and sorted(a.got) == sorted(a.published + b.published)


@pytest.mark.slow
def test_an_offline_consumer_holds_its_segment_and_catches_up(nodes: Nodes, central: Path) -> None:
    """C's tag on the remote keeps its segment (and every later one) until C has read them;
    what C published while offline, onto a segment the others closed, moves on, not lost."""
    a, b, c = (nodes.node(n) for n in "abc")
    group = [a, b, c]
    for node in group:
        node.publish(4)
    settle(group, rounds=2)
    held = segment_numbers(nodes.url)[-1]
    assert git_text(central, "rev-parse", "refs/tags/cc") == c.storage.read_ref("refs/tags/cc")
    c.publish(7)  # onto C's live segment, never pushed while C is away
    for _ in range(6):  # A and B rotate several times meanwhile
        a.publish(9)
        b.publish(8)
        a.cycle()
        b.cycle()
    numbers = segment_numbers(nodes.url)
    assert numbers[-1] >= held + 3, numbers
    assert numbers == [0, *range(held, numbers[-1] + 1)], f"C's segment {held} went: {numbers}"
    settle(group, rounds=3)
    assert c.total("moved_to_next_segment") == 7
    published = [p for node in group for p in node.published]
    assert_same_order_everywhere([a, b, c], published)
    newest = segment_numbers(nodes.url)[-1]
    assert segment_numbers(nodes.url) == [0, newest - 1, newest]
    fsck(central)


@pytest.mark.slow
def test_a_node_offline_across_a_segment_deletion_loses_nothing(
    nodes: Nodes, central: Path
) -> None:
    """A producer-only node (no tag to hold anything) publishes onto a segment that is
    closed and deleted on the remote while it is away: its messages move to the live
    segment, and the deleted segment leaves its disk."""
    a, b = nodes.node("a"), nodes.node("b")
    p = nodes.node("p", consumer=False)
    group = [a, b, p]
    a.publish(3)
    settle(group, rounds=1)
    p.publish(3)
    p.cycle()
    stale = segment_numbers(nodes.url)[-1]
    stale_branch = QUEUE if stale == 0 else f"{QUEUE}.seg.{stale:06d}"
    stale_tip = p.storage.read_ref(tracking_ref(REMOTE, stale_branch))
    assert stale_tip is not None
    p.publish(12)  # while away
    for _ in range(6):
        a.publish(9)
        a.cycle()
        b.cycle()
    assert stale not in segment_numbers(nodes.url) or stale == 0
    settle(group, rounds=3)
    published = [x for node in group for x in node.published]
    assert_same_order_everywhere([a, b], published)
    assert p.total("moved_to_next_segment") == 12
    if stale:  # the deleted segment is gone from P's disk too
        assert p.storage.read_ref(f"refs/heads/{stale_branch}") is None
        assert run(["git", f"--git-dir={p.storage.git_dir}", "cat-file", "-e", stale_tip]).status
    fsck(p.storage.git_dir)
    fsck(central)


@pytest.mark.slow
def test_a_new_consumer_starts_at_the_oldest_segment_still_there(
    nodes: Nodes, central: Path
) -> None:
    """A consumer with no tag reads segment 0, then skips the deleted segments, and from
    then on its tag lets the cluster delete segments again."""
    a = nodes.node("a")
    for _ in range(6):
        a.publish(SEGMENT)
        a.cycle()
    settle([a])
    numbers = segment_numbers(nodes.url)
    assert numbers[1] > 1, f"nothing was deleted: {numbers}"
    d = nodes.node("d")
    settle([d], rounds=2)
    survivors = set()
    for number in numbers:
        branch = QUEUE if number == 0 else f"{QUEUE}.seg.{number:06d}"
        survivors |= {
            line.partition(" ")[2]
            for line in git_text(
                central, "log", "--format=%H %s", f"refs/heads/{branch}"
            ).splitlines()
            if line.partition(" ")[2]
        }
    assert sorted(d.got) == sorted(survivors)
    assert d.got == [p for p in a.got if p in survivors]
    for _ in range(4):
        a.publish(SEGMENT)
        a.cycle()
        d.cycle()
    settle([a, d])
    assert d.got[-4 * SEGMENT :] == a.got[-4 * SEGMENT :]
    newest = segment_numbers(nodes.url)[-1]
    assert segment_numbers(nodes.url) == [0, newest - 1, newest]


def test_a_consumer_that_acked_a_close_marker_crosses_when_the_next_segment_appears(
    nodes: Nodes, central: Path
) -> None:
    """A fetch moves the tracking refs one by one: a consumer may see a segment closed
    before its successor exists, and ack the close marker. It must go on from there."""
    a = nodes.node("a")
    b = nodes.node("b")
    a.publish(SEGMENT)
    a.cycle()
    a.cycle()  # closes segment 0 and opens segment 1
    a.publish(3)
    a.cycle()
    assert segment_numbers(nodes.url) == [0, 1]
    b.sync()
    successor = tracking_ref(REMOTE, f"{QUEUE}.seg.000001")
    tip = b.storage.read_ref(successor)
    assert tip is not None
    assert b.storage.delete_ref(successor, tip)  # the moment between the two ref updates
    b.deliver()
    assert b.got == a.published[:SEGMENT]
    assert b.consumer is not None and b.consumer.position == rev_parse(central, QUEUE)
    assert b.storage.compare_and_swap(successor, tip, None)
    b.deliver()
    assert b.got == a.published


def test_two_nodes_closing_one_segment_at_once_keep_one_order(nodes: Nodes, central: Path) -> None:
    """Both nodes see the segment full and both append a close marker: the loser's marker
    and the messages after it move on, the open marker is the same commit on both."""
    a, b = nodes.node("a"), nodes.node("b")
    a.publish(SEGMENT)
    a.cycle()
    b.cycle()  # both now know segment 0 is full
    a.publish(2)
    b.publish(3)
    a.sync()  # closes
    b.sync()  # closes too, loses, re-parents onto the close, moves its messages on
    settle([a, b])
    assert a.got == b.got
    assert_same_order_everywhere([a, b], a.published + b.published)
    raw = git_text(central, "log", "--format=raw", f"refs/heads/{QUEUE}")
    assert raw.count("gitmq-control close") == 1


def test_a_node_that_lost_the_close_keeps_its_producers_order(
    nodes: Nodes, central: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B closes a segment, but A's close lands first; B's producer went on publishing onto
    B's new segment between the push attempts. B's messages from before its close must
    still come before the later ones."""
    a, b = nodes.node("a"), nodes.node("b")
    a.publish(SEGMENT)
    a.sync()  # the segment is full on the remote; nobody has closed it yet
    real_push = sync.push_atomic
    raced = []

    def push_after_a(git_dir: Path, *args: object, **kwargs: object) -> None:
        if git_dir == b.storage.git_dir and not raced:
            raced.append(True)
            a.publish(1)
            a.sync()  # A closes the segment first: B's push is rejected
        real_push(git_dir, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sync, "push_atomic", push_after_a)
    b.publish(2)  # b:0 b:1 onto segment 0, unpushed
    report = b.sync(sleep=lambda _: b.publish(2))  # b:2 b:3 onto B's own segment 1
    assert raced and report.rejections >= 1
    settle([a, b])
    raw = git_text(central, "log", "--format=raw", f"refs/heads/{QUEUE}")
    assert raw.count("gitmq-control close") == 1
    assert_same_order_everywhere([a, b], a.published + b.published)
    assert [p for p in a.got if p.startswith("b:")] == ["b:0", "b:1", "b:2", "b:3"]


def test_a_message_published_onto_a_segment_just_closed_is_never_pushed_after_the_close(
    nodes: Nodes, central: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer that picked the live segment a moment before sync closed it appends
    after the close marker, after sync moved what was there: the remote segment must
    still end at its close marker, and the message reaches the next segment."""
    a, b = nodes.node("a"), nodes.node("b")
    a.publish(SEGMENT)
    a.sync()
    real_settle = rotation.settle
    late: list[str] = []

    def settle_then_a_late_publish(storage: Storage, rot: rotation.Rotating, now: object) -> int:
        moved = real_settle(storage, rot, now)  # type: ignore[arg-type]
        if storage is a.storage and not late:
            closed = storage.read_ref(f"refs/heads/{QUEUE}")
            assert closed is not None and storage.read(closed).control == "close"
            with monkeypatch.context() as m:  # the producer's stale view: segment 0 is live
                m.setattr(segments, "live_branch", lambda *_: QUEUE)
                a.publish(1)
            late.append(a.published[-1])
        return moved

    monkeypatch.setattr(rotation, "settle", settle_then_a_late_publish)
    a.sync()  # closes segment 0; the late message lands after the close, locally
    monkeypatch.undo()
    assert late
    a.publish(2)
    settle([a, b])
    tip = git_text(central, "rev-parse", f"refs/heads/{QUEUE}")
    assert git(central, "cat-file", "commit", tip).endswith(b"gitmq-control close\n\n")
    assert_same_order_everywhere([a, b], a.published)


@pytest.mark.slow
def test_three_node_processes_rotate_and_deliver_everything_once_in_one_order(
    tmp_path: Path, git_daemon: GitDaemon, central: Path
) -> None:
    """Three ``gitmq node`` daemons syncing every 200 ms, producers publishing into their
    storages meanwhile: every consumer crosses every segment and sees one order."""
    queues = {
        QUEUE: {"remote": "central", "rotate": {"max_messages": 15, "keep_segments": 1}},
    }
    url = git_daemon.url("central.git")
    with Cluster(tmp_path / "cluster", url) as cluster:
        members: list[TestNode] = [
            cluster.node(n, [f"c{n}"], extra={"queues": queues}) for n in ("a", "b", "c")
        ]
        procs = [node.start() for node in members]
        storages = [Storage(node.storage) for node in members]
        producers = [
            Producer(s, QUEUE, author=Identity(f"Producer {n.name}", f"{n.name}@test"))
            for s, n in zip(storages, members, strict=True)
        ]
        payloads: list[str] = []
        counter = itertools.count()
        try:
            for _ in range(6):
                for node, producer in zip(members, producers, strict=True):
                    for _ in range(5):
                        payload = f"{node.name}:{next(counter)}"
                        producer.publish(payload)
                        payloads.append(payload)
                wait_for(
                    lambda: all(len(n.received(f"c{n.name}")) >= len(payloads) for n in members),
                    120,
                    "every message on every node",
                    interval=0.05,
                    procs=procs,
                )
            wait_for(
                lambda: len(segment_numbers(url)) <= 3,
                60,
                "the old segments to be deleted",
                interval=0.2,
                procs=procs,
            )
        finally:
            for storage in storages:
                storage.close()
        for node in members:
            assert node.stop() == 0, node.log_text()
    orders = [n.payloads(f"c{n.name}") for n in members]
    assert orders[0] == orders[1] == orders[2]
    assert sorted(orders[0]) == sorted(payloads) and len(set(orders[0])) == len(payloads)
    assert in_producer_order(orders[0]), " ".join(orders[0])
    numbers = segment_numbers(url)
    assert numbers[0] == 0 and numbers[-1] >= 5 and len(numbers) <= 3, numbers
    assert "Traceback" not in "".join(n.log_text() for n in members)
    fsck(central)


def test_a_message_without_an_id_is_moved_on_only_once(storages: dict[str, Storage]) -> None:
    """Moving messages off a closed segment skips those already on the next one; a
    message written without gitmq-id (the gem, plain git) is known by its derived id."""
    s = storages["a"]
    rot = rotation.Rotating(QUEUE, POLICY, REMOTE, Identity("Node a", "a@test"))
    stamp = "1700000000 +0000"
    who = f"Gem <gem@test> {stamp}"
    body = f"tree {EMPTY_TREE}\nauthor {who}\ncommitter {who}\n\nhi\n"
    first = s.write_commits([body.encode()])[0]
    live = f"refs/heads/{QUEUE}.seg.000001"
    assert s.compare_and_swap(live, first, None)
    assert s.compare_and_swap(tracking_ref(REMOTE, f"{QUEUE}.seg.000001"), first, None)
    elsewhere = f"tree {EMPTY_TREE}\nparent {first}\n" + body.split("\n", 1)[1]
    copy = s.write_commits([elsewhere.encode()])[0]  # the same message on another parent
    assert rotation._move(s, rot, [copy], live, datetime.now(UTC)) == 0
    assert s.read_ref(live) == first
