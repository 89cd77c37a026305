"""One sync cycle (``sync_once``) between storages and real git servers on 127.0.0.1.

Every test runs real git against a git daemon, a smart HTTP server that wants a
token, or sshd; what lands on the remote is read back with plain git.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from nodes import (
    assert_landed_once,
    in_producer_order,
    landed_ids,
    remote_messages,
    wait_packed,
)
from servers import GitDaemon, SmartHttp, SshServer, make_bare
from util import (
    EMPTY_TREE,
    GITMQ,
    WORKERS,
    commit_body,
    fsck,
    git,
    kill_all,
    rev_parse,
    start,
    wait_for,
)

import gitmq.sync
from gitmq import Consumer, Identity, Producer, Storage
from gitmq.replay import CHUNK, MIN_CHUNK, ReplayState
from gitmq.storage import packing
from gitmq.storage.remote import Credentials, PushRejected, RefUpdate, push_atomic
from gitmq.sync import SyncReport, SyncTarget, backoff, remote_tag_ref, sync_once, tracking_ref

REMOTE = "central"


def target(
    url: str,
    node: str,
    *,
    consumers: tuple[str, ...] = (),
    queues: tuple[str, ...] = ("orders",),
    credentials: Credentials | None = None,
    max_attempts: int = 5,
) -> SyncTarget:
    return SyncTarget(
        remote=REMOTE,
        url=url,
        queues=queues,
        consumers=consumers,
        committer=Identity(f"Node {node}", f"{node}@test"),
        credentials=credentials or Credentials(timeout=20),
        max_attempts=max_attempts,
    )


def producer(storage: Storage, name: str, queue: str = "orders") -> Producer:
    return Producer(storage, queue, author=Identity(f"Producer {name}", f"{name}@test"))


def consumer(storage: Storage, name: str, queue: str = "orders") -> Consumer:
    return Consumer(storage, name, queue, source_ref=tracking_ref(REMOTE, queue))


def synced(storage: Storage, tgt: SyncTarget) -> SyncReport:
    """``sync_once`` that must succeed."""
    report = sync_once(storage, tgt)
    assert report.ok, report.line()
    return report


def head(storage: Storage, queue: str = "orders") -> str | None:
    return storage.read_ref(f"refs/heads/{queue}")


# ------------------------------------------------------------------ over git daemon


def test_messages_flow_from_one_node_to_another(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    sent = [
        producer(a, "a").publish(f"order {i}", {"content-type": "text/plain"}) for i in range(3)
    ]

    report = synced(a, target(url, "a"))
    assert (report.pushes, report.pushed_messages, report.fetched) == (1, 3, 0)
    landed = assert_landed_once(central, "orders", ["order 0", "order 1", "order 2"])
    assert [m.id for m in landed] == [m.id for m in sent]
    assert a.read_ref(tracking_ref(REMOTE, "orders")) == landed[-1].sha == head(a)

    report = synced(b, target(url, "b"))
    assert (report.pushes, report.fetched) == (0, 3)
    assert head(b) == b.read_ref(tracking_ref(REMOTE, "orders")) == landed[-1].sha
    got = list(consumer(b, "shipping").poll())
    assert [m.id for m in got] == [m.id for m in sent]
    assert [m.text for m in got] == ["order 0", "order 1", "order 2"]
    assert {m.headers["content-type"] for m in got} == {"text/plain"}
    assert {str(m.author) for m in got} == {"Producer a <a@test>"}
    fsck(central)


def test_a_listen_only_cycle_fetches_new_messages_and_never_pushes(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(a, "a").publish("from a")
    synced(a, target(url, "a"))
    mine = producer(b, "b").publish("from b, not pushed yet")
    before = rev_parse(central, "refs/heads/orders")

    report = sync_once(b, target(url, "b"), listen_only=True)

    assert report.ok and (report.fetched, report.pushes) == (1, 0)
    assert rev_parse(central, "refs/heads/orders") == before
    assert [m.text for m in consumer(b, "shipping").poll()] == ["from a"]
    assert head(b) == mine.sha  # the unpushed message waits for the next full sync
    synced(b, target(url, "b"))
    assert_landed_once(central, "orders", ["from a", "from b, not pushed yet"])


def test_unpushed_messages_are_reparented_keeping_author_date_payload_and_headers(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(a, "a").publish("a1")
    producer(a, "a").publish("a2")
    payloads = [b"  b1 with spaces  \n\n", b"b2\x00binary\xff"]
    before = [producer(b, "b").publish(p, {"trace": f"t{i}"}) for i, p in enumerate(payloads)]
    bodies = [b.read_body(m.sha) for m in before]

    synced(a, target(url, "a"))
    report = synced(b, target(url, "b"))
    assert (report.reparented, report.pushes, report.pushed_messages) == (2, 1, 2)

    messages = remote_messages(central, "orders")
    assert [m.id for m in messages][2:] == [m.id for m in before]
    assert len(messages) == 4 and len({m.id for m in messages}) == 4
    for old_body, new in zip(bodies, messages[2:], strict=True):
        old_head, _, old_payload = old_body.partition(b"\n\n")
        new_head, _, new_payload = commit_body(central, new.sha).partition(b"\n\n")
        assert new_payload == old_payload  # byte for byte
        keep = (b"tree ", b"author ", b"gitmq-")
        assert [ln for ln in new_head.split(b"\n") if ln.startswith(keep)] == [
            ln for ln in old_head.split(b"\n") if ln.startswith(keep)
        ]
        committer = [ln for ln in new_head.split(b"\n") if ln.startswith(b"committer ")]
        assert committer[0].startswith(b"committer Node b <b@test> ")
    reread = list(consumer(b, "c").poll())[2:]
    assert [m.payload for m in reread] == payloads
    assert [m.headers for m in reread] == [{"trace": "t0"}, {"trace": "t1"}]
    assert [m.time for m in reread] == [m.time for m in before]

    report = synced(a, target(url, "a"))
    assert (report.fetched, report.pushes) == (2, 0)
    assert head(a) == head(b) == messages[-1].sha
    fsck(central)


def test_an_idle_sync_neither_pushes_nor_fetches(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    tgt = target(url, "a", consumers=("billing",))
    producer(b, "b").publish("hello")
    synced(b, target(url, "b"))
    first = synced(a, tgt)
    assert first.fetched == 1
    billing = consumer(a, "billing")
    assert billing.deliver_pending(lambda m: None) == 1
    assert synced(a, tgt).pushed_tags == 1
    refs = git(central, "for-each-ref").decode()

    reports = [synced(a, tgt) for _ in range(5)]
    assert [(r.pushes, r.fetched, r.pushed_tags, r.reparented) for r in reports] == [
        (0, 0, 0, 0)
    ] * 5
    assert git(central, "for-each-ref").decode() == refs


def test_an_empty_remote_and_an_empty_node_sync_cleanly(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    report = synced(storages["a"], target(git_daemon.url("central.git"), "a", consumers=("c",)))
    assert (report.pushes, report.fetched, report.tags_resumed) == (0, 0, 0)
    assert git(central, "for-each-ref").decode() == ""


# ------------------------------------------------------------------ consumer tags


def test_tags_are_pushed_and_a_new_node_resumes_from_them(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a, fresh = storages["a"], storages["fresh"]
    url = git_daemon.url("central.git")
    sent = [producer(a, "a").publish(f"m{i}") for i in range(5)]
    tgt = target(url, "a", consumers=("billing",))
    synced(a, tgt)
    billing = consumer(a, "billing")
    for message in list(billing.poll())[:3]:
        billing.ack(message)

    report = synced(a, tgt)
    assert (report.pushes, report.pushed_tags, report.pushed_messages) == (1, 1, 0)
    assert rev_parse(central, "refs/tags/billing") == remote_messages(central, "orders")[2].sha

    report = synced(fresh, target(url, "fresh", consumers=("billing",)))
    assert report.tags_resumed == 1 and report.pushes == 0
    assert [m.id for m in consumer(fresh, "billing").poll()] == [m.id for m in sent[3:]]


def test_a_running_consumer_on_a_new_node_never_redelivers_what_the_cluster_finished(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    """The consumer runs while the first sync fetches: it must see the remote tag
    before it sees the messages, or it would start again from the beginning."""
    a, fresh = storages["a"], storages["fresh"]
    url = git_daemon.url("central.git")
    sent = [producer(a, "a").publish(f"m{i}") for i in range(20)]
    synced(a, target(url, "a", consumers=("billing",)))
    billing = consumer(a, "billing")
    for message in list(billing.poll())[:15]:
        billing.ack(message)
    synced(a, target(url, "a", consumers=("billing",)))

    got: list[str] = []
    running = Consumer(
        fresh, "billing", "orders", source_ref=tracking_ref(REMOTE, "orders"), poll_interval=0.001
    ).consume(lambda m: got.append(m.id))
    try:
        synced(fresh, target(url, "fresh", consumers=("billing",)))
        wait_for(lambda: len(got) >= 5, what="the five unfinished messages")
    finally:
        running.stop()
    assert got == [m.id for m in sent[15:]]


def test_a_tag_behind_the_remote_fast_forwards_and_never_moves_the_remote_back(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    for i in range(4):
        producer(a, "a").publish(f"m{i}")
    synced(a, target(url, "a"))
    synced(b, target(url, "b"))
    shas = [m.sha for m in remote_messages(central, "orders")]
    # b's billing stopped at m1 and then went offline; a's billing went on to m3.
    assert b.compare_and_swap("refs/tags/billing", shas[1], None)
    assert a.compare_and_swap("refs/tags/billing", shas[3], None)
    synced(a, target(url, "a", consumers=("billing",)))

    report = synced(b, target(url, "b", consumers=("billing",)))
    assert (report.tags_resumed, report.pushes, report.conflicts) == (1, 0, [])
    assert b.read_ref("refs/tags/billing") == shas[3]
    assert rev_parse(central, "refs/tags/billing") == shas[3]


def test_a_tag_push_with_a_stale_lease_is_rejected_and_moves_nothing(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    """Another node moved the remote tag after this node last looked: its lease is stale."""
    a = storages["a"]
    url = git_daemon.url("central.git")
    for i in range(4):
        producer(a, "a").publish(f"m{i}")
    synced(a, target(url, "a"))
    shas = [m.sha for m in remote_messages(central, "orders")]
    git(central, "update-ref", "refs/tags/billing", shas[3])
    for sha, lease in ((shas[1], shas[0]), (shas[1], ""), (shas[2], shas[1])):
        with pytest.raises(PushRejected, match=r"refs/tags/billing\s+\[rejected\] \(stale info\)"):
            push_atomic(a.git_dir, url, [RefUpdate(sha, "refs/tags/billing", lease)], Credentials())
        assert rev_parse(central, "refs/tags/billing") == shas[3]
    push_atomic(a.git_dir, url, [RefUpdate(shas[2], "refs/tags/billing", shas[3])], Credentials())
    assert rev_parse(central, "refs/tags/billing") == shas[2]  # a seek: the lease held


def test_diverged_tags_are_reported_and_neither_moves(
    git_daemon: GitDaemon,
    central: Path,
    storages: dict[str, Storage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two nodes run a consumer named 'shared', on different queues."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    both = ("orders", "invoices")
    tgt_a = target(url, "a", queues=both, consumers=("shared",))
    tgt_b = target(url, "b", queues=both, consumers=("shared",))
    producer(a, "a", "orders").publish("order")
    producer(b, "b", "invoices").publish("invoice")
    synced(a, tgt_a)
    synced(b, tgt_b)
    consumer(a, "shared", "orders").deliver_pending(lambda m: None)
    consumer(b, "shared", "invoices").deliver_pending(lambda m: None)
    tag_a, tag_b = a.read_ref("refs/tags/shared"), b.read_ref("refs/tags/shared")
    assert tag_a and tag_b and tag_a != tag_b
    assert synced(a, tgt_a).pushed_tags == 1

    caplog.set_level(logging.ERROR, logger="gitmq.sync")
    report = synced(b, tgt_b)
    text = (
        f"consumer 'shared': local tag {tag_b[:12]} and the tag on central {tag_a[:12]} "
        f"have diverged (two nodes run a consumer of that name?); neither was moved"
    )
    assert report.conflicts == [text]
    assert (report.pushes, report.tags_resumed) == (0, 0)
    assert [r.getMessage() for r in caplog.records if r.name == "gitmq.sync"] == [text]
    assert b.read_ref("refs/tags/shared") == tag_b
    assert b.read_ref(remote_tag_ref(REMOTE, "shared")) == tag_a
    assert rev_parse(central, "refs/tags/shared") == tag_a
    # Reported again on every cycle until someone resolves it; still nothing moves.
    assert synced(b, tgt_b).conflicts == [text]
    assert synced(a, tgt_a).conflicts == []
    assert (a.read_ref("refs/tags/shared"), b.read_ref("refs/tags/shared")) == (tag_a, tag_b)
    assert rev_parse(central, "refs/tags/shared") == tag_a


# ------------------------------------------------------------------ faults


def test_the_remote_down_keeps_everything_local_until_it_returns(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a = storages["a"]
    url = git_daemon.url("central.git")
    tgt = target(url, "a")
    publish = producer(a, "a").publish
    publish("p:0")
    synced(a, tgt)
    git_daemon.stop()
    for i in range(1, 4):  # several cycles while the remote is down, producers go on
        publish(f"p:{i}")
        report = sync_once(a, tgt)
        assert report.error is not None and report.error.startswith(
            f"remote {url}: listing refs failed: fatal: unable to connect to 127.0.0.1"
        ), report.error
        assert report.error.endswith("errno=Connection refused"), report.error  # whole
        assert report.pushes == 0
        assert a.count(None, head(a)) == i + 1
    git_daemon.start()
    report = synced(a, tgt)
    assert (report.pushes, report.pushed_messages) == (1, 3)
    landed = assert_landed_once(central, "orders", [f"p:{i}" for i in range(4)])
    assert [m.payload for m in landed] == [f"p:{i}" for i in range(4)]


def test_a_remote_that_never_answers_times_out(storages: dict[str, Storage]) -> None:
    a = storages["a"]
    producer(a, "a").publish("waiting")
    with socket.socket() as silent:  # accepts connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"git://127.0.0.1:{silent.getsockname()[1]}/central.git"
        started = time.monotonic()
        report = sync_once(a, target(url, "a", credentials=Credentials(timeout=1)))
        took = time.monotonic() - started
    assert report.error == f"remote {url}: git ls-remote --refs {url} timed out after 1s"
    assert took < 10
    assert a.count(None, head(a)) == 1


def test_a_missing_remote_repository_is_a_clear_error(
    git_daemon: GitDaemon, storages: dict[str, Storage]
) -> None:
    url = git_daemon.url("nowhere.git")
    report = sync_once(storages["a"], target(url, "a"))
    assert report.error == (
        f"remote {url}: listing refs failed: fatal: remote error: no such repository: /nowhere.git"
    )


def test_a_message_that_already_landed_is_never_sent_twice(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage], tmp_path: Path
) -> None:
    """A storage restored from a copy taken before its messages were pushed (and
    re-parented) finds their ids on the remote and drops its stale copies."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(a, "a").publish("x1")
    producer(a, "a").publish("x2")
    shutil.copytree(a.path, tmp_path / "nodes" / "restored.git")
    producer(b, "b").publish("y1")
    synced(b, target(url, "b"))
    assert synced(a, target(url, "a")).reparented == 2

    restored = storages["restored"]
    producer(restored, "a").publish("x3")
    report = synced(restored, target(url, "a"))
    assert (report.duplicates_dropped, report.reparented, report.pushed_messages) == (2, 1, 1)
    assert_landed_once(central, "orders", ["y1", "x1", "x2", "x3"])


def test_a_push_that_landed_unseen_is_not_sent_again(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    """The push went through but the node never learned it (it timed out, or died)."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(a, "a").publish("a1")
    git(a.git_dir, "push", "--quiet", url, "refs/heads/orders:refs/heads/orders")
    assert a.read_ref(tracking_ref(REMOTE, "orders")) is None
    producer(b, "b").publish("b1")
    synced(b, target(url, "b"))
    producer(a, "a").publish("a2")
    report = synced(a, target(url, "a"))
    assert (report.pushed_messages, report.duplicates_dropped) == (1, 0)
    landed = assert_landed_once(central, "orders", ["a1", "b1", "a2"])
    assert [m.payload for m in landed] == ["a1", "b1", "a2"]


def gem_publish(storage: Storage, text: str, queue: str = "orders") -> str:
    """Append a message the way the Ruby gem or plain git does: no gitmq-id."""
    tip = storage.read_ref(f"refs/heads/{queue}")
    parent = ["-p", tip] if tip else []
    sha = git(storage.git_dir, "commit-tree", EMPTY_TREE, *parent, "-m", text).decode().strip()
    assert storage.compare_and_swap(f"refs/heads/{queue}", sha, tip)
    return sha


def test_a_message_without_an_id_that_already_landed_is_never_sent_twice(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage], tmp_path: Path
) -> None:
    """As above, for messages written without gitmq-id (the Ruby gem, plain git): they
    are recognised by their derived id (author line and payload, which re-parenting
    keeps)."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    gem_publish(a, "x1")
    gem_publish(a, "x2")
    shutil.copytree(a.path, tmp_path / "nodes" / "restored.git")
    producer(b, "b").publish("y1")
    synced(b, target(url, "b"))
    assert synced(a, target(url, "a")).reparented == 2

    restored = storages["restored"]
    gem_publish(restored, "x3")
    report = synced(restored, target(url, "a"))
    assert (report.duplicates_dropped, report.reparented, report.pushed_messages) == (2, 1, 1)
    assert [m.payload for m in remote_messages(central, "orders")] == ["y1", "x1", "x2", "x3"]


def test_sync_wins_at_once_against_a_producer_that_never_pauses(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    """Another node pushed first, and a producer process publishes into this node's
    storage as fast as it can: the cycle re-parents once (the bulk outside the branch
    lock, what arrived meanwhile under it), pushes, and leaves no orphan copy behind."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(b, "b").publish("b0")
    synced(b, target(url, "b"))
    producer(a, "a").publish_many([f"a:{i}" for i in range(200)])
    go = a.path.parent / "go"
    busy = start([*GITMQ[:1], WORKERS, "produce", a.path, "orders", "loop", "100000", go])
    try:
        go.touch()
        wait_for(lambda: len(a.commits_between(None, head(a) or "")) > 400, 30, "the producer")
        reports: list[SyncReport] = []
        cycle = threading.Thread(target=lambda: reports.append(sync_once(a, target(url, "a"))))
        cycle.start()
        cycle.join(60)
        assert reports and reports[0].ok, "the cycle did not finish while the producer ran"
        report = reports[0]
        # one push, or a few when the producer outran a chunk (replay.CHUNK)
        assert report.rejections == 0 and report.pushes >= 1
        assert report.pushed_messages >= 400 and report.reparented >= 400
    finally:
        kill_all([busy])
    # The copies went at once, or stay pending (a background repack held the lock, or
    # the producer's repack folded them into a large pack where they are a small share)
    # until a later cycle or, at the latest, the process closes its storage.
    synced(a, target(url, "a"))
    wait_packed(a.git_dir)
    a.close()
    assert unreachable_commits(a.git_dir) == []
    fsck(a.git_dir)
    landed = [m.payload for m in remote_messages(central, "orders")]
    assert landed[0] == "b0" and len(landed) == len(set(landed))
    assert landed[1:201] == [f"a:{i}" for i in range(200)]
    assert in_producer_order(landed[201:])


@pytest.mark.parametrize("diverged", [True, False], ids=["re-parented", "fast-forward"])
def test_a_large_backlog_goes_out_in_chunks_in_one_cycle(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage], diverged: bool
) -> None:
    """No push carries more than replay.CHUNK messages (an attempt that grows with the
    backlog loses every race); the chunks follow each other in the same cycle, in order,
    and the last one moves the local branch onto the remote's."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    if diverged:
        producer(b, "b").publish("b0")
        synced(b, target(url, "b"))
    producer(a, "a").publish_many([f"a:{i}" for i in range(3500)])
    report = synced(a, target(url, "a"))
    assert (report.pushes, report.pushed_messages, report.unpushed) == (4, 3500, 0)
    landed = [m.payload for m in remote_messages(central, "orders")]
    assert landed == ["b0"] * diverged + [f"a:{i}" for i in range(3500)]
    assert head(a) == a.read_ref(tracking_ref(REMOTE, "orders"))
    assert a.list_refs("refs/gitmq/outbox/") == {}
    swept(a, target(url, "a"))
    fsck(a.git_dir)


def test_chunks_cut_short_go_on_next_cycle_and_never_land_twice(
    git_daemon: GitDaemon,
    central: Path,
    storages: dict[str, Storage],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cycle that reached its chunk limit after two chunks: the outbox records how far
    it got, the report counts what is left, new messages queue behind; a chunk that
    landed without the node learning it (its record rolled back) is recognised by id
    and not sent again."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(b, "b").publish("b0")
    synced(b, target(url, "b"))
    producer(a, "a").publish_many([f"a:{i}" for i in range(3500)])
    limit = gitmq.sync.MAX_CHUNKS
    monkeypatch.setattr(gitmq.sync, "MAX_CHUNKS", 2)
    report = synced(a, target(url, "a"))
    assert (report.pushes, report.pushed_messages, report.unpushed) == (2, 2000, 1500)
    outbox = a.list_refs("refs/gitmq/outbox/")
    assert len(outbox) == 2
    sent = outbox[f"refs/gitmq/outbox/{REMOTE}/sent/orders"]
    monkeypatch.setattr(gitmq.sync, "MAX_CHUNKS", 1)
    report = synced(a, target(url, "a"))
    assert (report.pushes, report.pushed_messages, report.unpushed) == (1, 1000, 500)
    for ref, value in outbox.items():  # as if the last chunk's answer had been lost
        assert a.compare_and_swap(ref, value, a.read_ref(ref))
    producer(a, "a").publish("a:late")
    monkeypatch.setattr(gitmq.sync, "MAX_CHUNKS", limit)
    report = synced(a, target(url, "a"))
    assert report.duplicates_dropped == 1000 and report.pushed_messages == 501
    landed = [m.payload for m in remote_messages(central, "orders")]
    assert landed == ["b0", *[f"a:{i}" for i in range(3500)], "a:late"]
    assert a.list_refs("refs/gitmq/outbox/") == {} and sent not in a.tips()
    swept(a, target(url, "a"))
    fsck(a.git_dir)


@pytest.mark.parametrize("live", [50, 12_000], ids=["small-pack", "large-pack"])
def test_copies_packed_with_live_messages_go_once_re_parented(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage], live: int
) -> None:
    """The background repack folds a node's unpushed messages into packs with live
    objects; once sync replaced them, the pack is written again without them (a
    small pack in a cycle; a large one once they are a quarter of it, or when the
    storage closes: CI saw the background repack fold them into a pack where they
    were less)."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(a, "a").publish_many([f"live:{i}" for i in range(live)])
    synced(a, target(url, "a", max_attempts=20))  # in chunks (replay.CHUNK)
    unpushed = max(100, live // 2)  # in a large pack: past a quarter (REWRITE_SHARE)
    producer(a, "a").publish_many([f"a:{i}" for i in range(unpushed)])
    a.repack_now()
    assert packing.count_loose(a.git_dir / "objects") < packing.CATCH_UP_LOOSE
    producer(b, "b").publish("b0")
    synced(b, target(url, "b"))
    report = synced(a, target(url, "a", max_attempts=20))
    assert report.reparented == unpushed
    if live <= 50:  # a small pack is written again without them in a cycle
        assert report.orphans_removed + swept(a, target(url, "a")) >= unpushed
    else:  # in a large pack, once they are a quarter of it, or at the latest at close
        wait_packed(a.git_dir)
        a.close()
        assert unreachable_commits(a.git_dir) == []
    fsck(a.git_dir)
    landed = [m.payload for m in remote_messages(central, "orders")]
    assert landed[live:] == ["b0", *[f"a:{i}" for i in range(unpushed)]]


def swept(storage: Storage, tgt: SyncTarget) -> int:
    """Sync until no replaced copy is left; returns how many the cycles deleted. They
    go at once, or (when a background repack held the repack lock) in a later cycle:
    discard never waits."""
    removed = 0

    def clean() -> bool:
        nonlocal removed
        wait_packed(storage.git_dir)
        removed += synced(storage, tgt).orphans_removed
        wait_packed(storage.git_dir)
        return unreachable_commits(storage.git_dir) == []

    wait_for(clean, 60, "the replaced copies to go")
    return removed


def unreachable_commits(git_dir: Path) -> list[str]:
    """Commits no ref (nor reflog) reaches: orphan copies."""
    out = git(git_dir, "fsck", "--unreachable", "--no-progress").decode()
    return [ln.split()[2] for ln in out.splitlines() if ln.startswith("unreachable commit")]


# ------------------------------------------------------------------ concurrency


@pytest.mark.slow
def test_ten_nodes_pushing_one_branch_at_once_land_everything_once(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    url = git_daemon.url("central.git")
    names = [f"n{i}" for i in range(10)]
    for name in names:
        producer(storages[name], name).publish_many([f"{name}:{i}" for i in range(20)])
    start = threading.Barrier(len(names))
    reports: dict[str, list[SyncReport]] = {name: [] for name in names}

    def node(name: str) -> None:
        storage, tgt = storages[name], target(url, name, max_attempts=3)
        start.wait()
        for _ in range(20):  # a cycle that gave up after 3 rejections runs again
            reports[name].append(sync_once(storage, tgt))
            if reports[name][-1].ok:
                return

    threads = [threading.Thread(target=node, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(r[-1].ok for r in reports.values()), {n: r[-1].line() for n, r in reports.items()}
    expected = [f"{name}:{i}" for name in names for i in range(20)]
    landed = assert_landed_once(central, "orders", expected)
    assert in_producer_order([m.payload for m in landed])
    assert sum(r.rejections for rs in reports.values() for r in rs) > 0  # they did collide
    for name in names:
        synced(storages[name], target(url, name))
        assert head(storages[name]) == landed[-1].sha


def test_producers_keep_publishing_while_sync_runs(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    done = threading.Event()

    def produce(storage: Storage, name: str) -> None:
        publish = producer(storage, name).publish
        for i in range(150):
            publish(f"{name}:{i}")
        done.set()

    def sync_until_done(storage: Storage, name: str) -> None:
        tgt = target(url, name, max_attempts=20)
        while not done.is_set():
            sync_once(storage, tgt)

    threads = [
        threading.Thread(target=produce, args=(a, "pa")),
        threading.Thread(target=produce, args=(b, "pb")),
        threading.Thread(target=sync_until_done, args=(a, "a")),
        threading.Thread(target=sync_until_done, args=(b, "b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for _ in range(2):
        synced(a, target(url, "a"))
        synced(b, target(url, "b"))
    expected = [f"{p}:{i}" for p in ("pa", "pb") for i in range(150)]
    landed = assert_landed_once(central, "orders", expected)
    assert in_producer_order([m.payload for m in landed])
    assert head(a) == head(b) == landed[-1].sha
    assert len(landed_ids(central)) == 300


# ------------------------------------------------------------------ smart HTTP with a token


@pytest.fixture
def http_central(smart_http: SmartHttp) -> Path:
    return make_bare(smart_http.root, "central.git")


def test_sync_over_smart_http_with_a_token(
    smart_http: SmartHttp, http_central: Path, storages: dict[str, Storage]
) -> None:
    a, b = storages["a"], storages["b"]
    url = smart_http.url("central.git")
    good = Credentials(token=smart_http.token, token_user=smart_http.user, timeout=20)
    producer(a, "a").publish("over https")
    assert synced(a, target(url, "a", credentials=good)).pushes == 1
    assert synced(b, target(url, "b", credentials=good)).fetched == 1
    assert [m.text for m in consumer(b, "c").poll()] == ["over https"]
    assert_landed_once(http_central, "orders", ["over https"])


def test_a_wrong_token_is_a_clear_error_and_nothing_is_lost(
    smart_http: SmartHttp, http_central: Path, storages: dict[str, Storage]
) -> None:
    a = storages["a"]
    url = smart_http.url("central.git")
    wrong = Credentials(token="gmq_wrong", token_user=smart_http.user, timeout=20)
    for i in range(3):
        producer(a, "a").publish(f"p:{i}")
        report = sync_once(a, target(url, "a", credentials=wrong))
        assert report.error == (
            f"remote {url}: listing refs was refused: authentication failed (fatal: could not "
            f"read Username for 'http://127.0.0.1:{smart_http.port}': terminal prompts "
            f"disabled); check the token variable or the ssh key and known_hosts of this remote"
        )
        assert "gmq_wrong" not in report.error and report.pushes == 0
    assert git(http_central, "for-each-ref").decode() == ""
    assert a.count(None, head(a)) == 3
    assert "gmq_" not in (a.git_dir / "config").read_text()

    good = Credentials(token=smart_http.token, token_user=smart_http.user, timeout=20)
    report = synced(a, target(url, "a", credentials=good))
    assert (report.pushes, report.pushed_messages) == (1, 3)
    landed = assert_landed_once(http_central, "orders", ["p:0", "p:1", "p:2"])
    assert [m.payload for m in landed] == ["p:0", "p:1", "p:2"]


# ------------------------------------------------------------------ ssh


@pytest.fixture
def ssh_central(ssh_server: SshServer) -> Path:
    return make_bare(ssh_server.root, "central.git")


def _round_trip(a: Storage, b: Storage, central: Path, url: str, credentials: Credentials) -> None:
    producer(a, "a").publish("over ssh")
    assert synced(a, target(url, "a", credentials=credentials)).pushes == 1
    assert synced(b, target(url, "b", credentials=credentials)).fetched == 1
    assert [m.text for m in consumer(b, "c").poll()] == ["over ssh"]
    assert_landed_once(central, "orders", ["over ssh"])


def test_sync_over_ssh_url_with_a_key_and_known_hosts(
    ssh_server: SshServer, ssh_central: Path, storages: dict[str, Storage]
) -> None:
    creds = Credentials(
        ssh_key=ssh_server.client_key, known_hosts=ssh_server.known_hosts, timeout=20
    )
    url = ssh_server.url("central.git")
    assert url.startswith("ssh://")
    _round_trip(storages["a"], storages["b"], ssh_central, url, creds)


def test_sync_over_the_scp_like_alias_with_an_ssh_config(
    ssh_server: SshServer, ssh_central: Path, storages: dict[str, Storage]
) -> None:
    url = ssh_server.scp_url("central.git")
    assert "://" not in url
    creds = Credentials(ssh_config=ssh_server.ssh_config, timeout=20)
    _round_trip(storages["a"], storages["b"], ssh_central, url, creds)


def test_an_unknown_host_key_is_refused_clearly(
    ssh_server: SshServer, ssh_central: Path, storages: dict[str, Storage], tmp_path: Path
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    creds = Credentials(ssh_key=ssh_server.client_key, known_hosts=empty, timeout=20)
    url = ssh_server.url("central.git")
    report = sync_once(storages["a"], target(url, "a", credentials=creds))
    assert report.error is not None
    assert report.error.startswith(f"remote {url}: listing refs was refused: authentication failed")
    assert report.error.endswith(
        "check the token variable or the ssh key and known_hosts of this remote"
    )


def test_an_ssh_remote_that_is_down_says_why_before_gits_own_line(
    ssh_server: SshServer, storages: dict[str, Storage]
) -> None:
    creds = Credentials(
        ssh_key=ssh_server.client_key, known_hosts=ssh_server.known_hosts, timeout=20
    )
    url = ssh_server.url("central.git")
    port = ssh_server.require_port()
    ssh_server.stop()
    report = sync_once(storages["a"], target(url, "a", credentials=creds))
    assert report.error == (
        f"remote {url}: listing refs failed: ssh: connect to host 127.0.0.1 port {port}: "
        f"Connection refused; fatal: Could not read from remote repository."
    )


def test_a_lock_left_by_a_killed_fetch_does_not_block_sync_forever(
    git_daemon: GitDaemon, central: Path, storages: dict[str, Storage]
) -> None:
    """SIGKILL while ``git fetch`` holds a tracking ref's lock leaves ``<ref>.lock`` behind."""
    a, b = storages["a"], storages["b"]
    url = git_daemon.url("central.git")
    producer(b, "b").publish("b:0")
    synced(b, target(url, "b"))
    synced(a, target(url, "a"))
    lock = a.git_dir / (tracking_ref(REMOTE, "orders") + ".lock")
    lock.write_text("")
    old = time.time() - 3600  # left an hour ago by a process that is long dead
    os.utime(lock, (old, old))
    producer(b, "b").publish("b:1")
    synced(b, target(url, "b"))
    producer(a, "a").publish("a:0")
    report = synced(a, target(url, "a"))
    assert (report.fetched, report.pushed_messages) == (1, 1)
    assert_landed_once(central, "orders", ["b:0", "b:1", "a:0"])


def test_the_backoff_shrinks_with_each_rejection_in_a_row() -> None:
    """The node that lost most goes first: never longer than the attempt took divided by
    the rejections in a row, and never more than a second."""
    for attempt in range(1, 8):
        waits = [backoff(attempt, 0.4) for _ in range(200)]
        assert all(0.0 <= w <= 0.4 / attempt for w in waits)
        assert max(waits) > 0.4 / attempt / 2  # random over the range, not a constant
    assert all(backoff(1, 30.0) <= 1.0 for _ in range(100))


def test_the_chunk_halves_on_each_rejection_and_doubles_on_each_push() -> None:
    state = ReplayState()
    assert state.chunk == CHUNK
    for _ in range(20):
        state.lost()
    assert state.chunk == MIN_CHUNK
    state.won()
    assert state.chunk == 2 * MIN_CHUNK
    for _ in range(20):
        state.won()
    assert state.chunk == CHUNK
