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

    def extend(
        self, shas: list[str], bodies: list[bytes], committer: Identity, now: datetime
    ) -> list[bytes]:
        """Replay ``bodies`` (of commits ``shas``, oldest first) after ``tip``; returns
        the copies to write."""
        self.replaced.update(shas)
        out: list[bytes] = []
        for body in bodies:
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


def replay_snapshot(
    storage: Storage, local: str | None, confirmed: str, committer: Identity, now: datetime
) -> Replay:
    """Replay the local branch (at ``local``) onto ``confirmed``; writes the copies.
    Call it inside ``storage.writing()`` up to the branch update."""
    if local is None or storage.is_ancestor(local, confirmed):
        return Replay(local, confirmed, confirmed)  # nothing unpushed: a fast-forward
    base = storage.merge_base(local, confirmed)
    landed = {fmt.stable_id(storage.read_body(s)) for s in storage.commits_between(base, confirmed)}
    replay = Replay(local, confirmed, confirmed, landed)
    shas = storage.commits_between(base, local)
    storage.write_commits(replay.extend(shas, [storage.read_body(s) for s in shas], committer, now))
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
