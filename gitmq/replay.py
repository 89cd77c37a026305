"""Re-parenting a node's unpushed messages onto the confirmed tip (docs/sync.md).

Only the ``parent`` and ``committer`` lines change; author, time, payload and
headers stay, so ids stay. A message whose id already landed on the remote
(an ambiguous push: it landed, the answer was lost) is dropped; a message
written without ``gitmq-id`` (the Ruby gem, plain git) is compared by its
derived id. A segment's open marker is never replayed: the remote has its own.

It takes two steps so that a producer publishing all the time cannot starve
sync. ``replay_snapshot`` replays what the branch holds now, outside the
branch lock; ``replay_since`` runs under the lock and replays only what was
appended since, which is what a producer publishes in the time the snapshot
took: producers wait milliseconds and sync always wins.

A large backlog (a node back from an outage, or one that lost many races) is
pushed in chunks of at most ``CHUNK`` messages, so that no push, and no
attempt between a fetch and its push, grows with the backlog: a long attempt
loses every race against nodes with short ones, and loses more the more it
waits. While chunks go out the local branch keeps its old fork point; the
``Outbox`` records how far it got. The last chunk rewrites the branch. The
chunk shrinks while pushes are rejected (``ReplayState``): the attempt that re-parents
less ends sooner and wins sooner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gitmq import message as fmt
from gitmq.message import Identity
from gitmq.segments import OPEN
from gitmq.storage import Storage

#: The most commits ``replay_since`` walks back looking for the snapshot's tip; past
#: this (or if it is not there: the branch was rewritten) it replays the branch whole.
WALK_LIMIT = 100_000
#: The most messages one push carries.
CHUNK = 1000
#: The fewest it carries after rejections in a row (when that many wait).
MIN_CHUNK = 50
#: The most ids ``ReplayState`` remembers (about 250 bytes each).
ID_MEMORY = 100_000

#: ``Storage.divergence(confirmed, local)``: (only the remote's, only ours), oldest first.
Split = tuple[list[str], list[str]]


@dataclass
class ReplayState:
    """What replaying onto one remote keeps from attempt to attempt.

    ``chunk``: how many messages the next push may carry, halved by each rejected
    push and doubled by each that lands, within ``MIN_CHUNK`` and ``CHUNK``.
    ``ids``: the ids of the remote's commits since the fork point, as last read
    (commits never change), so a node that keeps losing races reads only what it
    fetched since, not everything since its fork point, which grows with each race
    it loses."""

    chunk: int = CHUNK
    ids: dict[str, str] = field(default_factory=dict)

    def lost(self) -> None:
        self.chunk = max(MIN_CHUNK, self.chunk // 2)

    def won(self) -> None:
        self.chunk = min(CHUNK, self.chunk * 2)

    def landed(self, storage: Storage, shas: list[str]) -> set[str]:
        """The ids of the commits ``shas`` (the remote's since the fork point); only
        theirs are kept, so what is remembered never outgrows one divergence."""
        known = {sha: self.ids[sha] for sha in shas if sha in self.ids}
        missing = [sha for sha in shas if sha not in known]
        for sha, body in zip(missing, storage.read_bodies(missing), strict=True):
            known[sha] = fmt.stable_id(body)
        self.ids = known if len(known) <= ID_MEMORY else {}
        return set(known.values())


@dataclass
class Replay:
    """The unpushed messages of a branch replayed onto the confirmed tip."""

    start: str | None  # the local tip that was replayed (None: no local branch)
    confirmed: str
    tip: str  # the last copy (``confirmed`` when nothing was left to replay)
    landed: set[str] = field(default_factory=set)  # ids on the remote since the fork
    replaced: set[str] = field(default_factory=set)  # old commits the copies replace
    written: list[str] = field(default_factory=list)  # the copies
    copied: int = 0
    dropped: int = 0
    last: str | None = None  # the last original replayed or dropped
    complete: bool = True  # False: a chunk, more to come

    def extend(
        self, shas: list[str], bodies: list[bytes], committer: Identity, now: datetime
    ) -> list[bytes]:
        """Replay ``bodies`` (of commits ``shas``, oldest first) after ``tip``; returns
        the copies to write."""
        self.replaced.update(shas)
        out: list[bytes] = []
        for sha, body in zip(shas, bodies, strict=True):
            self.last = sha
            if fmt.control_of(body) == OPEN:
                continue  # a segment's root stays a root; the remote has its own
            if fmt.stable_id(body) in self.landed:
                self.dropped += 1
                continue
            out.append(fmt.reparent(body, self.tip, committer, now))
            self.tip = Storage.commit_id(out[-1])
            self.written.append(self.tip)
        self.copied += len(out)
        return out


class Outbox:
    """How far a chunked push of one branch's backlog got: the last original message
    whose copy landed (on the local branch) and that copy (on the confirmed one)."""

    def __init__(self, storage: Storage, remote: str, branch: str) -> None:
        self.storage = storage
        self.sent_ref = f"refs/gitmq/outbox/{remote}/sent/{branch}"
        self.copy_ref = f"refs/gitmq/outbox/{remote}/copy/{branch}"

    def resume(self, theirs: list[str], ours: list[str]) -> tuple[int, int]:
        """Where the next chunk starts among ``ours`` (the local commits since the fork)
        and where ids that landed may start among ``theirs`` (the remote's): (0, 0)
        unless the record still fits both."""
        sent = self.storage.read_ref(self.sent_ref)
        copy = self.storage.read_ref(self.copy_ref)
        if sent is None or copy is None or sent not in ours or copy not in theirs:
            return 0, 0
        return ours.index(sent) + 1, theirs.index(copy) + 1

    def advance(self, sent: str, copy: str) -> None:
        for ref, value in ((self.sent_ref, sent), (self.copy_ref, copy)):
            self.storage.compare_and_swap(ref, value, self.storage.read_ref(ref))

    def clear(self) -> None:
        for ref in (self.sent_ref, self.copy_ref):
            value = self.storage.read_ref(ref)
            if value is not None:
                self.storage.delete_ref(ref, value)


def replay_snapshot(
    storage: Storage,
    local: str | None,
    confirmed: str,
    committer: Identity,
    now: datetime,
    *,
    split: Split | None = None,
    outbox: Outbox | None = None,
    limit: int | None = None,
    state: ReplayState | None = None,
) -> Replay:
    """Replay the local branch (at ``local``) onto ``confirmed``; writes the copies.
    Call it inside ``storage.writing()`` up to the ref update that names them.

    ``split`` is ``storage.divergence(confirmed, local)`` if the caller has it. With
    ``limit``, at most that many messages are replayed (``complete`` False when more
    are left); ``outbox`` says where earlier chunks got to; ``state`` remembers
    the ids of confirmed commits."""
    if local is None:
        return Replay(local, confirmed, confirmed)
    theirs, ours = split or storage.divergence(confirmed, local)
    if not ours:
        return Replay(local, confirmed, confirmed)  # nothing unpushed: a fast-forward
    start, since = outbox.resume(theirs, ours) if outbox else (0, 0)
    landed = (state or ReplayState()).landed(storage, theirs[since:])
    replay = Replay(local, confirmed, confirmed, landed)
    todo = ours[start:]
    chunk = limit is not None and len(todo) > limit
    if chunk:
        todo = todo[:limit]
    storage.write_commits(replay.extend(todo, storage.read_bodies(todo), committer, now))
    if chunk:  # the originals stay on the branch until the last chunk rewrites it
        replay.complete = False
        replay.replaced.clear()
    else:  # the branch is rewritten: the originals sent in earlier chunks go too
        replay.replaced.update(ours[:start])
    return replay


def replay_since(
    storage: Storage, replay: Replay, current: str | None, committer: Identity, now: datetime
) -> tuple[list[bytes], str]:
    """Under the branch lock, with the branch at ``current``: the copies still to write
    and the new tip. Replays only what was appended after the snapshot."""
    if current == replay.start:
        return [], replay.tip
    appended = _appended(storage, replay.start, current)
    if appended is None:  # rewritten under us (a git command by hand): replay it whole
        replay.replaced.update(replay.written)  # the snapshot's copies are orphans now
        fresh = replay_snapshot(storage, current, replay.confirmed, committer, now)
        replay.replaced |= fresh.replaced
        replay.written, replay.tip = fresh.written, fresh.tip
        replay.copied, replay.dropped = fresh.copied, fresh.dropped
        return [], fresh.tip
    return replay.extend(*appended, committer, now), replay.tip


def _appended(
    storage: Storage, start: str | None, current: str | None
) -> tuple[list[str], list[bytes]] | None:
    """The commits after ``start`` up to ``current``, oldest first, with their bodies;
    None when ``current`` does not descend from ``start``."""
    shas: list[str] = []
    bodies: list[bytes] = []
    sha = current
    while sha != start:
        if sha is None or len(shas) >= WALK_LIMIT:
            return None
        body = storage.read_body(sha)
        shas.append(sha)
        bodies.append(body)
        parents = fmt.parents(body)
        sha = parents[0] if parents else None
    shas.reverse()
    bodies.reverse()
    return shas, bodies
