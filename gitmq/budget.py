"""A cluster's request budget for one remote, and this node's pace within it.

Every node polls the central repository on its own, so a cluster's requests add
up: GitHub recommends at most 15 git read operations a second per repository.
A remote's ``budget`` (``reads_per_minute``, ``pushes_per_minute``) is the whole
cluster's share of that repository. Each node learns how many nodes share it
(``registry.py``) and takes an equal part: ``reads / nodes`` and
``pushes / pushing nodes`` a minute, as a token bucket (a short burst, then
the rate). A read is one ref listing or one fetch; a push is one push.

The waits are interruptible: a stopping node ``release()``s its paces so that
its last sync goes out at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gitmq.storage.remote import host_of

_T = TypeVar("_T")

#: What a github.com remote gets when its config sets no budget: below GitHub's
#: recommendation of 15 git reads a second per repository (900 a minute).
GITHUB_READS_PER_MINUTE = 600.0
GITHUB_PUSHES_PER_MINUTE = 120.0
#: Requests a node may make at once before the rate applies (a cycle: a listing,
#: a fetch, and a retry's listing).
READ_BURST = 3.0
PUSH_BURST = 1.0


@dataclass(frozen=True)
class Budget:
    """Requests a minute for the whole cluster (None: no limit)."""

    reads_per_minute: float | None = None
    pushes_per_minute: float | None = None
    default: bool = False  # the github.com default, not the config's

    @property
    def limited(self) -> bool:
        return self.reads_per_minute is not None or self.pushes_per_minute is not None

    def line(self) -> str:
        if not self.limited:
            return "no budget"
        reads, pushes = self.reads_per_minute, self.pushes_per_minute
        text = f"{_rate(reads)} reads and {_rate(pushes)} pushes a minute for the cluster"
        return text + (" (the default for github.com)" if self.default else "")


def _rate(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:g}"


def is_github(url: str) -> bool:
    """Whether ``url`` names a repository on github.com (https, ssh or scp-like)."""
    return host_of(url) in ("github.com", "www.github.com", "ssh.github.com")


def default_budget(url: str) -> Budget:
    if is_github(url):
        return Budget(GITHUB_READS_PER_MINUTE, GITHUB_PUSHES_PER_MINUTE, default=True)
    return Budget()


class _Bucket:
    """Tokens at ``per_minute / 60`` a second, at most ``burst`` saved (None: free)."""

    def __init__(self, burst: float, clock: Callable[[], float]) -> None:
        self.burst, self.clock = burst, clock
        self.per_minute: float | None = None
        self.tokens, self.at = burst, clock()
        self.taken = 0  # requests let through so far (the node's /metrics)

    def _refill(self) -> None:
        now = self.clock()
        if self.per_minute is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_minute / 60)
        self.at = now

    def wait(self) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill()
        if self.per_minute is None or self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) * 60 / self.per_minute

    def take(self) -> None:
        self._refill()
        self.taken += 1
        if self.per_minute is not None:
            self.tokens -= 1


class Pace:
    """This node's share of one remote's budget, given how many nodes share it."""

    def __init__(
        self, budget: Budget, demand: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget = budget
        self.demand = demand  # reads a minute the node's schedule asks for
        self.nodes, self.pushers = 1, 1
        self._reads, self._pushes = _Bucket(READ_BURST, clock), _Bucket(PUSH_BURST, clock)
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.share(1, 1)

    def share(self, nodes: int, pushers: int) -> bool:
        """Split the budget among ``nodes`` (``pushers`` of which push); True if the
        split changed."""
        nodes, pushers = max(1, nodes), max(1, pushers)
        with self._lock:
            changed = (nodes, pushers) != (self.nodes, self.pushers)
            self.nodes, self.pushers = nodes, pushers
            reads, pushes = self.budget.reads_per_minute, self.budget.pushes_per_minute
            self._reads.per_minute = None if reads is None else reads / nodes
            self._pushes.per_minute = None if pushes is None else pushes / pushers
        return changed

    def shortfall(self) -> str | None:
        """What the schedule asks for beyond this node's share of reads, or None."""
        share = self._reads.per_minute
        if share is None or self.demand <= share * 1.001:
            return None
        assert self.budget.reads_per_minute is not None
        return (
            f"the sync schedule asks for {self.demand:g} reads a minute, but this node's "
            f"share of the budget is {share:.1f} ({self.budget.reads_per_minute:g} for "
            f"{self.nodes} node(s)): cycles are spaced to fit (raise the budget, or lengthen "
            f"sync.interval and sync.poll)"
        )

    @property
    def reads_per_minute(self) -> float | None:
        return self._reads.per_minute

    @property
    def pushes_per_minute(self) -> float | None:
        return self._pushes.per_minute

    @property
    def taken(self) -> tuple[int, int]:
        """The reads and pushes taken from the budget so far."""
        return self._reads.taken, self._pushes.taken

    def read(self) -> None:
        """Take a read, waiting for the budget first."""
        self._take(self._reads)

    def push(self) -> None:
        """Take a push, waiting for the budget first."""
        self._take(self._pushes)

    def begin(self, listen_only: bool) -> bool:
        """Take the read a cycle starts with: a listen only if one is there now (False:
        skip it), a sync cycle (or its retry) once a read and a push are both there."""
        if listen_only:
            return self.try_read()
        self.wait_room()
        self.read()
        return True

    def wait_room(self) -> None:
        """Wait until a read and a push are both there. Callers wait here *before* they
        take the node's sync lock, so that listens go on meanwhile."""
        while not self._released.is_set():
            delay = self.room()
            if delay <= 0:
                return
            self._released.wait(delay)

    def when_ready(self, lock: threading.Lock, action: Callable[[], _T]) -> _T:
        """Run ``action`` under ``lock`` once a read and a push are there. The wait is
        outside the lock (listens go on meanwhile), and if another sync took the turn
        while this one waited for the lock, it waits again outside it."""
        while True:
            self.wait_room()
            with lock:
                if self._released.is_set() or self.room() <= 0:
                    return action()

    def try_read(self) -> bool:
        """Take a read if the budget has one now; never waits."""
        with self._lock:
            if self._reads.wait() > 0 and not self._released.is_set():
                return False
            self._reads.take()
            return True

    def room(self) -> float:
        """Seconds until a read and a push are both there (an eager sync's wait)."""
        with self._lock:
            return max(self._reads.wait(), self._pushes.wait())

    def backoff(self, streak: int) -> float:
        """Seconds to wait after the ``streak``-th rejected push in a row: a random part
        of as many push turns as rejections, so nodes that collided spread out more the
        more they collide (0 without a push budget: the caller's own backoff)."""
        pushes = self._pushes.per_minute
        if pushes is None:
            return 0.0
        return random.uniform(0.0, 60 / pushes * min(streak, 8))

    def release(self) -> None:
        """Wait no more (the node is stopping): the last requests go out at once."""
        self._released.set()

    def _take(self, bucket: _Bucket) -> None:
        while True:
            with self._lock:
                delay = 0.0 if self._released.is_set() else bucket.wait()
                if delay <= 0:
                    bucket.take()
                    return
            self._released.wait(delay)

    def line(self) -> str:
        """The budget, the nodes seen and this node's pace, on one line."""
        if not self.budget.limited:
            return "no budget"
        return (
            f"{self.budget.line()}; {self.nodes} node(s) seen, {self.pushers} pushing; this "
            f"node: {_rate(_round(self.reads_per_minute))} reads and "
            f"{_rate(_round(self.pushes_per_minute))} pushes a minute"
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
