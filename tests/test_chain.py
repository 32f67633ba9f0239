"""The chain (chain.py): order, skips, busy, retries, fallback, the deadline, coming back.

Guards over stub transports on a FakeClock: every sleep and admission wait is
exact and instant, so the tests can state precisely how long a call waited.
Named chains, ``preferred_model`` and ``use_fallback=False`` are picked by the
client; their tests are in test_client.py.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence

import pytest
from fleet_fixtures import (
    REQUEST,
    EventLog,
    StubProvider,
    error_reply,
    make_guard,
    open_breaker,
    quota_reply,
    rate_limited_reply,
)

from ratelimit_sdk.chain import Cancelled, Chain
from ratelimit_sdk.errors import (
    AcquireTimeout,
    AllProvidersFailed,
    BadRequestError,
    CircuitOpenError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    RateLimitedError,
)
from ratelimit_sdk.guard import Guard
from ratelimit_sdk.hooks import Hooks
from ratelimit_sdk.models import Attempt, ChatResponse, Outcome
from ratelimit_sdk.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


def run(chain: Chain, clock: FakeClock, timeout: float = 30.0) -> ChatResponse:
    response, _, _ = chain.run(REQUEST, deadline=clock.monotonic() + timeout)
    assert response is not None
    return response


def fail(chain: Chain, clock: FakeClock, timeout: float = 30.0) -> AllProvidersFailed:
    with pytest.raises(AllProvidersFailed) as info:
        chain.run(REQUEST, deadline=clock.monotonic() + timeout)
    return info.value


def outcomes(attempts: Sequence[Attempt]) -> list[tuple[str, str]]:
    return [(a.provider, a.outcome.value) for a in attempts]


def chain_of(clock: FakeClock, hooks: Hooks, *guards: Guard) -> Chain:
    return Chain(list(guards), clock=clock, hooks=hooks)


# -- order and fallback -------------------------------------------------------------------------


def test_the_first_provider_answers_when_it_can(clock: FakeClock, hooks: Hooks) -> None:
    a, b = StubProvider("a"), StubProvider("b")
    chain = chain_of(clock, hooks, make_guard("a", a, clock=clock), make_guard("b", b, clock=clock))
    response = run(chain, clock)
    assert (response.provider, response.content, response.model) == ("a", "fine", "stub-model")
    assert outcomes(response.attempts) == [("a", "ok")]
    assert (a.count, b.count) == (1, 0)
    assert chain.names == ["a", "b"]


def test_providers_are_tried_in_order(clock: FakeClock, hooks: Hooks) -> None:
    stubs = [StubProvider(n, default=error_reply(401, "bad key")) for n in "abc"]
    stubs.append(StubProvider("d"))
    guards = [make_guard(s.name, s, clock=clock) for s in stubs]
    response = run(chain_of(clock, hooks, *guards), clock)
    assert outcomes(response.attempts) == [
        ("a", "error"),
        ("b", "error"),
        ("c", "error"),
        ("d", "ok"),
    ]
    assert [s.count for s in stubs] == [1, 1, 1, 1]  # 401: no retry on the same provider


def test_fallback_is_counted_and_announced(clock: FakeClock, hooks: Hooks) -> None:
    log = EventLog()
    hooks.on("fallback", log)
    a = make_guard("a", StubProvider("a", default=error_reply(500)), clock=clock, hooks=hooks)
    b = make_guard("b", clock=clock, hooks=hooks)
    assert run(chain_of(clock, hooks, a, b), clock).provider == "b"
    (event,) = log.events
    assert (event.provider, event.to_provider, event.outcome) == ("a", "b", Outcome.ERROR)
    assert isinstance(event.error, ProviderError)
    assert a.stats().fallbacks == 1 and b.stats().fallbacks == 0


# -- skips ---------------------------------------------------------------------------------------


def test_open_and_cooling_providers_are_skipped_at_once(clock: FakeClock, hooks: Hooks) -> None:
    stubs = {n: StubProvider(n) for n in "abc"}
    a = make_guard("a", stubs["a"], clock=clock, breaker={"fail_max": 1, "reset_timeout": 60})
    b = make_guard("b", stubs["b"], clock=clock)
    c = make_guard("c", stubs["c"], clock=clock)
    open_breaker(a)
    b.limiter.cooldown(30)
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, b, c), clock)
    assert outcomes(response.attempts) == [
        ("a", "circuit_open"),
        ("b", "cooling_down"),
        ("c", "ok"),
    ]
    assert isinstance(response.attempts[0].error, CircuitOpenError)
    assert clock.monotonic() == before  # no waiting at all
    assert (stubs["a"].count, stubs["b"].count) == (0, 0)


def test_a_busy_provider_is_passed_over_when_a_later_one_is_free(
    clock: FakeClock, hooks: Hooks
) -> None:
    a = make_guard("a", clock=clock, limits={"max_concurrent": 1})
    b = make_guard("b", clock=clock)
    held = a.limiter.acquire(timeout=0)
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, b), clock)
    assert outcomes(response.attempts) == [("a", "busy"), ("b", "ok")]
    assert isinstance(response.attempts[0].error, AcquireTimeout)
    assert clock.monotonic() == before  # never queued at a while b was free
    held.release()


def test_admission_waits_at_most_max_queue_wait(clock: FakeClock, hooks: Hooks) -> None:
    a = make_guard("a", clock=clock, limits={"max_concurrent": 1, "max_queue_wait": 0.5})
    b = make_guard("b", clock=clock, limits={"min_interval": 1.0})
    b.limiter.acquire(timeout=0).release()  # b's next start is 1 s away
    held = a.limiter.acquire(timeout=0)
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, b), clock)
    assert outcomes(response.attempts) == [("a", "busy"), ("b", "ok")]
    assert response.attempts[0].elapsed == pytest.approx(0.5)
    # b admitted at its spacing, run from its first (cold) start's latest arrival: 4 x 20 ms
    assert clock.monotonic() - before == pytest.approx(1.0 + 0.08)
    held.release()


def test_a_busy_provider_is_left_when_a_later_one_comes_back(
    clock: FakeClock, hooks: Hooks
) -> None:
    """No call sits in an admission queue while a later provider could take it."""
    a = make_guard("a", clock=clock, limits={"max_concurrent": 1})  # max_queue_wait: None
    b = make_guard("b", clock=clock)
    held = a.limiter.acquire(timeout=0)
    b.limiter.cooldown(1.0)
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, b), clock, timeout=60)
    assert response.provider == "b"
    assert outcomes(response.attempts) == [("a", "busy"), ("b", "ok")]
    assert clock.monotonic() - before == pytest.approx(1.0)
    held.release()


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        error_reply(500),
        error_reply(502),
        error_reply(503),
        error_reply(504),
        error_reply(200, "<html>not json</html>"),
        ProviderTimeout("read timed out", provider="a"),
        ProviderConnectionError("connection reset", provider="a"),
    ],
    ids=["500", "502", "503", "504", "2xx-garbage", "timeout", "reset"],
)
@pytest.mark.parametrize("max_retries", [0, 1, 2, 3])
def test_transient_errors_are_tried_exactly_1_plus_max_retries_times(
    clock: FakeClock, hooks: Hooks, failure: object, max_retries: int
) -> None:
    log = EventLog()
    hooks.on("retry", log)
    stub = StubProvider("a", default=failure)  # type: ignore[arg-type]
    a = make_guard(
        "a",
        stub,
        clock=clock,
        hooks=hooks,
        retry={"max_retries": max_retries, "base_delay": 0.01, "jitter": 0.0},
        breaker={"fail_max": 100},
    )
    b = make_guard("b", clock=clock, hooks=hooks)
    response = run(chain_of(clock, hooks, a, b), clock)
    assert response.provider == "b"
    assert stub.count == 1 + max_retries
    assert a.stats().retries == max_retries
    assert a.stats().requests == 1 + max_retries
    assert [e.delay for e in log.events] == [pytest.approx(0.01 * 2**n) for n in range(max_retries)]
    assert clock.sleeps == [pytest.approx(0.01 * 2**n) for n in range(max_retries)]


def test_no_retry_into_a_breaker_that_just_opened(clock: FakeClock, hooks: Hooks) -> None:
    log = EventLog()
    hooks.on("retry", log)
    stub = StubProvider("a", default=error_reply(503))
    a = make_guard(
        "a",
        stub,
        clock=clock,
        hooks=hooks,
        retry={"max_retries": 5, "base_delay": 1.0},
        breaker={"fail_max": 2, "reset_timeout": 60},
    )
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, make_guard("b", clock=clock)), clock)
    assert outcomes(response.attempts) == [("a", "error"), ("a", "error"), ("b", "ok")]
    assert stub.count == 2
    assert a.stats().retries == 1 and len(log.events) == 1
    assert clock.monotonic() - before == pytest.approx(1.0)  # one backoff, none after opening


def test_a_retry_succeeds_in_place(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a", script=[error_reply(503), error_reply(503)])
    a = make_guard("a", stub, clock=clock, retry={"max_retries": 2})
    response = run(chain_of(clock, hooks, a, make_guard("b", clock=clock)), clock)
    assert response.provider == "a"
    assert outcomes(response.attempts) == [("a", "error"), ("a", "error"), ("a", "ok")]


def test_a_retry_waits_for_retry_after_when_it_fits_max_delay(
    clock: FakeClock, hooks: Hooks
) -> None:
    stub = StubProvider("a", script=[error_reply(503, headers={"retry-after": "0.75"})])
    a = make_guard("a", stub, clock=clock, retry={"max_delay": 1.0})
    response = run(chain_of(clock, hooks, a, make_guard("b", clock=clock)), clock)
    assert response.provider == "a"
    assert clock.sleeps == [pytest.approx(0.75)]


def test_no_retry_when_retry_after_exceeds_max_delay(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a", script=[error_reply(503, headers={"retry-after": "5"})])
    a = make_guard("a", stub, clock=clock, retry={"max_delay": 1.0})
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, make_guard("b", clock=clock)), clock)
    assert outcomes(response.attempts) == [("a", "error"), ("b", "ok")]
    assert stub.count == 1
    assert clock.monotonic() == before


def test_a_rate_limit_moves_on_at_once_when_a_later_provider_is_free(
    clock: FakeClock, hooks: Hooks
) -> None:
    stub = StubProvider("a", script=[rate_limited_reply(0.5)])
    a = make_guard("a", stub, clock=clock)
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, make_guard("b", clock=clock)), clock)
    assert outcomes(response.attempts) == [("a", "rate_limited"), ("b", "ok")]
    assert isinstance(response.attempts[0].error, RateLimitedError)
    assert clock.monotonic() == before  # fits max_delay, but b could take it now


def test_a_rate_limit_retries_in_place_when_nothing_else_can_take_it(
    clock: FakeClock, hooks: Hooks
) -> None:
    stub = StubProvider("a", script=[rate_limited_reply(0.5)])
    a = make_guard("a", stub, clock=clock)
    response = run(chain_of(clock, hooks, a), clock)
    assert outcomes(response.attempts) == [("a", "rate_limited"), ("a", "ok")]
    assert clock.sleeps == [pytest.approx(0.5)]
    assert a.stats().retries == 1


def test_a_rate_limit_longer_than_max_delay_is_not_waited_for(
    clock: FakeClock, hooks: Hooks
) -> None:
    stub = StubProvider("a", script=[rate_limited_reply(5)])
    a = make_guard("a", stub, clock=clock, retry={"max_delay": 1.0})
    before = clock.monotonic()
    error = fail(chain_of(clock, hooks, a), clock, timeout=60)
    assert outcomes(error.attempts) == [("a", "rate_limited")]
    assert stub.count == 1
    assert clock.monotonic() == before


def test_a_rate_limited_provider_is_come_back_to_after_the_others_failed(
    clock: FakeClock, hooks: Hooks
) -> None:
    a_stub = StubProvider("a", script=[rate_limited_reply(0.5)])
    a = make_guard("a", a_stub, clock=clock)
    b = make_guard(
        "b", StubProvider("b", default=error_reply(503)), clock=clock, retry={"max_retries": 1}
    )
    response = run(chain_of(clock, hooks, a, b), clock)
    assert outcomes(response.attempts) == [
        ("a", "rate_limited"),
        ("b", "error"),
        ("b", "error"),
        ("a", "ok"),
    ]
    assert clock.monotonic() - 1000.0 == pytest.approx(0.5)


def test_quota_exhausted_moves_on_and_is_not_retried(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a", script=[quota_reply()])
    a = make_guard("a", stub, clock=clock, retry={"max_retries": 3})
    response = run(chain_of(clock, hooks, a, make_guard("b", clock=clock)), clock)
    assert outcomes(response.attempts) == [("a", "quota_exhausted"), ("b", "ok")]
    assert stub.count == 1


# -- bad requests and total failure ----------------------------------------------------------------


def test_a_bad_request_reaches_only_the_first_provider(clock: FakeClock, hooks: Hooks) -> None:
    a_stub = StubProvider("a", default=error_reply(400, "messages: field required"))
    b_stub = StubProvider("b")
    chain = chain_of(
        clock,
        hooks,
        make_guard("a", a_stub, clock=clock, retry={"max_retries": 3}),
        make_guard("b", b_stub, clock=clock),
    )
    with pytest.raises(BadRequestError) as info:
        chain.run(REQUEST, deadline=clock.monotonic() + 30)
    assert (a_stub.count, b_stub.count) == (1, 0)
    assert info.value.provider == "a" and info.value.status == 400
    assert outcomes(info.value.attempts) == [("a", "bad_request")]  # type: ignore[attr-defined]


def test_all_providers_failed_lists_every_attempt(clock: FakeClock, hooks: Hooks) -> None:
    a = make_guard(
        "a", StubProvider("a", default=error_reply(503)), clock=clock, retry={"max_retries": 1}
    )
    b = make_guard(
        "b",
        StubProvider("b", default=rate_limited_reply(100)),
        clock=clock,
        retry={"max_delay": 1.0},
    )
    c = make_guard("c", clock=clock, breaker={"fail_max": 1, "reset_timeout": 300})
    open_breaker(c)
    d = make_guard(
        "d", StubProvider("d", default=ProviderTimeout("slow", provider="d")), clock=clock
    )
    error = fail(chain_of(clock, hooks, a, b, c, d), clock, timeout=60)
    assert outcomes(error.attempts) == [
        ("a", "error"),
        ("a", "error"),
        ("b", "rate_limited"),
        ("c", "circuit_open"),
        ("d", "timeout"),
        ("d", "timeout"),
        ("d", "timeout"),
    ]
    kinds = [type(a.error) for a in error.attempts]
    assert kinds == [
        ProviderError,
        ProviderError,
        RateLimitedError,
        CircuitOpenError,
        ProviderTimeout,
        ProviderTimeout,
        ProviderTimeout,
    ]
    assert all(a.elapsed >= 0.0 for a in error.attempts)
    assert error.attempts[0].status == 503
    assert isinstance(error.last_error, ProviderTimeout)
    for name in "abcd":
        assert name in str(error)


def test_every_provider_cooling_down_waits_for_the_first_back(
    clock: FakeClock, hooks: Hooks
) -> None:
    a, b = make_guard("a", clock=clock), make_guard("b", clock=clock)
    a.limiter.cooldown(5.0)
    b.limiter.cooldown(2.0)
    before = clock.monotonic()
    response = run(chain_of(clock, hooks, a, b), clock, timeout=10)
    # Nobody can take it: the call waits for the first provider back (b, in 2 s), then
    # walks the chain in order (a is still cooling down) and b answers.
    assert outcomes(response.attempts) == [("a", "cooling_down"), ("b", "ok")]
    assert clock.monotonic() - before == pytest.approx(2.0)


def test_every_provider_cooling_down_past_the_deadline_fails_at_once(
    clock: FakeClock, hooks: Hooks
) -> None:
    a, b = make_guard("a", clock=clock), make_guard("b", clock=clock)
    a.limiter.cooldown(5.0)
    b.limiter.cooldown(2.0)
    before = clock.monotonic()
    error = fail(chain_of(clock, hooks, a, b), clock, timeout=1.5)
    assert outcomes(error.attempts) == [("a", "cooling_down"), ("b", "cooling_down")]
    assert clock.monotonic() == before


# -- the deadline --------------------------------------------------------------------------------


def test_the_timeout_bounds_retries_and_backoff(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a", default=error_reply(503))
    a = make_guard(
        "a",
        stub,
        clock=clock,
        retry={"max_retries": 10, "base_delay": 1.0, "max_delay": 60.0},
        breaker={"fail_max": 100},
    )
    before = clock.monotonic()
    fail(chain_of(clock, hooks, a), clock, timeout=5.0)
    assert clock.monotonic() - before <= 5.0
    assert clock.sleeps == [1.0, 2.0]  # the next wait (4 s) would end past the deadline
    assert stub.count == 3


def test_the_timeout_bounds_slow_answers_too(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a")

    def slow(_request: object) -> object:
        # Each answer takes 2 s; like a real transport, give up at the read timeout.
        allowed = stub.calls[-1]["read_timeout"]
        clock.advance(min(2.0, allowed))
        if allowed < 2.0:
            return ProviderTimeout("read timed out", provider="a")
        return error_reply(503)

    stub.default = slow
    a = make_guard(
        "a",
        stub,
        clock=clock,
        retry={"max_retries": 10, "base_delay": 0.01},
        breaker={"fail_max": 99},
    )
    before = clock.monotonic()
    fail(chain_of(clock, hooks, a), clock, timeout=5.0)
    # Each attempt got at most the time that was left.
    lefts = [call["read_timeout"] for call in stub.calls]
    assert lefts[0] == pytest.approx(5.0)
    assert all(later < earlier for earlier, later in itertools.pairwise(lefts))
    assert clock.monotonic() - before == pytest.approx(5.0)
    assert stub.count == 3


def test_a_zero_timeout_sends_nothing(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a")
    error = fail(chain_of(clock, hooks, make_guard("a", stub, clock=clock)), clock, timeout=0.0)
    assert error.attempts == ()
    assert stub.count == 0
    assert "deadline" in str(error)


def test_a_cancelled_call_stops(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a")
    chain = chain_of(clock, hooks, make_guard("a", stub, clock=clock))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        chain.run(REQUEST, deadline=clock.monotonic() + 10, cancel=cancel)
    assert stub.count == 0


# -- no busy loops ---------------------------------------------------------------------------------


def _run_bounded(chain: Chain, clock: FakeClock, timeout: float) -> BaseException | None:
    """Run the chain on a thread; fail the test if it spins instead of ending."""
    outcome: list[BaseException | None] = []

    def body() -> None:
        try:
            chain.run(REQUEST, deadline=clock.monotonic() + timeout)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the chain loops without waiting"
    return outcome[0]


def test_a_closed_provider_ends_the_call_instead_of_spinning(
    clock: FakeClock, hooks: Hooks
) -> None:
    stub = StubProvider("a")
    a = make_guard("a", stub, clock=clock, limits={"max_concurrent": 1})
    b = make_guard("b", clock=clock)
    b.limiter.cooldown(3.0)
    a.close()
    error = _run_bounded(chain_of(clock, hooks, a, b), clock, timeout=60)
    # b came back after its cooldown and answered; a was never retried in a loop.
    assert error is None
    assert stub.count == 0


def test_a_closed_single_provider_fails_instead_of_spinning(clock: FakeClock, hooks: Hooks) -> None:
    a = make_guard("a", clock=clock)
    a.close()
    error = _run_bounded(chain_of(clock, hooks, a), clock, timeout=60)
    assert isinstance(error, AllProvidersFailed)
    assert len(error.attempts) <= 2


def test_a_probe_in_flight_elsewhere_is_polled_not_spun_on(clock: FakeClock, hooks: Hooks) -> None:
    stub = StubProvider("a")
    a = make_guard("a", stub, clock=clock, breaker={"fail_max": 1, "reset_timeout": 0.05})
    open_breaker(a)
    threading.Event().wait(0.1)
    probe = a.breaker.allow()  # another thread's probe, still out
    assert probe is not None and probe.is_probe
    error = _run_bounded(chain_of(clock, hooks, a), clock, timeout=2.0)
    assert isinstance(error, AllProvidersFailed)
    # One record (repeated skips collapse into the latest), but looked at again and again:
    # polled a bounded number of times, never spun on.
    assert [x.outcome for x in error.attempts] == [Outcome.CIRCUIT_OPEN]
    assert 2 <= len(clock.sleeps) <= 200
    assert stub.count == 0


# -- the chain sees only the guard's interface ---------------------------------------------------


class _InterfaceOnlyGuard:
    """Offers exactly what the chain may use of a guard: no limiter, no config, no socket."""

    def __init__(self, name: str, outcomes: list[Outcome], clock: FakeClock) -> None:
        from ratelimit_sdk.config import RetryConfig
        from ratelimit_sdk.retry import Backoff

        self.name = name
        self.model = f"model-{name}"
        self.backoff = Backoff(RetryConfig(max_retries=1, base_delay=0.5, jitter=0.0))
        self.max_queue_wait: float | None = None
        self.outcomes = outcomes
        self.clock = clock
        self.retries = 0
        self.fallbacks = 0

    def availability(self, request: object = None) -> object:
        from ratelimit_sdk.models import Availability

        return Availability(0.0)

    def attempt(self, request: object, **options: object) -> object:
        from ratelimit_sdk.guard import AttemptResult
        from ratelimit_sdk.models import BreakerVote, Completion, Verdict

        outcome = self.outcomes.pop(0)
        verdict = Verdict(outcome, BreakerVote.IGNORE, retry_same=True)
        completion = Completion("hello") if outcome is Outcome.OK else None
        return AttemptResult(Attempt(self.name, outcome), verdict=verdict, completion=completion)

    def on_release(self, fn: object) -> None:
        pass

    def count_retry(self) -> None:
        self.retries += 1

    def count_fallback(self) -> None:
        self.fallbacks += 1


def test_the_chain_uses_only_the_guard_interface(clock: FakeClock, hooks: Hooks) -> None:
    a = _InterfaceOnlyGuard("a", [Outcome.ERROR, Outcome.ERROR], clock)
    b = _InterfaceOnlyGuard("b", [Outcome.OK], clock)
    chain = Chain([a, b], clock=clock, hooks=hooks)  # type: ignore[list-item]
    response = chain.run(REQUEST, deadline=clock.monotonic() + 30)[0]
    assert response is not None and response.provider == "b"
    assert outcomes(response.attempts) == [("a", "error"), ("a", "error"), ("b", "ok")]
    assert (a.retries, a.fallbacks) == (1, 1)


def test_a_release_notifies_the_fleet_while_a_waiter_is_asking_the_guards(
    clock: FakeClock,
) -> None:
    """The fleet asks guards for their availability outside its lock (with Redis: a round trip)."""
    from ratelimit_sdk.chain import Fleet
    from ratelimit_sdk.models import Availability

    asking = threading.Event()
    proceed = threading.Event()

    class SlowGuard:
        name = "slow"

        def availability(self, request: object = None) -> Availability:
            if not proceed.is_set():
                asking.set()
                proceed.wait(10)
                return Availability(None)
            return Availability(0.0)

        def time_to_take(self, request: object) -> float | None:  # the fleet's old question
            return self.availability(request).wait

    fleet = Fleet(clock)
    waiter = threading.Thread(
        target=fleet.wait_any,
        args=([SlowGuard()], REQUEST, clock.monotonic() + 30, None),
        daemon=True,
    )
    waiter.start()
    assert asking.wait(10)
    notified = threading.Event()
    notifier = threading.Thread(target=lambda: (fleet.notify(), notified.set()), daemon=True)
    notifier.start()
    done_in_time = notified.wait(5)  # the old fleet held its lock here until proceed was set
    proceed.set()
    waiter.join(10)
    assert done_in_time
    assert not waiter.is_alive()


def test_a_provider_that_says_it_has_room_but_refuses_cannot_make_the_chain_spin(
    clock: FakeClock, hooks: Hooks
) -> None:
    """The fleet says "room now", the look that follows is refused: the call pauses, growing."""
    from ratelimit_sdk.guard import AttemptResult
    from ratelimit_sdk.models import Availability

    class Liar(_InterfaceOnlyGuard):
        looks = 0

        def attempt(self, request: object, **options: object) -> object:
            Liar.looks += 1
            pause = Availability(None, reason=Outcome.BUSY)
            return AttemptResult(Attempt(self.name, Outcome.BUSY), pause=pause)

    chain = Chain([Liar("a", [], clock), Liar("b", [], clock)], clock=clock, hooks=hooks)  # type: ignore[list-item]
    with pytest.raises(AllProvidersFailed):
        chain.run(REQUEST, deadline=clock.monotonic() + 30)
    assert Liar.looks < 400  # without the pause it looked forever (the fake clock stood still)
