"""The node file: which node runs on a storage, and its pace with each remote.

A running node keeps ``gitmq-node.json`` in the storage's git directory: its
name, process id and start time, and per remote the budget line of
``budget.py`` (nodes seen, this node's pace), rewritten when that changes. It
goes when the node stops. ``gitmq status`` shows it; ``gitmq sync --wake``
needs it to find the node.
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


class Presence:
    """The node file of a running node."""

    def __init__(self, storage: Storage, node: str, targets: Mapping[str, SyncTarget]) -> None:
        self.path = storage.git_dir / NODE_FILE
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {
            "node": node,
            "pid": os.getpid(),
            "started": time.time(),
            "remotes": {name: target.pace.line() for name, target in targets.items()},
        }
        self._write()

    @staticmethod
    def show(presence: Presence | None, name: str, line: str) -> None:
        """Record remote ``name``'s pace in ``presence``, when there is one (a node run)."""
        if presence is not None:
            presence.remote(name, line)

    def remote(self, name: str, line: str) -> None:
        """Record ``line`` for remote ``name`` (written only when it changed)."""
        if self.info["remotes"].get(name) != line:
            self.info["remotes"][name] = line
            self._write()

    def _write(self) -> None:
        with self._lock:  # the scheduler's and the waker's syncs both report here
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.info) + "\n")
            os.replace(tmp, self.path)

    def withdraw(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


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
