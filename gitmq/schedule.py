"""The node's timetable as APScheduler jobs.

A sync per remote every ``sync.interval`` (plus up to ``sync.jitter``), the
first one at once; after a cycle that lost a race and then pushed, the next
ones keep the phase of the attempt that won (nodes started together find
turns instead of colliding every interval: reservation, as in R-ALOHA); a
fetch-only cycle per remote every ``sync.poll`` when set; a prune per queue
with a policy, by interval or cron; the node's tick (``observe.py``: the
watchdog's keep-alive and the node file's refresh) every ``tick_seconds``.
Every job runs one at a time and missed runs are coalesced. The scheduler only
schedules: each job body is a plain method of the node that runs once when
called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from gitmq.config import NodeConfig
from gitmq.sync import SyncReport

Job = Callable[[str], Any]


class Ticking(Protocol):
    """What the tick job calls: ``tick()`` every ``tick_seconds`` (``observe.Observer``)."""

    tick_seconds: float

    def tick(self) -> None: ...


class PhaseKeeping(IntervalTrigger):  # type: ignore[misc]
    """Every ``seconds`` (plus up to ``jitter``), on the grid of ``anchor`` once one is
    set. The job sets it from its own thread (a plain attribute: calling the scheduler
    from a job deadlocks against ``shutdown``, which holds the job store lock while it
    waits for running jobs). A pure function of its arguments and the anchor: the
    scheduler asks it more than once per run."""

    def __init__(self, seconds: float, jitter: float | None) -> None:
        super().__init__(seconds=seconds, jitter=jitter or None)
        self.anchor: datetime | None = None

    def get_next_fire_time(self, previous: datetime | None, now: datetime) -> datetime | None:
        anchor = self.anchor
        if anchor is None:
            fire: datetime | None = super().get_next_fire_time(previous, now)
            return fire
        after = previous or now
        periods = max(1, math.floor((after - anchor) / self.interval) + 1)
        fire = self._apply_jitter(anchor + periods * self.interval, self.jitter, now)
        return fire


def scheduler_for(
    config: NodeConfig,
    remotes: Iterable[str],
    sync: Callable[[str], SyncReport],
    poll: Job,
    prune: Job,
    ticking: Ticking | None = None,
) -> BackgroundScheduler:
    """A scheduler (not started) with every job of the node described by ``config``."""
    scheduler = BackgroundScheduler(timezone=UTC)

    def add(func: Job, trigger: Any, arg: str, job_id: str, **extra: Any) -> None:
        scheduler.add_job(
            func,
            trigger,
            args=[arg],
            id=job_id,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            **extra,
        )

    triggers = {name: PhaseKeeping(config.sync.interval, config.sync.jitter) for name in remotes}

    def sync_keeping_phase(name: str) -> SyncReport:
        report = sync(name)
        if report.won_at is not None:
            triggers[name].anchor = report.won_at  # a plain write: no scheduler lock
        return report

    for name, phase in triggers.items():
        add(sync_keeping_phase, phase, name, f"sync-{name}", next_run_time=datetime.now(UTC))
        if config.sync.poll:
            add(poll, IntervalTrigger(seconds=config.sync.poll), name, f"poll-{name}")
    for queue in config.queues.values():
        policy = queue.prune
        if policy is None:
            continue
        trigger = (
            CronTrigger.from_crontab(policy.cron, timezone=UTC)
            if policy.cron
            else IntervalTrigger(seconds=policy.every or 3600)
        )
        add(prune, trigger, queue.name, f"prune-{queue.name}")
    if ticking is not None:  # its own thread (below): a long sync never holds it up
        add(lambda _: ticking.tick(), IntervalTrigger(seconds=ticking.tick_seconds), "", "tick")
    # One thread per job is enough (each runs one at a time); the default pool of ten
    # spreads the jobs over ten threads, each warming its own malloc arena (RSS).
    scheduler.add_executor(ThreadPoolExecutor(max(1, len(scheduler.get_jobs()))))
    return scheduler
