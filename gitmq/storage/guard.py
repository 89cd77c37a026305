"""The reachability guard: no object is deleted while someone makes it reachable.

Deleting unreachable objects (pruning history, sweeping orphan copies) races
with every writer that points a ref at an object: a producer that has written
its commit and is about to move the branch, a fetch that has received a pack
and is about to set its tracking ref, a seek that points a tag at an old
message. So every GitMQ writer holds the guard *shared* from before it writes
or looks up the object until the ref is set, and a collector holds it
*exclusively* while it re-checks what the refs reach and deletes. Collectors
do their slow work (walking history, rewriting packs) outside, so writers
wait only for the final re-check and the unlinks: milliseconds.

Two ``flock`` files, across processes (the kernel drops a dead holder's locks):
``gitmq-objects.lock`` is the guard itself; ``gitmq-objects-gate.lock`` is a
turnstile in front of it. Writers pass the gate (shared) on their way in;
a collector holds the gate exclusively while it waits, so a steady stream of
overlapping writers cannot starve it (Linux grants a shared ``flock`` even
while an exclusive one waits). It holds the gate for at most ``GATE_HOLD``
at a time: a writer that keeps the guard for long (a fetch over a slow
network) makes the collector step aside and retry, not every producer wait.
Each thread uses descriptors of its own, so threads of one process exclude
each other exactly as processes do; a thread may nest shared holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gitmq.errors import StorageError

GUARD_NAME = "gitmq-objects.lock"
GATE_NAME = "gitmq-objects-gate.lock"
#: Longest a waiting collector keeps new writers out (seconds).
GATE_HOLD = 0.05


class _Handles:
    """One thread's descriptors on the two lock files, and its nesting depth."""

    def __init__(self, git_dir: Path) -> None:
        self.gate = self.guard = -1  # so that close() works if an open below fails
        self.depth = 0
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        self.gate = os.open(git_dir / GATE_NAME, flags, 0o644)
        self.guard = os.open(git_dir / GUARD_NAME, flags, 0o644)

    def close(self) -> None:
        for fd in (self.gate, self.guard):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.gate = self.guard = -1

    def __del__(self) -> None:  # the thread ended: its descriptors go with it
        self.close()


class ReachabilityGuard:
    """Shared for writers, exclusive for collectors (see the module docstring)."""

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir
        self._local = threading.local()

    def _handles(self) -> _Handles:
        handles: _Handles | None = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = _Handles(self.git_dir)
        return handles

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the guard shared: objects written or found now stay until the ref is set."""
        h = self._handles()
        if h.depth == 0:
            fcntl.flock(h.gate, fcntl.LOCK_SH)
            try:
                fcntl.flock(h.guard, fcntl.LOCK_SH)
            finally:
                fcntl.flock(h.gate, fcntl.LOCK_UN)
        h.depth += 1
        try:
            yield
        finally:
            h.depth -= 1
            if h.depth == 0:
                fcntl.flock(h.guard, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def collecting(self, timeout: float = 600.0) -> Iterator[None]:
        """Hold the guard exclusively: no writer is between writing and setting a ref."""
        h = self._handles()
        if h.depth:
            raise RuntimeError("a collector cannot run inside a write (it would wait for itself)")
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            fcntl.flock(h.gate, fcntl.LOCK_EX)
            if _lock_within(h.guard, GATE_HOLD):
                break
            fcntl.flock(h.gate, fcntl.LOCK_UN)  # a long writer: let the others pass
            if time.monotonic() > deadline:
                raise StorageError(
                    f"{self.git_dir / GUARD_NAME} stayed held by a writer for {timeout:g}s; "
                    f"pruning gave up and changed nothing, try again later"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        try:
            yield
        finally:
            fcntl.flock(h.guard, fcntl.LOCK_UN)
            fcntl.flock(h.gate, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close this thread's descriptors (other threads close theirs when they end)."""
        handles: _Handles | None = getattr(self._local, "handles", None)
        if handles is not None and handles.depth == 0:
            handles.close()
            del self._local.handles


def _lock_within(fd: int, seconds: float) -> bool:
    """Take an exclusive ``flock`` on ``fd`` if it frees up within ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > end:
                return False
            time.sleep(0.0005)
