"""The Storage: one Git repository holding queues, messages and offsets.

This is GitMQ's only boundary to Git. Everything above it speaks of queues,
messages and consumer offsets; here they become refs and commit objects.
Writes happen in-process (``refs.py``, ``objects.py``), each under the
reachability guard (``guard.py``) so that no deletion races them; reads of
commits go through one long-lived ``git cat-file --batch`` (``reader.py``);
walks of history use ``git rev-list``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from gitmq import message as fmt
from gitmq.errors import GitCommandError, GitMQError, StorageError, UsageError
from gitmq.message import Draft, Identity, Message
from gitmq.storage import gitcli, history, objects, orphans, packing
from gitmq.storage.guard import ReachabilityGuard
from gitmq.storage.reader import ObjectReader
from gitmq.storage.refs import RefStore

#: Batches at least this large go into a pack of their own instead of loose files.
PACK_BATCH_MIN = 64
#: Objects written by one process before it starts a background repack.
REPACK_AFTER_OBJECTS = 1000
REPACK_AFTER_PACKS = 8
#: Loose objects written by this object that make close() start a repack.
CLOSE_REPACK_MIN = 100
#: The most ``close`` waits for a running repack before deleting replaced copies.
CLOSE_DISCARD_WAIT = 30.0


_BRANCHES = ("refs/heads/", "refs/remotes/")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_DISK_ADVICE = {
    errno.ENOSPC: "free space on that disk and try again",
    errno.EDQUOT: "raise the disk quota or free space and try again",
    errno.EROFS: "a storage on a read-only file system can only be read (log, status)",
    errno.EACCES: "run as the storage's owner or fix its permissions",
    errno.EPERM: "run as the storage's owner or fix its permissions",
}


def disk_error(path: Path, exc: OSError) -> StorageError | None:
    """The one-line error for a write to storage ``path`` that the file system refused
    (full, read-only, no permission), or None for any other failure."""
    advice = _DISK_ADVICE.get(exc.errno or 0)
    if advice is None:
        return None
    return StorageError(
        f"{(exc.strerror or 'error').lower()} writing to {path}; {advice} "
        f"(nothing was half-written)"
    )


_Method = Callable[Concatenate["Storage", _P], _R]


def _writes(method: _Method[_P, _R]) -> _Method[_P, _R]:
    """A method that writes to the storage: a refused write is a StorageError."""

    def wrapper(self: Storage, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            error = disk_error(self.path, exc)
            if error is None:
                raise
            raise error from exc

    wrapper.__doc__, wrapper.__name__ = method.__doc__, method.__name__
    return wrapper


class Storage:
    """A GitMQ storage: a (bare by default) Git repository, created if missing."""

    def __init__(self, path: str | Path, *, create: bool = True, fsync: bool = False) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise UsageError(f"a storage path must be a non-empty str or Path, not {path!r}")
        self.path = Path(path).expanduser().absolute()
        self._closed = False
        self.fsync = fsync
        self.git_dir = _open_or_create(self.path, create)
        self.objects_dir = self.git_dir / "objects"
        self.refs = RefStore(self.git_dir, fsync=fsync)
        self.guard = ReachabilityGuard(self.git_dir)
        self._reader = ObjectReader(self.git_dir, self.path)
        self._orphans = orphans.Orphans(self.git_dir, self.guard, self.tips)
        self._written_objects = 0
        self._written_packs = 0
        self._repack: subprocess.Popen[bytes] | None = None
        self._tips: dict[str, str] = {}  # branch tips known to be commits
        self._upstreams: dict[str, str] | None = None
        self._write_empty_tree()

    def require_writable(self) -> None:
        """Refuse, before anything is done, a storage this process cannot write to
        (commands that move tags or publish; reading needs no write access)."""
        if os.access(self.git_dir / "refs", os.W_OK):
            return
        read_only = os.statvfs(self.git_dir).f_flag & os.ST_RDONLY
        code = errno.EROFS if read_only else errno.EACCES
        error = disk_error(self.path, OSError(code, os.strerror(code)))
        assert error is not None
        raise error

    def _write_empty_tree(self) -> None:
        """Messages name the empty tree; reading needs no write (a read-only storage)."""
        if (self.objects_dir / fmt.EMPTY_TREE[:2] / fmt.EMPTY_TREE[2:]).exists():
            return
        try:
            objects.write_loose(self.objects_dir, objects.OBJ_TREE, b"")
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise disk_error(self.path, exc) or exc from exc

    def __repr__(self) -> str:
        return f"Storage({str(self.path)!r})"

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helper git processes this object holds; leave no pile of loose
        objects behind (a short-lived producer never reaches the repack trigger), nor
        replaced copies that a busy repack lock kept from going (waiting is fine now)."""
        self._closed = True
        if self._orphans.pending:
            packing.wait_idle(self.git_dir, CLOSE_DISCARD_WAIT)
            self._orphans.discard(set(), thorough=True)
        self._reader.close()
        self.guard.close()
        if self._written_objects >= CLOSE_REPACK_MIN and (
            self._repack is None or self._repack.poll() is not None
        ):
            self._repack = packing.start_background(self.git_dir)
            self._written_objects = 0
        repack, self._repack = self._repack, None
        if repack is not None and repack.poll() is None:
            # Detached on purpose: a repack outlives us and cleans its own lock.
            # Dropping a running Popen warns (ResourceWarning); subprocess reaps it.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                del repack

    # ----------------------------------------------------------------- writing

    @_writes
    def append(
        self,
        ref: str,
        drafts: Sequence[Draft],
        committer: Identity,
        now: Callable[[], datetime],
    ) -> list[Message]:
        """Append ``drafts`` to the branch ``ref`` as one compare-and-swap.

        The ref lock is held while the commits are built, so their parent is
        the value the branch has when it moves: concurrent producers, in any
        process, serialise here and never lose or fork a message.
        """
        if self._closed:
            raise UsageError(f"{self} is closed; open the storage again to publish")
        if ref == self._checked_out():
            raise UsageError(
                f"queue {ref.removeprefix('refs/heads/')!r} is the branch checked out in the "
                f"work tree {self.path}; publishing to it would leave that work tree behind. "
                f"Use a bare storage or another queue"
            )
        with self.guard.writing(), self.refs.locked(ref) as lock:
            stamp = now()
            parent = lock.current
            if parent is not None and parent != self._tips.get(ref):
                self._check_tip(ref, parent)
            bodies: list[bytes] = []
            out: list[Message] = []
            for draft in drafts:
                body = fmt.encode(draft, parent, committer, stamp)
                sha = objects.object_id(objects.OBJ_COMMIT, body)
                bodies.append(body)
                out.append(_placed(draft, sha, parent, committer))
                parent = sha
            self._write_commits(bodies)
            lock.new = parent
        if parent is not None:
            self._tips[ref] = parent
        return out

    def _checked_out(self) -> str | None:
        """The branch a non-bare storage's work tree has checked out (None when bare)."""
        if self.git_dir == self.path:
            return None
        with contextlib.suppress(OSError):
            head = (self.git_dir / "HEAD").read_text("utf-8", "replace").strip()
            if head.startswith("ref: "):
                return head[5:]
        return None

    def _check_tip(self, ref: str, tip: str) -> None:
        """Refuse to build on a tip that is not a commit here (a ref left by a crash
        or a partial copy): the new messages would hang off nothing, for good."""
        try:
            self.read_body(tip)
        except GitMQError as exc:
            exists = gitcli.run(self.git_dir, ["cat-file", "-e", tip], check=False)
            what = (
                f"not a commit in {self.path};"
                if exists.returncode == 0
                else f"missing from {self.path}; run 'git fsck' there, then"
            )
            raise StorageError(
                f"ref {ref} points at {tip}, which is {what} restore it from the remote or "
                f"point it at a commit with 'git update-ref'"
            ) from exc

    @_writes
    def write_commits(self, bodies: Sequence[bytes]) -> list[str]:
        """Store raw commit bodies (sync's re-parented messages); return their ids.

        Call it inside ``writing()`` up to the ref update that makes them reachable,
        or a prune running meanwhile may take them for orphans."""
        self._write_commits(bodies)
        return [objects.object_id(objects.OBJ_COMMIT, b) for b in bodies]

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Hold the reachability guard shared (``guard.py``): from writing or finding an
        object to the ref update that names it. Nests; cheap (a few system calls)."""
        return self.guard.writing()

    @_writes
    def rewrite_branch(
        self, ref: str, build: Callable[[str | None], tuple[Sequence[bytes], str | None]]
    ) -> str | None:
        """Move ``ref`` to what ``build`` makes of its current value, under the ref's lock:
        ``build`` returns the commit bodies to write and the new tip. Producers of the
        branch wait while it runs, so it must be short (sync's last step)."""
        with self.guard.writing(), self.refs.locked(ref) as lock:
            bodies, tip = build(lock.current)
            self._write_commits(bodies)
            lock.new = tip
        return tip

    def discard(self, shas: set[str]) -> int:
        """Delete copies this process wrote and then replaced (re-parented messages)
        now rather than at the next prune; returns how many objects went. Skipped,
        and tried again next time, while a prune or repack runs."""
        removed = self._orphans.discard(shas)
        if removed:
            self._reader.refresh()
        return removed

    @staticmethod
    def commit_id(body: bytes) -> str:
        """The commit id a raw commit body will have once written."""
        return objects.object_id(objects.OBJ_COMMIT, body)

    def _write_commits(self, bodies: Sequence[bytes]) -> None:
        if len(bodies) >= PACK_BATCH_MIN:
            start = 0
            while start < len(bodies):
                size, end = 0, start
                while end < len(bodies) and (size < objects.MAX_PACK_BYTES or end == start):
                    size += len(bodies[end])
                    end += 1
                objects.write_pack(
                    self.objects_dir, objects.OBJ_COMMIT, bodies[start:end], fsync=self.fsync
                )
                self._written_packs += 1
                start = end
        else:
            for body in bodies:
                objects.write_loose(self.objects_dir, objects.OBJ_COMMIT, body, fsync=self.fsync)
            self._written_objects += len(bodies)
        self._maybe_repack()

    def _maybe_repack(self) -> None:
        if (
            self._written_objects < REPACK_AFTER_OBJECTS
            and self._written_packs < REPACK_AFTER_PACKS
        ):
            return
        if self._repack is not None and self._repack.poll() is None:
            return
        self._repack = packing.start_background(self.git_dir)
        if self._repack is not None:
            self._written_objects = self._written_packs = 0

    def wait_for_packing(self, timeout: float = 900.0) -> float:
        """Wait for the background repack this object (or any process) started to
        finish; returns the seconds waited (benchmarks, tests, tidy shutdowns)."""
        start = time.monotonic()
        if self._repack is not None:
            self._repack.wait(timeout)
        return time.monotonic() - start + packing.wait_idle(self.git_dir, timeout)

    def repack_now(self) -> None:
        """Pack loose objects and merge small packs, in the foreground."""
        if self._repack is not None:
            self._repack.wait()
            self._repack = None
        packing.repack(self.git_dir)

    # -------------------------------------------------------------- upstreams

    def upstream(self, queue: str) -> str | None:
        """The remote ``queue`` syncs with, as recorded in the storage's git config
        (``gitmq.<queue>.remote``); None for a queue that is local only. Whoever
        opens a node's storage (``gitmq consume``, ``seek``, the Python API) then
        works on the confirmed messages, as the node does."""
        return self._read_upstreams().get(queue)

    def set_upstream(self, queue: str, remote: str | None) -> None:
        """Record (or, with None, forget) the remote ``queue`` syncs with."""
        if self._read_upstreams().get(queue) == remote:
            return
        key = f"gitmq.{queue}.remote"
        args = ["config", key, remote] if remote else ["config", "--unset", key]
        if gitcli.run(self.git_dir, args, check=False).returncode == 0:
            upstreams = self._read_upstreams()
            if remote:
                upstreams[queue] = remote
            else:
                upstreams.pop(queue, None)

    def _read_upstreams(self) -> dict[str, str]:
        if self._upstreams is None:
            proc = gitcli.run(
                self.git_dir, ["config", "--get-regexp", r"^gitmq\..*\.remote$"], check=False
            )
            found = {}
            for line in proc.stdout.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition(" ")
                found[key[len("gitmq.") : -len(".remote")]] = value
            self._upstreams = found
        return self._upstreams

    # ------------------------------------------------------------------- refs

    def read_ref(self, ref: str) -> str | None:
        """The commit ``ref`` names; a queue branch (or its tracking ref) that names
        anything but a commit is refused, not read as an empty queue."""
        value = self.refs.read(ref)
        if value is not None:
            self._check_branch(ref, value)
        return value

    def _check_branch(self, ref: str, value: str) -> None:
        if ref.startswith(_BRANCHES) and self._tips.get(ref) != value:
            self._check_tip(ref, value)
            self._tips[ref] = value

    @_writes
    def compare_and_swap(self, ref: str, new: str, old: str | None) -> bool:
        """Move ``ref`` from ``old`` (None: absent) to ``new``; False if it moved."""
        with self.guard.writing():
            return self.refs.compare_and_swap(ref, new, old)

    @_writes
    def delete_ref(self, ref: str, old: str) -> bool:
        """Delete ``ref`` if it still points at ``old`` (loose and packed)."""
        proc = gitcli.run(self.git_dir, ["update-ref", "-d", ref, old], check=False)
        return proc.returncode == 0

    def list_refs(self, prefix: str) -> dict[str, str]:
        """Every ref under ``prefix``; queue branches are checked as by ``read_ref``."""
        found = self.refs.list(prefix)
        for ref, value in found.items():
            self._check_branch(ref, value)
        return found

    def tips(self) -> set[str]:
        """Every object a ref or a detached HEAD names (what keeps history alive)."""
        named = set(self.refs.list("refs/").values())
        with contextlib.suppress(FileNotFoundError):
            head = (self.git_dir / "HEAD").read_text("ascii", "replace").strip()
            if len(head) == 40 and not head.startswith("ref:"):
                named.add(head)
        return named

    def list_refs_in(self, directory: str, name_prefix: str = "") -> dict[str, str]:
        """The refs directly in ``directory`` (e.g. ``refs/heads/``), not below it,
        whose names start with ``name_prefix``."""
        found = self.refs.list_in(directory, name_prefix)
        for ref, value in found.items():
            self._check_branch(ref, value)
        return found

    # ---------------------------------------------------------------- reading

    def read_body(self, sha: str) -> bytes:
        """The raw body of commit ``sha``."""
        return self._reader.read_body(sha)

    def read_bodies(self, shas: Sequence[str]) -> list[bytes]:
        """The raw bodies of many commits, in the order given (one batch for many)."""
        return self._reader.read_bodies(shas)

    def release_deleted_packs(self) -> None:
        """Let go of packs deleted since (a repack by another process): cheap, and at
        most one look at the pack directory a second. Long-lived idle readers call it."""
        self._reader.check()

    def is_commit(self, sha: str) -> bool:
        """Whether ``sha`` is a commit here (not a blob, a tree, a tag, or missing)."""
        try:
            self.read_body(sha)
        except GitMQError:
            return False
        return True

    def read(self, sha: str) -> Message:
        return fmt.decode(sha, self.read_body(sha))

    def commits_between(self, since: str | None, until: str) -> list[str]:
        """Commit ids after ``since`` up to ``until``, oldest first."""
        spec = [f"^{since}", until] if since else [until]
        out = gitcli.run(self.git_dir, ["rev-list", "--first-parent", "--reverse", *spec])
        return out.stdout.decode("ascii").split()

    def divergence(self, a: str | None, b: str | None) -> tuple[list[str], list[str]]:
        """The commits only on ``a``'s first-parent chain and those only on ``b``'s, each
        oldest first, from one ``rev-list`` (sync asks this once per branch per attempt:
        what the remote has that we lack, and what we have that it lacks)."""
        if a is None or b is None:
            return (self.commits_between(None, a) if a else []), (
                self.commits_between(None, b) if b else []
            )
        if a == b:
            return [], []
        out = gitcli.run(
            self.git_dir,
            [
                "rev-list",
                "--left-right",
                "--first-parent",
                "--topo-order",
                "--reverse",
                f"{a}...{b}",
            ],
        )
        left: list[str] = []
        right: list[str] = []
        for line in out.stdout.decode("ascii").split():
            (left if line[0] == "<" else right).append(line[1:])
        return left, right

    def messages_between(self, since: str | None, until: str) -> Iterator[Message]:
        """The messages after ``since`` up to ``until``, oldest first, read lazily."""
        for sha in self.commits_between(since, until):
            yield self.read(sha)

    def recent(self, tip: str, limit: int) -> Iterator[Message]:
        """The newest ``limit`` messages up to ``tip`` (0: all), newest first."""
        for sha in self.recent_commits(tip, limit):
            yield self.read(sha)

    def recent_commits(self, tip: str, limit: int) -> list[str]:
        """The ids of the newest ``limit`` commits up to ``tip`` (0: all), newest first."""
        args = ["rev-list", "--first-parent", tip]
        if limit > 0:
            args.insert(1, f"--max-count={limit}")
        return gitcli.run(self.git_dir, args).stdout.decode("ascii").split()

    def history_epoch(self) -> tuple[int, int, int] | None:
        """What changes whenever pruning moves the start of the histories (the shallow
        boundary's file): counts remembered across it are stale."""
        try:
            info = (self.git_dir / "shallow").stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def back(self, tip: str, steps: int) -> str:
        """The commit ``steps`` first parents before ``tip`` (git walks it: no list of
        the commits in between is made, however many there are)."""
        spec = f"{tip}~{steps}^{{commit}}"
        out = gitcli.run(self.git_dir, ["rev-parse", "--verify", "--end-of-options", spec])
        return out.stdout.decode("ascii").strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        """True when ``older`` is ``newer`` or one of its ancestors."""
        if older == newer:
            return True
        proc = gitcli.run(self.git_dir, ["merge-base", "--is-ancestor", older, newer], check=False)
        if proc.returncode not in (0, 1):
            raise GitCommandError(
                ["git", "merge-base", "--is-ancestor", older, newer],
                proc.returncode,
                proc.stdout.decode(),
                proc.stderr.decode(),
            )
        return proc.returncode == 0

    def count(self, since: str | None, until: str | None) -> int:
        """How many messages lie after ``since`` up to ``until``."""
        if until is None:
            return 0
        spec = [f"^{since}", until] if since else [until]
        out = gitcli.run(self.git_dir, ["rev-list", "--first-parent", "--count", *spec])
        return int(out.stdout)

    def timeline(self, tip: str) -> list[tuple[str, int]]:
        """(commit id, publish time in epoch seconds) from ``tip`` back to the
        oldest kept message, newest first."""
        out = gitcli.run(self.git_dir, ["log", "--first-parent", "--format=%H %at", tip])
        pairs = (line.split() for line in out.stdout.decode().splitlines())
        return [(sha, int(at)) for sha, at in pairs]

    def drop_history(
        self,
        boundaries: Sequence[str],
        *,
        owned_refs: Sequence[str] = (),
        dry_run: bool = False,
        progress: Callable[[str], None] = lambda _: None,
    ) -> history.Dropped:
        """Drop every message older than each boundary commit (which is kept as a
        shallow root, so commit ids do not change), and the orphans. ``owned_refs``
        are the refs whose reflogs may be expired (the pruned queue's)."""
        parents = {b: fmt.parents(self.read_body(b)) for b in boundaries}
        if dry_run:
            doomed: set[str] = set()
            for boundary, ps in parents.items():
                doomed |= history.ancestors(self.git_dir, boundary, ps)
            return history.Dropped(len(doomed), history.disk_size(self.git_dir, doomed))
        try:
            return history.drop(self.git_dir, self.guard, self.tips, parents, owned_refs, progress)
        finally:
            self._reader.refresh()  # it may hold deleted packs open

    def drop_commits(self, shas: set[str]) -> history.Dropped:
        """Delete these commits from disk where no ref reaches them any more."""
        try:
            return history.drop_unreferenced(self.git_dir, self.guard, self.tips, shas)
        finally:
            self._reader.refresh()

    def disk_usage(self) -> int:
        """Bytes the whole repository takes on disk."""
        total = 0
        for root, _, files in os.walk(self.git_dir):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(root, name)).st_blocks * 512
        return total

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits, or None when they share none."""
        proc = gitcli.run(self.git_dir, ["merge-base", a, b], check=False)
        if proc.returncode == 1 and not proc.stdout.strip():
            return None
        if proc.returncode != 0:  # a missing or corrupt object: never "no history"
            raise GitCommandError(
                ["git", "merge-base", a, b],
                proc.returncode,
                proc.stdout.decode(),
                proc.stderr.decode(),
            )
        return proc.stdout.decode().strip()

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the storage-wide lock ``name`` (e.g. one sync per remote) across
        processes; the kernel releases it if the holder dies."""
        path = self.git_dir / f"gitmq-{name}.lock"
        with open(path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _placed(draft: Draft, sha: str, parent: str | None, committer: Identity) -> Message:
    return Message(
        id=draft.id,
        sha=sha,
        payload=draft.payload,
        author=draft.author,
        time=draft.time,
        headers=dict(draft.headers),
        parent=parent,
        committer=committer,
    )


def _open_or_create(path: Path, create: bool) -> Path:
    """The git directory at ``path``: a bare repo, or ``path/.git``; created if allowed.

    Creation happens in a temporary sibling that is renamed into place, so
    processes racing to create one storage all end up opening the same one.
    """
    if path.exists() and not path.is_dir():
        raise StorageError(f"storage path {path} is a file, not a directory; choose another path")
    found = _git_dir(path)
    if found is not None:
        return found
    if path.is_dir() and any(path.iterdir()):
        raise StorageError(
            f"storage path {path} is not a git repository and not empty; "
            f"point at a GitMQ storage, an empty directory or a new path"
        )
    if not create:
        raise StorageError(f"no storage at {path}; create it first (gitmq creates it on publish)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise StorageError(f"cannot create storage at {path}: {exc.strerror}") from exc
    try:
        gitcli.run(None, ["init", "--bare", "-q", "--template=", str(tmp)])
        with contextlib.suppress(OSError):  # lost the race, or path is an empty dir
            path.rmdir()
        os.rename(tmp, path)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _git_dir(path)
    if found is None:
        raise StorageError(f"cannot create storage at {path}")
    return found


def _git_dir(path: Path) -> Path | None:
    for candidate in (path, path / ".git"):
        if (candidate / "HEAD").is_file() and (candidate / "objects").is_dir():
            return candidate
    return None
