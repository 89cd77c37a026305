"""Screening: which commits on a queue a consumer hands to no handler.

Two kinds go to the dead-letter queue unhandled (docs/semantics.md): a commit
that is no message (``Message.undecodable``), and a *copy*: a message whose
``gitmq-id`` an earlier message of the same queue already carries. GitMQ never
writes two messages with one id on a queue's confirmed history (ids are made
at publish time; sync drops a message whose id already landed), so a copy was
pushed by someone else: a replayed or forged message, never a new one.

Copies are found in a window of the ``WINDOW`` messages before the one looked
at, along the queue's first-parent history. The window follows the consumer:
one step per message in order; a jump forward (another node's delivery, a
seek) adds the messages skipped; a step back (a seek back, a stopped pass)
drops the messages after it; anything else rebuilds it from the history,
which reads at most ``WINDOW`` commits. Messages without ``gitmq-id`` (the
Ruby gem's, plain git's) have ids derived from author line and payload, which
two real messages may share, so they are never called copies.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque

from gitmq import message as fmt
from gitmq.errors import ConsumerConflictError, GitMQError
from gitmq.message import Message
from gitmq.segments import OPEN, QueueSource

log = logging.getLogger("gitmq.consumer")

#: The mark of a replayed dead letter that is another consumer's: passed by, like a
#: segment marker (its ``control``), never handed to this consumer's handler.
ELSEWHERE = "elsewhere"
#: How many earlier messages a message's id is compared with.
WINDOW = 10_000
_NONE = 0  # a window slot of a message whose id is not compared (markers, derived ids)


def _key(message: Message) -> int:
    """The window's key for ``message``: a hash of its id, or _NONE when not compared."""
    if message.control is not None or message.undecodable is not None:
        return _NONE
    if message.id.startswith(fmt.DERIVED_PREFIX):
        return _NONE
    return hash(message.id) or 1  # never _NONE


class Screen:
    """Marks the copies among one queue's messages as a consumer reads them."""

    def __init__(
        self, source: QueueSource, window: int = WINDOW, consumer: str | None = None
    ) -> None:
        self.source, self.storage, self.window = source, source.storage, window
        self.consumer = consumer  # whose reading this is: a replay for another is passed by
        self._at: str | None = None  # the newest commit the window holds
        self._keys: deque[int] = deque()  # one per commit, oldest first
        self._seen: set[int] = set()
        self._last: Message | None = None  # the last message marked, as marked

    def mark(self, message: Message) -> Message:
        """``message``, with ``duplicate_of`` set when it is a copy."""
        if self._last is not None and self._last.sha == message.sha:
            return self._last  # the same message again: a pass that stopped on it
        try:
            return self._mark(message)
        except GitMQError as exc:  # history cut by pruning, a repack race: start afresh
            log.debug("screen: window dropped at %s: %s", message.sha, exc)
            self._clear(None)
            return message

    def _mark(self, message: Message) -> Message:
        crossed = message.control == OPEN and message.parent is None
        if message.parent != self._at and not crossed:
            self._move_to(message)
        key = _key(message)
        if key != _NONE and key in self._seen:
            earlier = self._find(message)
            if earlier is not None:
                message = dataclasses.replace(message, duplicate_of=earlier)
        addressed = message.headers.get(fmt.FOR_CONSUMER_HEADER)
        if self.consumer is not None and addressed not in (None, self.consumer):
            message = dataclasses.replace(message, control=ELSEWHERE)  # acked, not handled
        self._add(key)
        self._at, self._last = message.sha, message
        return message

    def _add(self, key: int) -> None:
        if key in self._seen:
            key = _NONE  # a copy: the original's slot keeps the key in the set
        self._keys.append(key)
        if key != _NONE:
            self._seen.add(key)
        while len(self._keys) > self.window:
            self._seen.discard(self._keys.popleft())

    def _move_to(self, message: Message) -> None:
        """Make the window end just before ``message``. Its history is read from the
        message itself, never from its parent, which pruning may have dropped."""
        at, self._last = self._at, None
        if message.parent is not None and at is not None:
            if self.storage.is_ancestor(at, message.sha):
                skipped = self.storage.commits_between(at, message.sha)[:-1]
                if len(skipped) < self.window:  # a jump forward: add what it skipped
                    self._read(skipped)
                    self._at = message.parent
                    return
            elif self.storage.is_ancestor(message.sha, at):
                back = self.storage.count(message.sha, at) + 1  # the message up to at
                if back < len(self._keys):  # a step back: drop what follows
                    for _ in range(back):
                        self._seen.discard(self._keys.pop())
                    self._at = message.parent
                    return
        self._clear(message.parent)
        if message.parent is not None:
            self._read(self._before(message)[::-1])

    def _clear(self, at: str | None) -> None:
        self._keys.clear()
        self._seen.clear()
        self._at, self._last = at, None

    def _read(self, shas: list[str]) -> None:
        for sha, body in zip(shas, self.storage.read_bodies(shas), strict=True):
            self._add(_key(fmt.decode(sha, body)))

    def _history(self, sha: str, limit: int) -> list[str]:
        """Up to ``limit`` commits from ``sha`` back, newest first, on into the
        queue's earlier segments."""
        shas = self.storage.recent_commits(sha, limit)
        found = list(self.source.state())
        if len(shas) >= limit or len(found) < 2:
            return shas
        try:
            index = self.source.segment_index(sha, found)
        except ConsumerConflictError:
            return shas  # not on the queue (rewritten): only its own history counts
        for _, tip in reversed(found[:index]):
            shas += self.storage.recent_commits(tip, limit - len(shas))
            if len(shas) >= limit:
                break
        return shas

    def _before(self, message: Message) -> list[str]:
        """The ``window`` commits before ``message``, newest first."""
        return self._history(message.sha, self.window + 1)[1:]

    def _find(self, message: Message) -> str | None:
        """The commit of the nearest earlier message with the id of ``message`` (a hash match
        is checked against the real id), or None."""
        for sha in self._before(message):
            if fmt.message_id(self.storage.read_body(sha)) == message.id:
                return sha
        return None
