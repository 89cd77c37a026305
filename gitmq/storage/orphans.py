"""Deleting the copies a writer has just replaced, at once.

Sync re-parents a node's unpushed messages each time another node pushed
first; the copies from before are unreachable from then on. Left to the
prune's orphan sweep they would pile up between prunes (and for good on a
node without a prune policy), so the writer that replaced them hands them
here: their loose objects are unlinked, a pack made only of them (a batch,
re-parented whole) goes, and a pack where they sit among live objects (the
background repack folds the unpushed messages of a busy node into its packs
before they are replaced) is written again without them once they are a fair
share of it; all under the reachability guard and the repack lock. Copies in
a large pack wait, remembered, until they are such a share (or for the
prune's sweep); if a prune or repack holds the lock they wait for the next
call: this never waits.
"""

from __future__ import annotations

import os
from pathlib import Path

from gitmq.errors import StorageError
from gitmq.storage import collect, packing
from gitmq.storage.guard import ReachabilityGuard

#: Copies remembered while the repack lock is busy; beyond this the sweep takes them.
MAX_PENDING = 200_000
#: Longest a discard waits for writers to step out of the guard (seconds).
WAIT = 1.0
#: A pack is written again without the copies once they are this share of it, or
#: at once when it holds at most SMALL_PACK objects: the copies left on disk stay a
#: bounded share of the store, and a large pack is not rewritten for a few of them.
REWRITE_SHARE = 0.25
SMALL_PACK = 10_000
#: Packs larger than this are never rewritten here (the prune's sweep takes them).
LARGE_PACK = 500_000


class Orphans:
    """The replaced copies of one storage, waiting to be deleted."""

    def __init__(self, git_dir: Path, guard: ReachabilityGuard, tips: collect.Tips) -> None:
        self.git_dir = git_dir
        self.guard = guard
        self.tips = tips
        self.pending: set[str] = set()

    def discard(self, shas: set[str], *, thorough: bool = False) -> int:
        """Delete ``shas`` (and what earlier calls left) where no ref names them;
        returns how many objects went. ``thorough`` rewrites every pack that holds
        one, whatever its share (for a process about to exit)."""
        if len(self.pending) + len(shas) <= MAX_PENDING:
            self.pending |= shas
        if not self.pending:
            return 0
        with packing.try_held(self.git_dir) as taken:
            if not taken:
                return 0
            try:
                with self.guard.collecting(timeout=WAIT):
                    doomed = self.pending - self.tips()
                    loose = collect.delete_loose(self.git_dir, doomed)
                    rest = doomed - loose
                    packed, left = self._packed(rest, thorough) if rest else (0, set())
            except StorageError:  # a long fetch holds the guard: next time
                return 0
        self.pending = left
        return len(loose) + packed

    def _packed(self, doomed: set[str], thorough: bool) -> tuple[int, set[str]]:
        """Unlink the packs every object of which is doomed and write again those where
        the doomed are a fair share; returns how many went and the doomed left."""
        pack_dir = self.git_dir / "objects" / "pack"
        try:
            names = os.listdir(pack_dir)
        except FileNotFoundError:
            return 0, set()
        removed, left = 0, set()
        for name in names:
            idx = pack_dir / name
            if not name.endswith(".idx") or idx.with_suffix(".keep").exists():
                continue
            try:
                count = collect.pack_count(idx)
                if not 0 < count <= LARGE_PACK:
                    continue
                hit = collect.pack_hits(idx, doomed)
                if not hit:
                    continue
                if len(hit) < count:
                    worth = count <= SMALL_PACK or len(hit) >= REWRITE_SHARE * count
                    if not (worth or thorough):
                        left.update(hit)
                        continue
                    keep = [sha for sha in collect.pack_names(idx) if sha not in doomed]
                    collect.pack_objects(self.git_dir, keep)
            except (OSError, ValueError, StorageError):  # a pack a repack just removed
                continue
            collect.unlink_pack(idx)
            removed += len(hit)
        return removed, left
