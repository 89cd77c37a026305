"""The storage: a git repository opened or created, refs moved by compare-and-swap."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import branch_shas, fsck, git, git_text, rev_parse, run, snapshot, wait_for

from gitmq import Consumer, Producer, Storage
from gitmq.errors import RefConflictError, StorageError
from gitmq.storage import refs


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    with Storage(tmp_path / "q") as storage:
        yield storage


# ---------------------------------------------------------------- opening


def test_creates_a_bare_repository_with_an_unborn_head(tmp_path: Path) -> None:
    path = tmp_path / "new" / "queue.git"
    with Storage(path) as storage:
        assert storage.path == path
        assert storage.git_dir == path
    assert git_text(path, "rev-parse", "--is-bare-repository") == "true"
    assert git_text(path, "symbolic-ref", "HEAD") == "refs/heads/master"
    assert rev_parse(path, "HEAD") is None
    fsck(path)


def test_creates_in_an_existing_empty_directory(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.mkdir()
    with Storage(path) as storage:
        Producer(storage, "orders").publish("x")
    assert git_text(path, "rev-parse", "--is-bare-repository") == "true"


def test_reopening_keeps_what_is_there(tmp_path: Path) -> None:
    with Storage(tmp_path / "q") as storage:
        sha = Producer(storage, "orders").publish("x").sha
    with Storage(tmp_path / "q", create=False) as storage:
        assert storage.read_ref("refs/heads/orders") == sha
        assert storage.read(sha).payload == b"x"


def test_opens_a_non_bare_repository_through_its_git_dir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert run(["git", "init", "-q", str(work)]).status == 0
    (work / "README").write_text("a working tree file\n")
    with Storage(work) as storage:
        assert storage.git_dir == work / ".git"
        message = Producer(storage, "orders").publish("x")
    assert rev_parse(work / ".git", "refs/heads/orders") == message.sha
    assert (work / "README").read_text() == "a working tree file\n"


def test_path_that_is_a_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"precious")
    with pytest.raises(StorageError) as info:
        Storage(path)
    assert info.value.message == (
        f"storage path {path} is a file, not a directory; choose another path"
    )
    assert info.value.exit_code == 3
    assert path.read_bytes() == b"precious"


def test_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"precious")
    with pytest.raises(StorageError, match=r"cannot create storage at .*/file/q"):
        Storage(tmp_path / "file" / "q")
    assert (tmp_path / "file").read_bytes() == b"precious"


def test_non_git_non_empty_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "photos"
    (path / "2024").mkdir(parents=True)
    (path / "2024" / "a.jpg").write_bytes(b"\xff\xd8")
    (path / "notes.txt").write_text("hi")
    before = snapshot(path)
    with pytest.raises(StorageError) as info:
        Storage(path)
    assert info.value.message == (
        f"storage path {path} is not a git repository and not empty; "
        f"point at a GitMQ storage, an empty directory or a new path"
    )
    assert snapshot(path) == before


def test_missing_storage_is_not_created_when_create_is_false(tmp_path: Path) -> None:
    path = tmp_path / "nothing"
    with pytest.raises(StorageError) as info:
        Storage(path, create=False)
    assert info.value.message == (
        f"no storage at {path}; create it first (gitmq creates it on publish)"
    )
    assert not path.exists()


def test_close_is_idempotent_and_leaves_no_process(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "q")
    sha = Producer(storage, "orders").publish("x").sha
    assert storage.read(sha).payload == b"x"  # starts git cat-file
    storage.close()
    storage.close()
    gc.collect()  # a leaked cat-file process would raise ResourceWarning (an error here)


# ------------------------------------------------------------ corrupted refs


@pytest.mark.parametrize(
    "content",
    [b"garbage\n", b"", b"0123456789abcdef\n", b"ref: refs/heads/other\n", b"\x00\x01\x02"],
    ids=["garbage", "empty", "truncated", "symbolic", "binary"],
)
def test_corrupted_branch_ref_is_a_clear_error_and_nothing_changes(
    storage: Storage, content: bytes
) -> None:
    Producer(storage, "orders").publish("one")
    (storage.git_dir / "refs/heads/orders").write_bytes(content)
    before = snapshot(storage.path)
    shown = content.decode("ascii", "replace").strip()[:60]
    expected = (
        f"ref refs/heads/orders in {storage.git_dir} is corrupted (holds {shown!r}); "
        f"restore it from the remote or point it at a commit with 'git update-ref'"
    )
    with pytest.raises(StorageError) as publish_error:
        Producer(storage, "orders").publish("two")
    assert publish_error.value.message == expected
    with pytest.raises(StorageError) as poll_error:
        list(Consumer(storage, "c", "orders").poll())
    assert poll_error.value.message == expected
    assert snapshot(storage.path) == before  # no commit, no lock file left behind


def test_corrupted_consumer_tag_is_a_clear_error_and_nothing_changes(storage: Storage) -> None:
    message = Producer(storage, "orders").publish("one")
    (storage.git_dir / "refs/tags").mkdir(exist_ok=True)
    (storage.git_dir / "refs/tags/c").write_bytes(b"not a sha\n")
    before = snapshot(storage.path)
    consumer = Consumer(storage, "c", "orders")
    with pytest.raises(StorageError, match=r"ref refs/tags/c in .* is corrupted"):
        list(consumer.poll())
    with pytest.raises(StorageError, match=r"ref refs/tags/c in .* is corrupted"):
        consumer.ack(message)
    assert snapshot(storage.path) == before


@pytest.mark.parametrize("target", ["missing", "tree"])
def test_branch_pointing_at_no_commit_is_refused_and_nothing_is_written(
    storage: Storage, target: str
) -> None:
    """A ref left pointing at a missing object (a crash, a partial copy) must not
    get new messages hung off it: that would corrupt the queue for good."""
    Producer(storage, "orders").publish("one")
    bad = "1234567890" * 4 if target == "missing" else git_text(storage.path, "mktree")
    (storage.git_dir / "refs/heads/orders").write_text(bad + "\n")
    before = snapshot(storage.path)
    with pytest.raises(StorageError, match=f"refs/heads/orders points at {bad}"):
        Producer(storage, "orders").publish("two")
    with pytest.raises(StorageError, match=f"refs/heads/orders points at {bad}"):
        Producer(storage, "orders").publish_many(["a"] * 100)
    assert snapshot(storage.path) == before


# --------------------------------------------------------- compare-and-swap


def test_compare_and_swap_moves_only_from_the_expected_value(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    a, b = producer.publish("a"), producer.publish("b")
    ref = "refs/tags/c"
    assert storage.compare_and_swap(ref, a.sha, None)
    assert not storage.compare_and_swap(ref, b.sha, None)  # exists: not created twice
    assert not storage.compare_and_swap(ref, b.sha, b.sha)  # stale old value
    assert storage.read_ref(ref) == a.sha
    assert storage.compare_and_swap(ref, b.sha, a.sha)
    assert rev_parse(storage.path, ref) == b.sha
    assert not storage.delete_ref(ref, a.sha)
    assert storage.delete_ref(ref, b.sha)
    assert rev_parse(storage.path, ref) is None


def test_a_held_ref_lock_makes_writers_wait_then_fail_clearly(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Git's own lock file protocol: while someone holds <ref>.lock nobody moves the ref."""
    monkeypatch.setattr(refs, "LOCK_TIMEOUT_SECONDS", 0.3)
    Producer(storage, "orders").publish("one")
    lock = storage.git_dir / "refs/heads/orders.lock"
    lock.write_text("held by another process\n")
    before = snapshot(storage.path)
    with pytest.raises(RefConflictError) as info:
        Producer(storage, "orders").publish("two")
    assert info.value.message == (
        f"ref refs/heads/orders stayed locked for 0.3s ({lock}); "
        f"if no gitmq or git process is running, delete that file"
    )
    assert snapshot(storage.path) == before


def test_a_stale_lock_left_by_a_killed_process_is_removed(storage: Storage) -> None:
    first = Producer(storage, "orders").publish("one")
    lock = storage.git_dir / "refs/heads/orders.lock"
    lock.write_text("")
    old = time.time() - refs.STALE_LOCK_SECONDS - 5
    os.utime(lock, (old, old))
    second = Producer(storage, "orders").publish("two")
    assert branch_shas(storage.path, "orders") == [first.sha, second.sha]
    assert not lock.exists()


def test_git_and_gitmq_share_the_lock_protocol(storage: Storage) -> None:
    """`git update-ref` with an old value fails while GitMQ holds the lock, and vice versa."""
    a = Producer(storage, "orders").publish("a")
    with storage.refs.locked("refs/heads/orders") as held:
        result = run(["git", f"--git-dir={storage.path}", "update-ref", "refs/heads/orders", a.sha])
        assert result.status != 0
        assert "refs/heads/orders.lock" in result.err
        held.new = None
    assert rev_parse(storage.path, "refs/heads/orders") == a.sha


# --------------------------------------------------------------- packed refs


def test_packed_refs_are_read_and_updated(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    a = producer.publish("a")
    consumer = Consumer(storage, "c", "orders")
    consumer.ack(a)
    git(storage.path, "pack-refs", "--all")
    assert not (storage.git_dir / "refs/heads/orders").exists()
    assert not (storage.git_dir / "refs/tags/c").exists()
    assert consumer.position == a.sha
    b = producer.publish("b")
    assert [m.payload for m in consumer.poll()] == [b"b"]
    consumer.ack(b)
    assert rev_parse(storage.path, "refs/heads/orders") == b.sha
    assert rev_parse(storage.path, "refs/tags/c") == b.sha
    assert storage.list_refs("refs/heads/") == {"refs/heads/orders": b.sha}
    assert storage.list_refs("refs/tags/") == {"refs/tags/c": b.sha}
    fsck(storage.path)


# ------------------------------------------------------------------ packing


def test_background_repack_keeps_the_repository_valid(tmp_path: Path) -> None:
    """Enough batches start one background repack; closing the storage while it
    runs leaves it to finish (without a ResourceWarning, an error here); the
    result packs everything and passes fsck."""
    path = tmp_path / "q"
    with Storage(path) as storage:
        producer = Producer(storage, "orders")
        for batch in range(10):
            producer.publish_many([f"{batch}/{i}" for i in range(64)])
        producer.publish_many(["x"] * 10)
    lock = path / "gitmq-repack.lock"

    def packs() -> list[Path]:
        return list((path / "objects" / "pack").glob("*.pack"))

    # Before the repack: 10 packs; during it: the lock; after it: neither.
    wait_for(
        lambda: not lock.exists() and len(packs()) <= 2,
        what="the background repack to merge the 10 batch packs",
    )
    with Storage(path) as storage:
        storage.repack_now()
        assert len(packs()) <= 2
        assert len(branch_shas(path, "orders")) == 650
        assert storage.count(None, storage.read_ref("refs/heads/orders")) == 650
    fsck(path)


def test_a_writer_whose_lock_was_taken_over_changes_nothing(tmp_path: Path) -> None:
    """A lock broken as stale while its holder still writes: the holder must not
    rename the new owner's lock over the ref, nor delete it."""
    with Storage(tmp_path / "q") as storage:
        first = Producer(storage, "orders").publish("m0")
        store = storage.refs
        with (
            pytest.raises(RefConflictError, match="taken over while held"),
            store.locked("refs/heads/orders") as lock,
        ):
            lock.new = "1" * 40
            lock.lock_path.unlink()  # another process broke it as stale ...
            lock.lock_path.write_text("someone else's\n")  # ... and holds it now
        assert storage.read_ref("refs/heads/orders") == first.sha
        assert lock.lock_path.read_text() == "someone else's\n"


def test_merge_base_of_a_missing_commit_is_an_error_not_no_history(tmp_path: Path) -> None:
    with Storage(tmp_path / "q") as storage:
        message = Producer(storage, "orders").publish("m0")
        with pytest.raises(StorageError, match="merge-base"):
            storage.merge_base(message.sha, "0123456789" * 4)
        other = Producer(storage, "other").publish("unrelated root")
        assert storage.merge_base(message.sha, other.sha) is None


def test_wait_for_packing_returns_once_the_background_repack_packed_everything(
    tmp_path: Path,
) -> None:
    with Storage(tmp_path / "q") as storage:
        producer = Producer(storage, "orders")
        for i in range(1000):  # the 1,000th loose object starts the background repack
            producer.publish(f"m{i}")
        storage.wait_for_packing(timeout=120)
        assert not (storage.git_dir / "gitmq-repack.lock").exists()
        loose = [p for p in (storage.git_dir / "objects").glob("[0-9a-f][0-9a-f]/*")]
        assert len(loose) < 1000
        assert list((storage.git_dir / "objects" / "pack").glob("*.pack"))
