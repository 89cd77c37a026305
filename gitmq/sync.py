"""One sync cycle of a node's storage against one remote (docs/sync.md).

1. List the remote's refs; fetch only the configured queues and consumer tags
   that changed, into private tracking refs (no fetch when nothing changed).
2. Re-parent the local unpushed messages onto the fetched tip, in-process,
   dropping any whose id already landed: the bulk outside the branch lock,
   then, under it, only what producers appended meanwhile (bounded work,
   producers wait milliseconds).
3. Push everything that moved in one atomic push: branches fast-forward only,
   consumer tags with a lease on their remote value (``offsets.py``).
   Nothing moved: no push.
4. A rejected push goes back to 1 with jittered backoff, a bounded number of
   times; a network failure keeps everything local until the next cycle.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gitmq import repair, rotation
from gitmq.budget import Budget, Pace
from gitmq.errors import GitMQError
from gitmq.message import Identity
from gitmq.names import sync_lock, tracking_ref
from gitmq.offsets import OffsetSync, Plan, remote_tag_ref
from gitmq.refusals import Refusals, refused_line
from gitmq.registry import Registry
from gitmq.replay import Outbox, Replay, ReplayState, Split, replay_since, replay_snapshot
from gitmq.segments import QueueSource, RotationPolicy, segment_number
from gitmq.storage import Storage
from gitmq.storage.remote import (
    Credentials,
    PushRefused,
    PushRejected,
    RefUpdate,
    fetch,
    ls_remote,
    push_atomic,
)

log = logging.getLogger("gitmq.sync")

__all__ = ["SyncReport", "SyncTarget", "remote_tag_ref", "sync_lock", "sync_once", "tracking_ref"]


def fetched_ref(tracking: str) -> str:
    """Where a fetch puts a queue's new tip until the consumer tags have caught up."""
    return "refs/gitmq/fetched/" + tracking.removeprefix("refs/remotes/")


@dataclass(frozen=True)
class SyncTarget:
    """What to sync with one remote."""

    remote: str
    url: str
    queues: tuple[str, ...]
    consumers: tuple[str, ...]
    committer: Identity
    credentials: Credentials = field(default_factory=Credentials)
    max_attempts: int = 5
    rotations: Mapping[str, RotationPolicy] = field(default_factory=dict, hash=False)
    #: The node's schedule: a cycle that keeps losing races stops after three intervals.
    interval: float = 5.0
    #: The mutable parts, kept from cycle to cycle: chunk size and ids read, the
    #: updates the server refused (``refusals.py``), this node's pace within the
    #: remote's budget (``budget.py``) and its node ref (``registry.py``; without a
    #: budget nobody needs to count: a registry of no node).
    state: ReplayState = field(default_factory=ReplayState, compare=False, hash=False)
    refusals: Refusals = field(default_factory=Refusals, compare=False, hash=False)
    pace: Pace = field(default_factory=lambda: Pace(Budget()), compare=False, hash=False)
    registry: Registry = field(default_factory=Registry, compare=False, hash=False)


@dataclass
class SyncReport:
    """What one cycle did; ``error`` is set when the remote could not be reached."""

    remote: str
    fetched: int = 0
    reparented: int = 0
    duplicates_dropped: int = 0
    pushed_messages: int = 0
    pushed_tags: int = 0
    pushes: int = 0
    rejections: int = 0
    tags_resumed: int = 0
    moved_to_next_segment: int = 0
    segments_deleted: int = 0
    unpushed: int = 0  # local messages the remote does not have yet, when the cycle ended
    orphans_removed: int = 0
    conflicts: list[str] = field(default_factory=list)
    #: One line per queue branch whose remote history lost the confirmed tip (rewritten
    #: or deleted): held back until repaired (``repair.py``).
    rewritten: list[str] = field(default_factory=list)
    #: One line per update the server refused in this cycle (``refusals.py``).
    refused: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    #: When the attempt whose push landed began (wall clock), after a rejection: the
    #: node keeps that phase for its next cycles (``schedule.py``).
    won_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.rewritten and not self.refused

    def line(self) -> str:
        state = "ok" if self.error is None else f"failed: {self.error}"
        if self.rewritten or self.refused:
            state += "; " + "; ".join(self.rewritten + self.refused)
        return (
            f"sync {self.remote}: {state}; fetched {self.fetched}, pushed {self.pushed_messages} "
            f"messages and {self.pushed_tags} tags in {self.pushes} push(es), "
            f"{self.rejections} rejected, {len(self.conflicts)} conflicts, "
            f"{self.seconds * 1000:.0f} ms"
        )


class _Queues:
    """The queues one target syncs, as branches: segments of rotating queues, and
    their order and confirmed history (what consumer tags are checked against)."""

    def __init__(self, storage: Storage, target: SyncTarget) -> None:
        self.storage, self.target = storage, target
        self.rotating = {
            q: rotation.Rotating(q, p, target.remote, target.committer)
            for q, p in target.rotations.items()
        }

    def branches(self, remote_refs: dict[str, str]) -> list[str]:
        """The branches to sync: each queue, or each segment of a rotating queue."""
        out: list[str] = []
        for queue in self.target.queues:
            rot = self.rotating.get(queue)
            out += rotation.branches(self.storage, rot, remote_refs) if rot else [queue]
        return out

    def segment_owner(self, branch: str) -> rotation.Rotating | None:
        """The rotating queue ``branch`` is a segment of (segment 0 included), if any."""
        return next(
            (r for q, r in self.rotating.items() if segment_number(q, branch) is not None), None
        )

    def before(self, a: str, b: str) -> bool:
        """Whether consumer position ``a`` is at or before ``b`` in queue order
        (across segments of a rotating queue)."""
        if self.storage.is_ancestor(a, b):
            return True
        return any(
            QueueSource(self.storage, rot.queue, rot.tracking_prefix).before(a, b)
            for rot in self.rotating.values()
        )

    def is_confirmed(self, sha: str) -> bool:
        """Whether ``sha`` is on the confirmed history of a queue (segment) synced here."""
        prefix = f"refs/remotes/{self.target.remote}/"
        for branch in self.branches({}):
            tip = self.storage.read_ref(prefix + branch)
            if tip is not None and self.storage.is_ancestor(sha, tip):
                return True
        return False

    def unpushed(self) -> int:
        """Local messages the remote does not have yet (a ref read per branch when
        there are none)."""
        total = 0
        for branch in self.branches({}):
            local = self.storage.read_ref(f"refs/heads/{branch}")
            confirmed = self.storage.read_ref(tracking_ref(self.target.remote, branch))
            if local is None or local == confirmed:
                continue
            theirs, ours = self.storage.divergence(confirmed, local)
            sent, _ = Outbox(self.storage, self.target.remote, branch).resume(theirs, ours)
            total += len(ours) - sent
        return total


class _Cycle:
    """The state of one attempt: the plan of what to push."""

    def __init__(
        self, storage: Storage, target: SyncTarget, report: SyncReport, now: Callable[[], datetime]
    ) -> None:
        self.storage, self.target, self.report, self.now = storage, target, report, now
        self.updates: list[RefUpdate] = []
        self.confirm: list[tuple[str, str, str | None]] = []  # (tracking ref, new, old)
        self.message_count = 0
        self.replaced: set[str] = set()  # copies the re-parenting made unreachable
        self.queues = _Queues(storage, target)
        self.deleting: list[tuple[rotation.Rotating, str, set[str]]] = []
        self.chunks: list[tuple[Outbox, Replay]] = []  # pushed before their branch moves
        self.more = False  # a chunk went out and more of the backlog waits
        self.offsets = OffsetSync(
            storage, target.remote, target.consumers, self.queues.before, self.queues.is_confirmed
        )
        self.tags = Plan()
        self.held = repair.Held(storage, target.remote, report.rewritten)
        self.excluded = target.refusals.excluded()  # refs the server refused: left out
        self.pushed: list[RefUpdate] = []

    def run(self, listen_only: bool = False) -> None:
        landed = False
        try:
            landed = self._run(listen_only)
        finally:
            if not landed:  # chunk copies that did not land: nothing will name them
                self.replaced.update(c for _, chunk in self.chunks for c in chunk.written)
            self.report.orphans_removed += self.storage.discard(self.replaced)

    def _run(self, listen_only: bool) -> bool:
        if not self.target.pace.begin(listen_only):
            return False  # no read in the budget now: the next listen or cycle fetches
        remote_refs = ls_remote(self.storage.git_dir, self.target.url, self.target.credentials)
        self.target.registry.observe(remote_refs, self.now().timestamp(), self.target.pace)
        gone = self.fetch_changed(remote_refs, self.queues.branches(remote_refs))
        if listen_only:
            return False
        for rot in self.queues.rotating.values():
            self.report.moved_to_next_segment += rotation.settle(self.storage, rot, self.now())
        for rot, branch, history in gone:
            rotation.forget(self.storage, rot, branch, history, self.now())
        with self.storage.writing():  # copies stay until a ref names them (after the push)
            updates = self.plan(remote_refs)
            if not updates:
                self.offsets.landed(self.tags)  # resets already in place: drop their records
                return False
            self.pushed = updates
            self.target.pace.push()
            push_atomic(self.storage.git_dir, self.target.url, updates, self.target.credentials)
            self.target.refusals.landed([u.ref for u in updates])
            for ref, new, old in self.confirm:
                self.storage.compare_and_swap(ref, new, old)
            for outbox, chunk in self.chunks:
                assert chunk.last is not None
                outbox.advance(chunk.last, chunk.tip)
        self.offsets.landed(self.tags)
        for rot, branch, history in self.deleting:
            rotation.forget(self.storage, rot, branch, history, self.now())
            self.report.segments_deleted += 1
        self.report.pushes += 1
        self.report.pushed_messages += self.message_count
        self.report.pushed_tags += sum(u.ref.startswith("refs/tags/") for u in updates)
        return True

    def plan(self, remote_refs: dict[str, str]) -> list[RefUpdate]:
        """Steps 2 and 3: integrate every branch, reconcile the tags, list the updates."""
        for branch in self.queues.branches(remote_refs):
            self.integrate(branch)
        self.offsets.plan(self.tags)
        self.tags.drop(self.excluded | self.held.tags(self.tags.updates))
        self.report.conflicts += self.tags.conflicts
        storage, rotating, now = self.storage, self.queues.rotating.values(), self.now()
        for update, gone in rotation.deletions(storage, rotating, remote_refs, self.excluded, now):
            self.updates.append(update)  # expired segments go in the same atomic push
            self.deleting.append(gone)
        updates = self.updates + self.tags.updates
        return updates + self.target.registry.plan(
            storage, remote_refs, now, updates, self.excluded
        )

    # step 1 -----------------------------------------------------------------
    def fetch_changed(
        self, remote_refs: dict[str, str], branches: list[str]
    ) -> list[tuple[rotation.Rotating, str, set[str]]]:
        """Fetch what changed; returns the segments the remote deleted."""
        t, storage = self.target, self.storage
        specs: list[str] = []
        before: dict[str, str | None] = {}
        branch_of: dict[str, str] = {}
        gone = []
        for branch in branches:
            ref, mine = f"refs/heads/{branch}", tracking_ref(t.remote, branch)
            theirs, known = remote_refs.get(ref), storage.read_ref(mine)
            if theirs and theirs != known:
                specs.append(f"+{ref}:{fetched_ref(mine)}")
                before[mine], branch_of[mine] = known, branch
            elif theirs is None and known is not None:
                rot = self.queues.segment_owner(branch)
                if rot is not None and branch != rot.queue:  # a segment another node deleted
                    gone.append((rot, branch, set(storage.commits_between(None, known))))
                elif rot is None:  # a queue branch is never deleted
                    self.held.hold(branch, known, None)
        specs += self.offsets.to_fetch(remote_refs)
        tips = [sha for sha in [*before.values(), *self.offsets.seen.values()] if sha]
        if specs:
            self.target.pace.read()  # outside the guard: producers never wait on the budget
        with storage.writing():  # a fetch may only set refs to objects we already had
            fetch(storage.git_dir, t.url, specs, t.credentials, tips)
        self.offsets.follow(self.tags)
        self.report.tags_resumed += self.tags.followed
        self.tags.followed = 0
        for mine, known in before.items():  # only now may consumers see the new messages
            tip = storage.read_ref(fetched_ref(mine))
            if tip is None:
                continue
            new = self.held.grown(branch_of[mine], known, tip)
            if new is None:  # rewritten: the fetched tip goes
                storage.delete_ref(fetched_ref(mine), tip)
            elif storage.compare_and_swap(mine, tip, known):
                storage.delete_ref(fetched_ref(mine), tip)
                self.report.fetched += len(new) if known else storage.count(None, tip)
        return gone

    # step 2 -----------------------------------------------------------------
    def integrate(self, queue: str) -> None:
        """Bring the local branch onto the confirmed one; plan the push of what is left
        (at most a chunk of it: ``target.state``)."""
        storage = self.storage
        local_ref = f"refs/heads/{queue}"
        local = storage.read_ref(local_ref)
        confirmed = storage.read_ref(tracking_ref(self.target.remote, queue))
        if local == confirmed or queue in self.held.branches or local_ref in self.excluded:
            return
        split = storage.divergence(confirmed, local) if local else None
        if confirmed is None or (split is not None and not split[0]):
            assert split is not None  # a fast-forward: push (the first chunk of) ours
            count = min(len(split[1]), self.target.state.chunk)
            self.more |= count < len(split[1])
            self.plan_push(queue, split[1][count - 1], confirmed, count)
            return
        outbox = Outbox(storage, self.target.remote, queue)
        snapshot = self.reparent(queue, local, confirmed, split, outbox)
        self.report.duplicates_dropped += snapshot.dropped
        if snapshot.complete:
            tip = storage.rewrite_branch(  # under the lock: only what producers added since
                local_ref,
                lambda now: replay_since(storage, snapshot, now, self.target.committer, self.now()),
            )
            self.replaced |= snapshot.replaced
            outbox.clear()
        elif snapshot.tip == confirmed:  # the whole chunk had landed already: skip it
            assert snapshot.last is not None
            outbox.advance(snapshot.last, confirmed)
            tip = confirmed
        else:  # a chunk: the branch stays as it is until the last one
            tip = snapshot.tip
            self.chunks.append((outbox, snapshot))
        self.report.reparented += snapshot.copied
        if tip is not None and tip != confirmed:
            self.plan_push(queue, tip, confirmed, snapshot.copied)

    def reparent(
        self, queue: str, local: str | None, confirmed: str, split: Split | None, outbox: Outbox
    ) -> Replay:
        """Replay the unpushed messages onto ``confirmed`` outside the branch lock; a
        chunk of them when there are many (segments of a rotating queue: all)."""
        state = self.target.state
        chunked = self.queues.segment_owner(queue) is None
        snapshot = replay_snapshot(
            self.storage,
            local,
            confirmed,
            self.target.committer,
            self.now(),
            split=split,
            outbox=outbox,
            limit=state.chunk if chunked else None,
            state=state,
        )
        self.more |= not snapshot.complete
        return snapshot

    def plan_push(self, queue: str, local: str, confirmed: str | None, count: int) -> None:
        """Push ``local`` (``count`` messages past ``confirmed``) to ``queue``."""
        if self.queues.segment_owner(queue) is not None:
            limit = rotation.push_limit(self.storage, local, confirmed)
            if limit == confirmed:
                return
            if limit != local:
                local, count = limit, self.storage.count(confirmed, limit)
        self.updates.append(RefUpdate(local, f"refs/heads/{queue}"))
        self.confirm.append((tracking_ref(self.target.remote, queue), local, confirmed))
        self.message_count += count


#: The most chunks one cycle pushes (``replay.CHUNK`` messages each): a backlog of
#: 100,000 messages goes out in one cycle, and a cycle stays bounded whatever the
#: local producers publish meanwhile.
MAX_CHUNKS = 100


def backoff(attempt: int, slot: float) -> float:
    """Seconds to wait after the ``attempt``-th rejected push in a row, ``slot`` the time
    that attempt took. A rejection means another node's push has just landed, and that
    node will not push again for an interval: the way is clear for whoever goes first.
    So wait a random part of one slot (nodes rejected together spread out), shorter
    with each rejection in a row, so that the node that has waited longest goes first.
    (Doubling the wait, as Ethernet does, starves the node that lost most: measured,
    nodes went 15-45 s without a push at 1 s intervals.)"""
    return random.uniform(0.0, min(slot, 1.0)) / attempt


#: Refused pushes one cycle goes through while it finds what the server refuses:
#: each one holds a ref back or halves the push.
MAX_REFUSALS = 16


def _refused(target: SyncTarget, report: SyncReport, pushed: list[str], exc: PushRefused) -> None:
    """Hold back what the server refused, or split the push to find it."""
    held = target.refusals.isolate(pushed, exc.refused, exc.said)
    for ref, reason in held.items():
        delay = target.refusals.refuse(ref, reason)
        line = refused_line(target.remote, ref, reason, exc.said, delay)
        report.refused.append(line)
        log.error("%s", line)


def _gave_up(target: SyncTarget, report: SyncReport, started: float) -> bool:
    """Whether a cycle stops retrying rejected pushes: after ``max_attempts``, or, with a
    push budget (whose backoff paces the retries), three intervals after ``started``."""
    if not report.rejections:
        return False
    if target.pace.pushes_per_minute is None:
        return report.rejections >= target.max_attempts
    return time.monotonic() - started >= 3 * target.interval


def sync_once(
    storage: Storage,
    target: SyncTarget,
    *,
    now: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    listen_only: bool = False,
    leaving: bool = False,
) -> SyncReport:
    """Run one sync cycle against ``target``; never raises for remote trouble.

    ``listen_only`` stops after the fetch: new remote messages become
    deliverable without a push (``sync.poll``: lower latency, same pushes).
    ``leaving``: the node's last cycle before it stops (its node ref goes)."""
    report = SyncReport(target.remote)
    started = time.monotonic()
    clock = now or (lambda: datetime.now(UTC))
    for queue in target.queues:
        storage.set_upstream(queue, target.remote)
    target.registry.leaving = leaving  # the node stops: its ref goes in this push
    if not listen_only:
        target.pace.wait_room()  # before the storage's sync lock: other processes go on
    with storage.exclusive(sync_lock(target.remote)):
        first = time.monotonic()  # the budget's wait is no part of the retry window
        target.refusals.deferred.clear()  # what a cut-short search set aside
        streak = chunks = refusals = 0  # rejections in a row; chunks gone through
        while True:
            cycle, pushes = _Cycle(storage, target, report, clock), report.pushes
            began, wall = time.monotonic(), datetime.now(UTC)
            try:
                cycle.run(listen_only)
            except PushRejected as exc:
                report.rejections += 1
                streak += 1
                target.state.lost()
                log.info("sync %s: push rejected (%s); retrying", target.remote, exc)
                if _gave_up(target, report, first):
                    break
                paced = target.pace.backoff(streak)  # by the budget when there is one
                sleep(paced or backoff(streak, time.monotonic() - began))
                continue
            except PushRefused as exc:  # the server's own decision: leave those refs out
                refusals += 1
                _refused(target, report, [u.ref for u in cycle.pushed], exc)
                if refusals >= MAX_REFUSALS:
                    break
                continue
            except GitMQError as exc:  # the remote, or a local git failure: report it
                report.error = exc.message
                break
            if report.pushes > pushes:
                streak = 0
                target.state.won()
            if report.rejections and pushes == 0 < report.pushes:
                report.won_at = wall
            chunks += 1
            deferred, target.refusals.deferred = target.refusals.deferred, set()
            if not (cycle.more or deferred) or chunks >= MAX_CHUNKS:  # else go on at once
                break
        if report.pushes == 0 and _gave_up(target, report, first):
            report.error = (
                f"push rejected {report.rejections} times (other nodes kept pushing "
                f"first); will try again next cycle"
            )
        if not listen_only:
            with contextlib.suppress(GitMQError):  # a count is only for the report
                report.unpushed = _Queues(storage, target).unpushed()
    report.seconds = time.monotonic() - started
    return report
