"""Dropping old history from a storage while every commit id stays the same.

A kept commit whose parents are dropped is listed in ``$GIT_DIR/shallow`` (the
mechanism behind ``git clone --depth``): git then treats it as a root, and
fetch, push, rev-list and merge-base keep working on the kept history. What
the new roots hide is deleted by ``collect.py``, which also sweeps the orphan
copies that sync and rotation leave behind when they re-parent messages, and
never races a writer (``guard.py``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

from gitmq.errors import StorageError
from gitmq.storage import collect, gitcli, packing
from gitmq.storage.collect import Dropped
from gitmq.storage.guard import ReachabilityGuard
from gitmq.storage.refs import STALE_LOCK_SECONDS

Progress = Callable[[str], None]

__all__ = ["Dropped", "ancestors", "disk_size", "drop", "drop_unreferenced", "shallow_roots"]


def shallow_roots(git_dir: Path) -> set[str]:
    try:
        return set((git_dir / "shallow").read_text("ascii").split())
    except FileNotFoundError:
        return set()


def ancestors(git_dir: Path, boundary: str, parents: Iterable[str]) -> set[str]:
    """Every commit older than ``boundary`` (reachable from its parents)."""
    starts = list(parents)
    if not starts or boundary in shallow_roots(git_dir):
        return set()
    return set(gitcli.run(git_dir, ["rev-list", *starts]).stdout.decode().split())


def disk_size(git_dir: Path, shas: Iterable[str]) -> int:
    """Bytes ``shas`` take in the object store (packed or loose)."""
    listing = "\n".join(shas)
    if not listing:
        return 0
    out = gitcli.run(
        git_dir, ["cat-file", "--batch-check=%(objectsize:disk)"], input=listing.encode()
    ).stdout.decode()
    return sum(int(n) for n in out.split() if n.isdigit())


def drop(
    git_dir: Path,
    guard: ReachabilityGuard,
    tips: collect.Tips,
    boundaries: dict[str, list[str]],
    owned_refs: Sequence[str],
    progress: Progress,
) -> Dropped:
    """Make each boundary (sha -> its parents) a shallow root and delete what it hid,
    with the orphans. ``owned_refs`` are the pruned queue's refs: only their reflogs
    are expired (a reflog keeps what it names, and the user's own stay untouched)."""
    with packing.held(git_dir):
        doomed: set[str] = set()
        for boundary, parents in boundaries.items():
            doomed |= ancestors(git_dir, boundary, parents)
        if doomed:
            progress(f"dropping {len(doomed)} commits: marking the new roots shallow")
            _update_shallow(git_dir, add=set(boundaries))
            _expire_reflogs(git_dir, owned_refs)
        return _collect(git_dir, guard, tips, doomed, progress)


def drop_unreferenced(
    git_dir: Path, guard: ReachabilityGuard, tips: collect.Tips, candidates: set[str]
) -> Dropped:
    """Delete the ``candidates`` no ref reaches any more (a deleted segment)."""
    with packing.held(git_dir):
        return _collect(git_dir, guard, tips, candidates, lambda _: None)


def _collect(
    git_dir: Path,
    guard: ReachabilityGuard,
    tips: collect.Tips,
    doomed: set[str],
    progress: Progress,
) -> Dropped:
    dropped, gone = collect.collect(git_dir, guard, tips, doomed, progress)
    stale = gone & shallow_roots(git_dir)  # an older boundary, dropped now
    if stale:
        _update_shallow(git_dir, remove=stale)
    return dropped


def _expire_reflogs(git_dir: Path, refs: Sequence[str]) -> None:
    logs = [ref for ref in refs if (git_dir / "logs" / ref).is_file()]
    if logs:
        gitcli.run(git_dir, ["reflog", "expire", "--expire=now", "--expire-unreachable=now", *logs])


def _update_shallow(
    git_dir: Path, add: AbstractSet[str] = frozenset(), remove: AbstractSet[str] = frozenset()
) -> None:
    """Add and remove shallow roots under git's own ``shallow.lock``."""
    path = git_dir / "shallow"
    lock = git_dir / "shallow.lock"
    deadline = time.monotonic() + 10
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):  # left by a killed process
                if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
                    lock.unlink()
                    continue
            if time.monotonic() > deadline:
                raise StorageError(f"{lock} is held by another process; retry later") from None
            time.sleep(0.01)
    try:
        lines = sorted((shallow_roots(git_dir) | add) - remove)
        os.write(fd, "".join(line + "\n" for line in lines).encode("ascii"))
        os.close(fd)
        if lines:
            os.replace(lock, path)
        else:  # no root left: not shallow any more
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            lock.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        raise
