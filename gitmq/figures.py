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


def queue_figures(storage: Storage, queue: str, now: float) -> QueueFigures:
    """The queue's figures across its segments (a queue that never rotated has one)."""
    remote = storage.upstream(queue)
    local = dict(segments(storage, queue))
    tracked = dict(segments(storage, queue, f"refs/remotes/{remote}/")) if remote else {}
    newest = local[max(local)] if local else None
    newest_confirmed = tracked[max(tracked)] if tracked else None
    return QueueFigures(
        queue=queue,
        remote=remote,
        messages=sum(storage.count(None, tip) for tip in local.values()),
        confirmed=sum(storage.count(None, tip) for tip in tracked.values()) if remote else None,
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
        pending = read.pending(position)
    except GitMQError as exc:  # a tag not on the queue (ConsumerConflictError), a bad ref
        return Lag(consumer, queue, position, 0, 0.0, str(exc))
    oldest = _age(storage, pending[0], now) if pending else None
    return Lag(consumer, queue, position, len(pending), oldest or 0.0)


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
