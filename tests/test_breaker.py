"""The breaker adapter (breaker.py): what counts, half-open probing, and no serialization.

pybreaker keeps time with the wall clock, so these tests use real, short reset
timeouts (0.1-0.2 s) and only ever wait *longer* than needed.
"""

from __future__ import annotations

import threading
import time

import pybreaker
import pytest
from fleet_fixtures import (
    REQUEST,
    StubProvider,
    error_reply,
    make_guard,
    ok_reply,
    open_breaker,
    quota_reply,
    rate_limited_reply,
    run_threads,
)

from ratelimit_sdk.breaker import Breaker, Probe, StateListener
from ratelimit_sdk.clock import SYSTEM_CLOCK
from ratelimit_sdk.config import BreakerConfig
from ratelimit_sdk.models import BreakerVote, Outcome
from ratelimit_sdk.testing import FakeClock

NOT_PROBE = Probe(False)


def breaker(
    fail_max: int = 3, reset_timeout: float = 0.15, on_change: StateListener | None = None
) -> Breaker:
    config = BreakerConfig(fail_max=fail_max, reset_timeout=reset_timeout)
    return Breaker("p", config, on_change=on_change)


def fail(b: Breaker, times: int = 1) -> None:
    for _ in range(times):
        b.record(BreakerVote.FAILURE, NOT_PROBE, RuntimeError("boom"))


def half_open(b: Breaker, reset_timeout: float = 0.15) -> None:
    """Wait until an open breaker would let a probe through."""
    time.sleep(reset_timeout + 0.05)
    assert b.would_allow()


def test_a_fresh_breaker_is_closed_and_lets_everybody_through() -> None:
    b = breaker()
    assert b.state == "closed"
    probes = [b.allow() for _ in range(20)]
    assert all(p is not None and not p.is_probe for p in probes)
    assert b.retry_after() == 0.0
    assert "closed" in repr(b)


def test_opens_after_fail_max_consecutive_failures() -> None:
    b = breaker(fail_max=3, reset_timeout=30.0)
    fail(b, 2)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"
    assert b.allow() is None
    assert not b.would_allow()
    assert 29.0 < b.retry_after() <= 30.0


def test_a_success_resets_the_failure_count() -> None:
    b = breaker(fail_max=3)
    fail(b, 2)
    b.record(BreakerVote.SUCCESS, NOT_PROBE)
    fail(b, 2)
    assert b.state == "closed"


def test_ignored_votes_never_open_it() -> None:
    b = breaker(fail_max=1)
    for _ in range(10):
        b.record(BreakerVote.IGNORE, NOT_PROBE)
    assert b.state == "closed"


@pytest.mark.parametrize(
    "reply",
    [
        rate_limited_reply(0.0),
        rate_limited_reply(None),
        quota_reply(),
        error_reply(400, "bad field"),
        error_reply(422, "unprocessable"),
        error_reply(404, "no such model"),
    ],
    ids=["429", "429-no-retry-after", "quota", "400", "422", "404"],
)
def test_rate_limits_quota_and_bad_requests_do_not_count(reply: object) -> None:
    clock = FakeClock()
    stub = StubProvider("p", default=reply)  # type: ignore[arg-type]
    guard = make_guard("p", stub, clock=clock, breaker={"fail_max": 2})
    for _ in range(6):
        guard.limiter.update(max_concurrent=None)
        clock.advance(3700)  # past any cooldown the answer set
        result = guard.attempt(REQUEST, deadline=clock.monotonic() + 10, max_wait=0)
        assert result.outcome not in (Outcome.CIRCUIT_OPEN, Outcome.COOLING_DOWN)
    assert stub.count == 6
    assert guard.breaker.state == "closed"


@pytest.mark.parametrize(
    "failure",
    [error_reply(500), error_reply(503), error_reply(401), error_reply(200, "not json")],
    ids=["500", "503", "401", "2xx-garbage"],
)
def test_server_errors_count(failure: object) -> None:
    clock = FakeClock()
    stub = StubProvider("p", default=failure)  # type: ignore[arg-type]
    guard = make_guard("p", stub, clock=clock, breaker={"fail_max": 2, "reset_timeout": 30})
    for _ in range(2):
        guard.attempt(REQUEST, deadline=clock.monotonic() + 10, max_wait=0)
    assert guard.breaker.state == "open"
    skipped = guard.attempt(REQUEST, deadline=clock.monotonic() + 10, max_wait=0)
    assert skipped.outcome is Outcome.CIRCUIT_OPEN
    assert stub.count == 2


# -- half-open ------------------------------------------------------------------------------------


def test_half_open_lets_exactly_one_probe_through_under_8_threads() -> None:
    b = breaker(fail_max=1)
    fail(b)
    half_open(b)
    results = run_threads(8, lambda _: b.allow())
    probes = [p for p in results if p is not None]
    assert len(probes) == 1
    assert probes[0].is_probe
    assert results.count(None) == 7
    # While the probe is out, nobody else gets in.
    assert b.allow() is None
    assert not b.would_allow()
    b.record(BreakerVote.SUCCESS, probes[0])
    assert b.state == "closed"
    after = b.allow()
    assert after is not None and not after.is_probe


def test_probe_success_closes() -> None:
    b = breaker(fail_max=2)
    fail(b, 2)
    half_open(b)
    probe = b.allow()
    assert probe is not None and probe.is_probe
    assert b.state == "half-open"
    b.record(BreakerVote.SUCCESS, probe)
    assert b.state == "closed"
    fail(b)  # the count restarted from zero
    assert b.state == "closed"


def test_probe_failure_reopens_for_another_reset_timeout() -> None:
    b = breaker(fail_max=1, reset_timeout=0.15)
    fail(b)
    half_open(b)
    probe = b.allow()
    assert probe is not None and probe.is_probe
    b.record(BreakerVote.FAILURE, probe, RuntimeError("still down"))
    assert b.state == "open"
    assert b.allow() is None
    assert b.retry_after() > 0.05
    half_open(b)  # and it comes back for another probe later
    second = b.allow()
    assert second is not None and second.is_probe


def test_a_probe_given_back_unjudged_lets_the_next_one_through() -> None:
    b = breaker(fail_max=1)
    fail(b)
    half_open(b)
    probe = b.allow()
    assert probe is not None and probe.is_probe
    assert b.allow() is None
    b.record(BreakerVote.IGNORE, probe)  # e.g. the probe was rate limited
    assert b.state == "half-open"
    again = b.allow()
    assert again is not None and again.is_probe


def test_state_changes_reach_the_listener_outside_the_lock() -> None:
    changes: list[tuple[str, str, str]] = []
    holder: list[Breaker] = []

    def on_change(provider: str, old: str, new: str) -> None:
        changes.append((provider, old, new))
        # Calling back into the breaker from the listener must not deadlock.
        done = threading.Event()
        threading.Thread(target=lambda: (holder[0].would_allow(), done.set())).start()
        assert done.wait(5)

    b = breaker(fail_max=1, on_change=on_change)
    holder.append(b)
    fail(b)
    half_open(b)
    probe = b.allow()
    assert probe is not None
    b.record(BreakerVote.SUCCESS, probe)
    assert changes == [
        ("p", "closed", "open"),
        ("p", "open", "half-open"),
        ("p", "half-open", "closed"),
    ]


def test_reconfigure_is_hot() -> None:
    b = breaker(fail_max=5)
    b.reconfigure(BreakerConfig(fail_max=1, reset_timeout=30))
    fail(b)
    assert b.state == "open"
    assert b.retry_after() > 29


# -- never serialize -------------------------------------------------------------------------------


def test_pybreaker_call_serializes_which_is_why_we_never_use_it() -> None:
    """The known pybreaker trap, still present in the installed pybreaker."""
    cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    barrier = threading.Barrier(2, timeout=0.5)

    def both_inside() -> bool:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return False
        return True

    results = run_threads(2, lambda _: _call_quietly(cb, both_inside))
    assert results == [False, False]  # the second call could not start before the first ended


def _call_quietly(cb: pybreaker.CircuitBreaker, fn: object) -> object:
    return cb.call(fn)


def test_8_slow_concurrent_calls_through_one_guard_overlap() -> None:
    """Eight requests to one provider all run at once: the breaker never holds a lock."""
    barrier = threading.Barrier(8, timeout=10)

    def slow(_request: object) -> object:
        barrier.wait()  # breaks (and fails the test) unless all 8 are inside together
        time.sleep(0.05)
        return ok_reply()

    stub = StubProvider("p", default=slow)
    guard = make_guard("p", stub, clock=SYSTEM_CLOCK, breaker={"fail_max": 1})
    results = run_threads(
        8, lambda _: guard.attempt(REQUEST, deadline=time.monotonic() + 30, max_wait=None)
    )
    assert [r.outcome for r in results] == [Outcome.OK] * 8
    assert stub.max_active == 8
    assert guard.limiter.in_flight == 0


def test_keyboard_interrupt_is_not_a_failure() -> None:
    clock = FakeClock()
    stub = StubProvider("p", default=KeyboardInterrupt)
    guard = make_guard("p", stub, clock=clock, breaker={"fail_max": 1})
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            guard.attempt(REQUEST, deadline=clock.monotonic() + 10, max_wait=0)
    assert guard.breaker.state == "closed"
    assert guard.limiter.in_flight == 0


def test_open_breaker_helper_and_retry_after() -> None:
    guard = make_guard("p", clock=FakeClock(), breaker={"fail_max": 2, "reset_timeout": 5})
    open_breaker(guard)
    assert 4 < guard.breaker.retry_after() <= 5
