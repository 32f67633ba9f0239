"""Stage 3b (admission control), pure arithmetic: token bucket, spacing, jitter allowance.

No threads, no I/O, no clock calls: every method takes ``now`` (seconds on a
monotonic clock) as an argument, so tests are exact tables. The in-memory
limiter holds these under its lock; the Redis backend runs the same rules in Lua.

The jitter allowance
--------------------
A request we admit at ``t`` reaches the server's limiter at some ``t + d``, with
``d`` anywhere in ``[0, J]`` (thread wake-up, the GIL, building the request, a
new connection). Requests admitted in an interval of length ``s`` can then
arrive within ``s - J``; for the server's bucket (``B`` tokens, ``r`` per
second) to hold whatever the delays, ``n`` admissions in any interval of length
``s`` must satisfy ``n <= B + r * max(0, s - J)``.

We keep that in GCRA form (the generic cell rate algorithm): each admission
is assumed to reach the server as late as possible when it *updates* the
server's state, and as early as possible when it is *tested* against it. In
the level form :class:`TokenBucket` stores, a take at ``now`` from a bucket
within ``r * J`` of full (not only an exactly full one) pauses the refill until
the level is where the server's would be once the request arrived late: a
pause of ``(level - (B - r*J)) / r``, at most ``J``. The tokens themselves
come off at once, so a burst from a full bucket still goes out whole. Cost:

* ``B - 1 >= r * J`` (a burst of two or more at the usual 20 ms): nothing in a
  steady stream at the full rate; ``J`` once per burst from a full bucket (the
  ``B`` go at once, the next one waits ``J`` longer than it would).
* A one-token bucket (``B = 1``) or a spacing (``min_interval``) has no slack to
  absorb ``J``: every request pays it. The allowance applied there is capped at
  :data:`STEADY_COST` of the interval (``min(J, 0.2 / r)``; 5 ms at 40 per
  second, so at most 1.2x the optimum) and grows only when the server refuses a
  paced request (:class:`JitterAllowance`). Most of the delay is measured rather
  than guessed: a request that leaves our process later than its allowance (it
  waited for the GIL, say) moves the next ones back (``Permit.mark_sent``,
  called by the transport once the request is written), so the allowance only
  has to cover the way from our socket to the server's limiter. (A tenth of the
  interval was not enough for that against nginx on 2 loaded cores: 1-2 429s per
  400 requests, each widening the allowance for the rest of the run.)
"""

from __future__ import annotations

import math

__all__ = [
    "COLD_FACTOR",
    "DEFAULT_MARGIN",
    "EPSILON",
    "GROWTH",
    "HALF_LIFE",
    "IDLE_COLD",
    "MAX_ALLOWANCE",
    "STEADY_COST",
    "JitterAllowance",
    "TokenBucket",
    "limit_top",
]

#: Slack for float rounding: a bucket short by less than this counts as full enough.
#: (A wait computed as ``deficit / rate`` can land a hair short after refilling.)
EPSILON = 1e-9

#: The jitter allowance (seconds) every limiter starts with: the ``Client``'s
#: ``LimitsConfig.safety_margin`` default, and the standalone ``Limiter``'s and
#: ``RateLimitAdapter``'s too.
DEFAULT_MARGIN = 0.02

#: Where a limit has no slack to absorb the allowance (a one-token bucket, a
#: spacing), the allowance is capped at this fraction of its interval, the most
#: it may cost per request in a steady stream until the server says otherwise.
STEADY_COST = 0.2

#: A cold admission (the first ones after start-up, or after :data:`IDLE_COLD`
#: seconds with nothing admitted, before any request has come back) gets this many
#: times the margin on top: new connections, TLS and first-use imports. The official
#: ``openai`` client took 25-33 ms from admission to arrival on its first burst.
COLD_FACTOR = 3.0

#: Seconds without an admission after which the limiter counts as cold again
#: (keep-alive connections may be gone).
IDLE_COLD = 30.0

#: How an overrun widens the allowance: ``extra = extra * GROWTH[0] + max(GROWTH[1],
#: margin * GROWTH[2])`` seconds.
GROWTH = (1.5, 0.002, 0.25)

#: Seconds for a grown allowance to shrink halfway back to the margin.
HALF_LIFE = 600.0

#: The widest allowance growth can reach, seconds.
MAX_ALLOWANCE = 1.0


def limit_top(interval: float, slack: float) -> float:
    """The widest margin (seconds) one limit absorbs: its ``slack`` plus :data:`STEADY_COST`.

    ``interval``: seconds per unit of the limit (``1 / rate``, or the spacing);
    ``slack``: seconds of burst it holds beyond one unit (``(B - 1) / rate``; 0 for
    a spacing).
    """
    return slack + STEADY_COST * interval


class JitterAllowance:
    """What overruns added to one limiter's allowance ``J``, on top of its margin.

    ``extra``: seconds added by :meth:`grow` (a server refused a paced request),
    halving every :data:`HALF_LIFE` seconds from ``stamp``. :meth:`for_limit`
    gives the allowance one admission applies to one limit (see the module
    docstring). The margin itself is the limiter's (passed in), so a hot change
    of it needs nothing here. Not thread-safe: the owner serializes access.
    """

    __slots__ = ("extra", "stamp")

    def __init__(self) -> None:
        self.extra = 0.0
        self.stamp = 0.0

    def extra_at(self, now: float) -> float:
        """The grown part of the allowance at ``now`` (decayed since the last growth)."""
        if not self.extra:
            return 0.0
        return float(self.extra * 0.5 ** (max(0.0, now - self.stamp) / HALF_LIFE))

    def grow(self, margin: float, now: float) -> float:
        """Widen the allowance after an overrun; returns the new grown part (seconds)."""
        factor, floor, share = GROWTH
        extra = min(MAX_ALLOWANCE, self.extra_at(now) * factor + max(floor, margin * share))
        self.extra, self.stamp = extra, now
        return extra

    def for_limit(
        self, margin: float, interval: float, slack: float, now: float, cold: bool
    ) -> float:
        """The allowance (seconds) an admission at ``now`` applies to one limit.

        ``interval``: seconds per unit of the limit (``1 / rate``, or the
        spacing); ``slack``: seconds of burst the limit holds beyond one unit
        (``(B - 1) / rate``; 0 for a spacing). The margin is capped where the
        limit cannot absorb it (:data:`STEADY_COST`), its cold share with it; the
        grown part is not (the provider asked for it).
        """
        j = margin * (1.0 + COLD_FACTOR) if cold else margin
        top = limit_top(interval, slack)
        if j > top:
            j = top
        if self.extra:
            j += self.extra_at(now)
        return j

    def __repr__(self) -> str:
        return f"JitterAllowance(extra={self.extra!r}, stamp={self.stamp!r})"


class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate`` tokens per second.

    Starts full. ``level`` may go negative after :meth:`debit` (a settled
    underestimate): the debt is paid back by refill before anyone else is admitted.
    Starts in any window of length ``t`` never exceed ``capacity + rate * t``;
    with an allowance ``J`` passed to :meth:`take`, never exceed
    ``capacity + rate * max(0, t - J)`` (see the module docstring). Not
    thread-safe: the owner serializes access.
    """

    __slots__ = ("capacity", "level", "rate", "stamp", "top")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive finite number, got {rate!r}")
        if not (capacity > 0 and math.isfinite(capacity)):
            raise ValueError(f"capacity must be a positive finite number, got {capacity!r}")
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now
        #: The widest allowance (seconds) the bucket absorbs: its slack beyond one token
        #: plus :data:`STEADY_COST` of its interval (see :meth:`JitterAllowance.for_limit`).
        self.top = limit_top(1.0 / rate, max(0.0, capacity - 1.0) / rate)

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

    def take(self, amount: float, now: float, allowance: float = 0.0) -> None:
        """Remove ``amount`` tokens at ``now`` (call :meth:`delay` first; may go negative).

        ``allowance``: seconds the request may take to reach the server. If the
        bucket is within ``rate * allowance`` of full, the refill pauses until the
        level is where the server's would be after the late arrival (see the
        module docstring); ``amount`` comes off the level now.
        """
        if now > self.stamp:
            self.refill(now)
        if allowance:
            excess = self.level - (self.capacity - self.rate * allowance)
            if excess > 0:
                pause = now + excess / self.rate
                if pause > self.stamp:
                    self.stamp = pause
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
        self.top = limit_top(1.0 / rate, max(0.0, capacity - 1.0) / rate)

    def copy(self) -> TokenBucket:
        """A bucket in the same state (to reconfigure without touching this one)."""
        new = TokenBucket(self.rate, self.capacity, self.stamp)
        new.level = self.level
        return new

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (without changing state)."""
        elapsed = max(0.0, now - self.stamp)
        return min(self.capacity, self.level + elapsed * self.rate)

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate!r}, capacity={self.capacity!r}, level={self.level!r})"
