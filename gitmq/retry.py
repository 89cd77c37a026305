"""How a consumer retries a failing handler before dead-lettering."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from gitmq.errors import UsageError

log = logging.getLogger("gitmq.consumer")


class Stopped(Exception):
    """The consumer was stopped while waiting to retry."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: the first attempt at once, then ``initial_delay``
    doubling up to ``max_delay``."""

    max_attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError(f"retry max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise UsageError("retry delays must not be negative")
        if self.multiplier < 1:
            raise UsageError(f"retry multiplier must be at least 1, got {self.multiplier}")

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (1-based)."""
        if attempt <= 1:
            return 0.0
        return min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 2))


def call_with_retries(
    call: Callable[[], object], policy: RetryPolicy, wait: Callable[[float], bool], what: str
) -> str | None:
    """Call ``call`` until it returns (None) or every attempt of ``policy`` failed
    (the last error, ``Type: message``); ``wait(seconds)`` sleeps before each retry
    and returns True to stop (then :class:`Stopped`). ``what`` names the call in the
    log ("consumer X: handler failed on ID")."""
    error = ""
    for attempt in range(1, policy.max_attempts + 1):
        if attempt > 1 and wait(policy.delay_before(attempt)):
            raise Stopped
        try:
            call()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("%s (attempt %d/%d): %s", what, attempt, policy.max_attempts, error)
            log.debug("%s", traceback.format_exc())
            continue
        return None
    return error
