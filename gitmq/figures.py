"""The figures operators watch: a queue's counts and ages, a consumer's lag.

``gitmq status``, ``gitmq doctor`` and the node's ``/metrics`` all show these,
computed here once. A queue that syncs with a remote is seen as its consumers
see it: confirmed messages (on the remote-tracking ref), plus how many local
ones are not pushed yet. Ages are in seconds against ``now`` (epoch seconds,
passed in so tests control the clock).
"""

from __future__ import annotations

from dataclasses import dataclass

from gitmq import names
from gitmq.errors import ConsumerConflictError, GitMQError
from gitmq.segments import QueueSource, segments
from gitmq.storage import Storage


@dataclass(frozen=True)
class QueueFigures:
    queue: str
    remote: str | None  # the remote it syncs with, None for a local-only queue
    messages: int  # on the local branch
    confirmed: int | None  # on the remote-tracking ref (None: local only)
    unpushed: int  # local messages the remote has not confirmed (0 when local only)
    newest_age: float | None  # since the newest local message was published
    confirmed_age: float | None  # since the newest confirmed one was (None: none yet)


@dataclass(frozen=True)
class Lag:
    consumer: str
    queue: str
    position: str | None  # the tag's commit; None at the beginning (no tag yet)
    messages: int  # pending: what it has still to handle
    seconds: float  # how long the oldest pending message has waited (0 when caught up)
    problem: str | None = None  # why the lag is unknown (a tag not on the queue)


def source(storage: Storage, queue: str) -> QueueSource:
    """What the queue's consumers read: confirmed messages of a synced queue."""
    remote = storage.upstream(queue)
    return QueueSource(storage, queue, f"refs/remotes/{remote}/" if remote else "refs/heads/")


class Counts:
    """How many messages lie up to a ref's commit, remembered between calls: a ref that
    moved forward is counted from where it was (only the messages since), not from the
    start of its history, so each scrape of a long queue costs what changed, not a
    walk of the whole queue. Pruning moves the start of every history (the shallow
    boundary): then everything is counted afresh, as is a ref that moved otherwise."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._seen: dict[str, tuple[str, int]] = {}  # ref -> (commit, messages up to it)
        self._epoch: object = None

    def upto(self, ref: str, sha: str | None) -> int:
        if sha is None:
            return 0
        epoch = self.storage.history_epoch()
        if epoch != self._epoch:
            self._seen.clear()
            self._epoch = epoch
        seen = self._seen.get(ref)
        if seen is not None and seen[0] == sha:
            return seen[1]
        if seen is not None and self.storage.is_ancestor(seen[0], sha):
            count = seen[1] + self.storage.count(seen[0], sha)
        else:
            count = self.storage.count(None, sha)
        self._seen[ref] = (sha, count)
        return count


def queue_figures(
    storage: Storage, queue: str, now: float, counts: Counts | None = None
) -> QueueFigures:
    """The queue's figures across its segments (a queue that never rotated has one);
    ``counts`` remembers counts between calls (the node's scrapes)."""
    counts = counts or Counts(storage)
    remote = storage.upstream(queue)
    tracking = f"refs/remotes/{remote}/"
    local = dict(segments(storage, queue))
    tracked = dict(segments(storage, queue, tracking)) if remote else {}
    newest = local[max(local)] if local else None
    newest_confirmed = tracked[max(tracked)] if tracked else None
    here = sum(counts.upto(f"refs/heads/{queue}#{n}", tip) for n, tip in local.items())
    there = sum(counts.upto(f"{tracking}{queue}#{n}", tip) for n, tip in tracked.items())
    return QueueFigures(
        queue=queue,
        remote=remote,
        messages=here,
        confirmed=there if remote else None,
        unpushed=sum(storage.count(tracked.get(n), tip) for n, tip in local.items())
        if remote
        else 0,
        newest_age=_age(storage, newest, now),
        confirmed_age=_age(storage, newest_confirmed, now),
    )


def consumer_lag(storage: Storage, consumer: str, queue: str, now: float) -> Lag:
    position = storage.read_ref(names.consumer_ref(consumer))
    read = source(storage, queue)
    try:
        if position is not None and not _on_queue(storage, position, read):
            raise ConsumerConflictError(
                f"consumer {consumer!r} is at {position[:12]}, which is not on queue "
                f"{queue!r}; move it with 'gitmq consumer reset'"
            )
        count, oldest = _pending(storage, read, position)
    except GitMQError as exc:  # a tag not on the queue (ConsumerConflictError), a bad ref
        return Lag(consumer, queue, position, 0, 0.0, str(exc))
    return Lag(consumer, queue, position, count, _age(storage, oldest, now) or 0.0)


def _pending(storage: Storage, read: QueueSource, position: str | None) -> tuple[int, str | None]:
    """How many messages follow ``position`` and the oldest of them. On one branch
    (a queue that never rotated) git counts and walks back without listing them: a
    scrape of a million-message backlog costs two walks, not a list of a million."""
    found = read.state()
    if len(found) != 1:
        pending = read.pending(position)
        return len(pending), (pending[0] if pending else None)
    tip = found[0][1]
    count = storage.count(position, tip)
    return count, (storage.back(tip, count - 1) if count else None)


def _on_queue(storage: Storage, position: str, read: QueueSource) -> bool:
    """Whether ``position`` is on one of the queue's segments (an empty queue holds
    none; a tag on another queue or no commit at all is a conflict)."""
    if not storage.is_commit(position):
        return False
    return any(storage.is_ancestor(position, tip) for _, tip in read.state())


def _age(storage: Storage, sha: str | None, now: float) -> float | None:
    if sha is None:
        return None
    return max(0.0, now - storage.read(sha).time.timestamp())
