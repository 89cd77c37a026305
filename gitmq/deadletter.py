"""Dead-letter queues: where a message goes once its handler kept failing.

The message is published again, payload and headers unchanged, to the
consumer's dead-letter queue (``<queue>.dlq`` unless configured) with the
``dead-letter-*`` headers of docs/format.md saying where it came from and why.
"""

from __future__ import annotations

import logging

from gitmq import names
from gitmq.errors import UsageError
from gitmq.message import Identity, Message
from gitmq.producer import Producer
from gitmq.storage import Storage

log = logging.getLogger("gitmq.consumer")


def dead_letter_queue(branch: str) -> str:
    """The default dead-letter queue of ``branch``."""
    return f"{branch}.dlq"


class DeadLetters:
    """The dead-letter queue of one consumer of one queue."""

    def __init__(
        self,
        storage: Storage,
        queue: str,
        consumer: str,
        dead_letter: str | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.queue, self.consumer = queue, consumer
        self.name = names.check_queue(dead_letter or dead_letter_queue(queue))
        if self.name == queue:
            raise UsageError(
                f"consumer {consumer!r} cannot use its own queue {queue!r} as its dead-letter "
                f"queue (a failing message would come back for ever); name another one"
            )
        self._producer = Producer(storage, self.name, author=identity, max_payload=1 << 62)
        self.count = 0
        self.duplicates = 0  # of them, copies of an earlier message (gitmq/screen.py)

    def publish(self, message: Message, error: str, attempts: int) -> None:
        headers = dict(message.headers)
        headers.update(
            {
                "dead-letter-original-id": message.id,
                "dead-letter-original-sha": message.sha,
                "dead-letter-queue": self.queue,
                "dead-letter-consumer": self.consumer,
                "dead-letter-attempts": str(attempts),
                "dead-letter-error": " ".join(error.split())[:1000] or "unknown error",
            }
        )
        self._producer.publish(message.payload, headers)
        self.count += 1
        self.duplicates += message.duplicate_of is not None
        if message.unfit is not None:
            log.error(
                "consumer %s: commit %s on queue %s moved to dead-letter queue %s unhandled: %s",
                self.consumer,
                message.sha,
                self.queue,
                self.name,
                message.unfit,
            )
            return
        log.error(
            "consumer %s: message %s moved to dead-letter queue %s after %d attempts: %s",
            self.consumer,
            message.id,
            self.name,
            attempts,
            error,
        )
