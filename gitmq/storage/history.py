"""Dropping old history from a storage while every commit id stays the same.

A kept commit whose parents are dropped is listed in ``$GIT_DIR/shallow`` (the
mechanism behind ``git clone --depth``): git then treats it as a root, and
fetch, push, rev-list and merge-base keep working on the kept history.

The objects are removed without a reachability-based gc, which could delete
an object a producer wrote a moment before moving its ref. Instead the set to
drop is computed explicitly (the ancestors of each boundary, minus anything a
ref still reaches); every pack that existed at the start is rewritten without
those objects and then deleted, and loose objects are deleted only if they are
in the set. Objects written while this runs land in new files that are never
touched, so pruning can run beside producers, consumers and sync.

Pruning also deletes *orphans*: unreachable commits, which sync leaves behind
each time it re-parents unpushed messages (the copies from before) and
rotation when it moves messages on. Without that a node would keep a copy of
most of what it ever published, whatever the policy. A commit just written
is unreachable too until its writer moves the ref, so an orphan must be older
than ``ORPHAN_GRACE`` by its committer time and, when loose, by its file; a
fetch keeps its pack with a ``.keep`` file until its refs are set.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from gitmq.errors import StorageError
from gitmq.storage import gitcli, packing
from gitmq.storage.refs import STALE_LOCK_SECONDS

Progress = Callable[[str], None]

#: How old an unreachable commit must be before pruning deletes it (seconds).
ORPHAN_GRACE = 3600.0


@dataclass(frozen=True)
class Dropped:
    """What a drop removed (or, in a dry run, would remove)."""

    commits: int
    bytes: int


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


def drop(git_dir: Path, boundaries: dict[str, list[str]], progress: Progress) -> Dropped:
    """Make each boundary (sha → its parents) a shallow root and delete what it hid."""
    with packing.held(git_dir):
        doomed: set[str] = set()
        for boundary, parents in boundaries.items():
            doomed |= ancestors(git_dir, boundary, parents)
        if not doomed:
            return Dropped(0, 0)
        progress(f"dropping {len(doomed)} commits: marking the new roots shallow")
        _update_shallow(git_dir, add=set(boundaries))
        return _remove(git_dir, doomed, progress)


def drop_unreferenced(git_dir: Path, candidates: set[str], progress: Progress) -> Dropped:
    """Delete the ``candidates`` no ref reaches any more (a deleted segment)."""
    with packing.held(git_dir):
        return _remove(git_dir, set(candidates), progress)


def _remove(git_dir: Path, doomed: set[str], progress: Progress) -> Dropped:
    reachable = set(gitcli.run(git_dir, ["rev-list", "--all"]).stdout.decode().split())
    doomed -= reachable
    doomed |= orphans(git_dir, reachable | doomed, time.time() - ORPHAN_GRACE)
    if not doomed:
        return Dropped(0, 0)
    before = _objects_bytes(git_dir)
    _rewrite_packs(git_dir, doomed, progress)
    _delete_loose(git_dir, doomed)
    stale = doomed & shallow_roots(git_dir)  # an older boundary, dropped now
    if stale:
        _update_shallow(git_dir, remove=stale)
    if (git_dir / "logs").is_dir():
        gitcli.run(git_dir, ["reflog", "expire", "--expire=now", "--all"])
    return Dropped(len(doomed), max(0, before - _objects_bytes(git_dir)))


def orphans(git_dir: Path, known: set[str], before: float) -> set[str]:
    """Commits not in ``known`` (the reachable ones and those already being dropped)
    written before ``before`` (epoch seconds)."""
    listing = gitcli.run(
        git_dir, ["cat-file", "--batch-all-objects", "--batch-check=%(objectname) %(objecttype)"]
    ).stdout.decode()
    candidates = [
        sha
        for sha, kind in (line.split() for line in listing.splitlines())
        if kind == "commit" and sha not in known
    ]
    if not candidates:
        return set()
    dated = gitcli.run(
        git_dir,
        ["log", "--no-walk=unsorted", "--format=%H %ct", "--stdin"],
        input="\n".join(candidates).encode() + b"\n",
    ).stdout.decode()
    out = set()
    for sha, stamp in (line.split() for line in dated.splitlines()):
        loose = git_dir / "objects" / sha[:2] / sha[2:]
        with contextlib.suppress(FileNotFoundError):
            if loose.stat().st_mtime >= before:
                continue
        if int(stamp) < before:
            out.add(sha)
    return out


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


def _pack_objects(idx: Path) -> list[str]:
    data = idx.read_bytes()
    if data[:4] != b"\xfftOc" or struct.unpack(">I", data[4:8])[0] != 2:
        raise StorageError(f"{idx} is not a version 2 pack index; run 'git repack -a -d' once")
    count = struct.unpack(">I", data[8 + 255 * 4 : 8 + 256 * 4])[0]
    start = 8 + 256 * 4
    return [data[start + 20 * i : start + 20 * (i + 1)].hex() for i in range(count)]


def _rewrite_packs(git_dir: Path, doomed: set[str], progress: Progress) -> None:
    pack_dir = git_dir / "objects" / "pack"
    packs = [p for p in sorted(pack_dir.glob("pack-*.idx")) if not p.with_suffix(".keep").exists()]
    keep: set[str] = set()
    hit = False
    for idx in packs:
        names = _pack_objects(idx)
        hit = hit or any(n in doomed for n in names)
        keep.update(n for n in names if n not in doomed)
    if not hit:
        return
    progress(f"rewriting {len(packs)} packs to keep {len(keep)} objects")
    out = gitcli.run(
        git_dir,
        ["pack-objects", "-q", "--delta-base-offset", str(pack_dir / "pack")],
        input="\n".join(sorted(keep)).encode() + b"\n",
        timeout=3600,
    )
    new = f"pack-{out.stdout.decode().strip()}"
    for idx in packs:
        if idx.stem == new:
            continue
        for suffix in (".idx", ".pack", ".rev", ".bitmap", ".mtimes", ".promisor"):
            with contextlib.suppress(FileNotFoundError):
                idx.with_suffix(suffix).unlink()


def _delete_loose(git_dir: Path, doomed: set[str]) -> None:
    """Unlink the loose objects in ``doomed`` (listing the few loose files is much
    cheaper than trying every doomed name, most of which are packed)."""
    with os.scandir(git_dir / "objects") as top:
        fanouts = [d.path for d in top if len(d.name) == 2 and d.is_dir()]
    for fanout in fanouts:
        prefix, names = os.path.basename(fanout), []
        with contextlib.suppress(FileNotFoundError):  # git prune-packed removes empty ones
            names = os.listdir(fanout)
        for name in names:
            if prefix + name in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(fanout, name))


def _objects_bytes(git_dir: Path) -> int:
    total = 0
    for root, _, files in os.walk(git_dir / "objects"):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total
