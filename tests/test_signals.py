"""Signals to the commands that run until stopped: ``gitmq node``, ``gitmq consume`` and
the gem's ``gitmq-consume``, each a real process.

Whatever the mix of SIGTERM and SIGINT, the first one stops the command cleanly (exit 0,
every message published before it delivered exactly once, now or by the next run, and
for a node pushed to the remote), and a second SIGINT ends it at once with status 130.
A signal handler that took a lock once deadlocked a command that got two signals.
"""

from __future__ import annotations

import fcntl
import signal
import subprocess
import termios
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from nodes import Cluster, TestNode, assert_landed_once
from util import (
    GITMQ,
    GITMQ_CONSUME,
    gitmq,
    kill_all,
    lines_of,
    ok,
    rev_parse,
    start,
    stop,
    wait_for,
)

TERM, INT = signal.SIGTERM, signal.SIGINT
EXIT_WITHIN = 10.0  # seconds from the signals to the exit, in every case
FORCED_LINE = "gitmq: second interrupt, exiting now"


def numbered(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


def publish_lines(storage: Path, payloads: Sequence[str]) -> None:
    """Publish ``payloads`` to ``orders`` with one ``gitmq publish --lines``."""
    ok(
        gitmq(
            "publish",
            storage,
            "orders",
            "--lines",
            input="".join(p + "\n" for p in payloads).encode(),
        )
    )


def signal_delivered(proc: subprocess.Popen[bytes], sig: int) -> bool:
    """Whether ``sig`` is no longer pending for ``proc``. POSIX does not queue a signal
    that is already pending: two SIGINTs sent back to back often arrive as one."""
    mask = 1 << (sig - 1)
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd") and int(value, 16) & mask:
            return False
    return True


def flood(proc: subprocess.Popen[bytes], sig: int, seconds: float = EXIT_WITHIN) -> int:
    """Send ``sig`` to ``proc`` in a tight loop until it exits; its exit status."""
    deadline, sent = time.monotonic() + seconds, 0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            kill_all([proc])
            raise AssertionError(f"{proc.args} still running after {sent} signals in {seconds:g}s")
        proc.send_signal(sig)
        sent += 1
    assert sent >= 20, f"only {sent} signals were sent before it exited"
    return proc.returncode


class ConsumeRun:
    """``gitmq consume PATH orders billing`` or ``gitmq-consume PATH orders billing``,
    its stdout in a file that the test reads while it runs. (``NodeRun`` has the same
    methods.)"""

    backlog = 2000  # messages that take it a while (about 0.15 s) to print

    def __init__(self, command: Sequence[str], tmp_path: Path) -> None:
        self.command = command
        self.storage = tmp_path / "q"
        self.out = tmp_path / "consume.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def publish(self, payloads: Sequence[str]) -> None:
        publish_lines(self.storage, payloads)

    def start(self) -> subprocess.Popen[bytes]:
        with self.out.open("wb") as out:
            self.proc = start([*self.command, self.storage, "orders", "billing"], stdout=out)
        return self.proc

    def delivered(self) -> list[str]:
        return lines_of(self.out)

    def stop(self, sig: int) -> int:
        assert self.proc is not None
        return stop(self.proc, sig, timeout=EXIT_WITHIN)

    def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def assert_stopped_cleanly(self) -> None:
        assert self.stderr() == ""

    def assert_forced_out(self) -> None:
        assert self.stderr() == FORCED_LINE + "\n"

    def assert_nothing_lost(self, payloads: list[str]) -> None:
        """What it printed comes first, in order; the next run prints exactly the rest."""
        printed = self.delivered()
        assert printed == payloads[: len(printed)]
        rest = ok(gitmq("consume", "--drain", self.storage, "orders", "billing")).out
        assert rest.splitlines() == payloads[len(printed) :]

    def start_stuck(self) -> subprocess.Popen[bytes]:
        """Start it printing a message bigger than a pipe into a pipe nobody reads: the
        handler cannot return, so a clean shutdown cannot end."""
        self.publish(["x" * (1 << 18)])
        proc = self.proc = start([*self.command, self.storage, "orders", "billing"])
        wait_for(lambda: _pipe_bytes(proc) > 0, what="the message half printed", procs=[proc])
        return proc

    def acked(self) -> str | None:
        return rev_parse(self.storage, "refs/tags/billing")


def _pipe_bytes(proc: subprocess.Popen[bytes]) -> int:
    """How many bytes ``proc`` wrote into its stdout pipe that nobody has read."""
    assert proc.stdout is not None
    return int.from_bytes(fcntl.ioctl(proc.stdout, termios.FIONREAD, b"\0" * 4), "little")


class NodeRun:
    """``gitmq node --config FILE`` with the consumer ``billing``, syncing with ``central``
    only when it starts and when it stops (so the stop must push what is pending)."""

    backlog = 100  # a shell per message: about 0.5 s of handlers

    def __init__(self, cluster: Cluster, central: Path) -> None:
        self.cluster = cluster
        self.central = central
        self.node: TestNode = cluster.node("a", ["billing"], interval="1h")
        self.proc: subprocess.Popen[bytes] | None = None

    def publish(self, payloads: Sequence[str]) -> None:
        publish_lines(self.node.storage, payloads)

    def start(self) -> subprocess.Popen[bytes]:
        self.proc = self.node.start()
        return self.proc

    def delivered(self) -> list[str]:
        return self.node.payloads("billing")

    def stop(self, sig: int) -> int:
        return self.node.stop(sig, timeout=EXIT_WITHIN)

    def stderr(self) -> str:
        return self.node.log_text()

    def assert_stopped_cleanly(self) -> None:
        assert self.stderr().splitlines()[-1].endswith("node a stopped"), self.stderr()

    def assert_forced_out(self) -> None:
        """The line is there (the node's other threads may still log around it)."""
        assert FORCED_LINE in self.stderr().splitlines(), self.stderr()

    def assert_nothing_lost(self, payloads: list[str]) -> None:
        """All reached the remote; the consumer got the first ones, and the next run
        exactly the rest."""
        assert_landed_once(self.central, "orders", payloads)
        recorded = self.delivered()
        assert recorded == payloads[: len(recorded)]
        ok(self.node.once())
        assert self.delivered() == payloads

    def start_stuck(self) -> subprocess.Popen[bytes]:
        """Start it with a handler that runs for as long as the node does."""
        inside = self.node.dir / "inside"
        wait = 'touch "$0"; while kill -0 "$PPID" 2>/dev/null; do sleep 0.05; done'
        handler = {"command": ["/bin/sh", "-c", wait, str(inside)]}
        self.node = self.cluster.node(
            "a",
            interval="1h",
            extra={"consumers": {"billing": {"queue": "orders", "handler": handler}}},
        )
        self.publish(["stuck"])
        proc = self.start()
        wait_for(inside.exists, what="the handler to start", procs=[proc])
        return proc

    def acked(self) -> str | None:
        return rev_parse(self.node.storage, "refs/tags/billing")


Run = ConsumeRun | NodeRun


@pytest.fixture(params=["node", "consume", "gitmq-consume"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Run]:
    subject: Run
    if request.param == "node":
        subject = NodeRun(request.getfixturevalue("cluster"), request.getfixturevalue("central"))
    elif request.param == "consume":
        subject = ConsumeRun([*GITMQ, "consume"], tmp_path)
    else:
        subject = ConsumeRun(GITMQ_CONSUME, tmp_path)
    yield subject
    if subject.proc is not None:
        kill_all([subject.proc])


def send(run: Run, *sigs: int) -> int:
    """Send ``sigs`` back to back, then wait for the exit (failing after EXIT_WITHIN)."""
    assert run.proc is not None
    for sig in sigs[:-1]:
        run.proc.send_signal(sig)
    return run.stop(sigs[-1])


def start_delivering(run: Run, payloads: list[str]) -> None:
    """Start with ``payloads`` pending and wait for the first to be delivered."""
    run.publish(payloads)
    proc = run.start()
    wait_for(run.delivered, what="the first message delivered", procs=[proc])


@pytest.mark.parametrize(
    "sigs", [(TERM, TERM), (INT, TERM), (TERM, INT)], ids=["TERM-TERM", "INT-TERM", "TERM-INT"]
)
def test_two_signals_stop_cleanly_and_lose_nothing(run: Run, sigs: tuple[int, int]) -> None:
    early, late = numbered("m", 3), numbered("late", 2)
    start_delivering(run, early)
    run.publish(late)  # the signals may land before these are delivered, or during
    assert send(run, *sigs) == 0
    run.assert_stopped_cleanly()
    run.assert_nothing_lost(early + late)


def test_a_second_sigint_exits_130_at_once(run: Run) -> None:
    """Even while a handler keeps the clean shutdown from ending."""
    proc = run.start_stuck()
    proc.send_signal(INT)
    wait_for(lambda: signal_delivered(proc, INT), what="the first SIGINT delivered", procs=[proc])
    assert run.stop(INT) == 130
    run.assert_forced_out()
    assert run.acked() is None  # the message in the handler is delivered again next time


def test_sigterms_sent_without_pause_until_it_exits_still_exit_0(run: Run) -> None:
    """Signals keep coming during the whole shutdown, also while the interpreter exits."""
    payloads = numbered("m", run.backlog)
    start_delivering(run, payloads)
    assert run.proc is not None
    assert flood(run.proc, TERM) == 0
    run.assert_stopped_cleanly()
    run.assert_nothing_lost(payloads)
