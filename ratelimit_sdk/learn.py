"""Stage 3c: learn a provider's limits that are configured as ``"auto"``.

A :class:`Learner` watches one provider's answers and sets the limits of its
limiter (through ``limiter.update``, so with Redis every process sharing the key
uses the learned value). It reads the value in force (``limiter.limits()``)
before each change, so processes sharing a key adjust one value instead of
fighting over it. Pure apart from that: the clock comes in, nothing sleeps, and
every rule is a small table (see tests/test_learn.py).

``max_concurrent="auto"`` (AIMD on the concurrency limit):

- A *round* is ``limit`` successful answers. A round that reached the limit
  (some admission found the limiter full or had to wait) and saw no concurrency
  refusal raises the limit: doubled before the first refusal (slow start), then
  by 1.
- A concurrency refusal halves the limit (rounded down, at least
  ``auto.min_concurrent``) and remembers the refused value as the *ceiling*.
  The requests already in flight above the new limit may be refused too; those
  refusals do not lower it again.
- The limit climbs back to one below the ceiling as usual; the ceiling itself is
  tried again only after ``2**k`` clean rounds just below it, ``k`` being the
  refusals seen at the ceiling. So a learned limit stops producing 429s: the
  probes become exponentially rarer. A clean round at the ceiling lifts it (the
  server allows more now).

``requests_per_minute="auto"`` and ``tokens_per_minute="auto"``:

- A declared limit (``x-ratelimit-limit-requests|tokens``,
  ``anthropic-ratelimit-requests|tokens-limit``) is adopted as it is, clamped to
  the bounds. A configured burst is kept; without one the burst becomes the
  smallest that absorbs the jitter allowance, ``1 + ceil(rate * margin)`` (2 up
  to 50 per second): a burst of 1 would pay the allowance on every request
  (1.2x at 10 per second), and the declared bucket holds a whole minute, so two
  at once never run ahead of it unless it is nearly empty, which its
  ``remaining 0`` answers say (a cooldown until the reset). ``remaining`` itself
  never widens the burst further: one count says nothing about the next minute
  (other clients share the account).
- Without headers, the request rate is learned from rate-limit refusals (AIMD,
  as the adaptive token buckets of arXiv 2510.04516): a refusal multiplies the
  rate by ``RATE_DECREASE`` (once per overshoot: a request admitted before the
  last lowering lowers nothing again); every ``INCREASE_EVERY`` seconds that
  were saturated and clean add ``RATE_INCREASE`` times the rate of the last
  decrease. Uncoordinated
  processes converge on shares of the server's limit. The token budget is only
  adopted from headers (a token refusal cannot be told from a request one).

An explicit number in the configuration is never changed, and a learned value
never leaves ``[auto.min_*, auto.max_*]``, whatever a server's header claims.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._redact import get_logger
from .classify import declared_limits
from .clock import Clock
from .config import AUTO, AutoLimits, LimitsConfig
from .models import LimitKind

__all__ = [
    "CONCURRENCY_DECREASE",
    "INCREASE_EVERY",
    "RATE_DECREASE",
    "RATE_INCREASE",
    "Learner",
    "LimitTarget",
    "learner_for",
]

_log = get_logger("ratelimit_sdk.learn")

#: A concurrency refusal multiplies the limit by this (rounded down).
CONCURRENCY_DECREASE = 0.5
#: A rate refusal multiplies the learned requests per minute by this.
RATE_DECREASE = 0.8
#: Each clean, saturated interval adds this fraction of the rate of the last decrease.
RATE_INCREASE = 0.03
#: Seconds per additive increase of the learned rate.
INCREASE_EVERY = 1.0
#: Shortest hold after a rate decrease (seconds) during which refusals lower it no more.
MIN_RATE_HOLD = 0.5


class LimitTarget(Protocol):
    """What a learner sets: a :class:`~ratelimit_sdk.limiter.Limiter` (or a test double)."""

    def limits(self) -> dict[str, Any]:
        """The limits in force now, as keywords."""
        ...

    def update(self, **limits: Any) -> None:
        """Set limits."""
        ...


@dataclass(slots=True)
class _Concurrency:
    """The state of a learned concurrency limit."""

    low: int
    high: int
    value: int
    slow_start: bool = True
    done: int = 0  # successes in this round
    saturated: bool = False  # this round reached the limit
    refused: bool = False  # this round saw a concurrency refusal
    ceiling: int | None = None  # the value last refused
    refusals_at_ceiling: int = 0
    rounds_below: int = 0  # clean rounds just below the ceiling since the last probe
    hold: int = 0  # refusals still expected from requests admitted above the new limit
    lowered_at: float = -math.inf


@dataclass(slots=True)
class _Rate:
    """The state of a learned request rate (requests per minute)."""

    low: float
    high: float
    value: float
    reference: float  # the rate at the last decrease (the additive step's base)
    since: float  # when the current increase interval began
    saturated: bool = False
    declared: bool = False  # a header named the limit: adopted, not learned
    held_until: float = -math.inf
    lowered_at: float = -math.inf


class Learner:
    """Learns the ``"auto"`` limits of one provider and sets them on its limiter. Thread-safe.

    Feed it every answer: :meth:`succeeded` (with whether the limiter was full or
    the admission waited), :meth:`refused` (with the verdict's ``limit``) and
    :meth:`observe` (the answer's headers). :meth:`learned` is what is in force.
    ``on_change(field, old, new)`` runs after each change (it is also logged at INFO).
    """

    def __init__(
        self,
        target: LimitTarget,
        limits: LimitsConfig,
        *,
        clock: Clock,
        name: str = "",
        on_change: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self._target = target
        self._clock = clock
        self._name = name
        self._on_change = on_change
        self._lock = threading.Lock()
        auto: AutoLimits = limits.auto
        now = clock.monotonic()
        current = target.limits()
        self._conc: _Concurrency | None = None
        self._rate: _Rate | None = None
        self._tpm: tuple[float, float] | None = None
        if limits.max_concurrent == AUTO:
            value = _int_or(current.get("max_concurrent"), auto.first_concurrent())
            self._conc = _Concurrency(auto.min_concurrent, auto.max_concurrent, value)
            # A value other than the start was learned already (another process, a reload):
            # grow from it by one, never by doubling.
            self._conc.slow_start = value == auto.first_concurrent()
        if limits.requests_per_minute == AUTO:
            rpm = _float_or(current.get("requests_per_minute"), auto.first_rpm())
            self._rate = _Rate(auto.min_rpm, auto.max_rpm, rpm, reference=rpm, since=now)
        if limits.tokens_per_minute == AUTO:
            self._tpm = (auto.min_tpm, auto.max_tpm)
        # A declared rate gets the smallest burst that absorbs the jitter allowance (a
        # burst of 1 pays the allowance on every request), unless one is configured.
        self._margin = limits.safety_margin if limits.burst is None else None

    # -- what the guard feeds ---------------------------------------------------------------

    def succeeded(self, saturated: bool, rate_saturated: bool | None = None) -> None:
        """One successful answer.

        ``saturated``: the concurrency limit was reached when it was admitted (the
        limiter was full, or the admission waited for a release).
        ``rate_saturated``: the admission waited for the request rate (``None``: as
        ``saturated``). Only limits that were reached may grow.
        """
        rated = saturated if rate_saturated is None else rate_saturated
        with self._lock:
            if self._conc is not None:
                self._conc_success(self._conc, saturated)
            if self._rate is not None:
                self._rate_success(self._rate, rated)

    def refused(self, kind: LimitKind | None, admitted: float | None = None) -> bool:
        """A rate-limit refusal naming ``kind``; True if it was taken as a lesson.

        ``admitted``: when the refused request was admitted (the clock's monotonic
        seconds); a request admitted before the last lowering is old news and
        lowers nothing again (without it, a short hold after each lowering does).

        True for a concurrency refusal with a learned concurrency limit (lowered,
        or expected from a request admitted before the last lowering: either way
        the lower limit does the pacing, no cooldown is needed), and for a rate
        refusal with a learned rate. False when the limit was already at its
        lower bound, or nothing here learns that kind.
        """
        with self._lock:
            if kind == "concurrency" and self._conc is not None:
                return self._conc_refused(self._conc, admitted)
            if kind == "rate" and self._rate is not None and not self._rate.declared:
                return self._rate_refused(self._rate, admitted)
            return False

    def observe(self, headers: Mapping[str, str]) -> None:
        """Adopt the request and token limits ``headers`` declare (clamped to the bounds)."""
        if self._rate is None and self._tpm is None:
            return
        declared = declared_limits(headers, self._clock.time())
        if not declared:
            return
        with self._lock:
            requests = declared.get("requests")
            if requests is not None and self._rate is not None:
                rate = self._rate
                rate.declared = True
                rate.value = _clamp(requests[0], rate.low, rate.high)
                self._set("requests_per_minute", rate.value)
                if self._margin is not None:
                    self._set("burst", 1 + math.ceil(rate.value / 60.0 * self._margin - 1e-9))
            tokens = declared.get("tokens")
            if tokens is not None and self._tpm is not None:
                self._set("tokens_per_minute", _clamp(tokens[0], *self._tpm))

    @property
    def learns_rate(self) -> bool:
        """True while the request rate is learned from refusals (``"auto"``, no header yet).

        A rate refusal is then the rate's lesson, never the jitter allowance's.
        """
        rate = self._rate
        return rate is not None and not rate.declared

    def learned(self) -> dict[str, float]:
        """The learned limits in force now (as the limiter reports them)."""
        current = self._target.limits()
        out: dict[str, float] = {}
        for field, on in (
            ("max_concurrent", self._conc is not None),
            ("requests_per_minute", self._rate is not None),
            ("tokens_per_minute", self._tpm is not None),
        ):
            value = current.get(field)
            if on and value is not None:
                out[field] = int(value) if field == "max_concurrent" else float(value)
        return out

    # -- concurrency --------------------------------------------------------------------

    def _conc_success(self, c: _Concurrency, saturated: bool) -> None:
        c.value = _int_or(self._target.limits().get("max_concurrent"), c.value)
        c.done += 1
        c.saturated = c.saturated or saturated
        if c.done < c.value:
            return
        clean = c.saturated and not c.refused
        c.done, c.saturated, c.refused, c.hold = 0, False, False, 0
        if not clean:
            return
        if c.ceiling is not None and c.value >= c.ceiling:
            c.ceiling, c.refusals_at_ceiling = None, 0  # the server allows the ceiling now
        target = min(c.high, c.value * 2 if c.slow_start else c.value + 1)
        if c.ceiling is not None and target >= c.ceiling:
            if c.value == c.ceiling - 1:
                c.rounds_below += 1
            if c.rounds_below >= 2**c.refusals_at_ceiling:
                target, c.rounds_below = c.ceiling, 0
            else:
                target = c.ceiling - 1
        if target != c.value:
            c.value = target
            self._set("max_concurrent", target)

    def _conc_refused(self, c: _Concurrency, admitted: float | None) -> bool:
        c.value = _int_or(self._target.limits().get("max_concurrent"), c.value)
        if admitted is not None and admitted < c.lowered_at:
            return True  # admitted above the limit before it was lowered
        if admitted is None and c.hold > 0:
            c.hold -= 1
            return True
        refused_at = c.value
        if c.ceiling == refused_at:
            c.refusals_at_ceiling += 1
        elif c.ceiling is None or refused_at < c.ceiling:
            c.ceiling, c.refusals_at_ceiling = refused_at, 1
        c.slow_start = False
        c.rounds_below = 0
        lowered = max(c.low, math.floor(refused_at * CONCURRENCY_DECREASE))
        if lowered >= refused_at:
            c.refused = True  # this round is not clean
            return False
        c.value, c.done, c.saturated, c.refused = lowered, 0, False, False  # a new round
        c.hold = max(0, refused_at - 1 - lowered)
        c.lowered_at = self._clock.monotonic()
        self._set("max_concurrent", lowered)
        return True

    # -- rate -------------------------------------------------------------------------

    def _rate_success(self, r: _Rate, saturated: bool) -> None:
        if r.declared:
            return
        now = self._clock.monotonic()
        r.value = _float_or(self._target.limits().get("requests_per_minute"), r.value)
        r.saturated = r.saturated or saturated
        if now - r.since < INCREASE_EVERY:
            return
        steps = min(10, math.floor((now - r.since) / INCREASE_EVERY))
        grow = r.saturated
        r.since, r.saturated = now, False
        if not grow or r.value >= r.high:
            return
        r.value = min(r.high, r.value + steps * RATE_INCREASE * r.reference)
        self._set("requests_per_minute", r.value)

    def _rate_refused(self, r: _Rate, admitted: float | None) -> bool:
        now = self._clock.monotonic()
        r.value = _float_or(self._target.limits().get("requests_per_minute"), r.value)
        r.since, r.saturated = now, False  # this interval was not clean
        if admitted is not None and admitted < r.lowered_at:
            return True  # sent at the old rate: that lesson was taken
        if admitted is None and now < r.held_until:
            return True
        r.reference = r.value
        lowered = max(r.low, r.value * RATE_DECREASE)
        r.held_until = now + max(MIN_RATE_HOLD, 2 * 60.0 / lowered)
        r.lowered_at = now
        if lowered < r.value:
            r.value = lowered
            self._set("requests_per_minute", lowered)
        return True

    # -- applying ---------------------------------------------------------------------

    def _set(self, field: str, value: float) -> None:
        """Set ``field`` on the limiter if it changes (logged at INFO, ``on_change`` told)."""
        old = self._target.limits().get(field)
        if old is not None and math.isclose(float(old), value, rel_tol=1e-9):
            return
        self._target.update(**{field: value})
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        _log.info("%s: learned %s = %s (was %s)", self._name or "limiter", field, shown, old)
        if self._on_change is not None:
            self._on_change(field, float(old) if old is not None else math.nan, float(value))


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _int_or(value: object, default: int) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return default


def _float_or(value: object, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return default


def learner_for(
    target: LimitTarget,
    limits: LimitsConfig,
    *,
    clock: Clock,
    name: str = "",
    on_change: Callable[[str, float, float], None] | None = None,
) -> Learner | None:
    """A :class:`Learner` for ``limits`` if any of them is ``"auto"``, else ``None``."""
    if not limits.auto_fields():
        return None
    return Learner(target, limits, clock=clock, name=name, on_change=on_change)
