"""Moving a consumer's offset: to the beginning, the end, a message or a time.

The tag names the last *finished* message, so "deliver X next" puts the tag
on X's parent, and "from the beginning" deletes the tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from gitmq.errors import NotFoundError, UsageError
from gitmq.message import Message
from gitmq.segments import QueueSource
from gitmq.storage import Storage


def seek(storage: Storage, tag_ref: str, source: QueueSource, target: str) -> str | None:
    """Apply ``target`` (beginning, end, message id, commit id or ISO time)."""
    if target == "beginning":
        return _set(storage, tag_ref, None)
    tip = _tip(source)
    if target == "end":
        return _set(storage, tag_ref, tip)
    when = _parse_time(target)
    if when is not None:
        return seek_time(storage, tag_ref, source, when)
    for message in _messages(storage, source):
        if message.id == target or (len(target) >= 7 and message.sha.startswith(target)):
            return _set(storage, tag_ref, message.parent)
    raise NotFoundError(
        f"no message {target!r} on queue {source.queue!r}; give a message id, a commit id, "
        f"an ISO time, 'beginning' or 'end'"
    )


def seek_time(storage: Storage, tag_ref: str, source: QueueSource, when: datetime) -> str | None:
    """Deliver next the first message published at or after ``when``."""
    if when.tzinfo is None:
        raise UsageError(f"time {when.isoformat()} has no time zone; add one, e.g. +00:00")
    tip = _tip(source)
    for message in _messages(storage, source):
        if message.time >= when:
            return _set(storage, tag_ref, message.parent)
    return _set(storage, tag_ref, tip)


def _tip(source: QueueSource) -> str:
    tip = source.tip()
    if tip is None:
        raise NotFoundError(f"queue {source.queue!r} does not exist yet; nothing to seek in")
    return tip


def _messages(storage: Storage, source: QueueSource) -> Iterator[Message]:
    """Every data message of the queue, oldest first (segment markers skipped)."""
    for sha in source.pending(None):
        message = storage.read(sha)
        if message.control is None:
            yield message


def _set(storage: Storage, tag_ref: str, value: str | None) -> str | None:
    current = storage.read_ref(tag_ref)
    if value is None:
        if current is not None and not storage.delete_ref(tag_ref, current):
            raise UsageError(f"{tag_ref} moved while seeking; try again")
        return None
    if not storage.compare_and_swap(tag_ref, value, current):
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
