"""The Limiter contract, one suite run against every backend.

Each test gets ``make``: a factory of limiters on one backend (``memory``, or
``redis`` against the session's own redis-server, each test with its own key).
Real time throughout, so bounds are generous: waits are checked from below
(waited >= 0.9 x expected) and from above only loosely; nothing asserts that
the machine is fast.
"""

from __future__ import annotations

import gc
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ratelimit_sdk.errors import AcquireTimeout, ConfigError, RequestTooLargeError
from ratelimit_sdk.limiter import Limiter, Permit
from ratelimit_sdk.models import Availability

Make = Callable[..., Limiter]

#: Loose upper bound for "this should not take long" on a busy 2-core machine.
SLOW = 5.0


@pytest.fixture(
    params=[pytest.param("memory"), pytest.param("redis", marks=pytest.mark.redis)],
)
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    made: list[Limiter] = []
    extra: dict[str, Any] = {}
    if request.param == "redis":
        extra = {
            "backend": request.getfixturevalue("redis_url"),
            "key": request.getfixturevalue("redis_key"),
            "on_backend_error": "raise",  # a bug in a script must fail the test, not fall back
        }

    def factory(**kwargs: Any) -> Limiter:
        lim = Limiter(**{**extra, **kwargs})
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        lim.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


# -- concurrency ----------------------------------------------------------------------------


def test_max_concurrent_bounds_permits(make: Make) -> None:
    lim = make(max_concurrent=2)
    a = lim.try_acquire()
    b = lim.try_acquire()
    assert a is not None and b is not None
    assert lim.try_acquire() is None
    assert lim.in_flight == 2
    a.release()
    c = lim.try_acquire()
    assert c is not None
    assert lim.in_flight == 2
    b.release()
    c.release()
    assert lim.in_flight == 0


def test_units_hold_several_concurrency_units(make: Make) -> None:
    lim = make(max_concurrent=4)
    big = lim.acquire(units=4)
    assert lim.in_flight == 4
    assert lim.try_acquire(units=1) is None
    big.release()
    small = [lim.try_acquire(units=2), lim.try_acquire(units=2)]
    assert all(p is not None for p in small)
    assert lim.try_acquire() is None
    for p in small:
        assert p is not None
        p.release()


def test_requests_that_can_never_fit_are_refused(make: Make) -> None:
    lim = make(max_concurrent=2, tokens_per_minute=100)
    with pytest.raises(RequestTooLargeError, match="max_concurrent"):
        lim.acquire(units=3)
    with pytest.raises(RequestTooLargeError, match="tokens_per_minute"):
        lim.acquire(tokens=101)
    with pytest.raises(ValueError, match="units"):
        lim.acquire(units=0)
    with pytest.raises(ValueError, match="timeout"):
        lim.acquire(timeout=-1)
    assert lim.in_flight == 0


# -- token bucket, spacing, cooldown --------------------------------------------------------


def test_bucket_starts_full_then_waits_for_the_next_token(make: Make) -> None:
    lim = make(requests_per_minute=120, burst=2, margin=0)  # 2 per second, holds 2
    t0 = time.monotonic()
    first = [lim.try_acquire(), lim.try_acquire()]
    assert all(p is not None for p in first)  # starts full
    assert lim.try_acquire() is None
    lim.acquire(timeout=SLOW).release()
    waited = time.monotonic() - t0
    assert waited >= 0.9 * 0.5
    assert waited < SLOW


def test_burst_then_steady_rate(make: Make) -> None:
    lim = make(requests_per_minute=600, burst=3)  # 10 per second
    starts: list[float] = []
    for _ in range(8):
        lim.acquire(timeout=SLOW).release()
        starts.append(time.monotonic())
    base = starts[0]
    for k, t in enumerate(starts):
        earliest = max(0, k - 3 + 1) / 10.0  # the k-th start needs k - burst + 1 refills
        assert t - base >= 0.9 * earliest - 0.01, (k, t - base)
    assert starts[-1] - base < SLOW


def test_margin_treats_a_bucket_within_rate_times_margin_of_full_as_full(make: Make) -> None:
    lim = make(requests_per_minute=600, burst=2, margin=0.05)  # 10 per second
    assert lim.limits()["margin"] == 0.05  # type: ignore[attr-defined]
    lim.acquire(timeout=SLOW).release()  # warm: a request came back
    time.sleep(0.4)  # full again
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is not None  # the burst goes whole
    t0 = time.monotonic()
    # the refill paused for 10 * 0.05 - (2 - 1.5) tokens' worth: the next waits 0.05 + 0.1 s
    lim.acquire(timeout=SLOW).release()
    assert 0.9 * 0.15 <= time.monotonic() - t0 < SLOW
    t1 = time.monotonic()
    lim.acquire(timeout=SLOW).release()  # then the plain rate
    assert 0.9 * 0.1 <= time.monotonic() - t1 < SLOW
    lim.update(margin=0.0)
    assert lim.limits()["margin"] == 0.0  # type: ignore[attr-defined]


def test_report_overrun_widens_the_allowance(make: Make) -> None:
    lim = make(requests_per_minute=600, burst=1, margin=0.02)  # 10 per second
    lim.acquire(timeout=SLOW).release()
    wait = lim.report_overrun()
    assert 0.0 < wait <= 0.1 + 0.02 + 0.02 * 4 + 0.01
    assert make(max_concurrent=1).report_overrun() == 0.0


def test_min_interval_spaces_starts(make: Make) -> None:
    lim = make(min_interval=0.2)
    starts: list[float] = []
    for _ in range(3):
        lim.acquire(timeout=SLOW).release()
        starts.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.9 * 0.2 for gap in gaps), gaps


def test_cooldown_blocks_and_only_extends(make: Make) -> None:
    lim = make()
    t0 = time.monotonic()
    lim.cooldown(0.5)
    lim.cooldown(0.05)  # never shortens
    lim.cooldown(0)
    lim.cooldown(-3)
    assert 0.3 < lim.cooldown_remaining() <= 0.5
    assert lim.try_acquire() is None
    lim.acquire(timeout=SLOW).release()
    assert time.monotonic() - t0 >= 0.9 * 0.5
    assert lim.cooldown_remaining() == 0.0
    assert lim.try_acquire() is not None


def test_tokens_per_minute_charges_and_waits(make: Make) -> None:
    lim = make(tokens_per_minute=6000)  # 100 tokens per second, holds 6000
    t0 = time.monotonic()
    lim.acquire(tokens=6000).release()
    assert lim.try_acquire(tokens=50) is None
    lim.acquire(tokens=50, timeout=SLOW).release()
    assert time.monotonic() - t0 >= 0.9 * 0.5


# -- timeouts -------------------------------------------------------------------------------


def test_acquire_timeout_raises_after_the_timeout(make: Make) -> None:
    lim = make(max_concurrent=1)
    held = lim.acquire()
    t0 = time.monotonic()
    with pytest.raises(AcquireTimeout) as info:
        lim.acquire(timeout=0.3)
    assert time.monotonic() - t0 >= 0.9 * 0.3
    assert info.value.waited is not None and info.value.waited >= 0.9 * 0.3
    assert lim.queued == 0
    held.release()
    assert lim.in_flight == 0


def test_timeout_zero_does_not_wait(make: Make) -> None:
    lim = make(requests_per_minute=1)
    lim.acquire().release()
    t0 = time.monotonic()
    with pytest.raises(AcquireTimeout):
        lim.acquire(timeout=0)
    assert time.monotonic() - t0 < SLOW
    assert lim.queued == 0


def test_timeouts_under_contention_leak_nothing(make: Make) -> None:
    lim = make(max_concurrent=2)
    outcomes: list[str] = []
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            try:
                with lim.acquire(timeout=0.002):
                    time.sleep(0.001)
                result = "ok"
            except AcquireTimeout:
                result = "timeout"
            with guard:
                outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 80
    assert "ok" in outcomes
    assert lim.in_flight == 0 and lim.queued == 0
    with lim.acquire(timeout=SLOW), lim.acquire(timeout=SLOW):  # both units are free again
        pass


# -- release --------------------------------------------------------------------------------


def test_release_is_idempotent(make: Make) -> None:
    lim = make(max_concurrent=2)
    p = lim.acquire()
    p.release()
    p.release()
    assert p.released
    assert lim.in_flight == 0
    q = lim.acquire()
    p.release()  # a stale release must not free q's unit
    assert lim.in_flight == 1
    q.release()
    a, b = lim.acquire(), lim.acquire()
    assert lim.try_acquire() is None
    a.release()
    b.release()


def test_permit_released_on_exception_and_keyboard_interrupt(make: Make) -> None:
    lim = make(max_concurrent=1)
    with pytest.raises(RuntimeError), lim.acquire():
        raise RuntimeError("boom")
    assert lim.in_flight == 0
    with pytest.raises(KeyboardInterrupt), lim.acquire():
        raise KeyboardInterrupt
    assert lim.in_flight == 0
    assert lim.try_acquire() is not None


def test_dropped_permit_is_released(make: Make) -> None:
    lim = make(max_concurrent=1)
    lim.acquire()  # reference dropped at once
    gc.collect()
    with lim.acquire(timeout=SLOW):
        pass
    assert lim.in_flight == 0


def test_limiter_as_decorator(make: Make) -> None:
    lim = make(max_concurrent=1)
    seen: list[int] = []

    @lim
    def call(x: int) -> int:
        seen.append(lim.in_flight)
        return x * 2

    assert call(2) == 4
    assert seen == [1]
    assert lim.in_flight == 0


# -- settle ---------------------------------------------------------------------------------


def test_settle_refunds_an_overestimate(make: Make) -> None:
    lim = make(tokens_per_minute=600, margin=0)
    p = lim.acquire(tokens=600)
    p.settle(tokens=100)
    p.release()
    assert lim.try_acquire(tokens=500) is not None


def test_settle_debits_an_underestimate(make: Make) -> None:
    lim = make(tokens_per_minute=600)  # 10 tokens per second
    with lim.acquire(tokens=10) as p:
        p.settle(tokens=1000)  # 990 more than charged: 400 in debt
        p.settle(tokens=5)  # only the first settle counts
    assert lim.try_acquire(tokens=1) is None
    with pytest.raises(ValueError):
        p.settle(tokens=-1)


# -- hot updates ----------------------------------------------------------------------------


def test_lowering_max_concurrent_admits_nobody_until_under_new_value(make: Make) -> None:
    lim = make(max_concurrent=3)
    held = [lim.acquire() for _ in range(3)]
    lim.update(max_concurrent=1)
    held.pop().release()
    assert lim.try_acquire() is None  # 2 in flight, max 1
    held.pop().release()
    assert lim.try_acquire() is None  # 1 in flight == max
    held.pop().release()
    p = lim.try_acquire()
    assert p is not None
    p.release()


def test_raising_max_concurrent_admits_waiters_at_once(make: Make) -> None:
    lim = make(max_concurrent=1)
    holder = lim.acquire()
    admitted = threading.Barrier(4, timeout=20)
    permits: list[Permit] = []

    def worker() -> None:
        permits.append(lim.acquire(timeout=20))
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


def test_update_rate_while_running(make: Make) -> None:
    lim = make(requests_per_minute=6, burst=1)  # next token in 10 s
    lim.acquire().release()
    assert lim.try_acquire() is None
    lim.update(requests_per_minute=None)
    assert lim.try_acquire() is not None
    assert lim.limits()["requests_per_minute"] is None  # type: ignore[attr-defined]


def test_cooldown_extension_reaches_a_waiter_already_sleeping(make: Make) -> None:
    lim = make()
    lim.cooldown(0.05)
    done = threading.Event()
    started = time.monotonic()
    waited: list[float] = []

    def worker() -> None:
        with lim.acquire(timeout=SLOW * 2):
            waited.append(time.monotonic() - started)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    wait_until(lambda: lim.queued == 1)
    lim.cooldown(0.4)
    assert done.wait(20)
    t.join(10)
    assert waited[0] >= 0.9 * 0.4


# -- looks: availability() and try_admit() ----------------------------------------------------
#
# Both backends answer alike: try_admit() admits when free; when full it returns an
# Availability with wait None (only a release can tell); in a cooldown, wait ~= the
# cooldown left and cooldown > 0; a closed limiter answers Availability(math.inf)
# (never raises). availability() says the same and takes nothing.


def test_try_admit_admits_when_free(make: Make) -> None:
    lim = make(max_concurrent=2, requests_per_minute=600, burst=5)
    assert lim.availability().now
    got = lim.try_admit()
    assert isinstance(got, Permit)
    assert lim.in_flight == 1
    got.release()
    assert lim.in_flight == 0


def test_try_admit_when_full_says_it_needs_a_release(make: Make) -> None:
    lim = make(max_concurrent=1)
    held = lim.acquire()
    got = lim.try_admit()
    assert isinstance(got, Availability)
    assert got.wait is None and not got.now
    assert got.cooldown == 0.0
    look = lim.availability()
    assert look.wait is None and look.cooldown == 0.0
    assert lim.in_flight == 1  # nothing was taken
    held.release()
    assert isinstance(lim.try_admit(), Permit)


def test_try_admit_in_a_cooldown_says_when_it_ends(make: Make) -> None:
    lim = make(max_concurrent=4)
    lim.cooldown(3.0)
    got = lim.try_admit()
    assert isinstance(got, Availability)
    assert got.wait is not None and 2.0 < got.wait <= 3.01
    assert 2.0 < got.cooldown <= 3.01
    assert abs(got.wait - got.cooldown) < 0.5
    look = lim.availability()
    assert look.wait is not None and 2.0 < look.wait <= 3.01 and look.cooldown > 0
    assert lim.in_flight == 0


def test_try_admit_waiting_for_a_token_says_how_long(make: Make) -> None:
    lim = make(requests_per_minute=60, burst=1, margin=0)  # one per second
    first = lim.try_admit()
    assert isinstance(first, Permit)
    first.release()
    got = lim.try_admit()
    assert isinstance(got, Availability)
    assert got.wait is not None and 0.0 < got.wait <= 1.01
    assert got.cooldown == 0.0


def test_a_closed_limiter_looks_closed_for_ever(make: Make) -> None:
    lim = make(max_concurrent=2)
    lim.close()
    assert lim.availability().wait == math.inf
    got = lim.try_admit()
    assert isinstance(got, Availability) and got.wait == math.inf


# -- fairness and real threads --------------------------------------------------------------


@pytest.mark.integration
def test_waiters_are_admitted_first_come_first_served(make: Make) -> None:
    lim = make(max_concurrent=1)
    order: list[int] = []
    holder = lim.acquire()

    def worker(i: int) -> None:
        with lim.acquire(timeout=30):
            order.append(i)

    threads = []
    for i in range(8):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        wait_until(lambda i=i: lim.queued == i + 1)  # type: ignore[misc]
        threads.append(t)
    assert lim.try_acquire() is None  # no barging past queued waiters
    holder.release()
    for t in threads:
        t.join(30)
    assert order == list(range(8))
    assert lim.in_flight == 0


@pytest.mark.integration
def test_sixteen_threads_never_exceed_max_concurrent(make: Make) -> None:
    lim = make(max_concurrent=3)
    guard = threading.Lock()
    current = 0
    peak = 0
    errors: list[BaseException] = []

    def worker() -> None:
        nonlocal current, peak
        try:
            for _ in range(20):
                with lim.acquire(timeout=60):
                    with guard:
                        current += 1
                        peak = max(peak, current)
                    time.sleep(0.001)
                    with guard:
                        current -= 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert peak <= 3
    assert peak >= 2  # it did run things side by side
    assert lim.in_flight == 0 and lim.queued == 0


def test_close_wakes_waiters_with_acquire_timeout(make: Make) -> None:
    lim = make(max_concurrent=1)
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


def test_snapshot_reports_limits_and_state(make: Make) -> None:
    lim = make(max_concurrent=2, requests_per_minute=60, burst=2, min_interval=0.5, margin=0)
    p = lim.acquire()
    snap = lim.snapshot()
    assert snap.in_flight == 1
    assert snap.max_concurrent == 2
    assert snap.burst == 2
    assert snap.tokens is not None and 0.9 <= snap.tokens < 1.5
    assert 0.0 < snap.next_start_in <= 0.5
    p.release()
    assert "max_concurrent=2" in repr(lim)


# -- bad arguments: a ConfigError (a ValueError) naming the argument, on every backend ----------


def _settle(lim: Limiter, tokens: object) -> None:
    with lim.acquire(tokens=1) as permit:
        permit.settle(tokens=tokens)  # type: ignore[arg-type]


BAD_CALLS: list[tuple[str, str, Callable[[Limiter], object]]] = [
    ("cooldown(nan)", "seconds", lambda lim: lim.cooldown(float("nan"))),
    ("cooldown(inf)", "seconds", lambda lim: lim.cooldown(math.inf)),
    ("cooldown(True)", "seconds", lambda lim: lim.cooldown(True)),
    ("cooldown('5')", "seconds", lambda lim: lim.cooldown("5")),  # type: ignore[arg-type]
    ("acquire(units=0)", "units", lambda lim: lim.acquire(units=0)),
    ("acquire(units=True)", "units", lambda lim: lim.acquire(units=True)),
    ("acquire(units=1.5)", "units", lambda lim: lim.acquire(units=1.5)),  # type: ignore[arg-type]
    ("acquire(tokens=-1)", "tokens", lambda lim: lim.acquire(tokens=-1)),
    ("acquire(tokens=True)", "tokens", lambda lim: lim.acquire(tokens=True)),
    ("acquire(timeout=-1)", "timeout", lambda lim: lim.acquire(timeout=-1)),
    ("acquire(timeout=nan)", "timeout", lambda lim: lim.acquire(timeout=float("nan"))),
    ("acquire(timeout=True)", "timeout", lambda lim: lim.acquire(timeout=True)),
    ("try_acquire(units=0)", "units", lambda lim: lim.try_acquire(units=0)),
    ("settle(tokens=-1)", "tokens", lambda lim: _settle(lim, -1)),
    ("settle(tokens=True)", "tokens", lambda lim: _settle(lim, True)),
    ("update(max_concurrent=True)", "max_concurrent", lambda lim: lim.update(max_concurrent=True)),
]


@pytest.mark.parametrize(("call", "field", "bad"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_a_bad_argument_is_a_config_error_naming_it(
    make: Make, call: str, field: str, bad: Callable[[Limiter], object]
) -> None:
    lim = make(max_concurrent=2, tokens_per_minute=1000)
    with pytest.raises(ConfigError) as caught:
        bad(lim)
    assert caught.value.field == field, call
    assert isinstance(caught.value, ValueError)
    # nothing was taken or left behind by the refused call
    gc.collect()
    assert lim.in_flight == 0 and lim.queued == 0
    with lim.acquire(timeout=SLOW, units=2):
        pass


# -- window limits ("at most N per T") ----------------------------------------------------------


def _used(lim: Limiter) -> list[float]:
    return [float(w["used"]) for w in lim.snapshot().windows]


def test_a_window_admits_n_then_says_how_long_it_holds_back(make: Make) -> None:
    lim = make(windows=[{"requests": 3, "per": 30}])
    held = [lim.try_acquire() for _ in range(3)]
    assert all(p is not None for p in held)
    assert lim.try_acquire() is None
    seen = lim.try_admit()
    assert isinstance(seen, Availability)
    assert 25 < seen.window <= 31
    assert seen.wait is not None and seen.wait >= seen.window - 1
    assert 25 < lim.availability().window <= 31
    assert _used(lim) == [3]
    for p in held:
        assert p is not None
        p.release()
    assert lim.try_acquire() is None  # a release gives no start back


def test_a_sliding_window_admits_again_once_the_oldest_leaves(make: Make) -> None:
    lim = make(windows=[{"requests": 2, "per": 0.6}])
    t0 = time.monotonic()
    lim.acquire(timeout=SLOW).release()
    lim.acquire(timeout=SLOW).release()
    lim.acquire(timeout=SLOW).release()  # waits for the first to leave the window
    assert time.monotonic() - t0 >= 0.9 * 0.6
    assert time.monotonic() - t0 < 0.6 + SLOW


def test_a_utc_window_counts_until_its_boundary(make: Make) -> None:
    lim = make(windows=[{"requests": 2, "per": 3600, "align": "utc"}])
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is None
    wait = lim.availability().window
    assert 0 < wait <= 3600
    assert lim.limits()["windows"] == [{"requests": 2, "per": 3600.0, "align": "utc"}]  # type: ignore[attr-defined]


def test_a_token_window_is_charged_the_estimate_and_settled(make: Make) -> None:
    lim = make(windows=[{"tokens": 100, "per": 60}])
    first = lim.acquire(timeout=0, tokens=80)
    assert lim.try_acquire(tokens=30) is None
    first.settle(tokens=50)
    assert _used(lim) == [50]
    second = lim.try_acquire(tokens=30)
    assert second is not None
    second.settle(tokens=40)  # 10 more than its estimate
    assert _used(lim) == [90]
    with pytest.raises(RequestTooLargeError):
        lim.acquire(timeout=0, tokens=101)


def test_input_and_output_token_windows_settle_with_their_own_counts(make: Make) -> None:
    lim = make(
        windows=[
            {"tokens": 1000, "per": 60},
            {"input_tokens": 1000, "per": 60},
            {"output_tokens": 1000, "per": 60},
        ]
    )
    p = lim.acquire(timeout=0, tokens=300)
    assert _used(lim) == [300, 300, 300]
    p.settle(tokens=250, input_tokens=200, output_tokens=50)
    assert _used(lim) == [250, 200, 50]


def test_windows_change_hot_and_keep_what_a_same_window_counted(make: Make) -> None:
    lim = make(windows=[{"requests": 2, "per": 30}])
    lim.acquire(timeout=0)
    lim.acquire(timeout=0)
    assert lim.try_acquire() is None
    lim.update(windows=[{"requests": 3, "per": 30}, {"tokens": 10, "per": 30}])
    assert _used(lim) == [2, 0]
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is None
    assert lim.limits()["windows"][0] == {"requests": 3, "per": 30.0, "align": "sliding"}  # type: ignore[attr-defined]
    lim.update(windows=[])
    assert "windows" not in lim.limits()  # type: ignore[attr-defined]
    assert lim.try_acquire() is not None


def test_a_pool_window_bounds_its_members_together(
    make: Make, request: pytest.FixtureRequest
) -> None:
    key = getattr(request.node, "name", "t")[-20:]
    pool = make(key=f"{key}-pool-{id(request)}", windows=[{"requests": 2, "per": 30}])
    a = make(key=f"{key}-a-{id(request)}", pool=pool)
    b = make(key=f"{key}-b-{id(request)}", pool=pool)
    assert a.try_acquire() is not None
    assert b.try_acquire() is not None
    assert a.try_acquire() is None
    assert b.try_acquire() is None
    assert 25 < b.availability().window <= 31
    assert _used(pool) == [2]


BAD_WINDOWS: list[tuple[object, str]] = [
    ([{"requests": 0, "per": 1}], "windows[0].requests"),
    ([{"requests": 1, "per": "1w"}], "windows[0].per"),
    ([{"requests": 1, "per": 0.0001}], "windows[0].per"),
    ([{"requests": 1, "tokens": 1, "per": 1}], "windows[0]"),
    ([{"requests": 1, "per": 1, "align": "gmt"}], "windows[0].align"),
    ([{"requests": 1, "per": 1, "every": 1}], "windows[0].every"),
    ([{"requests": True, "per": 1}], "windows[0].requests"),
]


@pytest.mark.parametrize(("windows", "field"), BAD_WINDOWS, ids=[f for _, f in BAD_WINDOWS])
def test_a_bad_window_is_a_config_error_naming_it(make: Make, windows: object, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(windows=windows)
    assert caught.value.field == field
    lim = make()
    with pytest.raises(ConfigError) as caught:
        lim.update(windows=windows)
    assert caught.value.field == field
    assert "windows" not in lim.limits()  # type: ignore[attr-defined]


def test_a_token_window_settles_a_call_admitted_without_an_estimate(make: Make) -> None:
    lim = make(windows=[{"requests": 5, "per": 30}, {"tokens": 100, "per": 30}])
    p = lim.acquire(timeout=0)
    assert _used(lim) == [1, 0]
    p.settle(tokens=40)
    assert _used(lim) == [1, 40]
    assert lim.try_acquire(tokens=61) is None
    assert lim.try_acquire(tokens=60) is not None


def test_a_pool_token_window_is_settled_with_its_member(
    make: Make, request: pytest.FixtureRequest
) -> None:
    tag = f"{id(request)}"
    pool = make(key=f"settle-pool-{tag}", windows=[{"tokens": 100, "per": 30}])
    member = make(key=f"settle-member-{tag}", pool=pool, windows=[{"tokens": 1000, "per": 30}])
    p = member.acquire(timeout=0, tokens=90)
    assert member.try_acquire(tokens=20) is None  # the pool's window
    p.settle(tokens=30)
    assert _used(pool) == [30] and _used(member) == [30]
    assert member.try_acquire(tokens=70) is not None


def test_a_utc_window_admits_n_per_wall_clock_second(make: Make) -> None:
    """2 per UTC second: 6 blocking acquires span at least 3 seconds of the wall clock."""
    lim = make(windows=[{"requests": 2, "per": 1, "align": "utc"}])
    seconds: dict[int, int] = {}
    t0 = time.monotonic()
    for _ in range(6):
        before = time.time()
        lim.acquire(timeout=SLOW).release()
        after = time.time()
        if math.floor(before) == math.floor(after):  # unambiguous: admitted in that second
            seconds[math.floor(after)] = seconds.get(math.floor(after), 0) + 1
    assert time.monotonic() - t0 > 1.0  # two boundaries crossed at least
    assert all(n <= 2 for n in seconds.values()), seconds
