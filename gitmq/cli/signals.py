"""Signals only set a flag: SIGTERM and SIGINT ask a loop to stop cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType


def stop_event_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets (a second SIGINT interrupts at once)."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and event.is_set():
            raise KeyboardInterrupt
        event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return event
