"""The asyncio API: AsyncProducer and AsyncConsumer over a real storage.

Each test runs its own event loop with ``asyncio.run``. The liveness tests make
the blocking side wait for the event loop to make progress, so a blocked loop
shows up as a stall flag (after a timeout), never as a hang or a timing guess.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from util import gitmq, ok

from gitmq import AsyncConsumer, AsyncProducer, Consumer, Producer, Storage
from gitmq.errors import UsageError
from gitmq.message import Message

STALL_TIMEOUT = 30.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "q"


@pytest.fixture
def storage(path: Path) -> Iterator[Storage]:
    with Storage(path) as storage:
        yield storage


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 60))


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gitmq-aio")]


class Ticker:
    """An asyncio task ticking every 10 ms; threads can wait for it to tick."""

    def __init__(self) -> None:
        self.ticks = 0
        self._ticked = threading.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            with self._ticked:
                self.ticks += 1
                self._ticked.notify_all()

    def wait_ticks(self, count: int) -> bool:
        """From a thread: wait until the loop ticked ``count`` more times; False if
        it did not within STALL_TIMEOUT (the loop was blocked)."""
        with self._ticked:
            target = self.ticks + count
            return self._ticked.wait_for(lambda: self.ticks >= target, STALL_TIMEOUT)


async def take(messages: AsyncIterator[Message], count: int) -> list[Message]:
    out: list[Message] = []
    async for message in messages:
        out.append(message)
        if len(out) == count:
            break
    return out


def test_publish_then_iterate_in_order_and_ack_moves_the_tag(storage: Storage) -> None:
    async def main() -> None:
        async with AsyncProducer(storage, "orders") as producer:
            first = await producer.publish("one", headers={"k": "v"})
            rest = await producer.publish_many(["two", ("three", {"n": "3"})])
        async with AsyncConsumer(storage, "billing", "orders") as consumer:
            got = await take(consumer.messages(), 3)
            assert [m.text for m in got] == ["one", "two", "three"]
            assert [m.id for m in got] == [first.id, *(m.id for m in rest)]
            assert got[0].headers == {"k": "v"} and got[2].headers == {"n": "3"}
            assert await consumer.position() is None  # handing out is not acking
            await consumer.ack(got[0])
            await consumer.ack_through(got[2])
            assert await consumer.position() == got[2].sha

    run(main())
    assert list(Consumer(storage, "billing", "orders").poll()) == []
    assert worker_threads() == []


def test_iterating_waits_for_a_message_another_process_publishes_without_blocking_the_loop(
    storage: Storage, path: Path
) -> None:
    ok(gitmq("publish", path, "orders", "before"))  # the queue exists; then it goes quiet
    stalled: list[bool] = []

    def publish_later(ticker: Ticker) -> None:
        # 50 ticks (about 0.5 s) of a live loop while the consumer waits, then publish.
        stalled.append(not ticker.wait_ticks(50))
        ok(gitmq("publish", path, "orders", "after"))

    async def main() -> None:
        async with Ticker() as ticker, AsyncConsumer(storage, "c", "orders") as consumer:
            messages = consumer.messages()
            [before] = await take(messages, 1)
            await consumer.ack(before)
            publisher = threading.Thread(target=publish_later, args=(ticker,))
            publisher.start()
            try:
                [after] = await take(messages, 1)
            finally:
                await asyncio.to_thread(publisher.join)
            assert after.text == "after"

    run(main())
    assert stalled == [False], "the event loop stopped ticking while the consumer waited"


def test_a_long_publish_does_not_block_the_loop(storage: Storage) -> None:
    """The producer's clock is called inside publish: make it wait for the loop."""
    stalled: list[bool] = []
    ticker = Ticker()

    def slow_clock() -> datetime:
        stalled.append(not ticker.wait_ticks(20))
        return datetime.now(UTC)

    async def main() -> None:
        async with ticker, AsyncProducer(storage, "orders", clock=slow_clock) as producer:
            message = await producer.publish("slow")
            assert message.text == "slow"

    run(main())
    assert stalled and not any(stalled), "the event loop stopped ticking during publish"


def test_cancelling_an_iteration_loses_nothing_and_leaves_no_thread(storage: Storage) -> None:
    Producer(storage, "orders").publish_many(["one", "two"])

    async def main() -> None:
        consumer = AsyncConsumer(storage, "c", "orders")
        got: list[str] = []
        both = asyncio.Event()

        async def iterate() -> None:
            async for message in consumer.messages():
                got.append(message.text)
                if message.text == "one":
                    await consumer.ack(message)  # "two" stays unacknowledged
                if len(got) == 2:
                    both.set()

        task = asyncio.create_task(iterate())
        await both.wait()
        await asyncio.sleep(0.05)  # let it wait for more (waiting is what is cancelled)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert got == ["one", "two"]
        await consumer.close()
        assert worker_threads() == []

        async with AsyncConsumer(storage, "c", "orders") as again:
            [message] = await take(again.messages(), 1)
            assert message.text == "two"  # the unacked message comes again

    run(main())
    assert worker_threads() == []


def test_cancelling_a_publish_in_progress_finishes_it_and_ends_the_thread(
    storage: Storage,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def held_clock() -> datetime:
        entered.set()
        release.wait(STALL_TIMEOUT)
        return datetime.now(UTC)

    async def main() -> None:
        producer = AsyncProducer(storage, "orders", clock=held_clock)
        task = asyncio.create_task(producer.publish("held"))
        await asyncio.to_thread(entered.wait, STALL_TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await producer.close()  # waits for the running call: the thread ends
        assert worker_threads() == []

    run(main())
    assert [m.text for m in Consumer(storage, "c", "orders").poll()] == ["held"]


def test_unacked_messages_are_handed_out_once_and_new_ones_follow(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    producer.publish_many(["one", "two"])

    async def main() -> None:
        async with AsyncConsumer(storage, "c", "orders") as consumer:
            messages = consumer.messages()
            first = await take(messages, 2)
            await consumer.ack(first[0])  # the tag moves; "two" must not come twice
            await asyncio.to_thread(producer.publish, "three")
            [third] = await take(messages, 1)
            assert [m.text for m in [*first, third]] == ["one", "two", "three"]

    run(main())


def test_seek_restarts_an_iteration_in_progress(storage: Storage) -> None:
    sent = Producer(storage, "orders").publish_many(["one", "two", "three"])

    async def main() -> None:
        async with AsyncConsumer(storage, "c", "orders") as consumer:
            got: list[str] = []
            async for message in consumer.messages():
                got.append(message.text)
                await consumer.ack(message)
                if got == ["one", "two"]:
                    await consumer.seek(sent[0].id)  # replay from the first
                if len(got) == 5:
                    break
            assert got == ["one", "two", "one", "two", "three"]
            await consumer.seek("end")
            assert await consumer.position() == sent[-1].sha

    run(main())


def test_a_closed_object_refuses_calls(storage: Storage) -> None:
    async def main() -> None:
        producer = AsyncProducer(storage, "orders")
        await producer.close()
        with pytest.raises(UsageError, match="producer of 'orders' is closed"):
            await producer.publish("x")
        async with AsyncConsumer(storage, "c", "orders") as consumer:
            pass
        with pytest.raises(UsageError, match="consumer 'c' is closed"):
            await consumer.seek("end")

    run(main())


def test_errors_reach_the_awaiting_code(storage: Storage) -> None:
    async def main() -> None:
        async with AsyncProducer(storage, "orders") as producer:
            with pytest.raises(UsageError, match="payload must be str or bytes"):
                await producer.publish(42)  # type: ignore[arg-type]

    run(main())


def test_iterating_a_queue_that_does_not_exist_yet_waits_for_its_first_message(
    storage: Storage,
) -> None:
    async def main() -> None:
        async with AsyncConsumer(storage, "c", "orders") as consumer:
            waiting = asyncio.create_task(take(consumer.messages(), 1))
            await asyncio.sleep(0.1)  # a few polls of a queue with no branch yet
            assert not waiting.done()
            await asyncio.to_thread(Producer(storage, "orders").publish, "first")
            [message] = await waiting
            assert message.text == "first"

    run(main())


def test_publishes_made_before_close_all_land_and_return_their_message(storage: Storage) -> None:
    async def main() -> list[Message]:
        producer = AsyncProducer(storage, "orders")
        calls = [asyncio.ensure_future(producer.publish(f"m{i}")) for i in range(20)]
        await asyncio.sleep(0)  # every call is on the worker's queue before close
        await producer.close()
        return await asyncio.gather(*calls)

    sent = asyncio.run(asyncio.wait_for(main(), 60))
    assert [m.payload for m in sent] == [f"m{i}".encode() for i in range(20)]
    assert [m.id for m in Consumer(storage, "check", "orders").poll()] == [m.id for m in sent]
