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

from gitmq import names
from gitmq.config import PrunePolicy
from gitmq.storage import Storage
from gitmq.sync import sync_lock, tracking_ref

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
    the one the queue syncs with (its confirmed tip is a floor).

    A synced queue is pruned under that remote's sync lock: a sync cycle reads the
    consumer tags, pushes them, then records the remote's copies, and a prune in between
    (the tag having moved on) would drop the commit such a copy is about to name."""
    if remote is None or dry_run:
        confirmed = tracking_ref(remote, queue) if remote else None
        return _prune(storage, queue, policy, now, consumers, confirmed, dry_run, progress)
    with storage.exclusive(sync_lock(remote)):
        confirmed = tracking_ref(remote, queue)
        return _prune(storage, queue, policy, now, consumers, confirmed, dry_run, progress)


def _prune(
    storage: Storage,
    queue: str,
    policy: PrunePolicy,
    now: datetime,
    consumers: Sequence[str],
    confirmed_ref: str | None,
    dry_run: bool,
    progress: Callable[[str], None],
) -> PruneReport:
    tip = storage.read_ref(names.queue_ref(queue))
    if tip is None:
        return PruneReport(queue, 0, 0, 0, None, dry_run)
    progress("reading the queue's history")
    timeline = storage.timeline(tip)
    index = {sha: i for i, (sha, _) in enumerate(timeline)}
    limit = _policy_limit(policy, timeline, now)
    floor = Floor(limit)
    if confirmed_ref is not None:
        confirmed = storage.read_ref(confirmed_ref)
        floor.raise_to(index.get(confirmed, len(timeline)) if confirmed else len(timeline), "")
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
    moved = (
        []
        if policy.keep_unconsumed
        else _move_tags(storage, behind, index, floor.index, boundary, dry_run)
    )
    dropped = storage.drop_history([boundary], dry_run=dry_run, progress=progress)
    report = PruneReport(
        queue,
        len(timeline),
        len(timeline) - 1 - floor.index,
        dropped.bytes,
        boundary,
        dry_run,
        floor.held(),
        tuple(moved),
    )
    return report


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
