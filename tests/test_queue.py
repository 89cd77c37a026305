"""The Python API: Producer, Consumer (push and pull), retries, dead letters, seek."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from util import branch_shas, commit_headers, gitmq, ok, rev_parse, snapshot, wait_for

from gitmq import Consumer, GitMQError, Identity, Message, Producer, RetryPolicy, Storage
from gitmq.errors import ConsumerConflictError, NotFoundError, UsageError

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NO_WAIT = RetryPolicy(max_attempts=3, initial_delay=0.0)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    with Storage(tmp_path / "q") as storage:
        yield storage


@pytest.fixture
def consumers() -> Iterator[list[Consumer]]:
    """Consumers a test started; stopped even when the test fails."""
    started: list[Consumer] = []
    yield started
    for consumer in started:
        consumer.stop()


class Recorder:
    """A handler that records what it got, from the consumer's thread."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    @property
    def payloads(self) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.messages]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[bytes]:
        try:
            return wait_for(
                lambda: len(self.payloads) >= count and self.payloads,
                timeout,
                f"{count} deliveries",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; delivered so far: {self.payloads}") from None


def clock(start: datetime = T0, step: timedelta = timedelta(seconds=1)) -> Callable[[], datetime]:
    """A clock that moves one step per call, for messages at known times."""
    times = (start + i * step for i in range(1_000_000))
    return lambda: next(times)


# ------------------------------------------------------------------ producer


def test_publish_returns_the_message(storage: Storage) -> None:
    author = Identity("Orders API", "orders@example.invalid")
    message = Producer(storage, "orders", author=author, clock=lambda: T0).publish(
        '{"id": 1}', {"content-type": "application/json"}
    )
    assert message.payload == b'{"id": 1}'
    assert message.json() == {"id": 1}
    assert message.text == '{"id": 1}'
    assert message.sha == rev_parse(storage.path, "refs/heads/orders")
    assert (message.author, message.time) == (author, T0)
    assert message.headers == {"content-type": "application/json"}
    assert message.parent is None


def test_publish_many_appends_a_chained_batch_in_order(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    first = producer.publish("first")
    batch = producer.publish_many(["a", b"b", ("c", {"k": "v"})])
    assert [m.payload for m in batch] == [b"a", b"b", b"c"]
    assert [m.parent for m in batch] == [first.sha, batch[0].sha, batch[1].sha]
    assert batch[2].headers == {"k": "v"}
    assert branch_shas(storage.path, "orders") == [first.sha] + [m.sha for m in batch]
    assert producer.publish_many([]) == []
    assert rev_parse(storage.path, "refs/heads/orders") == batch[-1].sha


def test_default_identity_and_configurable_committer(storage: Storage) -> None:
    node = Identity("node-7", "gitmq@node-7.example.invalid")
    message = Producer(storage, "orders", committer=node).publish("x")
    read = storage.read(message.sha)
    assert read.author.name == "gitmq"
    assert read.author.email.startswith("gitmq@")
    assert read.committer == node


def test_invalid_identity_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="invalid identity email 'a<b'"):
        Identity("name", "a<b")
    with pytest.raises(UsageError, match="invalid identity name ' x'"):
        Identity(" x", "x@example.invalid")


# ------------------------------------------------------------- pull consumer


def test_poll_then_ack_moves_the_tag(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    sent = producer.publish_many(["one", "two", "three"])
    consumer = Consumer(storage, "billing", "orders")
    assert consumer.position is None
    assert [m.payload for m in consumer.poll()] == [b"one", b"two", b"three"]
    assert [m.payload for m in consumer.poll()] == [b"one", b"two", b"three"]  # nothing moved
    for message in consumer.poll():
        consumer.ack(message)
        assert rev_parse(storage.path, "refs/tags/billing") == message.sha
        break
    assert [m.payload for m in consumer.poll()] == [b"two", b"three"]
    with pytest.raises(UsageError, match=r"the next message is .*ack in order"):
        consumer.ack(sent[2])  # "two" was never seen: refused, nothing moves
    assert consumer.position == sent[0].sha
    consumer.ack_through(sent[2])  # on purpose: finishes everything before it
    assert list(consumer.poll()) == []
    assert consumer.position == sent[2].sha
    consumer.ack(sent[2])  # idempotent


def test_the_python_api_refuses_wrong_types_naming_the_argument(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    message = producer.publish("x")
    consumer = Consumer(storage, "billing", "orders")
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: producer.publish("x", {"k": 1}), "header 'k': names and values must be str"),
        (lambda: producer.publish("x", ["k"]), "headers must be a mapping of str to str"),
        (lambda: Storage(None), "a storage path must be a non-empty str or Path, not None"),
        (lambda: Producer(storage, 5), "a queue name must be a str, not int"),
        (lambda: Consumer(storage, None, "orders"), "a consumer name must be a str"),
        (lambda: consumer.seek(None), "a seek target must be a non-empty str"),
        (lambda: consumer.seek_time("yesterday"), "seek_time takes a datetime, not str"),
        (lambda: consumer.consume(None), "consume takes a callable handler, not NoneType"),
        (lambda: consumer.ack(message.sha), "ack takes a Message, not str"),
    ]
    for call, text in cases:
        with pytest.raises(UsageError) as caught:
            call()
        assert text in caught.value.message
    assert consumer.position is None and not consumer.running
    storage.close()
    with pytest.raises(UsageError, match="is closed; open the storage again to publish"):
        producer.publish("after close")


def test_tag_is_a_lightweight_tag_on_the_last_finished_message(storage: Storage) -> None:
    sent = Producer(storage, "orders").publish_many(["one", "two"])
    consumer = Consumer(storage, "billing", "orders")
    consumer.ack(sent[0])
    assert (storage.git_dir / "refs/tags/billing").read_text() == sent[0].sha + "\n"
    assert rev_parse(storage.path, "billing^{commit}") == sent[0].sha


def test_ack_backwards_is_refused_and_changes_nothing(storage: Storage) -> None:
    sent = Producer(storage, "orders").publish_many(["one", "two"])
    consumer = Consumer(storage, "billing", "orders")
    consumer.ack_through(sent[1])
    with pytest.raises(ConsumerConflictError) as info:
        consumer.ack(sent[0])
    assert info.value.message == (
        f"cannot move consumer 'billing' to {sent[0].sha[:12]}: its tag "
        f"({sent[1].sha[:12]}) is not before that message (another process moved it); "
        f"nothing was changed"
    )
    assert consumer.position == sent[1].sha


def test_tag_not_on_the_queue_is_a_clear_error(storage: Storage) -> None:
    other = Producer(storage, "other").publish("elsewhere")
    Producer(storage, "orders").publish("one")
    storage.compare_and_swap("refs/tags/billing", other.sha, None)
    with pytest.raises(ConsumerConflictError) as info:
        list(Consumer(storage, "billing", "orders").poll())
    assert info.value.message == (
        f"consumer 'billing' is at {other.sha[:12]}, which is not on queue 'orders'; "
        f"reset it with 'gitmq seek' (see docs/operations.md)"
    )
    assert rev_parse(storage.path, "refs/tags/billing") == other.sha


def test_crash_between_handler_and_tag_redelivers(storage: Storage) -> None:
    """At-least-once: the handler runs, then the tag moves. An interruption in
    between (here KeyboardInterrupt; test_concurrency does it with SIGKILL)
    delivers the same message again, never the next one."""
    Producer(storage, "orders").publish_many(["one", "two"])
    consumer = Consumer(storage, "billing", "orders")
    seen: list[bytes] = []

    def crash_on_two(message: Message) -> None:
        seen.append(message.payload)
        if message.payload == b"two":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        consumer.deliver_pending(crash_on_two)
    assert [m.payload for m in Consumer(storage, "billing", "orders").poll()] == [b"two"]
    again: list[bytes] = []
    assert (
        Consumer(storage, "billing", "orders").deliver_pending(lambda m: again.append(m.payload))
        == 1
    )
    assert (seen, again) == ([b"one", b"two"], [b"two"])


def test_fanout_every_consumer_gets_every_message_in_order(storage: Storage) -> None:
    sent = Producer(storage, "orders").publish_many([f"m{i}" for i in range(100)])
    names = ["billing", "shipping", "audit"]
    for name in names:
        consumer = Consumer(storage, name, "orders")
        got = []
        for message in consumer.poll():
            got.append(message)
            consumer.ack(message)
        assert [m.sha for m in got] == [m.sha for m in sent], name
    assert {n: rev_parse(storage.path, f"refs/tags/{n}") for n in names} == dict.fromkeys(
        names, sent[-1].sha
    )


def test_confirmed_source_ref_delivers_only_confirmed_messages(storage: Storage) -> None:
    """With a remote, consumers read the remote-tracking ref (docs/semantics.md)."""
    sent = Producer(storage, "orders").publish_many(["one", "two", "three"])
    tracking = "refs/remotes/origin/orders"
    consumer = Consumer(storage, "billing", "orders", source_ref=tracking)
    assert list(consumer.poll()) == []
    storage.compare_and_swap(tracking, sent[1].sha, None)
    assert [m.payload for m in consumer.poll()] == [b"one", b"two"]


# ------------------------------------------------------------- push consumer


def test_consume_delivers_pending_and_new_messages_in_order(
    storage: Storage, consumers: list[Consumer]
) -> None:
    producer = Producer(storage, "orders")
    producer.publish_many(["one", "two"])
    recorder = Recorder()
    consumer = Consumer(storage, "billing", "orders")
    consumers.append(consumer.consume(recorder))
    recorder.wait_for(2)
    producer.publish("three")
    producer.publish_many(["four", "five"])
    assert recorder.wait_for(5) == [b"one", b"two", b"three", b"four", b"five"]
    wait_for(lambda: consumer.position == rev_parse(storage.path, "refs/heads/orders"))
    assert consumer.delivered == 5
    message = recorder.messages[0]
    assert isinstance(message, Message)
    assert (message.text, message.parent) == ("one", None)


def test_message_published_while_the_handler_runs_is_delivered(
    storage: Storage, consumers: list[Consumer]
) -> None:
    """The handler of 'first' publishes 'second' after the consumer read the tip:
    'second' must still be delivered, with nothing else happening afterwards."""
    producer = Producer(storage, "orders")
    producer.publish("first")
    delivered = Recorder()

    def handler(message: Message) -> None:
        delivered(message)
        if message.payload == b"first":
            producer.publish("second")

    consumers.append(Consumer(storage, "billing", "orders").consume(handler))
    assert delivered.wait_for(2, timeout=10) == [b"first", b"second"]


def test_consume_delivers_a_message_published_by_another_process(
    tmp_path: Path, storage: Storage, consumers: list[Consumer]
) -> None:
    recorder = Recorder()
    consumers.append(Consumer(storage, "billing", "orders").consume(recorder))
    ok(gitmq("publish", storage.path, "orders", "from another process"))
    assert recorder.wait_for(1) == [b"from another process"]


def test_consumer_started_before_its_branch_exists_waits_then_delivers(
    storage: Storage, consumers: list[Consumer]
) -> None:
    recorder = Recorder()
    consumer = Consumer(storage, "billing", "orders")
    consumers.append(consumer.consume(recorder))
    wait_for(lambda: consumer.running, what="the consumer thread")
    assert rev_parse(storage.path, "refs/heads/orders") is None
    assert consumer.last_error is None
    Producer(storage, "orders").publish("first ever")
    assert recorder.wait_for(1) == [b"first ever"]
    assert consumer.running


def test_stop_ends_the_thread_and_consume_can_restart(
    storage: Storage, consumers: list[Consumer]
) -> None:
    producer = Producer(storage, "orders")
    recorder = Recorder()
    consumer = Consumer(storage, "billing", "orders")
    consumers.append(consumer)
    consumer.consume(recorder)
    with pytest.raises(GitMQError, match="consumer 'billing' is already running"):
        consumer.consume(recorder)
    thread = next(t for t in threading.enumerate() if t.name == "gitmq-consumer-billing")
    consumer.stop()
    assert not thread.is_alive()
    assert not consumer.running
    producer.publish("while stopped")
    consumer.stop()  # twice is fine
    assert recorder.payloads == []
    consumer.consume(recorder)
    assert recorder.wait_for(1) == [b"while stopped"]
    consumer.stop()
    assert not consumer.running


def test_a_consumer_in_a_with_block_stops_its_thread_on_leaving(storage: Storage) -> None:
    Producer(storage, "orders").publish("one")
    recorder = Recorder()
    with Consumer(storage, "billing", "orders") as consumer:
        consumer.consume(recorder)
        assert recorder.wait_for(1) == [b"one"]
        thread = next(t for t in threading.enumerate() if t.name == "gitmq-consumer-billing")
    assert not thread.is_alive()
    assert not consumer.running
    assert consumer.position == rev_parse(storage.path, "refs/heads/orders")


def test_stop_during_retry_backoff_is_prompt_and_does_not_ack(
    storage: Storage, consumers: list[Consumer]
) -> None:
    Producer(storage, "orders").publish("poison")
    attempts: list[float] = []

    def failing(message: Message) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("downstream is down")

    slow = RetryPolicy(max_attempts=5, initial_delay=600.0)
    consumer = Consumer(storage, "billing", "orders", retry=slow)
    consumers.append(consumer.consume(failing))
    wait_for(lambda: attempts, what="the first attempt")
    started = time.monotonic()
    consumer.stop()
    assert time.monotonic() - started < 10  # not the 600 s backoff
    assert not consumer.running
    assert len(attempts) == 1
    assert consumer.position is None
    assert rev_parse(storage.path, "refs/heads/orders.dlq") is None


# ------------------------------------------------------ retries, dead letters


def test_handler_failure_retries_with_backoff_then_dead_letters_and_moves_on(
    storage: Storage, consumers: list[Consumer]
) -> None:
    producer = Producer(storage, "orders")
    poison = producer.publish(b"poison \x00 payload\n", {"content-type": "application/x-bin"})
    producer.publish("good")
    attempts: list[float] = []
    delivered = Recorder()

    def handler(message: Message) -> None:
        if message.payload.startswith(b"poison"):
            attempts.append(time.monotonic())
            raise ValueError(f"cannot parse\n{message.id}")
        delivered(message)

    policy = RetryPolicy(max_attempts=4, initial_delay=0.05, multiplier=2.0)
    consumer = Consumer(storage, "billing", "orders", retry=policy)
    consumers.append(consumer.consume(handler))
    assert delivered.wait_for(1) == [b"good"]
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert [round(policy.delay_before(n), 3) for n in (2, 3, 4)] == [0.05, 0.1, 0.2]
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True):
        assert gap >= expected * 0.95, gaps  # backoff: never sooner than the policy says

    dead = list(Consumer(storage, "inspector", "orders.dlq").poll())
    assert len(dead) == 1
    assert dead[0].payload == poison.payload
    assert dict(dead[0].headers) == {
        "content-type": "application/x-bin",
        "dead-letter-original-id": poison.id,
        "dead-letter-original-sha": poison.sha,
        "dead-letter-queue": "orders",
        "dead-letter-consumer": "billing",
        "dead-letter-attempts": "4",
        "dead-letter-error": f"ValueError: cannot parse {poison.id}",
    }
    assert "gitmq-header dead-letter-attempts 4" in commit_headers(storage.path, dead[0].sha)
    wait_for(lambda: consumer.position == rev_parse(storage.path, "refs/heads/orders"))
    assert (consumer.delivered, consumer.dead_lettered) == (1, 1)
    assert consumer.running


def test_handler_that_recovers_is_not_dead_lettered(
    storage: Storage, consumers: list[Consumer]
) -> None:
    Producer(storage, "orders").publish("flaky")
    calls: list[bytes] = []

    def flaky(message: Message) -> None:
        calls.append(message.payload)
        if len(calls) < 3:
            raise ConnectionError("try again")

    consumer = Consumer(storage, "billing", "orders", retry=NO_WAIT)
    consumers.append(consumer.consume(flaky))
    wait_for(lambda: consumer.position is not None, what="the ack")
    assert calls == [b"flaky"] * 3
    assert rev_parse(storage.path, "refs/heads/orders.dlq") is None
    assert (consumer.delivered, consumer.dead_lettered) == (1, 0)


def test_dead_letter_queue_name_is_configurable(storage: Storage) -> None:
    Producer(storage, "orders").publish("poison")

    def failing(message: Message) -> None:
        raise RuntimeError("no")

    consumer = Consumer(storage, "billing", "orders", retry=NO_WAIT, dead_letter="graveyard")
    assert consumer.deliver_pending(failing) == 1
    assert [m.payload for m in Consumer(storage, "x", "graveyard").poll()] == [b"poison"]
    assert rev_parse(storage.path, "refs/heads/orders.dlq") is None


def test_retry_policy_validation() -> None:
    with pytest.raises(UsageError, match="retry max_attempts must be at least 1, got 0"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(UsageError, match="retry delays must not be negative"):
        RetryPolicy(initial_delay=-1)
    policy = RetryPolicy(max_attempts=10, initial_delay=1, max_delay=5, multiplier=3)
    assert [policy.delay_before(n) for n in range(1, 6)] == [0, 1, 3, 5, 5]


def test_errors_outside_the_handler_keep_the_thread_alive(
    storage: Storage, consumers: list[Consumer]
) -> None:
    """A corrupted tag stops delivery with last_error set; once repaired, delivery resumes."""
    Producer(storage, "orders").publish("one")
    tag = storage.git_dir / "refs/tags/billing"
    tag.parent.mkdir(exist_ok=True)
    tag.write_text("garbage\n")
    recorder = Recorder()
    consumer = Consumer(storage, "billing", "orders")
    consumers.append(consumer.consume(recorder))
    wait_for(lambda: consumer.last_error, what="the consumer to report the corrupted tag")
    assert "ref refs/tags/billing" in str(consumer.last_error)
    assert consumer.running
    tag.unlink()
    assert recorder.wait_for(1) == [b"one"]
    wait_for(lambda: consumer.last_error is None, what="last_error to clear")


# ---------------------------------------------------------------------- seek


@pytest.fixture
def ten(storage: Storage) -> list[Message]:
    """Ten messages one second apart, from T0."""
    return Producer(storage, "orders", clock=clock()).publish_many([f"m{i}" for i in range(10)])


def next_payload(consumer: Consumer) -> bytes | None:
    return next((m.payload for m in consumer.poll()), None)


def test_seek_beginning_and_end(storage: Storage, ten: list[Message]) -> None:
    consumer = Consumer(storage, "billing", "orders")
    assert consumer.seek("end") == ten[-1].sha
    assert next_payload(consumer) is None
    assert consumer.seek("beginning") is None
    assert rev_parse(storage.path, "refs/tags/billing") is None
    assert next_payload(consumer) == b"m0"
    assert consumer.seek("beginning") is None  # no tag yet: still fine


def test_seek_to_message_id_and_commit_id(storage: Storage, ten: list[Message]) -> None:
    consumer = Consumer(storage, "billing", "orders")
    consumer.seek(ten[4].id)
    assert next_payload(consumer) == b"m4"
    assert consumer.position == ten[3].sha
    consumer.seek(ten[7].sha)
    assert next_payload(consumer) == b"m7"
    consumer.seek(ten[2].sha[:8])
    assert next_payload(consumer) == b"m2"
    consumer.seek(ten[0].id)
    assert consumer.position is None
    assert next_payload(consumer) == b"m0"


def test_seek_to_time(storage: Storage, ten: list[Message]) -> None:
    consumer = Consumer(storage, "billing", "orders")
    consumer.seek((T0 + timedelta(seconds=3)).isoformat())
    assert next_payload(consumer) == b"m3"
    consumer.seek("2024-05-01T12:00:05.500+00:00")
    assert next_payload(consumer) == b"m6"
    consumer.seek("2024-05-01T14:00:02+02:00")  # 12:00:02 UTC
    assert next_payload(consumer) == b"m2"
    consumer.seek("2000-01-01T00:00:00Z")
    assert next_payload(consumer) == b"m0"
    consumer.seek("2099-01-01T00:00:00+00:00")
    assert next_payload(consumer) is None
    consumer.seek_time(T0 + timedelta(seconds=9))
    assert next_payload(consumer) == b"m9"


def test_seek_to_the_time_publish_returned(storage: Storage) -> None:
    producer = Producer(storage, "orders")
    producer.publish("before")
    target = producer.publish("target")
    consumer = Consumer(storage, "billing", "orders")
    consumer.seek("end")
    consumer.seek_time(target.time)
    assert next_payload(consumer) in (b"before", b"target")  # same second, or later
    assert b"target" in [m.payload for m in consumer.poll()]


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (
            "no-such-id",
            NotFoundError,
            "no message 'no-such-id' on queue 'orders'; give a message id, a commit id, "
            "an ISO time, 'beginning' or 'end'",
        ),
        (
            "2024-05-01T12:00:00",
            UsageError,
            "time '2024-05-01T12:00:00' has no time zone; add one, e.g. 2024-05-01T12:00:00+00:00",
        ),
        (
            "abc",
            NotFoundError,
            "no message 'abc' on queue 'orders'; give a message id, "
            "a commit id, an ISO time, 'beginning' or 'end'",
        ),
    ],
)
def test_seek_to_something_unknown_changes_nothing(
    storage: Storage, ten: list[Message], target: str, error: type[Exception], message: str
) -> None:
    consumer = Consumer(storage, "billing", "orders")
    consumer.seek(ten[5].id)
    before = snapshot(storage.path)
    with pytest.raises(error) as info:
        consumer.seek(target)
    assert info.value.message == message  # type: ignore[attr-defined]
    assert snapshot(storage.path) == before


def test_seek_on_a_queue_that_does_not_exist(storage: Storage) -> None:
    consumer = Consumer(storage, "billing", "orders")
    with pytest.raises(NotFoundError) as info:
        consumer.seek("end")
    assert info.value.message == ("queue 'orders' does not exist yet; nothing to seek in")


def test_seek_a_message_of_another_queue_is_not_found(storage: Storage, ten: list[Message]) -> None:
    other = Producer(storage, "other").publish("x")
    with pytest.raises(NotFoundError):
        Consumer(storage, "billing", "orders").seek(other.id)


def test_a_handler_that_exits_stops_the_thread_loudly_and_acks_nothing(
    storage: Storage, consumers: list[Consumer], caplog: pytest.LogCaptureFixture
) -> None:
    """SystemExit is not an Exception: it may end the thread, but never silently."""
    Producer(storage, "orders").publish("one")

    def exits(message: Message) -> None:
        raise SystemExit(3)

    consumer = Consumer(storage, "billing", "orders")
    consumers.append(consumer.consume(exits))
    wait_for(lambda: not consumer.running, what="the consumer thread to end")
    assert consumer.last_error == "consumer thread stopped: SystemExit: 3"
    assert any(
        r.levelname == "ERROR" and "consumer billing stopped" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    assert consumer.position is None


def test_a_handler_may_stop_its_own_consumer(storage: Storage, consumers: list[Consumer]) -> None:
    """ "Handle this one, then stop": the message is finished, nothing after it is."""
    Producer(storage, "orders").publish_many(["one", "two"])
    consumer = Consumer(storage, "billing", "orders")
    seen: list[bytes] = []

    def once(message: Message) -> None:
        seen.append(message.payload)
        consumer.stop()

    consumers.append(consumer.consume(once))
    wait_for(lambda: not consumer.running, what="the consumer to stop itself")
    assert seen == [b"one"]
    assert [m.payload for m in consumer.poll()] == [b"two"]
    assert consumer.last_error is None


def test_a_seek_during_delivery_is_not_undone_by_the_batched_tag_move(
    tmp_path: Path,
) -> None:
    with Storage(tmp_path / "q") as storage:
        sent = Producer(storage, "orders").publish_many(["m0", "m1", "m2", "m3"])
        consumer = Consumer(storage, "billing", "orders")
        consumer.ack(sent[0])
        seen: list[str] = []

        def handler(message: Message) -> None:
            seen.append(message.text)
            if message.text == "m2" and seen.count("m2") == 1:
                consumer.seek("beginning")  # e.g. an operator's `gitmq seek`

        consumer.deliver_pending(handler)  # the pass may finish its batch (m3) ...
        assert seen[:2] == ["m1", "m2"]
        assert consumer.position is None  # ... but the seek stands
        first_pass = len(seen)
        consumer.deliver_pending(handler)
        assert seen[first_pass:] == ["m0", "m1", "m2", "m3"]
        assert consumer.position == sent[-1].sha
