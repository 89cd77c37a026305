"""The node's timetable (gitmq/schedule.py): the sync trigger keeps a won phase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler
from util import wait_for

from gitmq.schedule import PhaseKeeping

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


def test_without_an_anchor_the_trigger_runs_every_interval() -> None:
    trigger = PhaseKeeping(2.0, None)
    assert trigger.get_next_fire_time(T0, T0) == T0 + seconds(2)


def test_an_anchor_puts_every_later_run_on_its_grid() -> None:
    """A cycle that lost a race and won at T0 + 0.7 s: the runs from then on come at
    T0 + 0.7 s plus whole intervals, each after the one before."""
    trigger = PhaseKeeping(2.0, None)
    won = T0 + seconds(0.7)
    trigger.anchor = won
    first = trigger.get_next_fire_time(T0 + seconds(2), T0 + seconds(2.1))
    assert first == won + seconds(2)
    assert trigger.get_next_fire_time(first, first) == won + seconds(4)
    assert trigger.get_next_fire_time(T0 + seconds(2), T0 + seconds(2.1)) == first  # pure


def test_a_running_scheduler_moves_the_job_onto_the_anchors_grid() -> None:
    """APScheduler asks the trigger more than once per run; what it schedules after
    the job set the anchor is on the anchor's grid (scheduled times, not wall times)."""
    scheduler = BackgroundScheduler(timezone=UTC)
    trigger = PhaseKeeping(0.3, None)
    scheduled: list[datetime] = []
    anchor = datetime.now(UTC) + seconds(0.1)

    def body() -> None:
        trigger.anchor = anchor  # as a sync that lost, then won, sets it

    scheduler.add_listener(lambda e: scheduled.append(e.scheduled_run_time), EVENT_JOB_EXECUTED)
    scheduler.add_job(body, trigger, next_run_time=datetime.now(UTC), max_instances=1)
    scheduler.start()
    try:
        wait_for(lambda: len(scheduled) >= 4, 30, "four runs")
    finally:
        scheduler.shutdown(wait=True)
    for fire in scheduled[2:4]:  # the second run was scheduled before the anchor was set
        periods = (fire - anchor) / trigger.interval
        assert periods > 0 and abs(periods - round(periods)) < 1e-6, (fire, anchor)


def test_jitter_stays_within_its_bound_on_the_anchors_grid() -> None:
    trigger = PhaseKeeping(1.0, 0.05)
    trigger.anchor = T0
    for _ in range(50):
        fire = trigger.get_next_fire_time(T0, T0 + seconds(0.5))
        assert fire is not None
        assert T0 + seconds(1) <= fire <= T0 + seconds(1.05)
