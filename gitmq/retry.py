"""How a consumer retries a failing handler before dead-lettering."""

from __future__ import annotations

from dataclasses import dataclass

from gitmq.errors import UsageError


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
