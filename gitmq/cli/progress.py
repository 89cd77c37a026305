"""What a command shows an operator at a terminal: progress bars and confirmations.

Both are for people, never for scripts. A progress bar is drawn on stderr only
when stderr is a terminal and ``--quiet`` is not given, so piped or logged
output stays exactly what it was. A destructive command asks before it acts
only when stdin is a terminal; without one it refuses unless ``--yes`` was
given, since nobody could have answered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from gitmq.errors import UsageError

#: A smaller backlog is caught up before a bar would be worth drawing.
BACKLOG_MIN = 100


class Advance(Protocol):
    def __call__(self, steps: int = 1) -> None: ...


def wanted(quiet: bool) -> bool:
    """Whether to draw a progress bar: stderr is a terminal and no ``--quiet``."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress(what: str, total: int | None, *, quiet: bool = False) -> Iterator[Advance]:
    """A bar of ``total`` steps (a spinner and a count when the total is unknown);
    yields the function that advances it. Does nothing when not :func:`wanted`."""
    if not wanted(quiet):
        yield nothing
        return
    with _drawn(total) as bar:
        task = bar.add_task(what, total=total)
        yield lambda steps=1: bar.advance(task, steps)


@contextmanager
def backlog(what: str, total: int, *, quiet: bool = False) -> Iterator[Advance]:
    """A bar over a backlog of ``total`` messages that goes once they are done: a
    consumer catching up goes on consuming after it (advanced from any thread)."""
    if total < BACKLOG_MIN or not wanted(quiet):
        yield nothing
        return
    with _drawn(total) as bar:
        task = bar.add_task(what, total=total)

        def advance(steps: int = 1) -> None:
            bar.advance(task, steps)
            if bar.finished:
                bar.stop()  # transient: the bar goes, the consumer's output stays

        yield advance


@contextmanager
def stages(what: str, *, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner saying which step of ``what`` runs (a prune's phases); yields the
    function that names the current step."""
    if not wanted(quiet):
        yield lambda _step: None
        return
    with _drawn(None, counted=False) as bar:
        task = bar.add_task(what, total=None)
        yield lambda step: bar.update(task, description=f"{what}: {step}")


@contextmanager
def _drawn(total: int | None, counted: bool = True) -> Iterator[Any]:
    """A rich Progress on stderr, cleared when done (rich only when a terminal shows it)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns: tuple[Any, ...] = (SpinnerColumn(), TextColumn("{task.description}"))
    if total is not None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    elif counted:
        columns += (TextColumn("{task.completed}"),)
    console = Console(stderr=True)
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        yield bar


def nothing(steps: int = 1) -> None:
    """The advance of a progress bar that is not drawn."""


def confirm(question: str, yes: bool, refusal: str) -> bool:
    """True when the operator agreed: ``--yes``, or ``y`` typed at the terminal.

    Without a terminal on stdin and without ``--yes``: a UsageError ending with
    ``refusal`` (what was not done), so the caller changes nothing.
    """
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"{refusal}: pass --yes to confirm (stdin is not a terminal to ask on)")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")
