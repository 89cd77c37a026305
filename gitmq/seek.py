"""Moving a consumer's offset: to the beginning, the end, a message or a time.

The tag names the last *finished* message, so "deliver X next" puts the tag
on X's parent, and "from the beginning" deletes the tag. On a synced queue
the targets are confirmed messages only (what the consumer reads), and a move
back (a replay, ``beginning``, a deletion) is recorded so that the next sync
pushes it over the remote's copy and every node follows (``offsets.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from gitmq import names, offsets
from gitmq.errors import NotFoundError, UsageError
from gitmq.message import Message
from gitmq.segments import QueueSource
from gitmq.storage import Storage


@dataclass(frozen=True)
class Offset:
    """One consumer's tag on one queue, as seek sees it."""

    storage: Storage
    consumer: str
    source: QueueSource
    remote: str | None = None  # the remote the queue syncs with

    @property
    def tag_ref(self) -> str:
        return f"refs/tags/{self.consumer}"


def seek(offset: Offset, target: str) -> str | None:
    """Apply ``target`` (beginning, end, message id, commit id or ISO time)."""
    if not isinstance(target, str) or not target:
        raise UsageError(
            f"a seek target must be a non-empty str (beginning, end, a message id, a commit "
            f"id or an ISO time), not {target!r}"
        )
    if target == "beginning":
        return _set(offset, None)
    tip = _tip(offset.source)
    if target == "end":
        return _set(offset, tip)
    when = _parse_time(target)
    if when is not None:
        return seek_time(offset, when)
    for message in _messages(offset):
        if message.id == target or (len(target) >= 7 and message.sha.startswith(target)):
            return _set(offset, message.parent)
    raise NotFoundError(
        f"no message {target!r} on queue {offset.source.queue!r}"
        + (" among its confirmed messages" if offset.remote else "")
        + "; give a message id, a commit id, an ISO time, 'beginning' or 'end'"
    )


def seek_time(offset: Offset, when: datetime) -> str | None:
    """Deliver next the first message published at or after ``when``."""
    if not isinstance(when, datetime):
        raise UsageError(f"seek_time takes a datetime, not {type(when).__name__}")
    if when.tzinfo is None:
        raise UsageError(f"time {when.isoformat()} has no time zone; add one, e.g. +00:00")
    tip = _tip(offset.source)
    for message in _messages(offset):
        if message.time >= when:
            return _set(offset, message.parent)
    return _set(offset, tip)


def delete(offset: Offset) -> str | None:
    """Delete the tag (and, when synced, on the remote at the next sync); returns its
    old value here, or the remote's when only the remote has one (None: no tag)."""
    old = offset.storage.read_ref(offset.tag_ref)
    if old is None and offset.remote is not None:
        copy = offset.storage.read_ref(offsets.remote_tag_ref(offset.remote, offset.consumer))
        if copy is not None:
            with offset.storage.exclusive(names.sync_lock(offset.remote)):
                offsets.record_reset(offset.storage, offset.consumer, copy)
        return copy
    _set(offset, None)
    return old


def _tip(source: QueueSource) -> str:
    tip = source.tip()
    if tip is None:
        raise NotFoundError(f"queue {source.queue!r} does not exist yet; nothing to seek in")
    return tip


def _messages(offset: Offset) -> Iterator[Message]:
    """Every data message of the queue, oldest first (segment markers skipped)."""
    for sha in offset.source.pending(None):
        message = offset.storage.read(sha)
        if message.control is None:
            yield message


def _set(offset: Offset, value: str | None) -> str | None:
    if offset.remote is None:
        return _move(offset, value)
    # Under the sync lock: a cycle between the move and its record would take the
    # moved-back tag for one that is behind, and undo it.
    with offset.storage.exclusive(names.sync_lock(offset.remote)):
        current = offset.storage.read_ref(offset.tag_ref)
        if current is not None and (value is None or not offset.source.before(current, value)):
            offsets.record_reset(offset.storage, offset.consumer, value or current)
        return _move(offset, value)


def _move(offset: Offset, value: str | None) -> str | None:
    storage, tag_ref = offset.storage, offset.tag_ref
    current = storage.read_ref(tag_ref)
    if current == value:
        return value
    if value is None:
        assert current is not None
        moved = storage.delete_ref(tag_ref, current)
    else:
        moved = storage.compare_and_swap(tag_ref, value, current)
    if not moved:
        raise UsageError(f"{tag_ref} moved while seeking; try again")
    return value


def _parse_time(text: str) -> datetime | None:
    if len(text) < 10 or text[4:5] != "-":
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        raise UsageError(f"time {text!r} has no time zone; add one, e.g. {text}+00:00")
    return when
