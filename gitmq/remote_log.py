"""What the node logs about each cycle with a remote, and how a failing remote is told.

A cycle that works logs its report line at INFO, as always (a fetch-only cycle of
``sync.poll`` only when it fetched something). A remote that fails logs once at
WARNING with the whole error, then, while it stays down, a summary after 1, 2 and
4 minutes and every 5 minutes from then on (each failed cycle goes to DEBUG, with
its report): an outage of an hour is a dozen lines, not one per interval. When a
cycle works again, one line says how long the remote was down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gitmq.sync import SyncReport
from gitmq.units import format_duration

log = logging.getLogger("gitmq.node")

#: Seconds between the summaries of a remote that stays down; the last one repeats.
SUMMARY_GAPS: tuple[float, ...] = (60.0, 120.0, 240.0, 300.0)


@dataclass
class Outage:
    """A remote that is down: since when (epoch seconds), how often, the last error."""

    since: float
    failures: int
    error: str
    summaries: int = 0
    next_summary: float = 0.0


def cycles(failures: int) -> str:
    return f"{failures} failed sync{'' if failures == 1 else 's'}"


class RemoteLog:
    """The log of the node's cycles with its remotes (syncs and polls)."""

    def __init__(
        self,
        gaps: Sequence[float] = SUMMARY_GAPS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gaps, self.clock = tuple(gaps), clock
        self.outages: dict[str, Outage] = {}
        self._lock = threading.Lock()  # the scheduler's, the poller's and the waker's cycles

    def down_since(self, remote: str) -> float | None:
        outage = self.outages.get(remote)
        return None if outage is None else outage.since

    def saw(self, report: SyncReport, poll: bool = False) -> None:
        """Log one cycle's ``report`` (``poll``: a fetch-only one of ``sync.poll``)."""
        with self._lock:
            if report.error is None:
                self._worked(report, poll)
            else:
                self._failed(report, poll, self.clock())

    def _worked(self, report: SyncReport, poll: bool) -> None:
        outage = self.outages.pop(report.remote, None)
        if outage is not None:
            log.warning(
                "remote %s is back after %s (%s)",
                report.remote,
                format_duration(self.clock() - outage.since),
                cycles(outage.failures),
            )
        if poll and not report.fetched and report.ok:
            return
        level = logging.INFO if report.ok else logging.WARNING  # refused or rewritten refs
        log.log(level, "%s%s", "poll " if poll else "", report.line(), extra={"sync": vars(report)})

    def _failed(self, report: SyncReport, poll: bool, now: float) -> None:
        assert report.error is not None
        prefix = "poll " if poll else ""
        outage = self.outages.get(report.remote)
        if outage is None:
            self.outages[report.remote] = Outage(now, 1, report.error, 0, now + self.gaps[0])
            log.warning("%s%s", prefix, report.line(), extra={"sync": vars(report)})
            return
        outage.failures += 1
        outage.error = report.error
        log.debug("%s%s", prefix, report.line(), extra={"sync": vars(report)})
        if now < outage.next_summary:
            return
        outage.summaries += 1
        outage.next_summary = now + self.gaps[min(outage.summaries, len(self.gaps) - 1)]
        log.warning(
            "remote %s still down for %s: %s, last error: %s",
            report.remote,
            format_duration(now - outage.since),
            cycles(outage.failures),
            outage.error,
        )
