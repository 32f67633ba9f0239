"""The guard (guard.py): one attempt = breaker gate -> permit -> send -> classify -> record.

A stub transport and a FakeClock make every wait and cooldown exact and instant.
"""

from __future__ import annotations

import logging
import threading

import pytest
from fleet_fixtures import (
    REQUEST,
    EventLog,
    StubProvider,
    error_reply,
    make_guard,
    ok_reply,
    open_breaker,
    quota_reply,
    rate_limited_reply,
    wait_until,
)

from ratelimit_sdk.classify import classify
from ratelimit_sdk.errors import (
    AcquireTimeout,
    BadRequestError,
    CircuitOpenError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    QuotaExhaustedError,
    RateLimitedError,
)
from ratelimit_sdk.guard import AttemptResult, Cancelled, Guard
from ratelimit_sdk.hooks import Hooks
from ratelimit_sdk.models import ChatRequest, Outcome, Reply
from ratelimit_sdk.retry import Decision, Step, decide
from ratelimit_sdk.testing import FakeClock
from ratelimit_sdk.testing.shapes import NGINX_429_BODY


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def attempt(guard: Guard, clock: FakeClock, **kwargs: object) -> AttemptResult:
    options: dict[str, object] = {"deadline": clock.monotonic() + 30.0, "max_wait": None}
    options.update(kwargs)
    return guard.attempt(REQUEST, **options)  # type: ignore[arg-type]


# -- the permit is always given back -----------------------------------------------------------


def test_success_releases_the_permit_and_counts(clock: FakeClock) -> None:
    guard = make_guard("p", clock=clock, limits={"max_concurrent": 1})
    result = attempt(guard, clock)
    assert result.outcome is Outcome.OK
    assert result.completion is not None and result.completion.content == "fine"
    assert result.attempt.provider == "p" and result.attempt.status == 200
    assert result.attempt.error is None
    assert guard.limiter.in_flight == 0
    stats = guard.stats()
    assert (stats.requests, stats.ok, stats.errors, stats.rate_limited) == (1, 1, 0, 0)
    assert stats.breaker_state == "closed"


@pytest.mark.parametrize(
    "raised",
    [
        KeyboardInterrupt,
        SystemExit,
        RuntimeError("a bug in a transport"),
        MemoryError,
        Cancelled,
    ],
    ids=["KeyboardInterrupt", "SystemExit", "RuntimeError", "MemoryError", "Cancelled"],
)
def test_every_exception_from_the_provider_releases_the_permit(
    clock: FakeClock, raised: BaseException
) -> None:
    stub = StubProvider("p", script=[raised])
    guard = make_guard("p", stub, clock=clock, limits={"max_concurrent": 1})
    expected = raised if isinstance(raised, type) else type(raised)
    with pytest.raises(expected):
        attempt(guard, clock)
    assert guard.limiter.in_flight == 0
    assert guard.breaker.state == "closed"
    # The provider is usable at once: the single permit is really back.
    assert attempt(guard, clock, max_wait=0).outcome is Outcome.OK


def test_keyboard_interrupt_during_a_half_open_probe_gives_the_probe_back(
    clock: FakeClock,
) -> None:
    stub = StubProvider("p", script=[KeyboardInterrupt])
    guard = make_guard("p", stub, clock=clock, breaker={"fail_max": 1, "reset_timeout": 0.05})
    open_breaker(guard)
    threading.Event().wait(0.1)  # real time: pybreaker's own clock
    with pytest.raises(KeyboardInterrupt):
        attempt(guard, clock)
    assert guard.breaker.state == "half-open"
    # Not stuck "probe out": the next attempt becomes the probe and closes the breaker.
    assert attempt(guard, clock).outcome is Outcome.OK
    assert guard.breaker.state == "closed"


@pytest.mark.parametrize(
    ("failure", "outcome", "error"),
    [
        (ProviderTimeout("read timed out", provider="p"), Outcome.TIMEOUT, ProviderTimeout),
        (ProviderConnectionError("reset", provider="p"), Outcome.ERROR, ProviderError),
        (error_reply(503), Outcome.ERROR, ProviderError),
        (error_reply(200, "<html>"), Outcome.ERROR, ProviderError),
        (error_reply(400, "bad field"), Outcome.BAD_REQUEST, BadRequestError),
        (rate_limited_reply(2), Outcome.RATE_LIMITED, RateLimitedError),
        (quota_reply(), Outcome.QUOTA_EXHAUSTED, QuotaExhaustedError),
    ],
)
def test_provider_trouble_comes_back_as_a_result(
    clock: FakeClock, failure: object, outcome: Outcome, error: type[Exception]
) -> None:
    stub = StubProvider("p", script=[failure])  # type: ignore[list-item]
    guard = make_guard("p", stub, clock=clock, limits={"max_concurrent": 1})
    result = attempt(guard, clock)
    assert result.outcome is outcome
    assert isinstance(result.attempt.error, error)
    assert result.attempt.error.provider == "p"  # type: ignore[attr-defined]
    assert guard.limiter.in_flight == 0


# -- cooldowns ---------------------------------------------------------------------------------


def test_429_retry_after_sets_the_cooldown(clock: FakeClock) -> None:
    log = EventLog()
    hooks = Hooks()
    hooks.on("*", log)
    stub = StubProvider("p", script=[rate_limited_reply(7)])
    guard = make_guard("p", stub, clock=clock, hooks=hooks)
    result = attempt(guard, clock)
    assert result.outcome is Outcome.RATE_LIMITED
    assert result.verdict is not None and result.verdict.retry_after == 7.0
    assert guard.limiter.cooldown_remaining() == pytest.approx(7.0)
    assert guard.unavailable_for() == (Outcome.COOLING_DOWN, pytest.approx(7.0))
    assert not guard.can_take_now(REQUEST)
    assert [e.delay for e in log.of("cooldown")] == [pytest.approx(7.0)]
    assert [e.provider for e in log.of("rate_limited")] == ["p"]
    clock.advance(7.0)
    assert guard.limiter.cooldown_remaining() == 0.0
    assert guard.can_take_now(REQUEST)


def test_the_cooldown_is_set_before_the_permit_goes_back() -> None:
    """A caller queued behind a throttled request must not slip in before the cooldown."""
    from ratelimit_sdk.clock import SYSTEM_CLOCK

    answer = threading.Event()

    def throttled(_request: object) -> object:
        assert answer.wait(10)
        return rate_limited_reply(5)

    stub = StubProvider("p", script=[throttled])
    guard = make_guard("p", stub, clock=SYSTEM_CLOCK, limits={"max_concurrent": 1})
    first: list[AttemptResult] = []
    worker = threading.Thread(
        target=lambda: first.append(
            guard.attempt(REQUEST, deadline=SYSTEM_CLOCK.monotonic() + 30, max_wait=None)
        )
    )
    worker.start()
    wait_until(lambda: stub.count == 1)
    second: list[AttemptResult] = []
    queued = threading.Thread(
        target=lambda: second.append(
            guard.attempt(REQUEST, deadline=SYSTEM_CLOCK.monotonic() + 30, max_wait=0.5)
        )
    )
    queued.start()
    wait_until(lambda: guard.limiter.queued == 1)
    answer.set()
    worker.join(10)
    queued.join(10)
    assert first[0].outcome is Outcome.RATE_LIMITED
    assert second[0].outcome is Outcome.BUSY  # held back by the cooldown, nothing sent
    assert stub.count == 1
    assert guard.limiter.in_flight == 0


def test_429_with_exhausted_remaining_header_cools_down_until_the_reset(clock: FakeClock) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2.5s"}
    stub = StubProvider("p", script=[rate_limited_reply(None, headers=headers)])
    guard = make_guard("p", stub, clock=clock)
    assert attempt(guard, clock).outcome is Outcome.RATE_LIMITED
    assert guard.limiter.cooldown_remaining() == pytest.approx(2.5)


def test_429_without_any_wait_cools_down_for_the_backoff_delay(clock: FakeClock) -> None:
    stub = StubProvider("p", script=[rate_limited_reply(None)])
    guard = make_guard("p", stub, clock=clock, retry={"base_delay": 0.4, "jitter": 0.0})
    assert attempt(guard, clock).outcome is Outcome.RATE_LIMITED
    assert guard.limiter.cooldown_remaining() == pytest.approx(0.4)


def test_success_with_remaining_zero_cools_down_until_the_next_slot(clock: FakeClock) -> None:
    headers = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "5s",
    }
    stub = StubProvider("p", script=[ok_reply(headers=headers)])
    guard = make_guard("p", stub, clock=clock)
    assert attempt(guard, clock).outcome is Outcome.OK
    # 5 s / 10 requests, counted from the send, plus the default 20 ms safety margin
    assert guard.limiter.cooldown_remaining() == pytest.approx(0.5 + 0.02)


def test_success_with_budget_left_sets_no_cooldown(clock: FakeClock) -> None:
    headers = {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "5s"}
    guard = make_guard("p", StubProvider("p", script=[ok_reply(headers=headers)]), clock=clock)
    assert attempt(guard, clock).outcome is Outcome.OK
    assert guard.limiter.cooldown_remaining() == 0.0


def test_quota_without_reset_cools_down_for_quota_cooldown(clock: FakeClock) -> None:
    guard = make_guard(
        "p", StubProvider("p", script=[quota_reply()]), clock=clock, limits={"quota_cooldown": 120}
    )
    assert attempt(guard, clock).outcome is Outcome.QUOTA_EXHAUSTED
    assert guard.limiter.cooldown_remaining() == pytest.approx(120.0)
    assert guard.stats().rate_limited == 1


def test_quota_with_a_reset_header_cools_down_until_then(clock: FakeClock) -> None:
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    guard = make_guard("p", StubProvider("p", script=[quota_reply(headers)]), clock=clock)
    assert attempt(guard, clock).outcome is Outcome.QUOTA_EXHAUSTED
    assert guard.limiter.cooldown_remaining() == pytest.approx(360.0)


def test_server_errors_set_no_cooldown(clock: FakeClock) -> None:
    guard = make_guard("p", StubProvider("p", script=[error_reply(503)]), clock=clock)
    assert attempt(guard, clock).outcome is Outcome.ERROR
    assert guard.limiter.cooldown_remaining() == 0.0


# -- skips: nothing is sent --------------------------------------------------------------------


def test_open_breaker_skips_without_sending(clock: FakeClock) -> None:
    stub = StubProvider("p")
    guard = make_guard("p", stub, clock=clock, breaker={"fail_max": 1, "reset_timeout": 30})
    open_breaker(guard)
    result = attempt(guard, clock)
    assert result.outcome is Outcome.CIRCUIT_OPEN
    assert isinstance(result.attempt.error, CircuitOpenError)
    assert 29 < result.wait_hint <= 30
    assert stub.count == 0
    assert guard.stats().requests == 0


def test_cooling_down_skips_without_sending_or_waiting(clock: FakeClock) -> None:
    stub = StubProvider("p")
    guard = make_guard("p", stub, clock=clock)
    guard.limiter.cooldown(12.0)
    before = clock.monotonic()
    result = attempt(guard, clock)
    assert result.outcome is Outcome.COOLING_DOWN
    assert result.wait_hint == pytest.approx(12.0)
    assert clock.monotonic() == before
    assert stub.count == 0


def test_busy_after_max_wait(clock: FakeClock) -> None:
    stub = StubProvider("p")
    guard = make_guard("p", stub, clock=clock, limits={"max_concurrent": 1})
    held = guard.limiter.acquire(timeout=0)
    before = clock.monotonic()
    result = attempt(guard, clock, max_wait=0.75)
    assert result.outcome is Outcome.BUSY
    assert isinstance(result.attempt.error, AcquireTimeout)
    assert clock.monotonic() - before == pytest.approx(0.75)
    assert result.attempt.elapsed == pytest.approx(0.75)
    assert stub.count == 0
    held.release()
    assert guard.limiter.in_flight == 0


def test_admission_never_waits_past_the_deadline(clock: FakeClock) -> None:
    guard = make_guard("p", clock=clock, limits={"max_concurrent": 1})
    held = guard.limiter.acquire(timeout=0)
    before = clock.monotonic()
    result = attempt(guard, clock, deadline=before + 2.0, max_wait=None)
    assert result.outcome is Outcome.BUSY
    assert clock.monotonic() - before == pytest.approx(2.0)
    held.release()


def test_a_busy_probe_is_given_back(clock: FakeClock) -> None:
    guard = make_guard(
        "p",
        clock=clock,
        limits={"max_concurrent": 1},
        breaker={"fail_max": 1, "reset_timeout": 0.05},
    )
    open_breaker(guard)
    threading.Event().wait(0.1)
    held = guard.limiter.acquire(timeout=0)
    assert attempt(guard, clock, max_wait=0).outcome is Outcome.BUSY
    held.release()
    assert attempt(guard, clock).outcome is Outcome.OK
    assert guard.breaker.state == "closed"


def test_the_http_timeouts_never_outlast_the_deadline(clock: FakeClock) -> None:
    stub = StubProvider("p")
    guard = make_guard("p", stub, clock=clock)
    attempt(guard, clock, deadline=clock.monotonic() + 1.5)
    call = stub.calls[-1]
    assert call["read_timeout"] == pytest.approx(1.5)
    assert call["connect_timeout"] == pytest.approx(1.5)
    attempt(guard, clock, deadline=float("inf"))
    assert stub.calls[-1]["read_timeout"] == guard.config.timeout.read


def test_cancelled_before_sending_sends_nothing(clock: FakeClock) -> None:
    stub = StubProvider("p")
    guard = make_guard("p", stub, clock=clock)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        attempt(guard, clock, cancel=cancel)
    assert stub.count == 0
    assert guard.limiter.in_flight == 0


# -- counters, hooks and control ---------------------------------------------------------------


def test_counters(clock: FakeClock) -> None:
    script = [ok_reply(), error_reply(500), rate_limited_reply(0.5), quota_reply(), ok_reply()]
    guard = make_guard("p", StubProvider("p", script=script), clock=clock)
    for _ in script:
        clock.advance(4000)
        attempt(guard, clock)
    guard.count_retry()
    guard.count_fallback()
    guard.count_fallback()
    stats = guard.stats()
    assert stats.counters == {
        "requests": 5,
        "ok": 2,
        "rate_limited": 2,
        "errors": 1,
        "retries": 1,
        "fallbacks": 2,
    }
    assert stats.wait_p50 == 0.0 and stats.wait_p95 == 0.0


def test_hooks_that_raise_never_break_a_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Hooks()

    def explode(event: object) -> None:
        raise RuntimeError("hook bug")

    hooks.on("*", explode)
    script = [rate_limited_reply(1), ok_reply()]
    guard = make_guard("p", StubProvider("p", script=script), clock=clock, hooks=hooks)
    with caplog.at_level(logging.ERROR, logger="ratelimit_sdk"):
        assert attempt(guard, clock).outcome is Outcome.RATE_LIMITED
        clock.advance(1)
        assert attempt(guard, clock).outcome is Outcome.OK
    assert guard.limiter.in_flight == 0
    assert any("hook bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_attempt_event_for_every_attempt(clock: FakeClock) -> None:
    log = EventLog()
    hooks = Hooks()
    hooks.on("attempt", log)
    guard = make_guard("p", StubProvider("p", script=[error_reply(502)]), clock=clock, hooks=hooks)
    attempt(guard, clock)
    attempt(guard, clock)
    assert [e.outcome for e in log.events] == [Outcome.ERROR, Outcome.OK]


def test_apply_changes_limits_hot(clock: FakeClock) -> None:
    guard = make_guard("p", clock=clock, limits={"max_concurrent": 1})
    held = guard.limiter.acquire(timeout=0)
    assert not guard.can_take_now(REQUEST)
    config = guard.config.model_copy(
        update={"limits": guard.config.limits.model_copy(update={"max_concurrent": 2})}
    )
    guard.apply(config)
    assert guard.can_take_now(REQUEST)
    assert attempt(guard, clock, max_wait=0).outcome is Outcome.OK
    held.release()


def test_an_estimate_over_the_whole_token_budget_is_charged_the_budget(clock: FakeClock) -> None:
    guard = make_guard("p", clock=clock, limits={"tokens_per_minute": 100})
    big = ChatRequest(messages=[{"role": "user", "content": "x" * 4000}], max_tokens=10)
    assert guard.can_take_now(big)
    assert attempt_request(guard, clock, big).outcome is Outcome.OK
    assert guard.limiter.in_flight == 0


def attempt_request(guard: Guard, clock: FakeClock, request: ChatRequest) -> AttemptResult:
    return guard.attempt(request, deadline=clock.monotonic() + 30, max_wait=None)


def test_token_estimate_is_settled_with_the_usage(clock: FakeClock) -> None:
    guard = make_guard("p", clock=clock, limits={"tokens_per_minute": 1000})
    request = ChatRequest(messages=[{"role": "user", "content": "x" * 400}], max_tokens=200)
    attempt_request(guard, clock, request)
    snap = guard.limiter.snapshot()
    assert snap.llm_tokens == pytest.approx(1000 - 5)  # charged 301, settled to usage (5)


def test_close_closes_the_transport(clock: FakeClock) -> None:
    stub = StubProvider("p")
    guard = make_guard("p", stub, clock=clock)
    guard.close()
    assert stub.closed
    assert "p" in repr(guard)


# -- a 429 without a wait on a paced provider; learned concurrency -------------------------------


def nginx_429() -> Reply:
    """nginx ``limit_req``'s refusal: 429, an HTML body, no Retry-After."""
    return Reply(status=429, headers={"content-type": "text/html"}, excerpt=NGINX_429_BODY)


def test_429_without_a_wait_on_a_paced_provider_waits_for_the_next_slot(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our pacing ran ahead of the server: the limiter's next slot, not the 1 s backoff."""
    stub = StubProvider("p", script=[nginx_429()])
    guard = make_guard("p", stub, clock=clock, limits={"requests_per_minute": 600})
    overruns: list[None] = []

    def report_overrun() -> float:
        overruns.append(None)
        return 0.37

    monkeypatch.setattr(guard.limiter, "report_overrun", report_overrun)
    result = attempt(guard, clock)
    assert result.outcome is Outcome.RATE_LIMITED
    assert result.verdict is not None and result.verdict.limit == "rate"
    assert len(overruns) == 1
    assert guard.limiter.cooldown_remaining() == pytest.approx(0.37)
    assert result.retry_wait == pytest.approx(0.37)
    decided = decide(
        result.outcome,
        retries=0,
        backoff=guard.backoff,
        time_left=30.0,
        retry_after=result.verdict.retry_after,
        pause=result.pause,
        retry_wait=result.retry_wait,
    )
    assert decided == Decision(Step.RETRY, delay=pytest.approx(0.37))


def test_429_without_a_wait_on_a_paced_provider_is_not_the_backoff(clock: FakeClock) -> None:
    """The real limiter's report (whatever its allowance) is its next slot: under 1/rate here."""
    stub = StubProvider("p", script=[nginx_429()])
    limits = {"requests_per_minute": 600}
    guard = make_guard("p", stub, clock=clock, limits=limits, retry={"jitter": 0.0})
    result = attempt(guard, clock)
    assert result.outcome is Outcome.RATE_LIMITED
    assert guard.limiter.cooldown_remaining() < 0.5  # the backoff would be 1.0 s
    assert result.retry_wait is not None and result.retry_wait < 0.5


def test_429_without_a_wait_on_a_learned_rate_lowers_it_and_widens_nothing(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learner lowered the rate: that was the cause, not jitter; the next slot is the wait."""
    stub = StubProvider("p", script=[nginx_429()])
    guard = make_guard("p", stub, clock=clock, limits={"requests_per_minute": "auto"})
    monkeypatch.setattr(guard.limiter, "report_overrun", lambda: pytest.fail("not jitter"))
    before = guard.limiter.limits()["requests_per_minute"]
    result = attempt(guard, clock)
    assert result.outcome is Outcome.RATE_LIMITED
    assert guard.limiter.limits()["requests_per_minute"] < before
    assert result.retry_wait == pytest.approx(guard.limiter.cooldown_remaining())
    assert result.retry_wait is not None and result.retry_wait < 0.5


def test_429_without_a_wait_on_an_unpaced_provider_keeps_the_backoff(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub = StubProvider("p", script=[nginx_429()])
    guard = make_guard("p", stub, clock=clock, retry={"base_delay": 0.4, "jitter": 0.0})
    monkeypatch.setattr(guard.limiter, "report_overrun", lambda: pytest.fail("not paced"))
    result = attempt(guard, clock)
    assert guard.limiter.cooldown_remaining() == pytest.approx(0.4)
    assert result.retry_wait is None


def test_a_concurrency_refusal_under_auto_lowers_the_limit_without_a_cooldown(
    clock: FakeClock,
) -> None:
    log = EventLog()
    hooks = Hooks()
    hooks.on("*", log)
    body = "request reached max organization concurrency: 3, please try again after 1 seconds"
    refusal = error_reply(429, body, type_="rate_limit_reached_error")
    stub = StubProvider("p", script=[refusal])
    guard = make_guard("p", stub, clock=clock, hooks=hooks, limits={"max_concurrent": "auto"})
    assert guard.limiter.limits()["max_concurrent"] == 4
    result = attempt(guard, clock)
    assert result.verdict is not None and result.verdict.limit == "concurrency"
    assert guard.limiter.limits()["max_concurrent"] == 2
    assert guard.limiter.cooldown_remaining() == 0.0
    assert result.retry_wait == 0.0
    assert guard.stats().learned == {"max_concurrent": 2}
    assert [e.state for e in log.of("learned")] == ["max_concurrent=2"]


def test_a_concurrency_refusal_at_the_lower_bound_cools_down_as_before(clock: FakeClock) -> None:
    refusal = error_reply(429, "max organization concurrency: 1", type_="rate_limit_reached_error")
    stub = StubProvider("p", script=[refusal])
    limits = {"max_concurrent": "auto", "auto": {"start_concurrent": 1}}
    retry = {"base_delay": 0.4, "jitter": 0.0}
    guard = make_guard("p", stub, clock=clock, limits=limits, retry=retry)
    result = attempt(guard, clock)
    assert guard.limiter.limits()["max_concurrent"] == 1
    assert guard.limiter.cooldown_remaining() == pytest.approx(0.4)  # the backoff
    assert result.retry_wait is None


def test_declared_limits_are_adopted_and_shown(clock: FakeClock) -> None:
    headers = {"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "1199"}
    stub = StubProvider("p", script=[ok_reply(headers=headers)])
    guard = make_guard("p", stub, clock=clock, limits={"requests_per_minute": "auto"})
    assert attempt(guard, clock).outcome is Outcome.OK
    assert guard.limiter.limits()["requests_per_minute"] == 1200.0
    assert guard.stats().learned == {"requests_per_minute": 1200.0}


def test_apply_keeps_learned_values(clock: FakeClock) -> None:
    headers = {"x-ratelimit-limit-requests": "1200"}
    stub = StubProvider("p", script=[ok_reply(headers=headers)])
    guard = make_guard("p", stub, clock=clock, limits={"requests_per_minute": "auto"})
    attempt(guard, clock)
    config = guard.config.model_copy(update={"retry": {"max_retries": 1}})
    guard.apply(config)
    assert guard.limiter.limits()["requests_per_minute"] == 1200.0
    assert guard.learner is not None


def test_every_429_of_a_learned_rate_leaves_the_jitter_allowance_alone(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal that lowers nothing (old news of one overshoot) widens nothing either."""
    guard = make_guard("p", StubProvider("p"), clock=clock, limits={"requests_per_minute": "auto"})
    monkeypatch.setattr(guard.limiter, "report_overrun", lambda: pytest.fail("not jitter"))
    verdict = classify(nginx_429(), now=clock.time())
    assert verdict.limit == "rate"
    cooldown, retry_wait = guard._cooldown_for(verdict, 0, learned=False)
    assert cooldown == retry_wait == pytest.approx(guard.limiter.snapshot().next_start_in)
