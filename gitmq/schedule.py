"""The node's timetable as APScheduler jobs.

A sync per remote every ``sync.interval`` (plus up to ``sync.jitter``), the
first one at once; a fetch-only listen per remote every ``sync.poll`` when
set; a prune per queue with a policy, by interval or cron. Every job runs one
at a time and missed runs are coalesced. The scheduler only schedules: each
job body is a plain method of the node that runs once when called.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from gitmq.config import NodeConfig

Job = Callable[[str], Any]


def scheduler_for(
    config: NodeConfig, remotes: Iterable[str], sync: Job, listen: Job, prune: Job
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

    interval = IntervalTrigger(seconds=config.sync.interval, jitter=config.sync.jitter or None)
    for name in remotes:
        add(sync, interval, name, f"sync-{name}", next_run_time=datetime.now(UTC))
        if config.sync.poll:
            add(listen, IntervalTrigger(seconds=config.sync.poll), name, f"listen-{name}")
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
    return scheduler
