"""What ``gitmq status`` reports: the node running on a storage, its queues, consumers
and remotes, as one JSON-ready dict (``gitmq/cli/status_cmd.py`` draws it).

The figures themselves (counts, ages, lag) come from ``figures.py``, computed
there once for status, doctor and the node's /metrics. What only the running
node knows (its last sync with each remote, its consumers' last errors) comes
from its node file (``presence.py``); without a node those fields are None.

Consumers are every tag (``refs/tags/*``, an offset), every consumer of the
node config when one is given, and every consumer the node file names: a
consumer still at the beginning has no tag yet, and must be listed all the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from gitmq import figures, names, presence
from gitmq.config import NodeConfig
from gitmq.deadletter import dead_letter_queue
from gitmq.dlq import DeadLetterQueue
from gitmq.segments import segment_number
from gitmq.storage import Storage

HEADS = "refs/heads/"
TAGS = "refs/tags/"


def storage_status(
    storage: Storage, now: float, config: NodeConfig | None = None
) -> dict[str, Any]:
    """Everything ``gitmq status`` shows, at ``now`` (epoch seconds)."""
    node = presence.read(storage)
    running = _mapping(node, "consumers")
    queue_names = _queue_names(storage, config)
    return {
        "path": str(storage.path),
        "now": now,
        "node": node,  # the node file as the node wrote it, None when no node runs
        "queues": [_queue(storage, q, now, _dead_letter_queues(q, config)) for q in queue_names],
        "consumers": consumers(storage, now, _known(config, running), running),
        "remotes": _remotes(storage, now, config, node, queue_names),
    }


def _mapping(info: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """``info[key]`` when it is a mapping (a node file of an older node has none)."""
    value = info.get(key) if info else None
    return dict(value) if isinstance(value, Mapping) else {}


def _queue_names(storage: Storage, config: NodeConfig | None) -> list[str]:
    found = {ref[len(HEADS) :] for ref in storage.list_refs(HEADS)}
    if config is not None:
        found |= set(config.queues)  # configured, even before the first message
    # A rotating queue's segments (QUEUE.seg.N) are counted in their queue's row.
    return sorted(name for name in found if not any(_segment_of(q, name) for q in found))


def _segment_of(queue: str, branch: str) -> bool:
    number = segment_number(queue, branch)
    return number is not None and number > 0


def _dead_letter_queues(queue: str, config: NodeConfig | None) -> set[str]:
    out = {dead_letter_queue(queue)}
    if config is not None:
        out |= {c.dead_letter for c in config.consumers.values() if c.queue == queue}
    return out


def _queue(storage: Storage, queue: str, now: float, dead: set[str]) -> dict[str, Any]:
    got = asdict(figures.queue_figures(storage, queue, now))
    del got["queue"]
    dead_letters = sum(len(DeadLetterQueue(storage, queue, d).pending()) for d in sorted(dead))
    tip = storage.read_ref(names.queue_ref(queue))
    return {"name": queue, "tip": tip, **got, "dead_letters": dead_letters}


def consumers(
    storage: Storage, now: float, known: Mapping[str, str], running: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every consumer tag and every ``known`` consumer (name -> queue: the config's, the
    node's) with its position and lag, and what the node file says of it (``running``)."""
    tags = {ref[len(TAGS) :]: sha for ref, sha in storage.list_refs(TAGS).items()}
    queues = sorted(set(_queue_names(storage, None)) | set(known.values()))
    out = []
    for name in sorted(set(tags) | set(known)):
        queue = known.get(name) or _locate(storage, tags.get(name), queues)
        info = running.get(name)
        out.append(_consumer(storage, name, queue, tags.get(name), now, info))
    return out


def _known(config: NodeConfig | None, running: Mapping[str, Any]) -> dict[str, str]:
    """Consumer -> its queue, where the node file or the config say."""
    known = {
        name: info["queue"]
        for name, info in running.items()
        if isinstance(info, Mapping) and isinstance(info.get("queue"), str)
    }
    if config is not None:
        known |= {c.name: c.queue for c in config.consumers.values()}
    return known


def _consumer(
    storage: Storage,
    name: str,
    queue: str | None,
    tag: str | None,
    now: float,
    info: Any,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "position": tag, "queue": queue}
    if queue is None:
        entry |= {"lag": None, "lag_seconds": None, "problem": "not on any queue"}
    else:
        lag = figures.consumer_lag(storage, name, queue, now)
        entry |= {"lag": lag.messages, "lag_seconds": lag.seconds, "problem": lag.problem}
        if lag.problem is not None:
            entry |= {"lag": None, "lag_seconds": None}
    node = info if isinstance(info, Mapping) else {}
    for key in ("running", "last_error", "delivered", "dead_lettered"):
        entry[key] = node.get(key)
    return entry


def _locate(storage: Storage, position: str | None, queues: list[str]) -> str | None:
    """The queue whose history (as its consumers read it) holds ``position``: a tag
    that neither the config nor the node names (None for a tag that names no commit:
    a hand edit, a release tag)."""
    if position is None or not storage.is_commit(position):
        return None
    for queue in queues:
        for _, tip in figures.source(storage, queue).state():
            if storage.is_ancestor(position, tip):
                return queue
    return None


def _remotes(
    storage: Storage,
    now: float,
    config: NodeConfig | None,
    node: Mapping[str, Any] | None,
    queues: list[str],
) -> list[dict[str, Any]]:
    paces, syncs = _mapping(node, "remotes"), _mapping(node, "syncs")
    found = set(paces) | set(syncs) | set(config.remotes if config else ())
    found |= {r for q in queues if (r := storage.upstream(q)) is not None}
    out = []
    for name in sorted(found):
        sync = syncs.get(name)
        sync = sync if isinstance(sync, Mapping) else {}
        at = _number(sync.get("at"))
        down = _number(sync.get("down_since"))
        out.append(
            {
                "name": name,
                "pace": paces.get(name),
                "last_sync": at,
                "last_sync_age": None if at is None else max(0.0, now - at),
                "ok": sync.get("ok"),
                "line": sync.get("line"),
                "error": sync.get("error"),
                "down_since": down,
                "down_for": None if down is None else max(0.0, now - down),
            }
        )
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
