"""Leaf: the only place that reads the time or sleeps. Swappable in tests.

Every stage that waits (limiter admission, backoff sleeps) goes through a
:class:`Clock`. Production code uses :data:`SYSTEM_CLOCK`;
``ratelimit_sdk.testing.FakeClock`` moves time by hand so limiter and retry
tests are exact and instant.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """Where the SDK gets the time and how it waits.

    Implementations must be safe to share across threads.
    """

    def monotonic(self) -> float:
        """Seconds on a monotonic clock (only differences matter)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (for HTTP dates and reset headers)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    def wait(self, cond: threading.Condition, timeout: float | None) -> bool:
        """Wait on ``cond`` (whose lock the caller holds) for at most ``timeout`` seconds.

        ``None`` waits until notified. Returns ``False`` on timeout.
        """
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, ``time.sleep``. Thread-safe."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` (nothing for zero or less)."""
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, cond: threading.Condition, timeout: float | None) -> bool:
        """Wait on the condition with the real clock."""
        return cond.wait(timeout)

    def __repr__(self) -> str:
        return "SystemClock()"


#: The process-wide real clock; the default everywhere.
SYSTEM_CLOCK: Clock = SystemClock()
