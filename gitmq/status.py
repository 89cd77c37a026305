"""What ``gitmq status`` reports: queues with counts, consumers with lag.

A queue that syncs with a remote (recorded in the storage, see
``Storage.upstream``) is shown as consumers see it: its confirmed messages,
plus how many local ones are not pushed yet; consumer lag counts confirmed
messages only.
"""

from __future__ import annotations

from typing import Any

from gitmq import presence
from gitmq.names import tracking_ref
from gitmq.storage import Storage

HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"


def storage_status(storage: Storage) -> dict[str, Any]:
    """A JSON-ready summary of every queue and consumer in ``storage``."""
    heads = storage.list_refs(HEADS)
    remotes = storage.list_refs(REMOTES)
    queues = []
    sources: dict[str, str] = {}  # queue -> the tip its consumers read
    for ref, sha in sorted(heads.items()):
        name = ref[len(HEADS) :]
        entry: dict[str, Any] = {"name": name, "tip": sha, "messages": storage.count(None, sha)}
        remote = storage.upstream(name)
        sources[name] = sha
        if remote is not None:
            confirmed = remotes.get(tracking_ref(remote, name))
            entry["remote"] = remote
            entry["confirmed"] = storage.count(None, confirmed)
            entry["unpushed"] = storage.count(confirmed, sha)
            if confirmed is None:
                del sources[name]
            else:
                sources[name] = confirmed
        queues.append(entry)
    confirmed_list = [
        {"name": ref[len(REMOTES) :], "tip": sha, "messages": storage.count(None, sha)}
        for ref, sha in sorted(remotes.items())
    ]
    consumers = []
    for ref, position in sorted(storage.list_refs(TAGS).items()):
        queue, lag = _locate(storage, position, sources)
        consumers.append(
            {"name": ref[len(TAGS) :], "position": position, "queue": queue, "lag": lag}
        )
    return {
        "path": str(storage.path),
        "node": presence.read(storage),  # the node running here, with its pace per remote
        "queues": queues,
        "confirmed": confirmed_list,
        "consumers": consumers,
    }


def _locate(storage: Storage, position: str, sources: dict[str, str]) -> tuple[str | None, int]:
    """The queue whose (confirmed) history holds ``position`` and how many messages
    follow it (none for a tag that names no commit: a hand edit, a release tag)."""
    if not storage.is_commit(position):
        return None, 0
    for queue, tip in sorted(sources.items()):
        if storage.is_ancestor(position, tip):
            return queue, storage.count(position, tip)
    return None, 0
