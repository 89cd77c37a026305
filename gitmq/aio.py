"""asyncio front ends of Producer and Consumer, for code written like aiokafka's.

Git is blocking I/O, so every call runs on a thread: one worker thread owned by
each object, which also keeps one consumer's calls in the order they were made
(and the thread-safe but stateful Consumer never used from two threads at once).
Waiting for new messages never parks that thread: the event loop sleeps between
cheap checks of the queue's refs, so a cancelled wait leaves nothing running.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar

from gitmq.consumer import POLL_INTERVAL, Consumer
from gitmq.errors import UsageError
from gitmq.message import Identity, Message
from gitmq.producer import DEFAULT_MAX_PAYLOAD, Item, Payload, Producer
from gitmq.storage import Storage

_T = TypeVar("_T")
_State = tuple[object, str | None]
_UNSEEN = object()

#: Messages read per trip to the worker thread while iterating.
READ_AHEAD = 100


class _Worker:
    """A single worker thread for blocking calls, shut down by ``close``."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitmq-aio")
        self._closed = False

    async def _run(self, call: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise UsageError(f"{self._what} is closed; create a new one")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def close(self) -> None:
        """Refuse new calls, let those already made finish (a queued publish is not
        dropped: its caller awaits its message; a thread cannot be interrupted anyway),
        then end the worker thread; the storage stays open (it is yours)."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncProducer(_Worker):
    """``Producer`` for asyncio: same arguments, awaitable ``publish``."""

    def __init__(
        self,
        storage: Storage,
        branch: str,
        *,
        author: Identity | None = None,
        committer: Identity | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.producer = Producer(
            storage,
            branch,
            author=author,
            committer=committer,
            max_payload=max_payload,
            clock=clock,
        )
        super().__init__(f"producer of {self.producer.branch!r}")

    async def publish(self, payload: Payload, headers: Mapping[str, str] | None = None) -> Message:
        """Append one message; when the await returns, the message is in the storage.
        Cancelling the await does not undo a publish the worker thread has begun."""
        return await self._run(self.producer.publish, payload, headers)

    async def publish_many(self, items: Iterable[Item]) -> list[Message]:
        """Append a batch with a single ref update: all of it or none of it."""
        batch = list(items)  # the caller's iterable is read here, not on the worker thread
        return await self._run(self.producer.publish_many, batch)


class AsyncConsumer(_Worker):
    """``Consumer`` for asyncio: ``async for message in consumer.messages()``.

    Delivery is the pull style of ``Consumer.poll``: in queue order, at least
    once, the tag moving only when you ``await consumer.ack(message)``.
    """

    def __init__(
        self,
        storage: Storage,
        name: str,
        branch: str,
        *,
        source_ref: str | None = None,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.consumer = Consumer(
            storage,
            name,
            branch,
            source_ref=source_ref,
            poll_interval=poll_interval,
        )
        self._seeks = 0  # bumped by seek(): an iteration in progress starts over
        super().__init__(f"consumer {self.consumer.name!r}")

    async def messages(self) -> AsyncIterator[Message]:
        """Every pending message, then each new one as it arrives; never ends by itself.

        Each message is handed out once per iteration, acknowledged or not; one not
        acknowledged comes again in the next iteration (after a cancel, a restart).
        A ``seek`` of this object restarts the iteration at the new position (so does
        another process moving the tag to a message not handed out yet).
        Waiting costs one read of the queue's refs every ``poll_interval``.
        """
        handed: dict[str, None] = {}  # commit ids handed out after the tag, in order
        tag: object = _UNSEEN
        while True:
            seeks = self._seeks
            state, pending = await self._run(self._pass)
            tag = _forget_acked(handed, tag, state[1])
            while self._seeks == seeks:
                chunk = await self._run(_take, pending, READ_AHEAD)
                for message in chunk:
                    if self._seeks != seeks:
                        break
                    if message.sha not in handed:
                        handed[message.sha] = None
                        yield message
                else:
                    if len(chunk) < READ_AHEAD:
                        await self._changed(state)
                        break
            if self._seeks != seeks:
                handed.clear()

    async def ack(self, message: Message) -> None:
        """Record ``message``, the next pending one, as finished (``Consumer.ack``)."""
        await self._run(self.consumer.ack, message)

    async def ack_through(self, message: Message) -> None:
        """Record ``message`` and every message before it as finished."""
        await self._run(self.consumer.ack_through, message)

    async def seek(self, target: str) -> str | None:
        """Move the offset (``Consumer.seek``); returns the new tag value."""
        try:
            return await self._run(self.consumer.seek, target)
        finally:
            self._seeks += 1

    async def position(self) -> str | None:
        """The last finished message's commit id, or None before the first."""
        return await self._run(lambda: self.consumer.position)

    def _pass(self) -> tuple[_State, Iterator[Message]]:
        """The state, then the messages pending in it (on the worker thread)."""
        return self._state(), self.consumer.poll()

    def _state(self) -> _State:
        """What the pending messages depend on: the queue's tips and our tag.
        While idle, also let go of packs a repack deleted (as ``Consumer`` does)."""
        self.consumer.storage.release_deleted_packs()
        return (self.consumer.source.state(), self.consumer.position)

    async def _changed(self, before: _State) -> None:
        """Return once the state differs from ``before`` (taken before the pass
        started: a message published during the pass is not missed)."""
        while True:
            if await self._run(self._state) != before:
                return
            await asyncio.sleep(self.consumer.poll_interval)


def _forget_acked(handed: dict[str, None], tag: object, now: str | None) -> str | None:
    """Keep in ``handed`` what was handed out after the tag ``now``: what an ack
    moved past goes; a tag moved elsewhere (a seek) makes everything due again."""
    if now in handed:
        shas = list(handed)
        for sha in shas[: shas.index(now) + 1]:
            del handed[sha]
    elif now != tag:
        handed.clear()
    return now


def _take(pending: Iterator[Message], count: int) -> list[Message]:
    return list(itertools.islice(pending, count))
