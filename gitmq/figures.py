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
from gitmq.errors import GitMQError
from gitmq.segments import QueueSource
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
    tip = storage.read_ref(names.queue_ref(queue))
    remote = storage.upstream(queue)
    confirmed_tip = storage.read_ref(names.tracking_ref(remote, queue)) if remote else None
    return QueueFigures(
        queue=queue,
        remote=remote,
        messages=storage.count(None, tip),
        confirmed=storage.count(None, confirmed_tip) if remote else None,
        unpushed=storage.count(confirmed_tip, tip) if remote else 0,
        newest_age=_age(storage, tip, now),
        confirmed_age=_age(storage, confirmed_tip, now),
    )


def consumer_lag(storage: Storage, consumer: str, queue: str, now: float) -> Lag:
    position = storage.read_ref(names.consumer_ref(consumer))
    try:
        pending = source(storage, queue).pending(position)
    except GitMQError as exc:  # a tag not on the queue (ConsumerConflictError), a bad ref
        return Lag(consumer, queue, position, 0, 0.0, str(exc))
    oldest = _age(storage, pending[0], now) if pending else None
    return Lag(consumer, queue, position, len(pending), oldest or 0.0)


def _age(storage: Storage, sha: str | None, now: float) -> float | None:
    if sha is None:
        return None
    return max(0.0, now - storage.read(sha).time.timestamp())
