"""SIGTERM and SIGINT ask a command's loop to stop; the signal handler itself does nothing.

What the commands that run until stopped (``gitmq consume``, ``gitmq-consume``,
``gitmq node``) do on signals:

- the first SIGTERM or SIGINT starts the clean shutdown: running handlers get
  up to 30 s to finish, a node pushes what is pending, and the command exits 0
  (``gitmq node --once`` just finishes its pass);
- further SIGTERMs change nothing (GNU ``timeout`` and service managers may
  send more than one);
- a second SIGINT, whatever came between (an operator pressing Ctrl-C twice),
  exits at once: one line on stderr, exit status 130, without waiting for
  handlers or pushing. Messages are not lost: a message whose handler had not
  returned is delivered again by the next run;
- once the command has returned, both are ignored while the interpreter exits
  (it would restore their default actions, and a late SIGTERM would turn exit
  0 into death by signal).

Why the handler does nothing: a Python signal handler runs in the main thread
between two bytecodes, possibly while that thread holds a lock, for instance
the one inside ``threading.Event.wait``. A handler that took a lock (set an
event, logged, printed) could deadlock the process; a second signal during the
first shutdown did exactly that. So the handler is a no-op, and the counting
happens on a thread of its own: installing a handler makes Python's C-level
handler write each signal's number to the wakeup pipe (``signal.set_wakeup_fd``),
from whichever thread the signal lands on and even while the main thread is
blocked, and the watcher thread reads that pipe. It is an ordinary thread, so
it may set an event, and it can force the exit at once.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from types import FrameType

from gitmq.cli.errors import EXIT_INTERRUPTED

FORCED_EXIT_LINE = b"gitmq: second interrupt, exiting now\n"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalStop:
    """Set by the first SIGTERM or SIGINT; a second SIGINT ends the process at once.

    Create it once, in the main thread, before the work starts: it replaces the
    process's SIGTERM and SIGINT handlers and its signal wakeup fd.
    """

    def __init__(self) -> None:
        self.interrupts = 0  # SIGINTs so far
        self._stop = threading.Event()
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # the C-level handler must never block
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        watcher = threading.Thread(
            target=self._watch, args=(read_fd,), name="gitmq-signals", daemon=True
        )
        watcher.start()
        for signum in STOP_SIGNALS:
            signal.signal(signum, _ignore)
        atexit.register(_ignore_while_exiting)

    def is_set(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Like ``threading.Event.wait``: True once a signal asked to stop."""
        return self._stop.wait(timeout)

    def _watch(self, read_fd: int) -> None:
        while True:
            for signum in os.read(read_fd, 4096):
                self._record(signum)

    def _record(self, signum: int) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= 2:
                with contextlib.suppress(OSError):
                    os.write(2, FORCED_EXIT_LINE)
                os._exit(EXIT_INTERRUPTED)
        if signum in STOP_SIGNALS:
            self._stop.set()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the wakeup pipe already carries the signal to the watcher."""


def _ignore_while_exiting() -> None:
    """An atexit hook: the interpreter leaves ignored signals ignored as it shuts down."""
    sys.unraisablehook = _quiet_about_late_signals
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _quiet_about_late_signals(unraisable: sys.UnraisableHookArgs) -> None:
    """A signal that arrived just as its handler became SIG_IGN makes Python print
    "OSError: Signal 15 ignored due to race condition" with a traceback (bpo-43406):
    ignoring it is what we asked for, so say nothing; anything else as usual."""
    if isinstance(unraisable.exc_value, OSError) and "ignored due to race condition" in str(
        unraisable.exc_value
    ):
        return
    sys.__unraisablehook__(unraisable)
