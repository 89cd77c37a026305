"""Queue segments: how a queue's remote history stays bounded (docs/retention.md).

A rotating queue starts as the plain branch ``<queue>`` (segment 0, the gem's
layout). When the live segment is full, a node appends a *close* marker to it
and the queue continues on ``<queue>.seg.<N>`` (N = 1, 2, ...), whose root is an
*open* marker recording the close marker it follows. The open marker is built
only from the close marker, so every node makes the same commit and the new
segment's branch is the same everywhere. A segment ends at its first close
marker; anything published to it later is moved on by sync. Old segments
(never segment 0) are deleted whole once every consumer tag has left them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from gitmq import ids
from gitmq.errors import ConsumerConflictError
from gitmq.message import CONTROL_HEADER, EMPTY_TREE, ID_HEADER, PREVIOUS_HEADER, Draft, Message
from gitmq.message import Identity as _Identity
from gitmq.storage import Storage

SEG = ".seg."
CLOSE = "close"
OPEN = "open"
ROTATION_IDENTITY = _Identity("gitmq", "rotation@gitmq.invalid")
_NUMBER = re.compile(r"^\d{6,}$")


@dataclass(frozen=True)
class RotationPolicy:
    """When the live segment closes, and how many closed ones to keep."""

    max_messages: int | None = None
    max_age: float | None = None
    keep_segments: int = 1


def segment_branch(queue: str, number: int) -> str:
    return queue if number == 0 else f"{queue}{SEG}{number:06d}"


def segment_number(queue: str, branch: str) -> int | None:
    """The segment number of ``branch`` if it is a segment of ``queue``."""
    if branch == queue:
        return 0
    prefix = queue + SEG
    if branch.startswith(prefix) and _NUMBER.match(branch[len(prefix) :]):
        return int(branch[len(prefix) :])
    return None


def segments(storage: Storage, queue: str, prefix: str = "refs/heads/") -> list[tuple[int, str]]:
    """The segments of ``queue`` under ``prefix``: (number, commit) oldest first."""
    parent = prefix + queue.rsplit("/", 1)[0] + "/" if "/" in queue else prefix
    leaf = queue.rsplit("/", 1)[-1]
    found = []
    for ref, sha in storage.list_refs_in(parent, leaf).items():
        number = segment_number(queue, ref[len(prefix) :])
        if number is not None:
            found.append((number, sha))
    return sorted(found)


def live_branch(storage: Storage, queue: str) -> str:
    """The branch new messages of ``queue`` go to: its newest local segment."""
    found = segments(storage, queue)
    return segment_branch(queue, found[-1][0]) if found else queue


def close_draft(author: _Identity, now: datetime) -> Draft:
    """A close marker for the live segment, placed at ``now``."""
    now = now.replace(microsecond=0)
    return Draft(ids.new_id(), b"", author, now, {}, control=CLOSE)


def open_body(close: Message) -> bytes:
    """The root of the segment after ``close``: the same bytes on every node.

    It is built from the close marker's id and time only, which re-parenting
    keeps, so it does not depend on where the close marker ended up."""
    stamp = f"{int(close.time.timestamp())} +0000"
    lines = [
        f"tree {EMPTY_TREE}",
        f"author {ROTATION_IDENTITY} {stamp}",
        f"committer {ROTATION_IDENTITY} {stamp}",
        f"{ID_HEADER} {close.id}.open",
        f"{CONTROL_HEADER} {OPEN}",
        f"{PREVIOUS_HEADER} {close.id}",
    ]
    return ("\n".join(lines) + "\n\n").encode()


class QueueSource:
    """What a consumer reads: a queue's segments under one ref prefix, in order.

    For a queue that never rotated this is just the one branch.
    """

    def __init__(self, storage: Storage, queue: str, prefix: str = "refs/heads/") -> None:
        self.storage, self.queue, self.prefix = storage, queue, prefix
        self._closed: dict[str, bool] = {}

    def state(self) -> tuple[tuple[int, str], ...]:
        return tuple(segments(self.storage, self.queue, self.prefix))

    def tip(self) -> str | None:
        found = self.state()
        return found[-1][1] if found else None

    def pending(self, position: str | None) -> list[str]:
        """Commits after ``position``, oldest first, across closed segments."""
        found = list(self.state())
        if not found:
            return []
        start = 0 if position is None else self.segment_index(position, found)
        out: list[str] = []
        for i in range(start, len(found)):
            tip = found[i][1]
            since = position if i == start else None
            if since != tip:
                out += self.storage.commits_between(since, tip)
            # The next segment present follows a closed one even across a gap: the
            # segments in between were deleted on the remote (tracking refs of new
            # segments appear in number order, so a gap is never one not fetched yet).
            if not (i + 1 < len(found) and self.closed(tip)):
                break
        return out

    def segment_index(self, sha: str, found: list[tuple[int, str]]) -> int:
        if len(found) == 1:
            return 0  # one branch: the caller checks the first pending message's parent
        for i in range(len(found) - 1, -1, -1):
            if self.storage.is_ancestor(sha, found[i][1]):
                return i
        raise ConsumerConflictError(
            f"position {sha[:12]} is not on queue {self.queue!r} (nor any of its segments); "
            f"reset the consumer with 'gitmq seek'"
        )

    def before(self, a: str, b: str) -> bool:
        """Whether position ``a`` is at or before ``b`` in this queue's order."""
        if self.storage.is_ancestor(a, b):
            return True
        found = list(self.state())
        try:
            return self.segment_index(a, found) < self.segment_index(b, found)
        except ConsumerConflictError:
            return False

    def follows(self, position: str, message: Message) -> bool:
        """Whether ``message`` comes after ``position`` in this queue's order."""
        if message.parent == position or self.storage.is_ancestor(position, message.sha):
            return True
        found = list(self.state())
        try:
            return self.segment_index(message.sha, found) > self.segment_index(position, found)
        except ConsumerConflictError:
            return False

    def closed(self, sha: str) -> bool:
        if sha not in self._closed:
            self._closed[sha] = self.storage.read(sha).control == CLOSE
        return self._closed[sha]
