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

from gitmq import rotation
from gitmq.errors import GitMQError
from gitmq.message import Identity
from gitmq.names import sync_lock, tracking_ref
from gitmq.offsets import OffsetSync, Plan, remote_tag_ref
from gitmq.replay import Replay, replay_since, replay_snapshot
from gitmq.segments import QueueSource, RotationPolicy, segment_number
from gitmq.storage import Storage
from gitmq.storage.remote import Credentials, PushRejected, RefUpdate, fetch, ls_remote, push_atomic

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
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def line(self) -> str:
        state = "ok" if self.ok else f"failed: {self.error}"
        return (
            f"sync {self.remote}: {state}; fetched {self.fetched}, pushed {self.pushed_messages} "
            f"messages and {self.pushed_tags} tags in {self.pushes} push(es), "
            f"{self.rejections} rejected, {len(self.conflicts)} conflicts, "
            f"{self.seconds * 1000:.0f} ms"
        )


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
        self.rotating = {
            q: rotation.Rotating(q, p, target.remote, target.committer)
            for q, p in target.rotations.items()
        }
        self.deleting: list[tuple[rotation.Rotating, str, set[str]]] = []
        self.offsets = OffsetSync(
            storage, target.remote, target.consumers, self.before, self.is_confirmed
        )
        self.tags = Plan()

    def branches(self, remote_refs: dict[str, str]) -> list[str]:
        """The branches to sync: each queue, or each segment of a rotating queue."""
        out: list[str] = []
        for queue in self.target.queues:
            rot = self.rotating.get(queue)
            out += rotation.branches(self.storage, rot, remote_refs) if rot else [queue]
        return out

    def run(self, listen_only: bool = False) -> None:
        try:
            self._run(listen_only)
        finally:
            self.report.orphans_removed += self.storage.discard(self.replaced)

    def _run(self, listen_only: bool) -> None:
        remote_refs = ls_remote(self.storage.git_dir, self.target.url, self.target.credentials)
        gone = self.fetch_changed(remote_refs, self.branches(remote_refs))
        if listen_only:
            return
        for rot in self.rotating.values():
            self.report.moved_to_next_segment += rotation.settle(self.storage, rot, self.now())
        for rot, branch, history in gone:
            rotation.forget(self.storage, rot, branch, history, self.now())
        for branch in self.branches(remote_refs):
            self.integrate(branch)
        self.offsets.plan(self.tags)
        self.report.conflicts += self.tags.conflicts
        self.plan_deletions(remote_refs)
        updates = self.updates + self.tags.updates
        if not updates:
            self.offsets.landed(self.tags)  # resets already in place: drop their records
            return
        push_atomic(self.storage.git_dir, self.target.url, updates, self.target.credentials)
        for ref, new, old in self.confirm:
            self.storage.compare_and_swap(ref, new, old)
        self.offsets.landed(self.tags)
        for rot, branch, history in self.deleting:
            rotation.forget(self.storage, rot, branch, history, self.now())
            self.report.segments_deleted += 1
        self.report.pushes += 1
        self.report.pushed_messages += self.message_count
        self.report.pushed_tags += sum(u.ref.startswith("refs/tags/") for u in updates)

    def unpushed(self) -> int:
        """Local messages the remote does not have yet (a ref read per branch when
        there are none)."""
        total = 0
        for branch in self.branches({}):
            local = self.storage.read_ref(f"refs/heads/{branch}")
            confirmed = self.storage.read_ref(tracking_ref(self.target.remote, branch))
            if local is not None and local != confirmed:
                total += self.storage.count(confirmed, local)
        return total

    # step 1 -----------------------------------------------------------------
    def fetch_changed(
        self, remote_refs: dict[str, str], branches: list[str]
    ) -> list[tuple[rotation.Rotating, str, set[str]]]:
        """Fetch what changed; returns the segments the remote deleted."""
        t, storage = self.target, self.storage
        specs: list[str] = []
        before: dict[str, str | None] = {}
        gone = []
        for branch in branches:
            ref, mine = f"refs/heads/{branch}", tracking_ref(t.remote, branch)
            theirs, known = remote_refs.get(ref), storage.read_ref(mine)
            if theirs and theirs != known:
                specs.append(f"+{ref}:{fetched_ref(mine)}")
                before[mine] = known
            elif theirs is None and known is not None:
                rot = self.segment_owner(branch)
                if rot is not None and branch != rot.queue:  # a segment another node deleted
                    gone.append((rot, branch, set(storage.commits_between(None, known))))
        copies = {}
        for consumer in t.consumers:
            ref, mine = f"refs/tags/{consumer}", remote_tag_ref(t.remote, consumer)
            theirs, known = remote_refs.get(ref), storage.read_ref(mine)
            copies[consumer] = known
            if theirs and theirs != known:
                specs.append(f"+{ref}:{mine}")
            elif theirs is None and known is not None:
                storage.delete_ref(mine, known)  # deleted on the remote (a reset elsewhere)
        self.offsets.remember(copies)
        tips = [sha for sha in before.values() if sha] + [c for c in copies.values() if c]
        with storage.writing():  # a fetch may only set refs to objects we already had
            fetch(storage.git_dir, t.url, specs, t.credentials, tips)
        self.offsets.follow(self.tags)
        self.report.tags_resumed += self.tags.followed
        self.tags.followed = 0
        for mine, known in before.items():  # only now may consumers see the new messages
            tip = storage.read_ref(fetched_ref(mine))
            if tip and storage.compare_and_swap(mine, tip, known):
                storage.delete_ref(fetched_ref(mine), tip)
                self.report.fetched += storage.count(known, tip)
        return gone

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

    def plan_deletions(self, remote_refs: dict[str, str]) -> None:
        """Delete expired segments on the remote (in the same atomic push)."""
        tags = [sha for ref, sha in remote_refs.items() if ref.startswith("refs/tags/")]
        tags += self.storage.list_refs("refs/tags/").values()
        for rot in self.rotating.values():
            for branch, tip, history in rotation.expired(self.storage, rot, tags, self.now()):
                self.updates.append(RefUpdate("", f"refs/heads/{branch}", lease=tip, delete=True))
                self.deleting.append((rot, branch, history))

    # step 2 -----------------------------------------------------------------
    def integrate(self, queue: str) -> None:
        """Bring the local branch onto the confirmed one; plan the push of what is left."""
        storage = self.storage
        local_ref = f"refs/heads/{queue}"
        local = storage.read_ref(local_ref)
        confirmed = storage.read_ref(tracking_ref(self.target.remote, queue))
        if local == confirmed:
            return
        if confirmed is None or (local is not None and storage.is_ancestor(confirmed, local)):
            assert local is not None
            self.plan_push(queue, local, confirmed)
            return
        with storage.writing():  # the copies stay until the branch names them
            snapshot = self.reparent(local, confirmed)
            tip = storage.rewrite_branch(local_ref, lambda now: self.finish(snapshot, now))
        self.replaced |= snapshot.replaced
        self.report.reparented += snapshot.copied
        self.report.duplicates_dropped += snapshot.dropped
        if tip is not None and tip != confirmed:
            self.plan_push(queue, tip, confirmed)

    def reparent(self, local: str | None, confirmed: str) -> Replay:
        """Replay the unpushed messages onto ``confirmed``, outside the branch lock (a
        fast-forward when there are none)."""
        return replay_snapshot(self.storage, local, confirmed, self.target.committer, self.now())

    def finish(self, snapshot: Replay, current: str | None) -> tuple[list[bytes], str | None]:
        """Under the branch lock: replay what producers appended since the snapshot."""
        return replay_since(self.storage, snapshot, current, self.target.committer, self.now())

    def plan_push(self, queue: str, local: str, confirmed: str | None) -> None:
        if self.segment_owner(queue) is not None:
            local = rotation.push_limit(self.storage, local, confirmed)
            if local == confirmed:
                return
        self.updates.append(RefUpdate(local, f"refs/heads/{queue}"))
        self.confirm.append((tracking_ref(self.target.remote, queue), local, confirmed))
        self.message_count += self.storage.count(confirmed, local)


def sync_once(
    storage: Storage,
    target: SyncTarget,
    *,
    now: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    listen_only: bool = False,
) -> SyncReport:
    """Run one sync cycle against ``target``; never raises for remote trouble.

    ``listen_only`` stops after the fetch: new remote messages become
    deliverable without a push (``sync.poll``: lower latency, same pushes)."""
    report = SyncReport(target.remote)
    started = time.monotonic()
    clock = now or (lambda: datetime.now(UTC))
    for queue in target.queues:
        storage.set_upstream(queue, target.remote)
    with storage.exclusive(sync_lock(target.remote)):
        for attempt in range(1, target.max_attempts + 1):
            try:
                _Cycle(storage, target, report, clock).run(listen_only)
                break
            except PushRejected as exc:
                report.rejections += 1
                log.info("sync %s: push rejected (%s); retrying", target.remote, exc)
                if attempt < target.max_attempts:
                    sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
            except GitMQError as exc:  # the remote, or a local git failure: report it
                report.error = exc.message
                break
        else:
            report.error = (
                f"push rejected {report.rejections} times (other nodes kept pushing first); "
                f"will try again next cycle"
            )
        if not listen_only:
            with contextlib.suppress(GitMQError):  # a count is only for the report
                report.unpushed = _Cycle(storage, target, report, clock).unpushed()
    report.seconds = time.monotonic() - started
    return report
