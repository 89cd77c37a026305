"""Consumers: deliver a queue's messages in order and record progress in a tag.

The offset of consumer ``NAME`` is the lightweight tag ``refs/tags/NAME`` on the
last message it finished (the Ruby gem's layout). The handler runs, then the
tag moves with a compare-and-swap: a crash in between redelivers, never skips.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from gitmq import names
from gitmq import seek as seeking
from gitmq.deadletter import DeadLetters
from gitmq.errors import ConsumerConflictError, GitMQError, UsageError
from gitmq.message import Identity, Message
from gitmq.retry import RetryPolicy, Stopped, call_with_retries
from gitmq.screen import Screen
from gitmq.segments import OPEN, QueueSource
from gitmq.storage import Storage

log = logging.getLogger("gitmq.consumer")

Handler = Callable[[Message], object]
POLL_INTERVAL = 0.02
ACK_BATCH = 100
ACK_EVERY = 0.05


def _source_ref(remote: str | None, branch: str, given: str | None) -> str:
    """What a consumer of ``branch`` reads: the confirmed messages of a synced queue
    (``remote``: the one the storage records for it), else the branch."""
    local = names.queue_ref(branch)
    ref = given or (names.tracking_ref(remote, branch) if remote else local)
    if not ref.endswith("/" + branch):
        raise UsageError(f"source_ref {ref!r} must end with '/{branch}'")
    if remote is not None and ref == local:
        raise UsageError(
            f"queue {branch!r} syncs with remote {remote!r}: consumers read its "
            f"confirmed messages ({names.tracking_ref(remote, branch)}), not the "
            f"local branch, whose unpushed messages sync may still re-parent"
        )
    return ref


def _in_order(consumer: Consumer, position: str | None, shas: list[str]) -> Iterator[Message]:
    """The messages ``shas`` (read lazily), the first of which must follow ``position``."""
    for index, sha in enumerate(shas):
        message = consumer.storage.read(sha)
        # After the close marker of its segment, the next message is the root of
        # the next segment (an open marker, no parent): that is still in order.
        crossed = message.control == OPEN and message.parent is None
        if index == 0 and position is not None and message.parent != position and not crossed:
            raise ConsumerConflictError(
                f"consumer {consumer.name!r} is at {position[:12]}, which is not on queue "
                f"{consumer.branch!r}; reset it with 'gitmq seek' (see docs/operations.md)"
            )
        yield message


def _message(value: object) -> Message:
    if not isinstance(value, Message):
        raise UsageError(f"ack takes a Message, not {type(value).__name__}")
    return value


def _refuse_skip(consumer: str, message: Message, pending: Iterator[Message]) -> None:
    """Refuse to ack ``message`` past a pending message (segment markers aside)."""
    first = next((m for m in pending if m.sha == message.sha or m.control is None), None)
    if first is not None and first.sha != message.sha:
        raise UsageError(
            f"cannot ack {message.id} for consumer {consumer!r}: the next message is "
            f"{first.id}; ack in order, or ack_through() to finish every message up to it "
            f"(nothing was changed)"
        )


class Consumer:
    """One named consumer of one queue.

    ``source_ref`` is what it reads: the remote-tracking ref of a synced queue
    (``refs/remotes/REMOTE/QUEUE``), so that only messages confirmed by the
    remote are delivered (docs/semantics.md), or the queue's branch for a queue
    that is local only. By default the storage says which (a node records the
    remote each queue syncs with), so a consumer opened on a node's storage
    behaves like the node's own. A rotating queue's segments are read one after
    the other; their close/open markers are acknowledged, never handed out.
    """

    def __init__(
        self,
        storage: Storage,
        name: str,
        branch: str,
        *,
        source_ref: str | None = None,
        retry: RetryPolicy | None = None,
        dead_letter: str | None = None,
        identity: Identity | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.storage = storage
        self.name = names.check_consumer(name)
        self.branch = names.check_queue(branch)
        self.tag_ref = names.consumer_ref(name)
        self.remote = storage.upstream(branch)
        self.source_ref = _source_ref(self.remote, branch, source_ref)
        self.source = QueueSource(storage, branch, self.source_ref[: -len(branch)])
        self.screen = Screen(self.source, consumer=self.name)
        self.retry, self.poll_interval = retry or RetryPolicy(), poll_interval
        self.dead_letters = DeadLetters(storage, branch, name, dead_letter, identity)
        self.delivered = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ pull style

    @property
    def dead_lettered(self) -> int:
        """Messages this consumer moved to its dead-letter queue so far."""
        return self.dead_letters.count

    @property
    def position(self) -> str | None:
        """The last finished message's commit id, or None before the first."""
        return self.storage.read_ref(self.tag_ref)

    def poll(self) -> Iterator[Message]:
        """The pending messages, oldest first, read lazily; the tag does not move."""
        return (m for m in map(self.screen.mark, self._pending()) if m.control is None)

    def _pending(self) -> Iterator[Message]:
        """Pending messages including segment markers."""
        position = self.position
        if position is not None and position == self.source.tip():
            return iter(())
        return _in_order(self, position, self.source.pending(position))

    def ack(self, message: Message) -> None:
        """Record ``message``, the next pending one, as finished (a later one is refused:
        it would finish those before it unseen, as ``ack_through`` does on purpose)."""
        _message(message)
        position = self.position
        if message.sha != position and message.parent != position:  # else it is the next
            _refuse_skip(self.name, message, self._pending())
        self.ack_through(message)

    def ack_through(self, message: Message) -> None:
        """Record ``message`` and every message before it as finished."""
        _message(message)
        while True:
            current = self.position
            if current == message.sha:
                return
            if current is not None and not self.source.follows(current, message):
                raise ConsumerConflictError(
                    f"cannot move consumer {self.name!r} to {message.sha[:12]}: its tag "
                    f"({(current or 'none')[:12]}) is not before that message (another "
                    f"process moved it); nothing was changed"
                )
            if self.storage.compare_and_swap(self.tag_ref, message.sha, current):
                return

    def seek(self, target: str) -> str | None:
        """Move the offset: ``beginning``, ``end``, a message id or commit id,
        or an ISO time; the next delivered message is the one named (or the first
        at or after that time). Returns the new tag value. On a synced queue a move
        back is recorded, so sync makes it hold on every node."""
        return seeking.seek(self._seeker(), target)

    def seek_time(self, when: datetime) -> str | None:
        return seeking.seek_time(self._seeker(), when)

    def delete(self) -> str | None:
        """Delete this consumer's offset (here and, on a synced queue, on the remote and
        every node at their next sync); returns where it was."""
        return seeking.delete(self._seeker())

    def _seeker(self) -> seeking.Offset:
        return seeking.Offset(self.storage, self.name, self.source, self.remote)

    # ------------------------------------------------------------ push style

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # leaving the block ends a consume() thread's delivery

    def consume(self, handler: Handler) -> Consumer:
        """Deliver every pending and future message to ``handler`` on a thread."""
        if not callable(handler):
            raise UsageError(f"consume takes a callable handler, not {type(handler).__name__}")
        if self._thread and self._thread.is_alive():
            raise GitMQError(f"consumer {self.name!r} is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(handler,), name=f"gitmq-consumer-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current handler call; wait for the thread unless on it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self, handler: Handler) -> None:
        try:
            self._loop(handler)
        except BaseException as exc:  # SystemExit from a handler: the thread ends, loudly
            self.last_error = f"consumer thread stopped: {type(exc).__name__}: {exc}"
            log.error(
                "consumer %s stopped: %s: %s", self.name, type(exc).__name__, exc, exc_info=True
            )

    def _loop(self, handler: Handler) -> None:
        seen: tuple[object, str | None] | None = None
        while not self._stop.is_set():
            try:
                state = self._state()
                if state != seen:
                    self.deliver_pending(handler)
                    # The state from *before* delivering: a message published
                    # meanwhile moves the tip past it, so it is not missed.
                    seen = state
                self.last_error = None
                self.storage.release_deleted_packs()  # idle: hold no pack a repack deleted
            except Exception as exc:  # never die silently: log, back off, go on
                self.last_error = str(exc)
                seen = None
                log.error("consumer %s: %s", self.name, exc)
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.poll_interval)

    def _state(self) -> tuple[object, str | None]:
        """What delivery depends on: the queue's tips and our tag."""
        return (self.source.state(), self.position)

    def deliver_pending(self, handler: Handler) -> int:
        """Deliver what is pending now (the body of the delivery loop); returns a count.

        The tag moves after the handlers ran, in one compare-and-swap per
        ``ACK_BATCH`` messages or ``ACK_EVERY`` seconds, whichever comes first:
        a tag update costs more than a fast handler, and a crash still only
        redelivers (at most the messages since the last move), never skips.
        """
        done = unacked = 0
        acked, last = self.position, None
        since = time.monotonic()
        try:
            for message in map(self.screen.mark, self._pending()):
                if message.control is None:  # a segment marker has nothing to handle
                    if self._stop.is_set() or not self._handle(handler, message):
                        break
                    done += 1
                last, unacked = message, unacked + 1
                if unacked >= ACK_BATCH or time.monotonic() - since >= ACK_EVERY:
                    if not self._move_tag(acked, last):
                        last = None
                        break
                    acked, unacked, since = last.sha, 0, time.monotonic()
        finally:
            if last is not None and last.sha != acked:
                self._move_tag(acked, last)
        return done

    def _move_tag(self, expected: str | None, message: Message) -> bool:
        """Move the tag from ``expected`` to ``message`` (no ancestry check: the messages
        between are the ones just delivered). False when sync or a seek moved it meanwhile:
        the next pass starts from wherever it is now."""
        if self.storage.compare_and_swap(self.tag_ref, message.sha, expected):
            return True
        log.info("consumer %s: the tag moved during delivery; starting over from it", self.name)
        return False

    def _handle(self, handler: Handler, message: Message) -> bool:
        """Run the handler with retries; False when stopped before it succeeded.
        A commit that is no message, or a copy, goes to the dead-letter queue unhandled."""
        if message.unfit is not None:
            self.dead_letters.publish(message, message.unfit, 0)
            return True
        what = f"consumer {self.name}: handler failed on {message.id}"
        try:
            error = call_with_retries(lambda: handler(message), self.retry, self._stop.wait, what)
        except Stopped:
            return False
        if error is None:
            self.delivered += 1
        else:
            self.dead_letters.publish(message, error, self.retry.max_attempts)
        return True
