"""Testing (fake provider side): the fake's token bucket and limit checks. Pure arithmetic.

Time is passed in; nothing here reads a clock, sleeps or locks. The
FakeProvider's lock guards every bucket.
"""

from __future__ import annotations

import math

__all__ = ["EPSILON", "TokenBucket", "check_burst", "check_concurrency", "check_rpm"]

EPSILON = 1e-9


class TokenBucket:
    """A bucket of ``burst`` requests (it starts full) refilled at ``per_minute`` / 60 per second.

    Not thread-safe: the FakeProvider's lock guards it.
    """

    def __init__(self, per_minute: float, burst: int, now: float) -> None:
        self.per_minute = per_minute
        self.capacity = burst
        self.tokens = float(burst)
        self.stamp = now

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(float(self.capacity), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1.0 - EPSILON:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def resize(self, per_minute: float, burst: int, now: float) -> None:
        self.refill(now)
        self.per_minute = per_minute
        self.capacity = burst
        self.tokens = min(self.tokens, float(burst))

    def remaining(self) -> int:
        return math.floor(self.tokens + EPSILON)

    def wait_for_one(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def time_to_full(self) -> float:
        return max(0.0, (self.capacity - self.tokens) / self.rate)


def check_concurrency(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"max_concurrency must be an int >= 1 or None, got {value!r}")
    return value


def check_rpm(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ValueError(f"requests_per_minute must be > 0 or None, got {value!r}")
    return None if value is None else float(value)


def check_burst(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"burst must be an int >= 1 or None, got {value!r}")
    return value
