"""Deleting objects while everything else runs (issue 8): pruning, the orphan sweep and
sync's own clean-up never delete an object that a ref names when it is deleted.

The interleavings are forced with seams at the collector's snapshot (every step is real
git on real repositories), then raced for real in a loop; ``git fsck`` judges. The
grace period that protects writers outside GitMQ is set to 0 where a test is about
GitMQ's own writers, so only the reachability guard can save their objects.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from servers import GitDaemon
from util import EMPTY_TREE, fsck, git_text, run, wait_for

from gitmq import Identity, Producer, Storage
from gitmq.config import PrunePolicy
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
    a, b = storages["a"], storages["b"]
    old = datetime.now(UTC) - timedelta(hours=2)
    Producer(b, "orders", author=AUTHOR, clock=lambda: old).publish_many(
        [f"order {i}" for i in range(300)]
    )
    assert sync_once(b, target(url, "b"), now=lambda: old).ok
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
    a, b = storages["a"], storages["b"]
    old = datetime.now(UTC) - timedelta(hours=2)
    Producer(b, "orders", author=AUTHOR, clock=lambda: old).publish_many(
        [f"order {i}" for i in range(300)]
    )
    assert sync_once(b, target(url, "b"), now=lambda: old).ok
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
