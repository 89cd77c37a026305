"""Deleting unreachable commits without racing anyone who makes them reachable.

Used by pruning (the history below a new shallow boundary), by rotation (a
segment deleted on the remote) and by the orphan sweep (copies that sync and
rotation leave behind when they re-parent messages). No reachability-based gc
runs: the set to delete is explicit, every pack that existed at the start is
rewritten without it, and loose objects are unlinked one by one, so objects
written meanwhile land in files that are never touched.

The protocol with writers (``guard.py``):

1. List every commit in the object store, then the ref tips, then what the
   refs and reflogs reach (``rev-list --all --reflog``), in that order.
2. Doomed: the requested commits and the orphans (commits listed in 1, reached
   by nothing, in a file older than ``ORPHAN_GRACE``), minus what is reached.
3. Rewrite the packs listed in 1 without the doomed commits (slow, unguarded).
4. Hold the guard exclusively: re-read the ref tips; anything reached from a
   new tip that is doomed is rescued (copied into a pack of its own if it was
   packed); only then unlink the old packs and the doomed loose objects.

A GitMQ writer holds the guard shared from before it writes (or finds) an
object until its ref is set, so step 4 sees every ref that names a doomed
object. ``ORPHAN_GRACE`` protects writers outside GitMQ (a git command run by
hand): their loose objects and packs are young files.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gitmq.errors import StorageError
from gitmq.storage import gitcli
from gitmq.storage.guard import ReachabilityGuard

Progress = Callable[[str], None]
Tips = Callable[[], set[str]]

#: How old the file holding an unreachable commit must be before it counts as an
#: orphan (seconds): writers that do not take GitMQ's guard are younger than this.
ORPHAN_GRACE = 120.0
_PACK_SUFFIXES = (".idx", ".pack", ".rev", ".bitmap", ".mtimes", ".promisor")


@dataclass(frozen=True)
class Dropped:
    """What a drop removed (or, in a dry run, would remove)."""

    commits: int
    bytes: int


@dataclass(frozen=True)
class _Snapshot:
    """Step 1: what existed, what the refs named and what they reached."""

    commits: set[str]
    packs: dict[Path, list[str]]
    tips: set[str]
    reached: set[str]


def collect(
    git_dir: Path,
    guard: ReachabilityGuard,
    tips: Tips,
    doomed: Iterable[str] = (),
    progress: Progress = lambda _: None,
) -> tuple[Dropped, set[str]]:
    """Delete ``doomed`` and the orphans, except what a ref reaches at the moment of
    deletion. Returns what was dropped and the dropped commit ids."""
    snap = _snapshot(git_dir, tips)
    doomed = (set(doomed) & snap.commits) - snap.reached
    doomed |= _orphans(git_dir, snap, doomed, time.time() - ORPHAN_GRACE)
    if not doomed:
        return Dropped(0, 0), set()
    before = objects_bytes(git_dir)
    rewritten = _rewrite_packs(git_dir, snap.packs, doomed, progress)
    with guard.collecting():
        rescued = _reached_since(git_dir, tips(), snap.tips & snap.reached) & doomed
        if rescued:
            pack_objects(git_dir, sorted(rescued & _packed(rewritten)))
            doomed -= rescued
        for idx in rewritten:
            unlink_pack(idx)
        delete_loose(git_dir, doomed)
    return Dropped(len(doomed), max(0, before - objects_bytes(git_dir))), doomed


def _snapshot(git_dir: Path, tips: Tips) -> _Snapshot:
    listing = gitcli.run(
        git_dir, ["cat-file", "--batch-all-objects", "--batch-check=%(objectname) %(objecttype)"]
    ).stdout.decode()
    commits = {
        sha for sha, kind in (line.split() for line in listing.splitlines()) if kind == "commit"
    }
    pack_dir = git_dir / "objects" / "pack"
    packs = {
        idx: pack_names(idx)
        for idx in sorted(pack_dir.glob("pack-*.idx"))
        if not idx.with_suffix(".keep").exists()
    }
    named = tips()
    reached = gitcli.run(git_dir, ["rev-list", "--all", "--reflog"]).stdout.decode().split()
    return _Snapshot(commits, packs, named, set(reached))


def _reached_since(git_dir: Path, now: set[str], before: set[str]) -> set[str]:
    """Commits reached from the tips ``now`` but not from the tips ``before`` (which
    reach only commits known to be reached at the snapshot)."""
    new = now - before
    if not new:
        return set()
    lines = [*new, *(f"^{sha}" for sha in before)]
    out = gitcli.run(
        git_dir,
        ["rev-list", "--ignore-missing", "--stdin"],
        input="\n".join(lines).encode() + b"\n",
    )
    return set(out.stdout.decode().split())


def _orphans(git_dir: Path, snap: _Snapshot, doomed: set[str], before: float) -> set[str]:
    """Unreached commits from the snapshot whose file (loose object or pack) was last
    written before ``before`` (epoch seconds)."""
    candidates = snap.commits - snap.reached - doomed
    if not candidates:
        return set()
    pack_age = {}
    for idx, names in snap.packs.items():
        with contextlib.suppress(FileNotFoundError):
            mtime = idx.with_suffix(".pack").stat().st_mtime
            pack_age.update(dict.fromkeys(names, mtime))
    out = set()
    for sha in candidates:
        try:
            mtime = (git_dir / "objects" / sha[:2] / sha[2:]).stat().st_mtime
        except FileNotFoundError:
            mtime = pack_age.get(sha, time.time())  # in a pack made since: too young
        if mtime < before:
            out.add(sha)
    return out


def pack_names(idx: Path) -> list[str]:
    """The object names in a version 2 pack index."""
    data = idx.read_bytes()
    if data[:4] != b"\xfftOc" or struct.unpack(">I", data[4:8])[0] != 2:
        raise StorageError(f"{idx} is not a version 2 pack index; run 'git repack -a -d' once")
    count = struct.unpack(">I", data[8 + 255 * 4 : 8 + 256 * 4])[0]
    start = 8 + 256 * 4
    return [data[start + 20 * i : start + 20 * (i + 1)].hex() for i in range(count)]


def pack_hits(idx: Path, shas: set[str]) -> list[str]:
    """Which of ``shas`` a version 2 pack index lists. A few of them are looked up in its
    sorted name table (mapped, nothing allocated per object in the pack: this runs
    after every sync that replaced copies); many, by reading the table whole."""
    if len(shas) * 16 > pack_count(idx):
        listed = set(pack_names(idx))
        return [sha for sha in shas if sha in listed]
    with open(idx, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"\xfftOc" or struct.unpack_from(">I", data, 4)[0] != 2:
            raise StorageError(f"{idx} is not a version 2 pack index; run 'git repack -a -d' once")
        fanout, names = 8, 8 + 256 * 4
        out = []
        for sha in shas:
            key = bytes.fromhex(sha)
            lo = struct.unpack_from(">I", data, fanout + (key[0] - 1) * 4)[0] if key[0] else 0
            hi = struct.unpack_from(">I", data, fanout + key[0] * 4)[0]
            while lo < hi:
                mid = (lo + hi) // 2
                name = data[names + 20 * mid : names + 20 * mid + 20]
                if name == key:
                    out.append(sha)
                    break
                lo, hi = (mid + 1, hi) if name < key else (lo, mid)
        return out


def pack_count(idx: Path) -> int:
    """How many objects a version 2 pack index lists (reads only its header)."""
    with open(idx, "rb") as fh:
        head = fh.read(8 + 256 * 4)
    if len(head) < 8 + 256 * 4 or head[:4] != b"\xfftOc":
        return -1
    return int(struct.unpack(">I", head[-4:])[0])


def _packed(packs: dict[Path, list[str]]) -> set[str]:
    return {name for names in packs.values() for name in names}


def _rewrite_packs(
    git_dir: Path, packs: dict[Path, list[str]], doomed: set[str], progress: Progress
) -> dict[Path, list[str]]:
    """Write one pack with what the packs holding doomed objects keep; returns the packs
    it replaces (to unlink under the guard). Packs without a doomed object stay as
    they are: GitMQ's background repack merges small packs anyway."""
    hit = {idx: names for idx, names in packs.items() if any(n in doomed for n in names)}
    if not hit:
        return {}
    keep = sorted({n for names in hit.values() for n in names if n not in doomed})
    progress(f"rewriting {len(hit)} of {len(packs)} packs to keep {len(keep)} objects")
    new = pack_objects(git_dir, keep)
    return {idx: names for idx, names in hit.items() if idx.stem != new}


def pack_objects(git_dir: Path, names: list[str]) -> str | None:
    """Write ``names`` (present in the object store) into one new pack; its stem."""
    if not names:
        return None
    pack_dir = git_dir / "objects" / "pack"
    out = gitcli.run(
        git_dir,
        ["pack-objects", "-q", "--delta-base-offset", str(pack_dir / "pack")],
        input="\n".join(names).encode() + b"\n",
        timeout=3600,
    )
    return f"pack-{out.stdout.decode().strip()}"


def delete_loose(git_dir: Path, doomed: set[str]) -> set[str]:
    """Unlink the loose objects in ``doomed``; returns those that were there (listing
    the few loose files is much cheaper than trying every doomed name, most of which
    are packed)."""
    with os.scandir(git_dir / "objects") as top:
        fanouts = [d.path for d in top if len(d.name) == 2 and d.is_dir()]
    removed = set()
    for fanout in fanouts:
        prefix, names = os.path.basename(fanout), []
        with contextlib.suppress(FileNotFoundError):  # git prune-packed removes empty ones
            names = os.listdir(fanout)
        for name in names:
            if prefix + name in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(fanout, name))
                    removed.add(prefix + name)
    return removed


def objects_bytes(git_dir: Path) -> int:
    """Bytes the object store takes on disk."""
    total = 0
    for root, _, files in os.walk(git_dir / "objects"):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def unlink_pack(idx: Path) -> None:
    """Remove a pack and its companions, index first (readers find packs by index)."""
    for suffix in _PACK_SUFFIXES:
        with contextlib.suppress(FileNotFoundError):
            idx.with_suffix(suffix).unlink()
