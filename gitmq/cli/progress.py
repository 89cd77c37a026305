"""What a command shows an operator at a terminal: progress bars and confirmations.

Both are for people, never for scripts. A progress bar is drawn on stderr only
when stderr is a terminal and ``--quiet`` is not given, so piped or logged
output stays exactly what it was. A destructive command asks before it acts
only when stdin is a terminal; without one it refuses unless ``--yes`` was
given, since nobody could have answered.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from gitmq.errors import UsageError


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
        yield _nothing
        return
    from rich.console import Console  # rich only when a terminal will show it
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed}"))
        if total is None
        else (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    )
    with Progress(
        *columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda steps=1: bar.advance(task, steps)


def _nothing(steps: int = 1) -> None:
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
