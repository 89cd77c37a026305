"""Updates a server refused (a protected branch, a ruleset, a hook): not a lost race.

Sync pushes everything in one atomic push, so one refused ref would hold back
every other: new messages behind a tag the server will not take. Instead the
refused ref is left out of later pushes, the rest goes on, and the ref is tried
again after a backoff (30 s, doubling to 30 min). Which ref was refused is
plain when git names one; a pre-receive hook declines the whole push, so then
the server's words are searched for one of the refs, and failing that the push
is split in halves until the refused one is alone (``Refusals.isolate``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

FIRST_DELAY = 30.0
MAX_DELAY = 1800.0


@dataclass
class Refusal:
    reason: str
    delay: float
    until: float


@dataclass
class Refusals:
    """What one remote refused, kept from cycle to cycle."""

    clock: Callable[[], float] = time.monotonic
    refused: dict[str, Refusal] = field(default_factory=dict)
    #: Refs set aside for the rest of a cycle while a refused push is split.
    deferred: set[str] = field(default_factory=set)

    def excluded(self) -> set[str]:
        """Refs the next push leaves out."""
        now = self.clock()
        return {ref for ref, r in self.refused.items() if r.until > now} | self.deferred

    def isolate(
        self, pushed: Collection[str], refused: dict[str, str], said: str
    ) -> dict[str, str]:
        """The refs to hold back for a refusal of a push of ``pushed``; empty when it
        cannot tell yet, having deferred half of them (the next attempt tells)."""
        if len(refused) < len(pushed) or len(pushed) == 1:
            return refused
        named = {ref: why for ref, why in refused.items() if _names(said, ref)}
        if named:
            return named
        half = sorted(pushed)[len(pushed) // 2 :]
        self.deferred.update(half)
        return {}

    def refuse(self, ref: str, reason: str) -> float:
        """Hold ``ref`` back; returns the seconds until it is tried again."""
        previous = self.refused.get(ref)
        delay = min(MAX_DELAY, previous.delay * 2) if previous else FIRST_DELAY
        self.refused[ref] = Refusal(reason, delay, self.clock() + delay)
        self.deferred.clear()  # the others may go again
        return delay

    def landed(self, refs: Collection[str]) -> None:
        """``refs`` went through: forget their refusals."""
        for ref in refs:
            self.refused.pop(ref, None)


def refused_line(remote: str, ref: str, reason: str, said: str, delay: float) -> str:
    """The one error line for a refused update (logged once per refusal)."""
    server = f": {said}" if said else ""
    return (
        f"remote {remote} refused the update of {ref} ({reason}{server}); it is left out "
        f"of pushes and the rest goes on, next try in {delay:.0f} s; fix the branch "
        f"protection, ruleset or hook that refuses it (docs/operations.md)"
    )


def _names(said: str, ref: str) -> bool:
    """Whether the server's words name ``ref`` itself (not ``ref.dlq``, ``ref/x``)."""
    return re.search(rf"(?<![\w/.-]){re.escape(ref)}(?![\w/-]|\.\w)", said) is not None
