"""History pruning: keep a queue's local history within its policy.

The policy (by count, by age, and whether to keep what a consumer has not
finished) picks a *boundary*: the oldest message that stays. Everything older
leaves the disk; the boundary becomes a shallow root, so every commit id stays
the same and sync goes on as before. Nothing newer than the confirmed tip is
ever dropped (unpushed messages are not final), and a consumer tag is either
a floor (``keep_unconsumed``) or is moved forward to the boundary and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gitmq.config import PrunePolicy
from gitmq.names import sync_lock
from gitmq.segments import segment_branch, segments
from gitmq.storage import Storage

log = logging.getLogger("gitmq.prune")

TAGS = "refs/tags/"
REMOTE_TAGS = "refs/gitmq/remotes/"


@dataclass(frozen=True)
class PruneReport:
    queue: str
    total: int
    dropped: int
    bytes: int
    boundary: str | None
    dry_run: bool = False
    held_back: tuple[str, ...] = ()
    moved: tuple[str, ...] = field(default=())

    @property
    def kept(self) -> int:
        return self.total - self.dropped

    def line(self) -> str:
        size = f"{self.bytes / 1e6:.1f} MB"
        if self.dry_run:
            text = (
                f"{self.queue}: would drop {self.dropped} of {self.total} messages "
                f"({size}), keeping {self.kept}"
            )
        else:
            text = (
                f"{self.queue}: dropped {self.dropped} of {self.total} messages "
                f"({size} freed), kept {self.kept}"
            )
        if self.held_back:
            text += f"; held back by {', '.join(self.held_back)}"
        if self.moved:
            verb = "would move forward" if self.dry_run else "moved forward"
            text += f"; {verb}: {', '.join(self.moved)}"
        return text


def prune_queue(
    storage: Storage,
    queue: str,
    policy: PrunePolicy,
    *,
    now: datetime,
    consumers: Sequence[str] = (),
    remote: str | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> PruneReport:
    """Apply ``policy`` to ``queue``; ``consumers`` are the ones this node runs, ``remote``
    the one the queue syncs with (its confirmed tip is a floor). A rotating queue is
    pruned as one history across its segments, oldest segment first.

    A synced queue is pruned under that remote's sync lock: a sync cycle reads the
    consumer tags, pushes them, then records the remote's copies, and a prune in between
    (the tag having moved on) would drop the commit such a copy is about to name."""
    prefix = f"refs/remotes/{remote}/" if remote else None
    if remote is None or dry_run:
        return _prune(storage, queue, policy, now, consumers, prefix, dry_run, progress)
    with storage.exclusive(sync_lock(remote)):
        return _prune(storage, queue, policy, now, consumers, prefix, dry_run, progress)


@dataclass(frozen=True)
class _Segment:
    """One branch of the queue (the only one, unless it rotates) as it is now."""

    branch: str
    tip: str
    confirmed: str | None
    timeline: list[tuple[str, int]]  # (commit, publish time), newest first


def _segments(storage: Storage, queue: str, confirmed_prefix: str | None) -> list[_Segment]:
    """The queue's local segments, newest first."""
    out = []
    for number, tip in reversed(segments(storage, queue)):
        branch = segment_branch(queue, number)
        confirmed = storage.read_ref(confirmed_prefix + branch) if confirmed_prefix else None
        out.append(_Segment(branch, tip, confirmed, storage.timeline(tip)))
    return out


def _prune(
    storage: Storage,
    queue: str,
    policy: PrunePolicy,
    now: datetime,
    consumers: Sequence[str],
    confirmed_prefix: str | None,
    dry_run: bool,
    progress: Callable[[str], None],
) -> PruneReport:
    progress("reading the queue's history")
    segs = _segments(storage, queue, confirmed_prefix)
    timeline = [entry for seg in segs for entry in seg.timeline]
    if not timeline:
        return PruneReport(queue, 0, 0, 0, None, dry_run)
    index = {sha: i for i, (sha, _) in enumerate(timeline)}
    floor = Floor(_policy_limit(policy, timeline, now))
    if confirmed_prefix is not None:
        _unpushed_floor(floor, segs, index)
    tags = {ref[len(TAGS) :]: sha for ref, sha in storage.list_refs(TAGS).items()}
    for name in consumers:
        if (name not in tags or tags[name] not in index) and policy.keep_unconsumed:
            floor.raise_to(len(timeline), name)  # it has consumed nothing here yet
    behind = {n: s for n, s in tags.items() if s in index and index[s] > floor.index}
    if policy.keep_unconsumed:
        for name, sha in behind.items():
            floor.raise_to(index[sha], name)
    for ref, sha in storage.list_refs(REMOTE_TAGS).items():
        if sha in index:  # the cluster's copy of a tag is a hard floor
            floor.raise_to(index[sha], ref.rsplit("/", 1)[-1] + " (remote)")
    if floor.index >= len(timeline) - 1:
        return PruneReport(queue, len(timeline), 0, 0, None, dry_run, floor.held())
    boundary = timeline[floor.index][0]
    cuts, dropped = _boundaries(segs, floor.index)
    moved = (
        []
        if policy.keep_unconsumed
        else _move_tags(storage, behind, index, floor.index, boundary, dry_run)
    )
    owned = [f"refs/heads/{seg.branch}" for seg in segs]
    if confirmed_prefix is not None:
        owned += [confirmed_prefix + seg.branch for seg in segs]
    gone = storage.drop_history(cuts, owned_refs=owned, dry_run=dry_run, progress=progress)
    return PruneReport(
        queue,
        len(timeline),
        dropped,
        gone.bytes,
        boundary,
        dry_run,
        floor.held(),
        tuple(moved),
    )


def _unpushed_floor(floor: Floor, segs: list[_Segment], index: dict[str, int]) -> None:
    """Nothing newer than a segment's confirmed tip goes: unpushed messages are not final
    (a segment never pushed keeps everything)."""
    offset = 0
    for seg in segs:
        if seg.tip != seg.confirmed:
            oldest = offset + len(seg.timeline) - 1
            floor.raise_to(index.get(seg.confirmed, oldest) if seg.confirmed else oldest, "")
        offset += len(seg.timeline)


def _boundaries(segs: list[_Segment], cut: int) -> tuple[list[str], int]:
    """The shallow roots for a cut at index ``cut`` of the whole timeline (the commit
    there, and the tip of every older segment, which its branch still names), and how
    many messages they drop."""
    roots, dropped, offset = [], 0, 0
    for seg in segs:
        size = len(seg.timeline)
        if offset + size - 1 >= cut:  # the cut is in this segment, or an older one
            keep = max(0, cut - offset)
            if keep < size - 1:
                roots.append(seg.timeline[keep][0])
                dropped += size - 1 - keep
        offset += size
    return roots, dropped


class Floor:
    """The boundary index (0 = newest), pushed older by whatever must stay."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._held: list[str] = []

    def raise_to(self, index: int, who: str) -> None:
        if index > self.index:
            self.index = index
            if who:
                self._held.append(who)

    def held(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._held))


def _policy_limit(policy: PrunePolicy, timeline: list[tuple[str, int]], now: datetime) -> int:
    """The boundary the policy alone asks for: index of the oldest message to keep."""
    limit = len(timeline) - 1
    if policy.max_messages is not None:
        limit = min(limit, policy.max_messages - 1)
    if policy.max_age is not None:
        cutoff = now.timestamp() - policy.max_age
        young = [i for i, (_, at) in enumerate(timeline) if at >= cutoff]
        limit = min(limit, young[-1] if young else 0)
    return limit


def _move_tags(
    storage: Storage,
    behind: dict[str, str],
    index: dict[str, int],
    limit: int,
    boundary: str,
    dry_run: bool,
) -> list[str]:
    moved = []
    for name, sha in behind.items():
        if index[sha] <= limit:
            continue
        if not dry_run and not storage.compare_and_swap(TAGS + name, boundary, sha):
            continue  # it moved on its own meanwhile
        moved.append(name)
        if dry_run:
            continue  # nothing moved: the report says what would
        log.warning(
            "prune: consumer %s had not finished messages older than the policy "
            "keeps; its tag moved forward to %s",
            name,
            boundary[:12],
        )
    return moved
