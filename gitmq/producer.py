"""Producers: publish messages to a queue."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from gitmq import ids, names, segments
from gitmq.errors import PayloadTooLargeError, UsageError
from gitmq.message import Draft, Identity, Message, validate_headers
from gitmq.storage import Storage

DEFAULT_MAX_PAYLOAD = 1024 * 1024

Payload = str | bytes
Item = Payload | tuple[Payload, Mapping[str, str]]


def default_identity() -> Identity:
    """``gitmq <gitmq@HOST>``: used when no identity is configured."""
    host = socket.gethostname() or "localhost"
    return Identity("gitmq", f"gitmq@{host}")


class Producer:
    """Publishes to one queue of one storage; safe to share between threads."""

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
        self.storage = storage
        self.branch = names.check_queue(branch)
        self.ref = names.queue_ref(branch)
        self.author = author or default_identity()
        self.committer = committer or self.author
        self.max_payload = max_payload
        self._clock = clock or (lambda: datetime.now(UTC))

    def publish(self, payload: Payload, headers: Mapping[str, str] | None = None) -> Message:
        """Append one message; when this returns, the message is in the storage."""
        return self.storage.append(
            self._live_ref(), [self._draft(payload, headers)], self.committer, self._clock
        )[0]

    def publish_many(self, items: Iterable[Item]) -> list[Message]:
        """Append a batch with a single ref update: all of it or none of it."""
        drafts = []
        for item in items:
            if isinstance(item, tuple):
                drafts.append(self._draft(item[0], item[1]))
            else:
                drafts.append(self._draft(item, None))
        if not drafts:
            return []
        return self.storage.append(self._live_ref(), drafts, self.committer, self._clock)

    def _live_ref(self) -> str:
        """The queue's branch, or its newest segment if it rotates (docs/retention.md)."""
        return "refs/heads/" + segments.live_branch(self.storage, self.branch)

    def _draft(self, payload: Payload, headers: Mapping[str, str] | None) -> Draft:
        if isinstance(payload, str):
            try:
                data = payload.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as exc:
                raise UsageError(
                    f"payload is not encodable as UTF-8 ({exc.reason} at position {exc.start}); "
                    f"publish bytes instead"
                ) from exc
        elif isinstance(payload, bytes | bytearray | memoryview):
            data = bytes(payload)
        else:
            raise UsageError(f"a payload must be str or bytes, not {type(payload).__name__}")
        if len(data) > self.max_payload:
            raise PayloadTooLargeError(
                f"payload of {len(data)} bytes is over the limit of {self.max_payload} bytes "
                f"for queue {self.branch!r}; nothing was published (raise max_payload or "
                f"store large data elsewhere and publish a reference)"
            )
        now = self._clock()
        return Draft(
            id=ids.new_id(int(now.timestamp() * 1e9)),
            payload=data,
            author=self.author,
            # Git records whole seconds: the Message we return must be the one stored.
            time=now.replace(microsecond=0),
            headers=validate_headers(headers or {}),
        )
