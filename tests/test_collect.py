"""Deleting objects while everything else runs (issue 8): pruning, the orphan sweep and
sync's own clean-up never delete an object that a ref names when it is deleted.

The interleavings are forced with seams at the collector's snapshot (every step is real
git on real repositories), then raced for real in a loop; ``git fsck`` judges. The
grace period that protects writers outside GitMQ is set to 0 where a test is about
GitMQ's own writers, so only the reachability guard can save their objects.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nodes import Cluster, assert_landed_once
from servers import GitDaemon
from util import EMPTY_TREE, deleted_packs_held, disk_use, fsck, git, git_text, run, wait_for

from gitmq import Consumer, Identity, Producer, Storage
from gitmq.config import PrunePolicy
from gitmq.errors import NotFoundError, UsageError
from gitmq.prune import prune_queue
from gitmq.storage import collect, gitcli, guard
from gitmq.storage.remote import Credentials
from gitmq.sync import SyncTarget, sync_once, tracking_ref

REMOTE = "central"
AUTHOR = Identity("Producer", "producer@test")


def target(url: str, node: str, queues: tuple[str, ...] = ("orders",)) -> SyncTarget:
    return SyncTarget(
        remote=REMOTE,
        url=url,
        queues=queues,
        consumers=(),
        committer=Identity(f"Node {node}", f"{node}@test"),
        credentials=Credentials(timeout=60),
    )


def prune_local(storage: Storage, keep: int = 10) -> None:
    """Prune the local-only queue ``local`` (it takes no sync lock: only the guard)."""
    prune_queue(storage, "local", PrunePolicy(max_messages=keep), now=datetime.now(UTC))


def loose_commit(storage: Storage, text: str, parent: str | None = None) -> str:
    stamp = f"{int(time.time()) - 7200} +0000"  # written two hours ago, by its time
    head = f"tree {EMPTY_TREE}\n" + (f"parent {parent}\n" if parent else "")
    body = f"{head}author A <a@test> {stamp}\ncommitter A <a@test> {stamp}\n\n{text}\n"
    return storage.write_commits([body.encode()])[0]


def resolves(storage: Storage, ref: str) -> int:
    """How many commits ``ref`` reaches; fails if any is missing."""
    return int(git_text(storage.git_dir, "rev-list", "--count", ref))


def pushed_two_hours_ago(b: Storage, url: str) -> None:
    """Node b published 300 messages two hours ago and pushed them then."""
    old = datetime.now(UTC) - timedelta(hours=2)
    Producer(b, "orders", author=AUTHOR, clock=lambda: old).publish_many(
        [f"order {i}" for i in range(300)]
    )
    assert sync_once(b, target(url, "b"), now=lambda: old).ok


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collect, "ORPHAN_GRACE", 0.0)


def after_snapshot(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> list[int]:
    """Run ``action`` once, right after the collector's snapshot (it has listed the
    objects and what the refs reach, and has deleted nothing yet)."""
    fired: list[int] = []
    real = collect._snapshot

    def hooked(git_dir: Path, tips: collect.Tips) -> Any:
        snap = real(git_dir, tips)
        if not fired:
            fired.append(1)
            action()
        return snap

    monkeypatch.setattr(collect, "_snapshot", hooked)
    return fired


# ------------------------------------------------------------------ forced interleavings


def collector_waiting(storage: Storage) -> bool:
    """Whether a collector holds the guard's gate: it waits for writers to finish."""
    fd = os.open(storage.git_dir / guard.GATE_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_writer_inside_the_guard_makes_the_collector_wait_for_its_ref(
    storages: dict[str, Storage], no_grace: None
) -> None:
    """A writer wrote its commit before the collector listed the objects and sets its
    ref only once the collector is ready to delete: the commit looks like an orphan
    throughout the snapshot. A GitMQ writer holds the guard from writing to setting the
    ref, so the collector waits for it, sees the new ref and keeps the commit."""
    a = storages["a"]
    Producer(a, "local", author=AUTHOR).publish_many([f"l{i}" for i in range(50)])
    written = threading.Event()
    shas: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        other = Storage(a.path)  # another process, as far as the locks can tell
        try:
            with other.writing():
                shas.append(loose_commit(other, "late"))
                written.set()
                wait_for(lambda: collector_waiting(a), 60, "the collector", interval=0.0005)
                assert other.compare_and_swap("refs/tags/late", shas[0], None)
        except BaseException as exc:
            errors.append(exc)
            written.set()
        finally:
            other.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert written.wait(30)
    prune_local(a)
    thread.join(60)
    assert not errors, errors
    assert a.read_ref("refs/tags/late") == shas[0]
    assert resolves(a, "refs/tags/late") == 1
    assert resolves(a, "refs/heads/local") == 10
    fsck(a.git_dir)


def test_without_the_guard_such_a_writer_would_lose_its_object(
    storages: dict[str, Storage], no_grace: None
) -> None:
    """The control for the test above: the same commit, its ref set after the collector
    finished, by a writer that held no guard (git by hand, and no grace period)."""
    a = storages["a"]
    Producer(a, "local", author=AUTHOR).publish_many([f"l{i}" for i in range(50)])
    sha = loose_commit(a, "late")
    prune_local(a)
    assert run(["git", f"--git-dir={a.git_dir}", "cat-file", "-e", sha]).status != 0


def test_a_fetch_of_objects_already_here_during_a_prune_keeps_them(
    git_daemon: GitDaemon,
    central: Path,
    storages: dict[str, Storage],
    monkeypatch: pytest.MonkeyPatch,
    no_grace: None,
) -> None:
    """Node a had fetched 300 messages once and dropped the ref (a segment it forgot,
    a queue it stopped syncing): the commits are unreachable here. Its sync fetches
    them again right after a prune's snapshot; git finds every object present and only
    sets the ref, so the commits the prune took for orphans are named again."""
    url = git_daemon.url("central.git")
    a = storages["a"]
    pushed_two_hours_ago(storages["b"], url)
    assert sync_once(a, target(url, "a")).ok
    tracking = tracking_ref(REMOTE, "orders")
    tip = a.read_ref(tracking)
    assert tip and a.delete_ref(tracking, tip) and a.delete_ref("refs/heads/orders", tip)
    a.set_upstream("orders", None)
    Producer(a, "local", author=AUTHOR).publish_many([f"l{i}" for i in range(50)])
    reports = []
    fired = after_snapshot(monkeypatch, lambda: reports.append(sync_once(a, target(url, "a"))))
    prune_local(a)
    assert fired and reports[0].ok, reports[0].line()
    assert a.read_ref(tracking) == tip
    assert resolves(a, tracking) == 300
    assert resolves(a, "refs/heads/local") == 10
    fsck(a.git_dir)


def test_a_fetch_that_lands_during_the_snapshot_keeps_its_commits(
    git_daemon: GitDaemon,
    central: Path,
    storages: dict[str, Storage],
    monkeypatch: pytest.MonkeyPatch,
    no_grace: None,
) -> None:
    """The reproduction from the issue: node b pushed 300 messages two hours ago; node a
    prunes a local-only queue while its sync fetches them, between the prune's listing
    of what is reachable and its deletions."""
    url = git_daemon.url("central.git")
    a = storages["a"]
    pushed_two_hours_ago(storages["b"], url)
    Producer(a, "local", author=AUTHOR).publish_many([f"l{i}" for i in range(50)])
    real_run = gitcli.run
    fired: list[int] = []

    def hooked(git_dir: Path | None, args: Sequence[str], **kw: Any) -> Any:
        out = real_run(git_dir, args, **kw)
        if list(args)[:2] == ["rev-list", "--all"] and not fired:
            fired.append(1)
            assert sync_once(a, target(url, "a")).ok  # the node's sync thread, right now
        return out

    monkeypatch.setattr(collect.gitcli, "run", hooked)
    prune_local(a)
    assert fired
    assert resolves(a, tracking_ref(REMOTE, "orders")) == 300
    fsck(a.git_dir)


# ------------------------------------------------------------------ raced for real


@pytest.mark.slow
def test_prunes_raced_against_sync_producers_consumers_and_seeks_lose_nothing(
    git_daemon: GitDaemon, central: Path, tmp_path: Path, no_grace: None
) -> None:
    """Eight seconds of everything at once, each thread with a storage of its own (as
    separate processes would have): node b publishes and syncs, so node a's fetches keep
    bringing objects; on node a a producer writes a synced and a local-only queue, a
    sync loop fetches, re-parents and pushes, a consumer acknowledges, a seeker moves a
    tag back and forth over old messages, and a pruner prunes both queues, with no
    grace period. Afterwards every ref resolves, fsck is clean, and every message
    published reached the remote exactly once."""
    url = git_daemon.url("central.git")
    path_a, path_b = tmp_path / "a.git", tmp_path / "b.git"
    deadline = time.monotonic() + 8.0
    errors: list[str] = []
    published: list[str] = []

    def loop(name: str, path: Path, body: Callable[[Storage, int], None]) -> threading.Thread:
        def run_loop() -> None:
            storage = Storage(path)
            try:
                i = 0
                while time.monotonic() < deadline:
                    body(storage, i)
                    i += 1
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
            finally:
                storage.close()

        return threading.Thread(target=run_loop, name=name)

    def produce_b(s: Storage, i: int) -> None:
        Producer(s, "orders", author=AUTHOR).publish_many([f"b:{i}:{j}" for j in range(30)])
        published.extend(f"b:{i}:{j}" for j in range(30))
        contended_sync(s, "b")
        time.sleep(0.05)

    def produce_a(s: Storage, i: int) -> None:
        Producer(s, "orders", author=AUTHOR).publish(f"a:{i}")
        published.append(f"a:{i}")
        Producer(s, "local", author=AUTHOR).publish(f"l:{i}")

    def contended_sync(s: Storage, node: str) -> None:
        """A sync that may lose every push to the other node (it tries again), nothing else."""
        report = sync_once(s, target(url, node))
        assert report.ok or report.error.startswith("push rejected"), report.line()

    def sync_a(s: Storage, i: int) -> None:
        contended_sync(s, "a")

    def consume_a(s: Storage, i: int) -> None:
        if s.read_ref(tracking_ref(REMOTE, "orders")) is not None:
            Consumer(s, "c", "orders").deliver_pending(lambda m: None)
        time.sleep(0.01)

    def seek_a(s: Storage, i: int) -> None:
        consumer = Consumer(s, "s", "local")
        tip = s.read_ref("refs/heads/local")
        shas = s.commits_between(None, tip) if tip and i % 2 else []
        with contextlib.suppress(NotFoundError, UsageError):  # pruned meanwhile
            consumer.seek(shas[len(shas) // 3] if shas else "end")
        time.sleep(0.005)

    def prune_a(s: Storage, i: int) -> None:
        prune_local(s, keep=20)
        policy = PrunePolicy(max_messages=50, keep_unconsumed=False)
        prune_queue(s, "orders", policy, now=datetime.now(UTC), remote=REMOTE)

    Storage(path_a).close()
    Storage(path_b).close()
    threads = [
        loop("b", path_b, produce_b),
        loop("producer", path_a, produce_a),
        loop("sync", path_a, sync_a),
        loop("consumer", path_a, consume_a),
        loop("seeker", path_a, seek_a),
        loop("pruner", path_a, prune_a),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    with Storage(path_a) as a, Storage(path_b) as b:
        for storage, node in ((a, "a"), (b, "b"), (a, "a")):
            assert sync_once(storage, target(url, node)).ok
        for ref in a.list_refs("refs/"):
            resolves(a, ref)
    fsck(path_a)
    fsck(central)
    assert_landed_once(central, "orders", published)


# ------------------------------------------------------------------ a running node


@pytest.mark.slow
def test_a_running_node_frees_the_disk_that_prune_and_repack_free(
    tmp_path: Path, git_daemon: GitDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node delivers 20,000 messages (its reader opens their packs), then its prune
    job drops them and rewrites the packs; afterwards a repack by another process
    deletes the packs it has read since. Neither leaves a deleted pack open or mapped
    in the node or its git children, and the storage takes a fraction of the disk."""
    queues = {"local": {"prune": {"max_messages": 100, "schedule": "2s"}}}
    with Cluster(tmp_path / "cluster", git_daemon.url("central.git")) as cluster:
        node = cluster.node("a", {"c": "local"}, python_handler=True, extra={"queues": queues})
        monkeypatch.setenv("GITMQ_TEST_RECORD", str(node.consumer_log("c")))
        monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
        with Storage(node.storage) as storage:
            producer = Producer(storage, "local", author=AUTHOR)
            for _ in range(4):
                producer.publish_many([os.urandom(500).hex() for _i in range(5000)])
        before = disk_use(node.storage)
        proc = node.start("--log-format", "json")
        wait_for(lambda: len(node.received("c")) >= 20_000, 120, "delivery", procs=[proc])
        wait_for(
            lambda: any(
                r["prune"]["total"] - r["prune"]["dropped"] == 100
                for r in node.json_log()
                if "prune" in r
            ),
            60,
            "a prune down to 100 messages",
            procs=[proc],
        )
        wait_for(lambda: not deleted_packs_held(proc.pid), 10, "the pruned packs let go")
        after_prune = disk_use(node.storage)
        assert after_prune < before / 4, (before, after_prune)

        with Storage(node.storage) as storage:
            Producer(storage, "local", author=AUTHOR).publish_many(
                [os.urandom(500).hex() for _ in range(5000)]
            )
        wait_for(lambda: len(node.received("c")) >= 25_000, 60, "delivery", procs=[proc])
        git(node.storage, "repack", "-a", "-d", "-q")  # another process deletes the packs
        wait_for(lambda: not deleted_packs_held(proc.pid), 10, "the repacked packs let go")
        assert node.stop() == 0, node.log_text()
    fsck(node.storage)


def test_pack_hits_agrees_with_the_whole_index(tmp_path: Path) -> None:
    """Looked up one by one (a few names) or read whole (many), the same answer."""
    storage = Storage(tmp_path / "s.git")
    Producer(storage, "orders", author=AUTHOR).publish_many([f"m{i}" for i in range(3000)])
    storage.repack_now()
    idx = max((storage.git_dir / "objects" / "pack").glob("*.idx"), key=collect.pack_count)
    names = collect.pack_names(idx)
    assert len(names) >= 3000
    absent = {"0" * 40, "f" * 40, "00" + names[0][2:-1] + "0"} - set(names)
    few = {names[0], names[-1], names[1500]} | absent
    assert sorted(collect.pack_hits(idx, few)) == sorted({names[0], names[-1], names[1500]})
    many = set(names[::2]) | absent
    assert sorted(collect.pack_hits(idx, many)) == sorted(names[::2])
    storage.close()
