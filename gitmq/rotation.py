"""Remote retention: rotating a queue into segments during sync (docs/retention.md).

Runs inside one sync cycle, on local branches, after the fetch and before the
push, so whatever it changes goes out in the cycle's one atomic push:

- ``settle``: close the live segment when the policy says it is full, make
  sure every closed segment has its successor (the open marker every node
  derives the same way), and move anything published after a segment's first
  close marker on to the next segment;
- ``expired``: the closed segments that may be deleted on the remote: older
  than the policy, beyond ``keep_segments``, and no consumer tag inside;
- ``forget``: after a segment is gone from the remote, drop it locally.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gitmq import message as fmt
from gitmq.message import Identity
from gitmq.segments import (
    CLOSE,
    OPEN,
    RotationPolicy,
    close_draft,
    open_body,
    segment_branch,
    segment_number,
    segments,
)
from gitmq.storage import Storage
from gitmq.storage.remote import RefUpdate

log = logging.getLogger("gitmq.rotation")

#: Rounds ``_carry_over`` tries against producers still appending to a closed segment.
CARRY_TRIES = 5


@dataclass
class Rotating:
    """One rotating queue of a sync target."""

    queue: str
    policy: RotationPolicy
    remote: str
    committer: Identity

    @property
    def tracking_prefix(self) -> str:
        return f"refs/remotes/{self.remote}/"

    def confirmed(self, storage: Storage) -> list[tuple[int, str]]:
        return segments(storage, self.queue, self.tracking_prefix)

    def local(self, storage: Storage) -> list[tuple[int, str]]:
        return segments(storage, self.queue)


def branches(storage: Storage, rot: Rotating, remote_refs: Iterable[str]) -> list[str]:
    """Every segment branch of the queue known locally, as tracked, or on the remote."""
    numbers = {n for n, _ in rot.local(storage)} | {n for n, _ in rot.confirmed(storage)}
    for ref in remote_refs:
        if ref.startswith("refs/heads/"):
            number = segment_number(rot.queue, ref[len("refs/heads/") :])
            if number is not None:
                numbers.add(number)
    numbers.add(0)
    return [segment_branch(rot.queue, n) for n in sorted(numbers)]


def settle(storage: Storage, rot: Rotating, now: datetime) -> int:
    """Close the live segment if due and move misplaced messages on; returns moved."""
    _close_if_due(storage, rot, now)
    moved = 0
    confirmed = {n for n, _ in rot.confirmed(storage)}
    for number, tip in rot.local(storage):
        if number >= 1 and number not in confirmed and any(n > number for n in confirmed):
            # Made here but never pushed, and the queue moved past it meanwhile.
            moved += _evacuate(storage, rot, number, tip, set(), now)
        else:
            moved += _carry_over(storage, rot, number, now)
    return moved


def _close_if_due(storage: Storage, rot: Rotating, now: datetime) -> None:
    confirmed = dict(rot.confirmed(storage))
    local = rot.local(storage)
    if not local:
        return
    number, local_tip = local[-1]
    tip = confirmed.get(number)
    if tip is None or _is_close(storage, tip):
        return
    if any(_is_close(storage, sha) for sha in storage.commits_between(tip, local_tip)):
        return  # already closing: the marker waits for the push
    count = storage.count(None, tip)
    due = rot.policy.max_messages is not None and count >= rot.policy.max_messages
    if rot.policy.max_age is not None:
        root = storage.commits_between(None, tip)[0] if count else tip
        due = due or now.timestamp() - storage.read(root).time.timestamp() >= rot.policy.max_age
    if due:
        storage.append(
            "refs/heads/" + segment_branch(rot.queue, number),
            [close_draft(rot.committer, now)],
            rot.committer,
            lambda: now,
        )
        log.info("rotation: closing segment %d of %s after %d messages", number, rot.queue, count)


def _carry_over(storage: Storage, rot: Rotating, number: int, now: datetime) -> int:
    """Keep segment ``number`` ending at its first close; move the rest on.

    Producers move to the next segment as soon as it exists locally, so a lost race
    with one is rare; after ``CARRY_TRIES`` the rest waits for the next cycle (the
    push never goes past the close marker, see ``push_limit``)."""
    ref = "refs/heads/" + segment_branch(rot.queue, number)
    tracking = rot.tracking_prefix + segment_branch(rot.queue, number)
    moved = 0
    for _ in range(CARRY_TRIES):
        local, confirmed = storage.read_ref(ref), storage.read_ref(tracking)
        if local is None or local == confirmed:
            if confirmed is not None and _is_close(storage, confirmed):
                _successor(storage, rot, number, confirmed)
            return 0
        unpushed = storage.commits_between(confirmed, local)
        if confirmed is not None and _is_close(storage, confirmed):
            keep, close = [], confirmed
        else:
            first = next((i for i, sha in enumerate(unpushed) if _is_close(storage, sha)), None)
            if first is None:
                return 0
            keep, close = unpushed[: first + 1], unpushed[first]
        moved += _move(
            storage, rot, unpushed[len(keep) :], _successor(storage, rot, number, close), now
        )
        end = keep[-1] if keep else confirmed
        assert end is not None  # keep is empty only when the confirmed tip is a close
        if storage.compare_and_swap(ref, end, local):
            break
    return moved
    # a producer appended meanwhile: go round; ids already moved are skipped


def _successor(storage: Storage, rot: Rotating, number: int, close_sha: str) -> str:
    """Where messages after segment ``number``'s close go: the next segment, made
    from the close marker if ``number`` is the newest, else the live segment."""
    if _newest(storage, rot) > number:
        return _live_ref(storage, rot)
    ref = "refs/heads/" + segment_branch(rot.queue, number + 1)
    root = storage.write_commits([open_body(storage.read(close_sha))])[0]
    storage.compare_and_swap(ref, root, None)
    return ref


def _newest(storage: Storage, rot: Rotating) -> int:
    known = rot.local(storage) + rot.confirmed(storage)
    return max((n for n, _ in known), default=0)


def _live_ref(storage: Storage, rot: Rotating) -> str:
    """The newest segment's local branch (started from the remote's copy if needed)."""
    branch = segment_branch(rot.queue, _newest(storage, rot))
    ref = "refs/heads/" + branch
    confirmed = storage.read_ref(rot.tracking_prefix + branch)
    if storage.read_ref(ref) is None and confirmed is not None:
        storage.compare_and_swap(ref, confirmed, None)
    return ref


def _evacuate(
    storage: Storage, rot: Rotating, number: int, tip: str, landed: set[str], now: datetime
) -> int:
    """Move a dead segment's messages that never landed to the live segment, then drop
    the local branch."""
    ref = "refs/heads/" + segment_branch(rot.queue, number)
    shas = [s for s in storage.commits_between(None, tip) if s not in landed]
    moved = _move(storage, rot, shas, _live_ref(storage, rot), now)
    storage.delete_ref(ref, tip)  # only now: a crash before this just moves them again
    return moved


def _move(storage: Storage, rot: Rotating, shas: list[str], target: str, now: datetime) -> int:
    """Put the data messages among ``shas`` on ``target`` right after its confirmed
    messages, skipping ids already there.

    They come from an older segment, so they were published before whatever is still
    unpushed on ``target`` (a producer writes to the newest segment it knows): those
    go after them, re-parented, and each producer's messages keep their order. The
    last step runs under ``target``'s lock, so producers publishing to it cannot make
    it go round: they wait while the unpushed messages are re-parented."""
    tracking = rot.tracking_prefix + target.removeprefix("refs/heads/")
    confirmed = storage.read_ref(tracking)  # only sync moves it, and sync runs here
    landed = storage.commits_between(None, confirmed) if confirmed else []
    present = {fmt.stable_id(storage.read_body(s)) for s in landed}
    candidates = [storage.read_body(sha) for sha in shas]
    candidates = [b for b in candidates if fmt.control_of(b) is None]
    count = 0

    def build(tip: str | None) -> tuple[list[bytes], str | None]:
        nonlocal count
        base, own = _unpushed(storage, tip, confirmed)
        there = present | {fmt.stable_id(body) for body in own}
        moved = [body for body in candidates if fmt.stable_id(body) not in there]
        count = len(moved)
        if not moved:
            return [], tip
        parent, bodies = base, []
        for body in moved + own:
            bodies.append(fmt.reparent(body, parent, rot.committer, now))
            parent = storage.commit_id(bodies[-1])
        return bodies, parent

    storage.rewrite_branch(target, build)
    return count


def _unpushed(
    storage: Storage, tip: str | None, confirmed: str | None
) -> tuple[str | None, list[bytes]]:
    """Where a segment's unpushed messages start from, and their bodies (without the
    local open marker of a segment the remote has under another root)."""
    if tip is None:
        return confirmed, []
    local = storage.commits_between(confirmed, tip)
    base = confirmed
    if confirmed is None and local and fmt.control_of(storage.read_body(local[0])) == OPEN:
        base, local = local[0], local[1:]
    bodies = [storage.read_body(sha) for sha in local]
    return base, [body for body in bodies if fmt.control_of(body) != OPEN]


def push_limit(storage: Storage, local: str, confirmed: str | None) -> str:
    """How much of a segment branch may be pushed: up to its first close marker.

    A producer that picked the segment a moment before sync closed it appends after
    the close marker, possibly after ``settle`` ran; that message stays local and the
    next sync moves it on. Pushed, it would end the segment after its close, where no
    node moves it and no consumer crosses to the next segment."""
    if confirmed is not None and _is_close(storage, confirmed):
        return confirmed
    for sha in storage.commits_between(confirmed, local):
        if _is_close(storage, sha):
            return sha
    return local


def expired(
    storage: Storage, rot: Rotating, tags: Iterable[str], now: datetime
) -> list[tuple[str, str, set[str]]]:
    """Closed segments to delete on the remote: (branch, tip, its commits).

    A segment goes only when every consumer tag on the queue is in a later
    segment, it is beyond the newest ``keep_segments`` closed ones, and (with
    ``max_age``) it closed longer ago than that. Segment 0 is never deleted."""
    confirmed = rot.confirmed(storage)
    numbers = {n for n, _ in confirmed}
    closed = [
        (n, tip) for n, tip in confirmed if n >= 1 and n + 1 in numbers and _is_close(storage, tip)
    ]
    candidates = []
    for number, tip in closed[: max(0, len(closed) - rot.policy.keep_segments)]:
        if rot.policy.max_age is not None and (
            now.timestamp() - storage.read(tip).time.timestamp() < rot.policy.max_age
        ):
            break
        candidates.append(number)
    if not candidates:
        return []  # the common case: no segment history is read at all
    positions = set(tags)
    out = []
    for number, tip in confirmed:  # oldest first, segment 0 included
        if number > candidates[-1]:
            break
        history = set(storage.commits_between(None, tip))
        if positions & history:
            break  # a consumer is here: this segment and every later one stay
        if number in candidates:
            out.append((segment_branch(rot.queue, number), tip, history))
    return out


def deletions(
    storage: Storage,
    rotating: Iterable[Rotating],
    remote_refs: Mapping[str, str],
    excluded: set[str],
    now: datetime,
) -> list[tuple[RefUpdate, tuple[Rotating, str, set[str]]]]:
    """The expired segments to delete on the remote, whose deletion the server does
    not refuse: each deletion (with a lease on the tip) and (queue, branch, its commits)."""
    tags = [sha for ref, sha in remote_refs.items() if ref.startswith("refs/tags/")]
    tags += storage.list_refs("refs/tags/").values()
    return [
        (RefUpdate("", f"refs/heads/{branch}", lease=tip, delete=True), (rot, branch, history))
        for rot in rotating
        for branch, tip, history in expired(storage, rot, tags, now)
        if f"refs/heads/{branch}" not in excluded
    ]


def forget(storage: Storage, rot: Rotating, branch: str, history: set[str], now: datetime) -> int:
    """Drop a segment the remote no longer has: its refs, then its objects. Local
    messages on it that never landed move to the live segment first."""
    number = segment_number(rot.queue, branch)
    assert number is not None and number >= 1
    tracking = rot.tracking_prefix + branch
    value = storage.read_ref(tracking)
    if value is not None:
        storage.delete_ref(tracking, value)
    local = storage.read_ref("refs/heads/" + branch)
    if local is not None:
        _evacuate(storage, rot, number, local, history, now)
    return storage.drop_commits(history).commits


def _is_close(storage: Storage, sha: str) -> bool:
    return fmt.control_of(storage.read_body(sha)) == CLOSE
