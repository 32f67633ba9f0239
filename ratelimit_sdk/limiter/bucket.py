"""Stage 3b (admission control), pure arithmetic: token bucket, spacing, cooldown.

No threads, no I/O, no clock calls: every method takes ``now`` (seconds on a
monotonic clock) as an argument, so tests are exact tables. The in-memory
limiter holds these under its lock; the Redis backend runs the same rules in Lua.
"""

from __future__ import annotations

import math

__all__ = ["EPSILON", "TokenBucket"]

#: Slack for float rounding: a bucket short by less than this counts as full enough.
#: (A wait computed as ``deficit / rate`` can land a hair short after refilling.)
EPSILON = 1e-9


class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate`` tokens per second.

    Starts full. ``level`` may go negative after :meth:`debit` (a settled
    underestimate): the debt is paid back by refill before anyone else is admitted.
    Starts in any window of length ``t`` never exceed ``capacity + rate * t``.
    ``margin``: a take that leaves a full bucket starts the refill ``margin``
    seconds later, as a remote bucket whose clock starts when the request arrives
    would; it costs ``margin`` once per burst. Not thread-safe: the owner
    serializes access.
    """

    __slots__ = ("capacity", "level", "margin", "rate", "stamp")

    def __init__(self, rate: float, capacity: float, now: float, margin: float = 0.0) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive finite number, got {rate!r}")
        if not (capacity > 0 and math.isfinite(capacity)):
            raise ValueError(f"capacity must be a positive finite number, got {capacity!r}")
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now
        self.margin = margin

    def refill(self, now: float) -> None:
        """Add what accrued since the last refill, up to ``capacity``.

        Level and stamp move together: an exception between the two stores (an
        interrupt) makes both again, so the same interval is never credited twice.
        """
        elapsed = now - self.stamp
        if elapsed > 0:
            level = min(self.capacity, self.level + elapsed * self.rate)
            try:
                self.level = level
                self.stamp = now
            except BaseException:
                self.level = level
                self.stamp = now
                raise

    def delay(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` tokens are there (0.0: now)."""
        self.refill(now)
        deficit = amount - self.level
        if deficit <= EPSILON:
            return 0.0
        return max(0.0, self.stamp - now) + deficit / self.rate

    def take(self, amount: float, now: float | None = None) -> None:
        """Remove ``amount`` tokens (call :meth:`delay` first; may leave a tiny negative).

        Taking from a full bucket at ``now`` with a ``margin`` starts the refill
        ``margin`` seconds later (see the class docstring).
        """
        if (
            self.margin
            and now is not None
            and self.stamp <= now
            and self.level >= self.capacity - EPSILON
        ):
            self.stamp = now + self.margin
        self.level -= amount

    def give(self, amount: float) -> None:
        """Return ``amount`` tokens (a refund), never above ``capacity``."""
        self.level = min(self.capacity, self.level + amount)

    def debit(self, amount: float) -> None:
        """Charge ``amount`` more tokens after the fact; the level may go negative."""
        self.level -= amount

    def reconfigure(self, rate: float, capacity: float, now: float) -> None:
        """Change rate and capacity at ``now``, keeping what accrued under the old rate."""
        self.refill(now)
        self.rate = rate
        self.capacity = capacity
        self.level = min(self.level, capacity)

    def copy(self) -> TokenBucket:
        """A bucket in the same state (to reconfigure without touching this one)."""
        new = TokenBucket(self.rate, self.capacity, self.stamp, margin=self.margin)
        new.level = self.level
        return new

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (without changing state)."""
        elapsed = max(0.0, now - self.stamp)
        return min(self.capacity, self.level + elapsed * self.rate)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, capacity={self.capacity!r}, level={self.level!r})"
