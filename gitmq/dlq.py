"""Operating on dead letters: list them, replay them to their queue, purge them.

A dead-letter queue is itself a queue (``deadletter.py`` writes it), and so is
the record of what an operator did with it: replaying or purging a dead letter
appends a *record* to the dead-letter queue (headers ``gitmq-dlq-record:
replayed|purged`` and ``gitmq-dlq-of: <dead letter id>``). Nothing is moved
back and nothing is deleted, so sync pushes a record like any message and it
holds on every node; the dead letters stay in history and are no longer listed
(docs/format.md, "Dead letters").

A replay publishes the dead letter's payload and user headers to its queue as
a new message: a new ``gitmq-id`` (a consumer's screen would drop a message
whose id the queue already has as a copy) with the original id in
``gitmq-replay-of``. The copies go first, then the records: a crash between the
two leaves copies without records, and the next replay finds them on the queue
by their ``gitmq-replay-dead-letter`` header instead of publishing them again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from gitmq import message as fmt
from gitmq import names
from gitmq.deadletter import dead_letter_queue
from gitmq.errors import NotFoundError, UsageError
from gitmq.message import Identity, Message
from gitmq.producer import Producer
from gitmq.segments import QueueSource
from gitmq.storage import Storage

RECORD = "gitmq-dlq-record"  # replayed | purged
RECORD_OF = "gitmq-dlq-of"  # the dead letter's gitmq-id
REPLAYED_AS = "gitmq-dlq-replayed-as"
REPLAY_OF = "gitmq-replay-of"  # the id the message was first published with
REPLAY_DEAD_LETTER = "gitmq-replay-dead-letter"  # the dead letter replayed
REPLAY_REASON = "gitmq-replay-reason"
REPLAY_ATTEMPTS = "gitmq-replay-attempts"
REPLAY_CONSUMER = fmt.FOR_CONSUMER_HEADER  # gitmq-replay-consumer
REPLAY_COUNT = "gitmq-replay-count"
DEAD_PREFIX = "dead-letter-"
#: How many messages one ref update carries.
BATCH = 100
#: How far back (in the queue's history) a replay looks for copies that a crash
#: left without a record: past the oldest dead letter's time, less this for clocks.
CLOCK_SKEW = timedelta(hours=1)
SCAN_LIMIT = 100_000
SCAN_BATCH = 1000


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, with what an operator did with it (``state``)."""

    message: Message
    state: str = "pending"  # pending | replayed | purged
    replayed_as: str | None = None

    def header(self, key: str) -> str:
        return self.message.headers.get(DEAD_PREFIX + key, "")

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def original_id(self) -> str:
        return self.header("original-id")

    @property
    def attempts(self) -> int:
        text = self.header("attempts")
        return int(text) if text.isdigit() else 0

    def summary(self) -> dict[str, object]:
        return {
            "id": self.id,
            "original_id": self.original_id,
            "time": self.message.time.isoformat(),
            "queue": self.header("queue"),
            "consumer": self.header("consumer"),
            "attempts": self.attempts,
            "reason": self.header("error"),
            "state": self.state,
            **({"replayed_as": self.replayed_as} if self.replayed_as else {}),
        }

    def replay_headers(self) -> dict[str, str]:
        """The copy's headers: the user's, the original id and the reason it failed."""
        headers = {k: v for k, v in self.message.headers.items() if not k.startswith(DEAD_PREFIX)}
        count = headers.get(REPLAY_COUNT, "0")
        headers[REPLAY_OF] = headers.get(REPLAY_OF) or self.original_id or self.id
        headers[REPLAY_DEAD_LETTER] = self.id
        headers[REPLAY_REASON] = self.header("error") or "unknown error"
        headers[REPLAY_ATTEMPTS] = str(self.attempts)
        if self.header("consumer"):  # only that consumer handles it (screen.py)
            headers[REPLAY_CONSUMER] = self.header("consumer")
        else:
            headers.pop(REPLAY_CONSUMER, None)  # whoever gave up is unknown: every consumer
        headers[REPLAY_COUNT] = str(int(count) + 1 if count.isdigit() else 1)
        return headers


class DeadLetterQueue:
    """The dead letters of ``queue`` in its dead-letter queue (``QUEUE.dlq`` by default)."""

    def __init__(
        self,
        storage: Storage,
        queue: str,
        dead_letter: str | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.storage, self.queue = storage, names.check_queue(queue)
        self.name = names.check_queue(dead_letter or dead_letter_queue(queue))
        if self.name == queue:
            raise UsageError(f"queue {queue!r} cannot be its own dead-letter queue; name another")
        self.identity = identity

    def exists(self) -> bool:
        return QueueSource(self.storage, self.name, "refs/heads/").tip() is not None

    def all(self) -> list[DeadLetter]:
        """Every dead letter of the queue, oldest first, each with its state."""
        source = QueueSource(self.storage, self.name, "refs/heads/")
        shas = source.pending(None) if source.tip() is not None else []
        letters: list[Message] = []
        done: dict[str, tuple[str, str | None]] = {}
        for message in self._read(shas):
            record = message.headers.get(RECORD)
            if record is not None:
                done[message.headers.get(RECORD_OF, "")] = (
                    record,
                    message.headers.get(REPLAYED_AS),
                )
            elif message.control is None and self._ours(message):
                letters.append(message)
        return [DeadLetter(m, *done.get(m.id, ("pending", None))) for m in letters]

    def _read(self, shas: Sequence[str]) -> Iterator[Message]:
        """The messages ``shas``, read ``SCAN_BATCH`` at a time (one git process each)."""
        for start in range(0, len(shas), SCAN_BATCH):
            chunk = shas[start : start + SCAN_BATCH]
            yield from map(fmt.decode, chunk, self.storage.read_bodies(chunk))

    def _ours(self, message: Message) -> bool:
        origin = message.headers.get(DEAD_PREFIX + "queue")
        return origin == self.queue or (
            origin is None and DEAD_PREFIX + "original-id" in message.headers
        )

    def pending(self) -> list[DeadLetter]:
        return [d for d in self.all() if d.state == "pending"]

    def find(self, key: str, letters: Sequence[DeadLetter] | None = None) -> DeadLetter:
        """A dead letter by its id, its original id or its commit id (7 hex or more);
        a pending one first (two consumers may have dead-lettered one message)."""
        found = self.all() if letters is None else letters
        for letter in sorted(found, key=lambda d: d.state != "pending"):
            sha = letter.message.sha
            if key in (letter.id, letter.original_id) or (len(key) >= 7 and sha.startswith(key)):
                return letter
        raise NotFoundError(
            f"no dead letter {key!r} of queue {self.queue!r} in {self.name} "
            f"('gitmq dlq list' shows them)"
        )

    def select(self, ids: Sequence[str]) -> list[DeadLetter]:
        """The pending dead letters named by ``ids`` (every pending one when empty)."""
        if not ids:
            return self.pending()
        chosen: dict[str, DeadLetter] = {}
        letters = self.all()
        for key in ids:
            letter = self.find(key, letters)
            if letter.state != "pending":
                raise UsageError(
                    f"dead letter {letter.id} of queue {self.queue!r} was already "
                    f"{letter.state}"
                    + (f" (as {letter.replayed_as})" if letter.replayed_as else "")
                    + "; nothing was done"
                )
            chosen[letter.id] = letter
        return sorted(chosen.values(), key=lambda d: d.message.time)

    def replay(
        self, letters: Sequence[DeadLetter], advance: Callable[[int], None] = lambda n: None
    ) -> list[tuple[DeadLetter, Message | str]]:
        """Publish ``letters`` to the queue (those a crashed replay already published
        get their record only); returns each with its copy, or the copy's id."""
        landed = self._replayed_on_queue(letters)
        producer = Producer(self.storage, self.queue, author=self.identity, max_payload=1 << 62)
        out: list[tuple[DeadLetter, Message | str]] = []
        for batch in _batches(letters):
            fresh = [d for d in batch if d.id not in landed]
            copies = producer.publish_many((d.message.payload, d.replay_headers()) for d in fresh)
            made = dict(zip((d.id for d in fresh), copies, strict=True))
            out += [(d, made.get(d.id) or landed[d.id]) for d in batch]
            self._record("replayed", [(d, _id(made.get(d.id) or landed[d.id])) for d in batch])
            advance(len(batch))
        return out

    def purge(self, letters: Sequence[DeadLetter]) -> None:
        for batch in _batches(letters):
            self._record("purged", [(d, None) for d in batch])

    def _record(self, what: str, done: Iterable[tuple[DeadLetter, str | None]]) -> None:
        producer = Producer(self.storage, self.name, author=self.identity)
        producer.publish_many(
            (
                f"{what} dead letter {d.id}" + (f" as {copy}" if copy else "") + "\n",
                {RECORD: what, RECORD_OF: d.id, **({REPLAYED_AS: copy} if copy else {})},
            )
            for d, copy in done
        )

    def _replayed_on_queue(self, letters: Sequence[DeadLetter]) -> dict[str, str]:
        """Copies of ``letters`` already on the queue (dead letter id -> copy id)."""
        if not letters:
            return {}
        tip = QueueSource(self.storage, self.queue, "refs/heads/").tip()
        since = min(d.message.time for d in letters) - CLOCK_SKEW
        wanted, found = {d.id for d in letters}, dict[str, str]()
        for message in self._read(self.storage.recent_commits(tip, SCAN_LIMIT) if tip else []):
            of = message.headers.get(REPLAY_DEAD_LETTER)
            if of in wanted:
                found[of] = message.id
            if message.time < since:
                break
        return found


def _id(copy: Message | str) -> str:
    return copy if isinstance(copy, str) else copy.id


def _batches(letters: Sequence[DeadLetter]) -> Iterable[Sequence[DeadLetter]]:
    for start in range(0, len(letters), BATCH):
        yield letters[start : start + BATCH]
