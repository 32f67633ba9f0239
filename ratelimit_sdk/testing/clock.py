"""Test helper: a clock that moves only when told to, so limiter and retry tests are exact.

``FakeClock.sleep(s)`` and a timed ``FakeClock.wait(cond, s)`` advance the clock
by ``s`` at once and return; they also record every wait in ``sleeps``. A
``wait`` with no timeout would block forever in a single-threaded test, so it
raises :class:`WouldBlockForever` instead.

Thread-safe in the narrow sense that reads and advances are atomic; tests that
use several threads should use the real clock.
"""

from __future__ import annotations

import threading

__all__ = ["FakeClock", "WouldBlockForever"]


class WouldBlockForever(RuntimeError):
    """A fake-clock wait had no timeout: nothing could ever wake it in this test."""


class FakeClock:
    """A manual clock implementing the ``ratelimit_sdk.clock.Clock`` protocol.

    ``monotonic()`` starts at ``start``; ``time()`` is ``epoch + monotonic()``.
    ``advance(s)`` moves time forward; sleeps and timed waits advance it by their
    duration and are logged in ``sleeps`` (a list of floats).
    """

    def __init__(self, start: float = 1000.0, epoch: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._epoch = float(epoch) - float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        """The fake monotonic time, in seconds."""
        return self._now

    def time(self) -> float:
        """The fake wall-clock time (epoch seconds), moving with ``monotonic()``."""
        return self._epoch + self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (negative values are refused)."""
        if seconds < 0:
            raise ValueError(f"time cannot go backwards ({seconds!r})")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance time by it, without blocking."""
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        self.advance(seconds)

    def wait(self, cond: threading.Condition, timeout: float | None) -> bool:
        """Advance by ``timeout`` as if nobody notified; raise if there is no timeout."""
        if timeout is None:
            raise WouldBlockForever("a wait without timeout under FakeClock would never end")
        self.sleep(timeout)
        return False

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
