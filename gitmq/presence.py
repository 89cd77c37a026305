"""The node file: which node runs on a storage, and its pace with each remote.

A running node keeps ``gitmq-node.json`` in the storage's git directory: its
name, process id and start time, and per remote the budget line of
``budget.py`` (nodes seen, this node's pace), rewritten when that changes. It
goes when the node stops. ``gitmq status`` shows it; ``gitmq sync --wake``
needs it to find the node. Also (``observe.py`` keeps them)::

    "syncs": {REMOTE: {"at": EPOCH, "ok": BOOL, "line": REPORT_LINE,
                       "error": STR_OR_NULL, "down_since": EPOCH_OR_NULL}},
    "consumers": {NAME: {"queue": QUEUE, "running": BOOL, "last_error": STR_OR_NULL,
                         "delivered": INT, "dead_lettered": INT}},
    "observability": "HOST:PORT" or null

``at`` is when the last sync cycle with the remote finished; ``down_since`` when
the failing cycles began (null while it works). The file is rewritten at once
when anything but a time or a report line changed, else at most once a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gitmq.errors import NotFoundError
from gitmq.storage import Storage

if TYPE_CHECKING:  # status reads the file without the sync machinery
    from gitmq.sync import SyncTarget

NODE_FILE = "gitmq-node.json"
#: Seconds between writes that change nothing but times and report lines.
QUIET_WRITES = 1.0
_VOLATILE = ("at", "line")


class Presence:
    """The node file of a running node."""

    def __init__(
        self,
        storage: Storage,
        node: str,
        targets: Mapping[str, SyncTarget],
        observability: str | None = None,
    ) -> None:
        self.path = storage.git_dir / NODE_FILE
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {
            "node": node,
            "pid": os.getpid(),
            "started": time.time(),
            "remotes": {name: target.pace.line() for name, target in targets.items()},
            "syncs": {},
            "consumers": {},
            "observability": observability,
        }
        self._text = ""
        self._written: tuple[str, float] = ("", 0.0)  # what mattered, and when
        self.flush()

    @staticmethod
    def show(presence: Presence | None, name: str, line: str) -> None:
        """Record remote ``name``'s pace in ``presence``, when there is one (a node run)."""
        if presence is not None:
            presence.remote(name, line)

    def remote(self, name: str, line: str) -> None:
        """Record ``line`` for remote ``name`` (written only when it changed)."""
        with self._lock:
            self.info["remotes"][name] = line
        self.flush()

    def sync(self, remote: str, state: Mapping[str, Any]) -> None:
        """Record the last sync cycle with ``remote`` (the keys of ``"syncs"``)."""
        with self._lock:
            self.info["syncs"][remote] = dict(state)
        self.flush()

    def consumers(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Record every consumer's state (the keys of ``"consumers"``)."""
        with self._lock:
            self.info["consumers"] = {name: dict(state) for name, state in states.items()}
        self.flush()

    def flush(self, now: float | None = None) -> bool:
        """Write the file if something that matters changed, or only times and report
        lines did and the last write is ``QUIET_WRITES`` old; True when it wrote."""
        now = time.monotonic() if now is None else now
        with self._lock:  # the scheduler's, the waker's and the consumers' reports
            text, mattering = json.dumps(self.info), _mattering(self.info)
            if mattering == self._written[0] and (
                text == self._text or now - self._written[1] < QUIET_WRITES
            ):
                return False
            self._write(text, mattering, now)
            return True

    def _write(self, text: str, mattering: str, now: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.path)
        self._text, self._written = text, (mattering, now)

    def withdraw(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _mattering(info: Mapping[str, Any]) -> str:
    """``info`` without what changes every cycle anyway (times, report lines)."""
    syncs = {
        r: {k: v for k, v in s.items() if k not in _VOLATILE} for r, s in info["syncs"].items()
    }
    return json.dumps({**info, "syncs": syncs}, sort_keys=True)


def read(storage: Storage) -> dict[str, Any] | None:
    """The node file of the node running on ``storage``, or None (none runs)."""
    info = _load(storage.git_dir / NODE_FILE)
    if info is None or not _alive(int(info["pid"])):
        return None
    return info


def running(storage: Storage) -> str:
    """The name of the node running on ``storage``; NotFoundError naming why not."""
    path = storage.git_dir / NODE_FILE
    info = _load(path)
    if info is None:
        raise NotFoundError(
            f"no node is running on {storage.path} (no {NODE_FILE} there); start one with "
            f"'gitmq node --config FILE'"
        )
    if not _alive(int(info["pid"])):
        raise NotFoundError(
            f"no node is running on {storage.path}: node {info['node']!r} (process "
            f"{info['pid']}) has stopped; start it with 'gitmq node --config FILE'"
        )
    return str(info["node"])


def _load(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
        str(info["node"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if isinstance(info, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs as another user
    return True
