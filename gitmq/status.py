"""What ``gitmq status`` reports: queues with counts, consumers with lag."""

from __future__ import annotations

from typing import Any

from gitmq.storage import Storage

HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"


def storage_status(storage: Storage) -> dict[str, Any]:
    """A JSON-ready summary of every queue and consumer in ``storage``."""
    heads = storage.list_refs(HEADS)
    remotes = storage.list_refs(REMOTES)
    queues = [
        {"name": ref[len(HEADS) :], "tip": sha, "messages": storage.count(None, sha)}
        for ref, sha in sorted(heads.items())
    ]
    confirmed = [
        {"name": ref[len(REMOTES) :], "tip": sha, "messages": storage.count(None, sha)}
        for ref, sha in sorted(remotes.items())
    ]
    consumers = []
    for ref, position in sorted(storage.list_refs(TAGS).items()):
        queue, lag = _locate(storage, position, heads)
        consumers.append(
            {"name": ref[len(TAGS) :], "position": position, "queue": queue, "lag": lag}
        )
    return {
        "path": str(storage.path),
        "queues": queues,
        "confirmed": confirmed,
        "consumers": consumers,
    }


def _locate(storage: Storage, position: str, heads: dict[str, str]) -> tuple[str | None, int]:
    """The queue whose history holds ``position`` and how many messages follow it."""
    for ref, tip in sorted(heads.items()):
        if storage.is_ancestor(position, tip):
            return ref[len(HEADS) :], storage.count(position, tip)
    return None, 0
