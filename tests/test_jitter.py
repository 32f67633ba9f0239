"""The jitter allowance: admissions that hold at the provider for any delay up to J.

Exact tests on an injected clock. The property tests replay the limiter's
admissions through a model of the provider's own token bucket, each delayed by
anything in ``[0, J]`` (chosen adversarially by hypothesis), and require that
the provider never refuses one.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit_sdk import Limiter, LimitsConfig
from ratelimit_sdk.limiter import MemoryLimiter
from ratelimit_sdk.limiter.bucket import (
    COLD_FACTOR,
    DEFAULT_MARGIN,
    HALF_LIFE,
    IDLE_COLD,
    STEADY_COST,
    JitterAllowance,
    TokenBucket,
)
from ratelimit_sdk.testing import FakeClock


class Recording(MemoryLimiter):
    """A memory limiter that records the time of every admission."""

    starts: list[float]

    def _take(self, units: int, tokens: int, now: float) -> None:
        super()._take(units, tokens, now)
        self.__dict__.setdefault("starts", []).append(now)


def server_refusals(arrivals: list[float], rate: float, burst: float) -> int:
    """How many of ``arrivals`` a provider's token bucket (full at first) refuses."""
    level, stamp, refused = burst, -math.inf, 0
    for t in sorted(arrivals):
        if stamp > -math.inf:
            level = min(burst, level + (t - stamp) * rate)
        stamp = t
        if level >= 1 - 1e-9:
            level -= 1
        else:
            refused += 1
    return refused


def spacing_refusals(arrivals: list[float], interval: float) -> int:
    """How many of ``arrivals`` a provider that wants ``interval`` between starts refuses."""
    last, refused = -math.inf, 0
    for t in sorted(arrivals):
        if t - last >= interval - 1e-9:
            last = t
        else:
            refused += 1
    return refused


def warm(lim: Limiter, clock: FakeClock) -> None:
    """One request that came back (the limiter is no longer cold), then a full bucket."""
    lim.acquire().release()
    clock.advance(10.0)


# -- pure arithmetic --------------------------------------------------------------------


def test_a_take_within_rate_times_j_of_full_counts_as_full() -> None:
    """The reported defect: only an exactly full bucket used to get the margin."""
    b = TokenBucket(rate=40.0, capacity=5.0, now=0.0)
    b.level = 4.5  # refilled to within rate * J (0.8) of full
    b.take(1.0, 0.0, allowance=0.02)
    assert b.level == pytest.approx(3.5)
    # the refill pauses until the level is where the provider's is after a late arrival
    assert b.stamp == pytest.approx((4.5 - (5 - 0.8)) / 40)
    assert b.available(0.02) == pytest.approx(5 - 0.8 - 1 + 0.8)
    b = TokenBucket(rate=40.0, capacity=5.0, now=0.0)
    b.level = 3.0  # further from full: the allowance changes nothing
    b.take(1.0, 0.0, allowance=0.02)
    assert (b.level, b.stamp) == (2.0, 0.0)


def test_allowance_is_capped_where_the_limit_cannot_absorb_it() -> None:
    j = JitterAllowance()
    # a burst of 5 at 40/s holds 0.1 s of slack: the whole margin
    assert j.for_limit(0.02, 0.025, 0.1, 0.0, cold=False) == pytest.approx(0.02)
    # one token (or a spacing) at 40/s: a fifth of the interval, 5 ms
    assert j.for_limit(0.02, 0.025, 0.0, 0.0, cold=False) == pytest.approx(STEADY_COST * 0.025)
    # a slow limit absorbs it whole
    assert j.for_limit(0.02, 1.0, 0.0, 0.0, cold=False) == pytest.approx(0.02)


def test_cold_admissions_get_more_and_growth_decays_by_half_life() -> None:
    j = JitterAllowance()
    assert j.for_limit(0.02, 0.1, 0.2, 0.0, cold=True) == pytest.approx(0.02 * (1 + COLD_FACTOR))
    first = j.grow(0.02, now=100.0)
    assert first == pytest.approx(0.005)  # max(2 ms, a quarter of the margin)
    second = j.grow(0.02, now=100.0)
    assert second == pytest.approx(0.005 * 1.5 + 0.005)
    assert j.extra_at(100.0 + HALF_LIFE) == pytest.approx(second / 2)
    # the grown part is not capped: the provider asked for it
    assert j.for_limit(0.02, 0.025, 0.0, 100.0, cold=False) == pytest.approx(0.005 + second)


def test_limiter_default_margin_is_the_clients() -> None:
    assert LimitsConfig().safety_margin == DEFAULT_MARGIN
    assert Limiter().limits()["margin"] == DEFAULT_MARGIN  # type: ignore[attr-defined]


# -- the limiter, exactly ----------------------------------------------------------------


def test_one_token_bucket_pays_a_fifth_of_its_interval_not_the_margin() -> None:
    """nginx rate=40r/s without burst: 1.2x the optimum, not 1.8x."""
    clock = FakeClock()
    lim = Recording(requests_per_minute=2400, burst=1, clock=clock)
    warm(lim, clock)
    del lim.starts[:]
    for _ in range(5):
        lim.acquire().release()
    gaps = [round(b - a, 9) for a, b in zip(lim.starts, lim.starts[1:], strict=False)]
    assert gaps == [0.03] * 4  # 25 ms + 5 ms


def test_spacing_applies_the_allowance_too() -> None:
    clock = FakeClock()
    lim = Recording(min_interval=0.025, clock=clock)
    warm(lim, clock)
    del lim.starts[:]
    for _ in range(4):
        lim.acquire().release()
    gaps = [round(b - a, 9) for a, b in zip(lim.starts, lim.starts[1:], strict=False)]
    assert gaps == [0.03] * 3


def test_a_burst_costs_the_margin_once_then_the_plain_rate() -> None:
    clock = FakeClock()
    lim = Recording(requests_per_minute=60, burst=2, margin=0.1, clock=clock)
    warm(lim, clock)
    del lim.starts[:]
    for _ in range(5):
        lim.acquire().release()
    offsets = [round(t - lim.starts[0], 9) for t in lim.starts]
    assert offsets == [0.0, 0.0, 1.1, 2.1, 3.1]  # the burst whole, the margin once


def test_the_first_burst_after_start_or_idle_gets_cold_slack() -> None:
    clock = FakeClock()
    lim = Recording(requests_per_minute=600, burst=3, margin=0.02, clock=clock)  # 10/s
    held = [lim.acquire() for _ in range(4)]  # cold: nothing came back yet
    for p in held:
        p.release()
    # the burst goes whole; the next waits its 0.1 s plus 4 x 20 ms
    assert [round(t - lim.starts[0], 9) for t in lim.starts] == [0.0, 0.0, 0.0, 0.18]
    clock.advance(5.0)  # refilled, and warm now: the plain margin
    del lim.starts[:]
    for _ in range(4):
        lim.acquire().release()
    assert [round(t - lim.starts[0], 9) for t in lim.starts] == [0.0, 0.0, 0.0, 0.12]
    clock.advance(IDLE_COLD + 1)  # idle: connections may be gone, cold again
    del lim.starts[:]
    held = [lim.acquire() for _ in range(4)]
    for p in held:
        p.release()
    assert [round(t - lim.starts[0], 9) for t in lim.starts] == [0.0, 0.0, 0.0, 0.18]


def test_report_overrun_widens_the_allowance_and_returns_the_next_slot() -> None:
    clock = FakeClock()
    lim = Recording(requests_per_minute=2400, burst=1, clock=clock)
    warm(lim, clock)
    p = lim.acquire()  # the provider refuses this one
    wait = lim.report_overrun()
    p.release()
    assert wait == pytest.approx(0.025 + 0.005)  # the next slot, as the bucket says
    del lim.starts[:]
    clock.advance(wait)
    for _ in range(3):
        lim.acquire().release()
    gaps = [b - a for a, b in zip(lim.starts, lim.starts[1:], strict=False)]
    assert gaps == pytest.approx([0.035] * 2, abs=1e-5)  # 25 + 5 + 5 (grown, decaying) ms
    clock.advance(HALF_LIFE * 20)  # decays back
    del lim.starts[:]
    for _ in range(3):
        lim.acquire().release()
    gaps = [round(b - a, 6) for a, b in zip(lim.starts, lim.starts[1:], strict=False)]
    assert gaps == [0.03] * 2


def test_report_overrun_on_an_unpaced_limiter_changes_nothing() -> None:
    lim = Limiter(max_concurrent=2)
    assert lim.report_overrun() == 0.0


# -- the guarantee, for any arrivals and any delays up to J -----------------------------


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.sampled_from([60.0, 600.0, 2400.0, 6000.0]),
    burst=st.integers(min_value=1, max_value=6),
    margin=st.sampled_from([0.0, 0.005, 0.02, 0.1]),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=2, max_size=40),
    delays=st.lists(st.floats(min_value=0, max_value=1), min_size=40, max_size=40),
)
def test_the_provider_bucket_holds_for_any_delay_up_to_the_allowance(
    rpm: float, burst: int, margin: float, gaps: list[float], delays: list[float]
) -> None:
    clock = FakeClock()
    lim = Recording(requests_per_minute=rpm, burst=burst, margin=margin, clock=clock)
    for gap in gaps:
        clock.advance(gap)
        lim.acquire().release()
    rate = rpm / 60.0
    jitter = JitterAllowance().for_limit(margin, 1 / rate, (burst - 1) / rate, 0.0, cold=False)
    arrivals = [t + jitter * d for t, d in zip(lim.starts, delays, strict=False)]
    assert server_refusals(arrivals, rate, burst) == 0


@settings(max_examples=150, deadline=None)
@given(
    interval=st.sampled_from([0.025, 0.1, 1.0]),
    margin=st.sampled_from([0.0, 0.02, 0.1]),
    gaps=st.lists(st.floats(min_value=0, max_value=0.2), min_size=2, max_size=30),
    delays=st.lists(st.floats(min_value=0, max_value=1), min_size=30, max_size=30),
)
def test_the_provider_spacing_holds_for_any_delay_up_to_the_allowance(
    interval: float, margin: float, gaps: list[float], delays: list[float]
) -> None:
    clock = FakeClock()
    lim = Recording(min_interval=interval, margin=margin, clock=clock)
    for gap in gaps:
        clock.advance(gap)
        lim.acquire().release()
    jitter = JitterAllowance().for_limit(margin, interval, 0.0, 0.0, cold=False)
    arrivals = [t + jitter * d for t, d in zip(lim.starts, delays, strict=False)]
    assert spacing_refusals(arrivals, interval) == 0


def test_without_the_allowance_a_delay_makes_the_provider_refuse() -> None:
    """The same check catches a limiter with no allowance (margin 0)."""
    clock = FakeClock()
    lim = Recording(requests_per_minute=2400, burst=1, margin=0.0, clock=clock)
    for _ in range(10):
        lim.acquire().release()
    delays = [0.005 if i % 2 == 0 else 0.0 for i in range(len(lim.starts))]
    arrivals = [t + d for t, d in zip(lim.starts, delays, strict=False)]
    assert server_refusals(arrivals, 40.0, 1) > 0


# -- a request that leaves late --------------------------------------------------------


def test_a_request_that_leaves_late_paces_the_next_from_its_departure() -> None:
    clock = FakeClock()
    lim = Recording(requests_per_minute=2400, burst=1, min_interval=0.025, clock=clock)
    warm(lim, clock)
    del lim.starts[:]
    permit = lim.acquire()
    clock.advance(0.02)  # the thread got the GIL 20 ms late: more than the 5 ms allowance
    permit.mark_sent()
    permit.mark_sent()  # once only
    permit.release()
    lim.acquire().release()
    # from its departure, plus the half of the 5 ms allowance kept for the way there
    assert lim.starts[1] - lim.starts[0] == pytest.approx(0.02 + 0.0025 + 0.025)


def test_a_request_on_time_changes_nothing() -> None:
    clock = FakeClock()
    lim = Recording(requests_per_minute=2400, burst=1, clock=clock)
    warm(lim, clock)
    del lim.starts[:]
    permit = lim.acquire()
    clock.advance(0.002)  # within half the allowance (the other half is the way there)
    permit.mark_sent()
    permit.release()
    lim.acquire().release()
    assert lim.starts[1] - lim.starts[0] == pytest.approx(0.03)


def test_the_transport_marks_each_request_sent_once() -> None:
    """A real request through a Client: the watched connection tells the permit."""
    from ratelimit_sdk import Client
    from ratelimit_sdk.testing import FakeProvider

    marks: list[float] = []
    original = MemoryLimiter._mark_sent

    def spy(self: MemoryLimiter, permit: object) -> None:
        marks.append(1.0)
        original(self, permit)  # type: ignore[arg-type]

    with FakeProvider("p") as fake:
        client = Client(
            {"providers": [fake.provider_config(limits={"requests_per_minute": 6000, "burst": 5})]}
        )
        MemoryLimiter._mark_sent = spy  # type: ignore[method-assign]
        try:
            for _ in range(3):
                client.chat("hi", timeout=10)
        finally:
            MemoryLimiter._mark_sent = original  # type: ignore[method-assign]
            client.close()
    assert marks == [1.0, 1.0, 1.0]


def test_a_request_that_leaves_late_leaves_a_sliding_window_late() -> None:
    clock = FakeClock(start=1000.0)
    lim = MemoryLimiter(windows=[{"requests": 2, "per": 1}], clock=clock)
    first = lim.acquire()
    clock.advance(0.3)  # it left 0.3 s after its admission: far over its 20 ms
    first.mark_sent()
    first.release()
    lim.acquire().release()
    # the first charge now counts from 0.28 s (its departure less the allowance):
    # the third waits until 1.28 + 0.02 s, not 1.02 s
    wait = lim.availability().wait
    assert wait == pytest.approx(1.0, abs=0.011)


def test_a_request_that_leaves_late_across_a_utc_boundary_counts_in_both() -> None:
    clock = FakeClock(start=1000.0)
    epoch0 = clock.time()
    per = 10.0
    clock.advance(per - (epoch0 % per) - 0.1)  # 0.1 s before a boundary
    lim = MemoryLimiter(windows=[{"requests": 1, "per": per, "align": "utc"}], clock=clock)
    permit = lim.acquire()
    clock.advance(0.3)  # left after the boundary
    permit.mark_sent()
    permit.release()
    assert lim.try_acquire() is None  # the new window has it too
