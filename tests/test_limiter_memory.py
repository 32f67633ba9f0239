"""The in-memory Limiter: each guarantee (README, "The Limiter on its own") has a test here.

Most tests use FakeClock (exact and instant). The ``threads`` tests use real
threads with generous bounds; none asserts how fast the machine is.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit_sdk.errors import AcquireTimeout, ConfigError, RequestTooLargeError
from ratelimit_sdk.limiter import Limiter, MemoryLimiter, Permit
from ratelimit_sdk.testing.clock import FakeClock, WouldBlockForever


class RecordingLimiter(MemoryLimiter):
    """Records the limiter's own time of every admission (exact start times)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.starts: list[float] = []
        self.granted_units: list[int] = []
        self.granted_tokens: list[int] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _take(self, units: int, tokens: int, now: float) -> None:
        self.starts.append(now)
        self.granted_units.append(units)
        self.granted_tokens.append(tokens)
        super()._take(units, tokens, now)


def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a test condition (test-side only), failing after a generous bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- construction and input checks ----------------------------------------------------------


def test_limiter_builds_memory_backend_by_default() -> None:
    lim = Limiter(max_concurrent=2)
    assert isinstance(lim, MemoryLimiter)
    assert isinstance(lim, Limiter)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent", 0),
        ("max_concurrent", -1),
        ("max_concurrent", 1.5),
        ("requests_per_minute", 0),
        ("requests_per_minute", float("inf")),
        ("burst", 0),
        ("min_interval", -0.1),
        ("tokens_per_minute", -5),
        ("max_concurrent", "3"),
        ("max_concurrent", True),
    ],
)
def test_bad_limits_raise_config_error_naming_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        Limiter(**{field: value})  # type: ignore[arg-type]
    lim = Limiter()
    with pytest.raises(ConfigError, match=field):
        lim.update(**{field: value})


def test_unknown_backend_and_unknown_limit() -> None:
    with pytest.raises(ConfigError, match="backend"):
        Limiter(backend="postgres://x")
    with pytest.raises(ConfigError, match="max_concurent"):
        Limiter().update(max_concurent=3)


def test_bad_acquire_arguments() -> None:
    lim = Limiter(max_concurrent=2, tokens_per_minute=100)
    with pytest.raises(ValueError, match="units"):
        lim.acquire(units=0)
    with pytest.raises(ValueError, match="tokens"):
        lim.acquire(tokens=-1)
    with pytest.raises(ValueError, match="timeout"):
        lim.acquire(timeout=-1)
    with pytest.raises(RequestTooLargeError, match="max_concurrent is 2"):
        lim.acquire(units=3)
    with pytest.raises(RequestTooLargeError, match="tokens_per_minute"):
        lim.acquire(tokens=101)
    assert lim.in_flight == 0


# -- concurrency ----------------------------------------------------------------------------


def test_max_concurrent_bounds_permits(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=2, clock=clock)
    a = lim.try_acquire()
    b = lim.try_acquire()
    assert a is not None and b is not None
    assert lim.try_acquire() is None
    assert lim.in_flight == 2
    a.release()
    c = lim.try_acquire()
    assert c is not None
    assert lim.in_flight == 2


def test_release_is_idempotent(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=2, clock=clock)
    p = lim.acquire()
    p.release()
    p.release()
    assert lim.in_flight == 0
    assert p.released
    q = lim.acquire()
    q.release()
    p.release()
    assert lim.in_flight == 0


def test_lowering_max_concurrent_admits_nobody_until_under_new_value(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=3, clock=clock)
    held = [lim.acquire() for _ in range(3)]
    lim.update(max_concurrent=1)
    held.pop().release()
    assert lim.in_flight == 2
    assert lim.try_acquire() is None
    held.pop().release()
    assert lim.try_acquire() is None  # in flight 1 == new max
    held.pop().release()
    assert lim.try_acquire() is not None


def test_raising_max_concurrent_admits_waiters_at_once() -> None:
    lim = Limiter(max_concurrent=1)
    holder = lim.acquire()
    admitted = threading.Barrier(4, timeout=10)
    permits: list[Permit] = []

    def worker() -> None:
        permits.append(lim.acquire(timeout=10))
        admitted.wait()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: lim.queued == 3)
    lim.update(max_concurrent=4)
    admitted.wait()  # all three got in while the holder still holds
    assert lim.in_flight == 4
    for t in threads:
        t.join(10)
    holder.release()
    for p in permits:
        p.release()
    assert lim.in_flight == 0


def test_units_hold_several_concurrency_units(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=4, clock=clock)
    big = lim.acquire(units=4)
    assert lim.in_flight == 4
    assert lim.try_acquire(units=1) is None
    big.release()
    small = [lim.try_acquire(units=2), lim.try_acquire(units=2)]
    assert all(p is not None for p in small)
    assert lim.try_acquire() is None


# -- token bucket, spacing, cooldown with the fake clock ------------------------------------


def test_bucket_starts_full_then_waits_exactly_for_the_next_token(clock: FakeClock) -> None:
    lim = Limiter(requests_per_minute=60, burst=3, clock=clock, margin=0)
    for _ in range(3):
        lim.acquire().release()
    assert clock.sleeps == []
    lim.acquire().release()
    assert clock.sleeps == [pytest.approx(1.0)]  # one exact sleep, no polling


def test_burst_defaults_to_one(clock: FakeClock) -> None:
    lim = Limiter(requests_per_minute=120, clock=clock, margin=0)
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is None
    clock.advance(0.5)
    assert lim.try_acquire() is not None


def test_min_interval_spaces_starts(clock: FakeClock) -> None:
    lim = Limiter(min_interval=0.25, clock=clock, margin=0)
    lim.acquire().release()
    lim.acquire().release()
    clock.advance(0.1)
    lim.acquire().release()
    assert clock.sleeps == [pytest.approx(0.25), pytest.approx(0.15)]


def test_cooldown_blocks_for_exactly_its_length_and_only_extends(clock: FakeClock) -> None:
    lim = Limiter(clock=clock)
    lim.cooldown(10)
    lim.cooldown(2)  # never shortens
    assert lim.cooldown_remaining() == pytest.approx(10)
    assert lim.try_acquire() is None
    lim.acquire().release()
    assert clock.sleeps == [pytest.approx(10)]
    lim.cooldown(0)
    lim.cooldown(-3)
    assert lim.try_acquire() is not None


def test_cooldown_extension_reaches_a_waiter_already_sleeping() -> None:
    lim = Limiter()
    lim.cooldown(0.05)
    done = threading.Event()
    started = time.monotonic()
    waited: list[float] = []

    def worker() -> None:
        with lim.acquire(timeout=10):
            waited.append(time.monotonic() - started)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    wait_until(lambda: lim.queued == 1)
    lim.cooldown(0.3)
    assert done.wait(10)
    t.join(10)
    assert waited[0] >= 0.3 - 0.01


def test_all_limits_combined_wait_for_the_latest(clock: FakeClock) -> None:
    lim = Limiter(requests_per_minute=60, burst=1, min_interval=2.0, clock=clock, margin=0)
    lim.acquire().release()
    lim.cooldown(0.5)
    lim.acquire().release()
    assert clock.sleeps == [pytest.approx(2.0)]


def test_acquire_timeout_raises_after_exactly_the_timeout(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=1, clock=clock)
    held = lim.acquire()
    with pytest.raises(AcquireTimeout) as info:
        lim.acquire(timeout=0.5)
    assert clock.sleeps == [pytest.approx(0.5)]
    assert info.value.waited == pytest.approx(0.5)
    assert lim.queued == 0
    held.release()
    assert lim.in_flight == 0


def test_timeout_zero_never_waits(clock: FakeClock) -> None:
    lim = Limiter(requests_per_minute=1, clock=clock)
    lim.acquire()
    with pytest.raises(AcquireTimeout):
        lim.acquire(timeout=0)
    assert clock.sleeps == []


def test_wait_for_a_release_has_no_timer(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=1, clock=clock)
    held = lim.acquire()
    with pytest.raises(WouldBlockForever):  # sleeps until a release, never polls
        lim.acquire()
    assert lim.queued == 0
    held.release()


def test_timed_wait_is_capped_by_the_deadline(clock: FakeClock) -> None:
    lim = Limiter(requests_per_minute=6, clock=clock)  # next token in 10 s
    lim.acquire()
    with pytest.raises(AcquireTimeout):
        lim.acquire(timeout=3)
    assert clock.sleeps == [pytest.approx(3)]


# -- LLM token budget -----------------------------------------------------------------------


def test_tokens_per_minute_charges_and_waits(clock: FakeClock) -> None:
    lim = Limiter(tokens_per_minute=600, clock=clock, margin=0)  # 10 tokens/s, holds 600
    lim.acquire(tokens=600).release()
    lim.acquire(tokens=60).release()
    assert clock.sleeps == [pytest.approx(6.0)]


def test_settle_refunds_an_overestimate(clock: FakeClock) -> None:
    lim = Limiter(tokens_per_minute=600, clock=clock, margin=0)
    p = lim.acquire(tokens=600)
    p.settle(tokens=100)
    p.release()
    assert lim.try_acquire(tokens=500) is not None
    assert clock.sleeps == []


def test_settle_debits_an_underestimate(clock: FakeClock) -> None:
    lim = Limiter(tokens_per_minute=600, clock=clock, margin=0)
    with lim.acquire(tokens=10) as p:
        p.settle(tokens=1000)  # 990 more than charged: 400 in debt
        p.settle(tokens=5)  # only the first settle counts
    assert lim.try_acquire(tokens=1) is None
    lim.acquire(tokens=1).release()
    assert clock.sleeps == [pytest.approx(40.1)]
    with pytest.raises(ValueError):
        p.settle(tokens=-1)


# -- release on every path ------------------------------------------------------------------


def test_permit_released_on_exception_and_keyboard_interrupt(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=1, clock=clock)
    with pytest.raises(RuntimeError), lim.acquire():
        raise RuntimeError("boom")
    assert lim.in_flight == 0
    with pytest.raises(KeyboardInterrupt), lim.acquire():
        raise KeyboardInterrupt
    assert lim.in_flight == 0


def test_dropped_permit_is_released_by_the_garbage_collector(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=1, clock=clock)
    lim.acquire()  # reference dropped at once
    gc.collect()
    assert lim.in_flight == 0


def test_permit_dropped_while_lock_is_held_is_released_by_the_next_holder() -> None:
    lim = MemoryLimiter(max_concurrent=1)
    p = lim.acquire()
    lim._group.lock.acquire()  # a finalizer running while the lock is held must not block
    try:
        del p
        gc.collect()
    finally:
        lim._group.lock.release()
    assert lim.in_flight == 1  # parked, not lost
    with lim.acquire(timeout=5):
        pass
    assert lim.in_flight == 0


class InterruptingClock(FakeClock):
    """Raises KeyboardInterrupt from inside a wait, optionally after running ``before``."""

    def __init__(self) -> None:
        super().__init__()
        self.before: object = None

    def wait(self, cond: threading.Condition, timeout: float | None) -> bool:
        if callable(self.before):
            cond.release()  # as Condition.wait does while it sleeps
            try:
                self.before()
            finally:
                cond.acquire()
        raise KeyboardInterrupt


def test_keyboard_interrupt_while_waiting_leaves_no_trace() -> None:
    clock = InterruptingClock()
    lim = Limiter(max_concurrent=1, clock=clock)
    held = lim.acquire()
    with pytest.raises(KeyboardInterrupt):
        lim.acquire()
    assert lim.queued == 0
    held.release()
    assert lim.in_flight == 0


def test_keyboard_interrupt_after_being_granted_gives_everything_back() -> None:
    clock = InterruptingClock()
    lim = Limiter(max_concurrent=1, requests_per_minute=60, burst=2, clock=clock, margin=0)
    held = lim.acquire()
    clock.before = held.release  # the release hands the permit to the waiter, then ^C
    with pytest.raises(KeyboardInterrupt):
        lim.acquire()
    assert lim.in_flight == 0
    assert lim.snapshot().tokens == pytest.approx(1.0)  # its bucket token came back


# -- fairness -------------------------------------------------------------------------------


def _start_in_order(lim: Limiter, n: int, target, **kwargs) -> list[threading.Thread]:  # type: ignore[no-untyped-def]
    threads = []
    base = lim.queued
    for i in range(n):
        t = threading.Thread(target=target, args=(i,), kwargs=kwargs)
        t.start()
        wait_until(lambda i=i: lim.queued == base + i + 1)
        threads.append(t)
    return threads


@pytest.mark.integration
def test_waiters_are_admitted_first_come_first_served() -> None:
    lim = Limiter(max_concurrent=1)
    order: list[int] = []
    holder = lim.acquire()

    def worker(i: int) -> None:
        with lim.acquire(timeout=20):
            order.append(i)

    threads = _start_in_order(lim, 16, worker)
    assert lim.try_acquire() is None  # no barging past queued waiters
    holder.release()
    for t in threads:
        t.join(20)
    assert order == list(range(16))
    assert lim.in_flight == 0


@pytest.mark.integration
def test_a_big_request_is_not_overtaken_by_later_small_ones() -> None:
    lim = RecordingLimiter(max_concurrent=4)
    order: list[str] = []
    held = [lim.acquire(units=1) for _ in range(3)]  # one unit free

    def big(_: int) -> None:
        with lim.acquire(units=4, timeout=20):
            order.append("big")

    def small(i: int) -> None:
        with lim.acquire(units=i + 1, timeout=20):
            order.append(f"small{i}")

    threads = _start_in_order(lim, 1, big)
    threads += _start_in_order(lim, 2, small)
    assert lim.in_flight == 3  # the free unit stays free: the small ones wait behind big
    assert order == []
    for p in held:
        p.release()
    for t in threads:
        t.join(20)
    assert lim.granted_units[3:] == [4, 1, 2]  # admission order: big, small0, small1


@pytest.mark.integration
def test_fifo_holds_across_rate_and_concurrency() -> None:
    lim = RecordingLimiter(
        max_concurrent=2, requests_per_minute=600, burst=1, tokens_per_minute=1e9
    )

    def worker(i: int) -> None:
        with lim.acquire(timeout=20, tokens=i + 1):
            time.sleep(0.01)

    lim.acquire().release()  # empty the bucket so everyone queues
    threads = _start_in_order(lim, 8, worker)
    for t in threads:
        t.join(20)
    assert lim.granted_tokens[1:] == [i + 1 for i in range(8)]


# -- pools ----------------------------------------------------------------------------------


def test_pool_units_are_admitted_with_the_member_limits(clock: FakeClock) -> None:
    pool = MemoryLimiter(max_concurrent=4, clock=clock)
    llama = MemoryLimiter(max_concurrent=5, clock=clock, pool=pool, pool_units=4)
    dolphin = MemoryLimiter(max_concurrent=5, clock=clock, pool=pool, pool_units=1)
    p = llama.acquire()
    assert pool.in_flight == 4 and llama.in_flight == 1
    assert dolphin.try_acquire() is None  # pool full, own limit fine
    assert dolphin.in_flight == 0  # nothing half-taken
    p.release()
    q = [dolphin.try_acquire() for _ in range(4)]
    assert all(x is not None for x in q)
    assert pool.in_flight == 4
    assert llama.try_acquire() is None


def test_pool_units_cannot_exceed_the_pool() -> None:
    pool = MemoryLimiter(max_concurrent=2)
    with pytest.raises(ConfigError, match="pool_units"):
        MemoryLimiter(pool=pool, pool_units=3)


def test_a_member_blocked_by_its_own_rate_does_not_block_other_members(clock: FakeClock) -> None:
    pool = MemoryLimiter(max_concurrent=8, clock=clock)
    slow = MemoryLimiter(requests_per_minute=1, clock=clock, pool=pool)
    fast = MemoryLimiter(clock=clock, pool=pool)
    slow.acquire().release()
    assert slow.try_acquire() is None
    assert fast.try_acquire() is not None


@pytest.mark.integration
def test_pool_waiters_in_fifo_order_across_members() -> None:
    pool = MemoryLimiter(max_concurrent=4)
    llama = MemoryLimiter(pool=pool, pool_units=4)
    dolphin = MemoryLimiter(pool=pool, pool_units=1)
    order: list[str] = []
    held = dolphin.acquire()

    def big(_: int) -> None:
        with llama.acquire(timeout=20):
            order.append("llama")

    def small(i: int) -> None:
        with dolphin.acquire(timeout=20):
            order.append(f"dolphin{i}")

    t1 = threading.Thread(target=big, args=(0,))
    t1.start()
    wait_until(lambda: llama.queued == 1)
    t2 = threading.Thread(target=small, args=(1,))
    t2.start()
    wait_until(lambda: dolphin.queued == 1)
    assert pool.in_flight == 1  # three pool units free, yet dolphin waits behind llama
    held.release()
    t1.join(20)
    t2.join(20)
    assert order == ["llama", "dolphin1"]
    assert pool.in_flight == 0


# -- property tests: the envelope and spacing under random arrivals -------------------------


def _max_in_window(starts: list[float], window: float) -> int:
    best = 0
    j = 0
    for i, t in enumerate(starts):
        while t - starts[j] > window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


@settings(max_examples=150, deadline=None)
@given(
    rpm=st.floats(min_value=1, max_value=6000),
    burst=st.integers(min_value=1, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=60),
    blocking=st.booleans(),
    margin=st.sampled_from([0.0, 0.02, 0.5]),
)
def test_bucket_envelope_holds_for_any_arrivals(
    rpm: float, burst: int, gaps: list[float], blocking: bool, margin: float
) -> None:
    clock = FakeClock()
    lim = RecordingLimiter(requests_per_minute=rpm, burst=burst, margin=margin, clock=clock)
    for gap in gaps:
        clock.advance(gap)
        if blocking:
            lim.acquire().release()
        else:
            p = lim.try_acquire()
            if p is not None:
                p.release()
    rate = rpm / 60.0
    starts = lim.starts
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            window = starts[j] - starts[i]
            assert j - i + 1 <= burst + rate * window + 1e-6


@settings(max_examples=150, deadline=None)
@given(
    interval=st.floats(min_value=0.001, max_value=5),
    gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=2, max_size=60),
)
def test_spacing_holds_for_any_arrivals(interval: float, gaps: list[float]) -> None:
    clock = FakeClock()
    lim = RecordingLimiter(min_interval=interval, clock=clock)
    for gap in gaps:
        clock.advance(gap)
        lim.acquire().release()
    starts = lim.starts
    assert all(b - a >= interval - 1e-9 for a, b in itertools.pairwise(starts))


@settings(max_examples=100, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=40),
    rpm=st.floats(min_value=10, max_value=600),
)
def test_blocking_acquire_starts_as_early_as_the_bucket_allows(
    gaps: list[float], rpm: float
) -> None:
    # Work conserving: a blocked acquire starts the moment its token arrives.
    clock = FakeClock()
    lim = RecordingLimiter(requests_per_minute=rpm, burst=1, clock=clock, margin=0)
    for gap in gaps:
        clock.advance(gap)
        arrival = clock.monotonic()
        before = lim.snapshot().tokens
        assert before is not None
        lim.acquire().release()
        expected = arrival + max(0.0, (1.0 - before) * 60.0 / rpm)
        assert lim.starts[-1] == pytest.approx(expected, abs=1e-6)


# -- real threads ---------------------------------------------------------------------------


@pytest.mark.integration
def test_sixteen_threads_never_exceed_max_concurrent() -> None:
    lim = Limiter(max_concurrent=3)
    guard = threading.Lock()
    current = 0
    peak = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal current, peak
        try:
            for _ in range(100):
                with lim.acquire(timeout=30):
                    with guard:
                        current += 1
                        peak = max(peak, current)
                    time.sleep(0)
                    with guard:
                        current -= 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert peak <= 3
    assert lim.in_flight == 0 and lim.queued == 0


@pytest.mark.integration
def test_sixteen_threads_stay_inside_the_bucket_envelope() -> None:
    lim = RecordingLimiter(requests_per_minute=1200, burst=4, min_interval=0.01)
    stop = time.monotonic() + 0.6

    def worker() -> None:
        for _ in range(100):
            if time.monotonic() > stop:
                return
            try:
                lim.acquire(timeout=max(0.0, stop - time.monotonic())).release()
            except AcquireTimeout:
                return

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    starts = sorted(lim.starts)
    assert len(starts) >= 5
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            assert j - i + 1 <= 4 + 20 * (starts[j] - starts[i]) + 1e-6
    assert all(b - a >= 0.01 - 1e-9 for a, b in itertools.pairwise(starts))
    assert lim.in_flight == 0 and lim.queued == 0


@pytest.mark.integration
def test_timeouts_under_contention_leak_nothing() -> None:
    lim = Limiter(max_concurrent=2)
    outcomes: list[str] = []
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            try:
                with lim.acquire(timeout=0.001):
                    time.sleep(0.001)
                result = "ok"
            except AcquireTimeout:
                result = "timeout"
            with guard:
                outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 320
    assert lim.in_flight == 0 and lim.queued == 0
    assert lim.try_acquire() is not None


def test_close_wakes_waiters_with_acquire_timeout() -> None:
    lim = Limiter(max_concurrent=1)
    held = lim.acquire()
    caught: list[BaseException] = []

    def worker() -> None:
        try:
            lim.acquire(timeout=30)
        except AcquireTimeout as exc:
            caught.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    wait_until(lambda: lim.queued == 1)
    lim.close()
    t.join(10)
    assert len(caught) == 1 and "closed" in str(caught[0])
    held.release()


def test_snapshot_reports_state(clock: FakeClock) -> None:
    lim = Limiter(
        max_concurrent=2, requests_per_minute=60, burst=2, min_interval=0.5, clock=clock, margin=0
    )
    p = lim.acquire()
    snap = lim.snapshot()
    assert snap.in_flight == 1
    assert snap.max_concurrent == 2
    assert snap.tokens == pytest.approx(1.0)
    assert snap.next_start_in == pytest.approx(0.5)
    p.release()
    assert "max_concurrent=2" in repr(lim)


def test_limiter_as_decorator(clock: FakeClock) -> None:
    lim = Limiter(max_concurrent=1, clock=clock)
    seen: list[int] = []

    @lim
    def call(x: int) -> int:
        seen.append(lim.in_flight)
        return x * 2

    assert call(2) == 4
    assert seen == [1]
    assert lim.in_flight == 0


def test_margin_must_be_non_negative() -> None:
    with pytest.raises(ConfigError, match="margin"):
        Limiter(margin=-1)


@pytest.mark.integration
def test_try_acquire_never_refuses_because_of_other_threads() -> None:
    # pyrate-limiter's non-blocking acquire refuses most calls under contention at an
    # unreachable rate because another thread holds its lock; ours refuses only when a
    # limit says no.
    lim = Limiter(requests_per_minute=1e12, burst=10**9, max_concurrent=10**6)
    refused = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal refused
        for _ in range(300):
            permit = lim.try_acquire()
            if permit is None:
                with guard:
                    refused += 1
            else:
                permit.release()

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert refused == 0
    assert lim.in_flight == 0
