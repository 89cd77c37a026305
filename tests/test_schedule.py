"""The node's timetable (gitmq/schedule.py): the sync trigger keeps a won phase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gitmq.schedule import PhaseKeeping

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def test_without_an_anchor_the_trigger_runs_every_interval() -> None:
    trigger = PhaseKeeping(2.0, None)
    assert trigger.get_next_fire_time(T0, T0) == T0 + timedelta(seconds=2)


def test_an_anchor_moves_the_next_runs_onto_its_grid_once() -> None:
    """A cycle that lost a race and won at T0 + 0.7 s: the runs after the next come at
    T0 + 0.7 s plus whole intervals, never in the past, and the anchor is used once."""
    trigger = PhaseKeeping(2.0, None)
    won = T0 + timedelta(seconds=0.7)
    trigger.anchor = won
    now = T0 + timedelta(seconds=3.1)  # the next run, on the old grid, is being scheduled
    first = trigger.get_next_fire_time(T0 + timedelta(seconds=2), now)
    assert first == won + timedelta(seconds=4)
    assert trigger.anchor is None
    assert trigger.get_next_fire_time(first, first) == first + timedelta(seconds=2)


def test_an_anchor_in_the_last_interval_gives_the_next_grid_point() -> None:
    trigger = PhaseKeeping(1.0, None)
    trigger.anchor = T0
    assert trigger.get_next_fire_time(T0, T0 + timedelta(seconds=0.2)) == T0 + timedelta(seconds=1)


def test_jitter_stays_within_its_bound_on_the_anchors_grid() -> None:
    trigger = PhaseKeeping(1.0, 0.05)
    for _ in range(50):
        trigger.anchor = T0
        fire = trigger.get_next_fire_time(T0, T0 + timedelta(seconds=0.5))
        assert fire is not None
        assert T0 + timedelta(seconds=1) <= fire <= T0 + timedelta(seconds=1.05)
