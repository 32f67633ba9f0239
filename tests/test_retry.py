"""retry.py: the backoff formula, jitter, the max_delay cap, Retry-After fit, decide(), the loop.

Pure tables: a constant or seeded ``rand`` makes every value exact.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from ratelimit_sdk.config import RetryConfig
from ratelimit_sdk.models import Availability, Outcome
from ratelimit_sdk.retry import PROBE_POLL, Backoff, Decision, Step, decide, run_attempts


def backoff(rand: Callable[[], float] | float = 0.0, **config: float) -> Backoff:
    settings = {"max_retries": 3, "base_delay": 1.0, "max_delay": 60.0, "jitter": 0.25}
    settings.update(config)
    return Backoff(RetryConfig(**settings), rand=rand)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0), (6, 60.0), (7, 60.0)],
)
def test_delay_doubles_from_base_delay_and_is_capped(n: int, expected: float) -> None:
    assert backoff(lambda: 0.0).delay(n) == expected


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, 4.0), (0.5, 4.5), (0.999, 4.999)],
)
def test_jitter_adds_draw_times_jitter(draw: float, expected: float) -> None:
    assert backoff(lambda: draw).delay(2) == pytest.approx(expected)


def test_a_constant_rand_is_the_draw() -> None:
    assert backoff(0.5).delay(2) == pytest.approx(4.5)
    assert backoff(0.0).delay(2) == 4.0


def test_jitter_stays_in_bounds_with_a_seeded_rand() -> None:
    policy = backoff(random.Random(1234).random, base_delay=0.5, jitter=0.4, max_delay=1e6)
    for n in range(6):
        low = 0.5 * 2**n
        draws = [policy.delay(n) for _ in range(200)]
        assert all(low <= d <= low * 1.4 for d in draws)
        assert len(set(draws)) > 100  # it really is random
        assert max(draws) > low * 1.3 and min(draws) < low * 1.1


def test_zero_jitter_is_exact_whatever_the_draw() -> None:
    assert backoff(lambda: 0.9, jitter=0.0).delay(3) == 8.0


def test_the_cap_applies_after_jitter() -> None:
    policy = backoff(lambda: 0.99, base_delay=1.0, jitter=1.0, max_delay=3.0)
    assert policy.delay(1) == 3.0  # 2 * 1.99 would be 3.98


def test_huge_retry_numbers_do_not_overflow() -> None:
    assert backoff(lambda: 0.5).delay(10_000) == 60.0


def test_zero_base_delay_means_no_wait() -> None:
    assert backoff(lambda: 0.5, base_delay=0.0).delay(5) == 0.0


def test_negative_retry_number_is_refused() -> None:
    with pytest.raises(ValueError, match="retry number"):
        backoff().delay(-1)


# -- next_wait: retry or stop ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "retry_after", "expected"),
    [
        (0, None, 1.0),  # plain backoff
        (2, None, 4.0),
        (0, 0.5, 1.0),  # the server asks less than the backoff: backoff wins
        (0, 7.0, 7.0),  # the server asks more: its wait wins
        (1, 60.0, 60.0),  # exactly max_delay still fits
        (0, 60.01, None),  # longer than max_delay: stop retrying here, move on
        (0, 3600.0, None),
        (3, None, None),  # max_retries reached
        (4, 1.0, None),
    ],
)
def test_next_wait(n: int, retry_after: float | None, expected: float | None) -> None:
    assert backoff(lambda: 0.0).next_wait(n, retry_after) == expected


def test_max_retries_zero_means_one_try_only() -> None:
    assert backoff(max_retries=0).next_wait(0) is None


@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
def test_exactly_max_retries_waits_are_granted(max_retries: int) -> None:
    policy = backoff(lambda: 0.0, max_retries=max_retries, base_delay=0.01)
    granted = 0
    while policy.next_wait(granted) is not None:
        granted += 1
        assert granted <= 100
    assert granted == max_retries


def test_next_wait_is_capped_by_max_delay_too() -> None:
    policy = backoff(lambda: 0.0, max_retries=10, base_delay=1.0, max_delay=5.0)
    assert policy.next_wait(8) == 5.0


# -- the cooldown a rate-limit answer sets ---------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "retry_after", "expected"),
    [(0, 30.0, 30.0), (2, 0.25, 0.25), (0, None, 1.0), (1, None, 2.0), (1, 0.0, 2.0)],
)
def test_cooldown_for(n: int, retry_after: float | None, expected: float) -> None:
    assert backoff(lambda: 0.0).cooldown_for(n, retry_after) == expected


def test_backoff_is_a_shareable_value() -> None:
    config = RetryConfig(max_retries=1)
    assert Backoff(config) == Backoff(config, rand=lambda: 0.3)
    assert math.isfinite(Backoff(config).delay(0))


# -- decide(): retry here, move on, or stop -------------------------------------------------


COOLING = Outcome.COOLING_DOWN
OPEN = Outcome.CIRCUIT_OPEN


def cooling(seconds: float) -> Availability:
    return Availability(seconds, cooldown=seconds, reason=COOLING)


def opened(seconds: float) -> Availability:
    return Availability(seconds, reason=OPEN)


# (outcome, facts, expected decision); backoff: base 1, max_delay 60, 3 retries, no jitter.
DECISIONS = [
    ("ok", (Outcome.OK, {}), Decision(Step.DONE)),
    ("bad request stops", (Outcome.BAD_REQUEST, {}), Decision(Step.STOP)),
    (
        "open: back when it half-opens",
        (OPEN, {"pause": opened(12.0)}),
        Decision(Step.MOVE_ON, comeback=12.0),
    ),
    (
        "cooling: back when it ends",
        (COOLING, {"pause": cooling(3.0)}),
        Decision(Step.MOVE_ON, comeback=3.0),
    ),
    (
        "busy, unknown: look again",
        (Outcome.BUSY, {"pause": Availability(None, reason=Outcome.BUSY)}),
        Decision(Step.MOVE_ON, comeback=0.0),
    ),
    (
        "busy, closed: never",
        (Outcome.BUSY, {"pause": Availability(math.inf)}),
        Decision(Step.MOVE_ON, comeback=math.inf),
    ),
    (
        "quota: back after the long cooldown",
        (Outcome.QUOTA_EXHAUSTED, {"pause": cooling(3600.0)}),
        Decision(Step.MOVE_ON, comeback=3600.0),
    ),
    ("error: retry after backoff 0", (Outcome.ERROR, {}), Decision(Step.RETRY, delay=1.0)),
    (
        "error: retry after backoff 2",
        (Outcome.ERROR, {"retries": 2}),
        Decision(Step.RETRY, delay=4.0),
    ),
    ("error: retries used up", (Outcome.ERROR, {"retries": 3}), Decision(Step.MOVE_ON)),
    (
        "error: the wait does not fit the deadline",
        (Outcome.ERROR, {"time_left": 0.5}),
        Decision(Step.MOVE_ON),
    ),
    (
        "error: waits as long as the server asks",
        (Outcome.ERROR, {"retry_after": 9.0}),
        Decision(Step.RETRY, delay=9.0),
    ),
    (
        "error: server asks past max_delay",
        (Outcome.ERROR, {"retry_after": 61.0}),
        Decision(Step.MOVE_ON),
    ),
    ("timeout: retried like an error", (Outcome.TIMEOUT, {}), Decision(Step.RETRY, delay=1.0)),
    (
        "error the classifier says not to repeat",
        (Outcome.ERROR, {"retry_same": False}),
        Decision(Step.MOVE_ON),
    ),
    (
        "error that opened the breaker",
        (Outcome.ERROR, {"pause": opened(30.0)}),
        Decision(Step.MOVE_ON, comeback=30.0),
    ),
    (
        "error that opened it, probe out",
        (Outcome.ERROR, {"pause": opened(0.0)}),
        Decision(Step.MOVE_ON, comeback=PROBE_POLL),
    ),
    (
        "429, later free: move on at once",
        (Outcome.RATE_LIMITED, {"pause": cooling(30.0), "throttles": 1, "later_free": True}),
        Decision(Step.MOVE_ON, comeback=30.0),
    ),
    (
        "429, later free, cooldown past max_delay",
        (Outcome.RATE_LIMITED, {"pause": cooling(90.0), "throttles": 1, "later_free": True}),
        Decision(Step.MOVE_ON),
    ),
    (
        "429, later free, 429s used up",
        (Outcome.RATE_LIMITED, {"pause": cooling(5.0), "throttles": 4, "later_free": True}),
        Decision(Step.MOVE_ON),
    ),
    (
        "429, nobody else: retry after the cooldown",
        (Outcome.RATE_LIMITED, {"pause": cooling(5.0), "throttles": 1}),
        Decision(Step.RETRY, delay=5.0),
    ),
    (
        "429, nobody else: backoff longer than cooldown",
        (Outcome.RATE_LIMITED, {"pause": cooling(0.5), "throttles": 1}),
        Decision(Step.RETRY, delay=1.0),
    ),
    (
        "429, nobody else: Retry-After wins",
        (Outcome.RATE_LIMITED, {"pause": cooling(2.0), "retry_after": 7.0, "throttles": 1}),
        Decision(Step.RETRY, delay=7.0),
    ),
    (
        "429, nobody else: does not fit: back later",
        (Outcome.RATE_LIMITED, {"pause": cooling(5.0), "throttles": 1, "time_left": 4.0}),
        Decision(Step.MOVE_ON, comeback=5.0),
    ),
    (
        "429, cooldown past max_delay: no retry",
        (Outcome.RATE_LIMITED, {"pause": cooling(90.0), "throttles": 1}),
        Decision(Step.MOVE_ON),
    ),
]


@pytest.mark.parametrize(
    ("case", "expected"), [(c[1], c[2]) for c in DECISIONS], ids=[c[0] for c in DECISIONS]
)
def test_decide_table(case: tuple[Outcome, dict[str, object]], expected: Decision) -> None:
    outcome, facts = case
    options: dict[str, object] = {"retries": 0, "time_left": 100.0, **facts}
    assert decide(outcome, backoff=backoff(0.0), **options) == expected  # type: ignore[arg-type]


def test_run_attempts_retries_while_told_and_sleeps_through_the_function_given() -> None:
    slept: list[float] = []
    seen: list[tuple[str, int]] = []
    answers = iter(["bad", "bad", "good"])

    def attempt(n: int) -> str:
        return next(answers)

    def decision(result: str, n: int) -> Decision:
        return Decision(Step.DONE) if result == "good" else Decision(Step.RETRY, delay=n + 0.5)

    result, decided = run_attempts(
        attempt, decision, sleep=slept.append, on_retry=lambda r, d, n: seen.append((r, n))
    )
    assert (result, decided.step) == ("good", Step.DONE)
    assert slept == [0.5, 1.5]
    assert seen == [("bad", 1), ("bad", 2)]


def test_run_attempts_returns_the_decision_that_ended_it() -> None:
    result, decided = run_attempts(
        lambda n: n, lambda r, n: Decision(Step.MOVE_ON, comeback=4.0), sleep=lambda s: None
    )
    assert result == 0 and decided == Decision(Step.MOVE_ON, comeback=4.0)


def test_a_retry_wait_replaces_the_backoff_for_a_rate_limit() -> None:
    """A paced provider's next slot (or 0.0 after a learned concurrency drop) is the wait."""
    backoff = Backoff(RetryConfig(base_delay=1.0, jitter=0.0, max_retries=2))
    pause = Availability(0.2, cooldown=0.2, reason=Outcome.COOLING_DOWN)
    for wait in (0.2, 0.0):
        decided = decide(
            Outcome.RATE_LIMITED,
            retries=0,
            backoff=backoff,
            time_left=30.0,
            pause=pause,
            retry_wait=wait,
        )
        assert decided == Decision(Step.RETRY, delay=wait)
    last = decide(Outcome.RATE_LIMITED, retries=2, backoff=backoff, time_left=30.0, retry_wait=0.2)
    assert last.step is Step.MOVE_ON  # max_retries still ends the retries here
    other = decide(Outcome.ERROR, retries=0, backoff=backoff, time_left=30.0, retry_wait=0.2)
    assert other == Decision(Step.RETRY, delay=1.0)  # only rate limits take it
