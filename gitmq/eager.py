"""Eager sync: a node syncs as soon as there is something to push, or when asked.

The scheduler syncs every ``sync.interval``; a message published in between
would wait for the next cycle. The waker looks at the local branches of each
eager remote's queues every ``TICK`` and, when one moved, waits ``GATHER`` (so
that publishes a few milliseconds apart share one push) and for room in the
remote's budget, then runs that remote's sync. A sync already running is
waited for (the node's sync lock), and what it did not see triggers the next.

``gitmq sync --wake`` asks from outside (a webhook relay, cron): it touches the
storage's ``gitmq-wake`` file, and the waker then syncs every remote. It
refuses when no node runs on the storage (``presence.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from gitmq import presence
from gitmq.segments import segments
from gitmq.storage import Storage
from gitmq.sync import SyncTarget

log = logging.getLogger("gitmq.node")

TICK = 0.01
WAKE_TICK = 0.1
GATHER = 0.005
WAKE_FILE = "gitmq-wake"


class Waker:
    """The eager-sync thread of a node."""

    def __init__(
        self,
        storage: Storage,
        targets: Mapping[str, SyncTarget],
        eager: set[str],
        sync: Callable[[str], object],
    ) -> None:
        self.storage, self.targets, self.eager, self.sync = storage, targets, eager, sync
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_file = storage.git_dir / WAKE_FILE
        # Idle nodes only watch the wake file: ten looks a second are enough for it.
        self._tick = TICK if eager else WAKE_TICK

    def start(self) -> Waker:
        self._thread = threading.Thread(target=self._run, name="gitmq-waker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30.0)

    def _heads(self, remote: str) -> tuple[object, ...]:
        return tuple(tuple(segments(self.storage, q)) for q in self.targets[remote].queues)

    def _stamp(self) -> int | None:
        try:
            return self._wake_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _run(self) -> None:
        seen = {name: self._heads(name) for name in self.eager}
        stamp = self._stamp()
        while not self._stop.wait(self._tick):
            try:
                due = {name for name in self.eager if self._heads(name) != seen[name]}
                if self._stamp() != stamp:
                    stamp = self._stamp()
                    due = set(self.targets)
                    log.info("woken from outside: syncing %s", ", ".join(sorted(due)))
                if not due:
                    continue
                self._stop.wait(GATHER)
                for name in sorted(due):
                    if name in seen:
                        seen[name] = self._heads(name)  # before: what comes later goes next
                    if self._stop.wait(self.targets[name].pace.room()):
                        return
                    self.sync(name)
            except Exception as exc:  # never die: log, go on with the schedule alone
                log.error("eager sync: %s", exc)
                self._stop.wait(1.0)


def wake(storage: Storage) -> str:
    """Ask the node running on ``storage`` to sync now; returns its name."""
    node = presence.running(storage)
    (storage.git_dir / WAKE_FILE).write_text(f"{time.time()}\n")
    return node
