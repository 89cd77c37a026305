"""Deleting the copies a writer has just replaced, at once.

Sync re-parents a node's unpushed messages each time another node pushed
first; the copies from before are unreachable from then on. Left to the
prune's orphan sweep they would pile up between prunes (and for good on a
node without a prune policy), so the writer that replaced them hands them
here: their loose objects are unlinked and a pack made only of them (a
batch, re-parented whole) goes, under the reachability guard and the repack
lock. If a prune or repack holds that lock the copies wait for the next call
(or for the sweep): this never waits.
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


class Orphans:
    """The replaced copies of one storage, waiting to be deleted."""

    def __init__(self, git_dir: Path, guard: ReachabilityGuard, tips: collect.Tips) -> None:
        self.git_dir = git_dir
        self.guard = guard
        self.tips = tips
        self.pending: set[str] = set()

    def discard(self, shas: set[str]) -> int:
        """Delete ``shas`` (and what earlier calls left) where no ref names them;
        returns how many objects went."""
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
                    removed = collect.delete_loose(self.git_dir, doomed)
                    removed += self._whole_packs(doomed)
            except StorageError:  # a long fetch holds the guard: next time
                return 0
        self.pending.clear()
        return removed

    def _whole_packs(self, doomed: set[str]) -> int:
        """Unlink the packs every object of which is doomed."""
        pack_dir = self.git_dir / "objects" / "pack"
        try:
            names = os.listdir(pack_dir)
        except FileNotFoundError:
            return 0
        removed = 0
        for name in names:
            if not name.endswith(".idx"):
                continue
            idx = pack_dir / name
            if idx.with_suffix(".keep").exists():
                continue
            try:
                if not 0 < collect.pack_count(idx) <= len(doomed):
                    continue
                objects = collect.pack_names(idx)
            except (OSError, StorageError):
                continue
            if all(sha in doomed for sha in objects):
                collect.unlink_pack(idx)
                removed += len(objects)
        return removed
