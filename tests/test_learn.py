"""ratelimit_sdk.learn: the learner of "auto" limits, as exact tables on a FakeClock."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from typing import Any

import pytest

from ratelimit_sdk import Limiter
from ratelimit_sdk.config import ClientConfig, LimitsConfig
from ratelimit_sdk.errors import ConfigError
from ratelimit_sdk.learn import RATE_DECREASE, RATE_INCREASE, Learner, learner_for
from ratelimit_sdk.testing import FakeClock


class Target:
    """A limiter stand-in: the limits it holds, and every update it was given."""

    def __init__(self, **limits: Any) -> None:
        self.values: dict[str, Any] = dict(limits)
        self.updates: list[dict[str, Any]] = []

    def limits(self) -> dict[str, Any]:
        return dict(self.values)

    def update(self, **limits: Any) -> None:
        self.updates.append(limits)
        self.values.update(limits)


def build(limits: dict[str, Any], clock: FakeClock | None = None) -> tuple[Learner, Target]:
    config = LimitsConfig.model_validate(limits)
    target = Target(**config.limiter_kwargs())
    learner = Learner(target, config, clock=clock or FakeClock())
    return learner, target


def round_of(learner: Learner, target: Target, saturated: bool = True) -> int:
    """One round: as many saturated successes as the limit; the limit after it."""
    for _ in range(int(target.values["max_concurrent"])):
        learner.succeeded(saturated)
    return int(target.values["max_concurrent"])


# -- concurrency -----------------------------------------------------------------------------------


def test_nothing_auto_builds_no_learner() -> None:
    config = LimitsConfig(max_concurrent=4, requests_per_minute=600)
    assert learner_for(Target(), config, clock=FakeClock()) is None


def test_slow_start_doubles_until_the_first_refusal_then_adds_one() -> None:
    learner, target = build({"max_concurrent": "auto", "auto": {"start_concurrent": 1}})
    assert target.values["max_concurrent"] == 1
    assert [round_of(learner, target) for _ in range(4)] == [2, 4, 8, 16]
    assert learner.refused("concurrency") is True
    assert target.values["max_concurrent"] == 8  # 16 * 0.5
    assert [round_of(learner, target) for _ in range(3)] == [9, 10, 11]


def test_a_round_that_never_reached_the_limit_raises_nothing() -> None:
    learner, target = build({"max_concurrent": "auto"})
    assert [round_of(learner, target, saturated=False) for _ in range(3)] == [4, 4, 4]
    assert target.updates == []


def test_the_ceiling_is_probed_after_two_to_the_k_rounds() -> None:
    """Server allows 3: the limit 4 is refused each time; the probes get rarer (2, 4, 8 rounds)."""
    learner, target = build({"max_concurrent": "auto"})  # starts at 4
    history: list[int] = []
    refusals = 0
    for _ in range(40):
        if target.values["max_concurrent"] > 3:  # the hidden limit: one request over it
            learner.refused("concurrency")
            refusals += 1
        history.append(round_of(learner, target))
    # 4 refused -> 2; one round to 3; then 2**k clean rounds at 3 before 4 is tried again.
    probes = [i for i, value in enumerate(history) if value == 4]
    assert probes == [2, 7, 16, 33]
    assert [b - a for a, b in itertools.pairwise(probes)] == [1 + 4, 1 + 8, 1 + 16]
    assert refusals == 5  # the start at 4, then one per probe
    assert set(history) == {3, 4}


def test_refusals_of_requests_admitted_before_the_lowering_lower_nothing_again() -> None:
    clock = FakeClock()
    learner, target = build({"max_concurrent": "auto", "auto": {"start_concurrent": 8}}, clock)
    admitted = clock.monotonic()
    clock.advance(0.1)
    assert learner.refused("concurrency", admitted) is True
    assert target.values["max_concurrent"] == 4
    for _ in range(3):  # the other requests sent at 8 in flight
        assert learner.refused("concurrency", admitted) is True
    assert target.values["max_concurrent"] == 4
    clock.advance(0.1)
    assert learner.refused("concurrency", clock.monotonic()) is True
    assert target.values["max_concurrent"] == 2


def test_without_admission_times_a_hold_counts_the_requests_over_the_new_limit() -> None:
    learner, target = build({"max_concurrent": "auto", "auto": {"start_concurrent": 8}})
    assert learner.refused("concurrency") is True  # 8 -> 4: up to 3 more in flight over 4
    for _ in range(3):
        learner.refused("concurrency")
    assert target.values["max_concurrent"] == 4
    learner.refused("concurrency")
    assert target.values["max_concurrent"] == 2


def test_the_lower_bound_holds_and_says_it_learned_nothing() -> None:
    clock = FakeClock()
    learner, target = build({"max_concurrent": "auto", "auto": {"min_concurrent": 2}}, clock)
    assert learner.refused("concurrency", clock.monotonic()) is True
    assert target.values["max_concurrent"] == 2
    clock.advance(1.0)
    # Already at the bound: nothing learned, the guard backs off as before.
    assert learner.refused("concurrency", clock.monotonic()) is False
    assert target.values["max_concurrent"] == 2


def test_the_upper_bound_holds() -> None:
    learner, target = build(
        {"max_concurrent": "auto", "auto": {"start_concurrent": 5, "max_concurrent": 6}}
    )
    assert [round_of(learner, target) for _ in range(3)] == [6, 6, 6]


def test_rate_refusals_do_not_touch_a_learned_concurrency_limit() -> None:
    learner, target = build({"max_concurrent": "auto", "requests_per_minute": 600})
    assert learner.refused("rate") is False
    assert learner.refused(None) is False
    assert target.updates == []
    assert learner.learned() == {"max_concurrent": 4}


def test_the_value_in_force_is_read_before_each_change() -> None:
    """Another process lowered the shared value: the learner works from it, not its own."""
    learner, target = build({"max_concurrent": "auto", "auto": {"start_concurrent": 8}})
    target.values["max_concurrent"] = 3
    learner.refused("concurrency")
    assert target.values["max_concurrent"] == 1


# -- the rate ------------------------------------------------------------------------------------


def test_a_rate_refusal_multiplies_the_rate_and_clean_seconds_add_to_it() -> None:
    clock = FakeClock()
    learner, target = build({"requests_per_minute": "auto", "auto": {"max_rpm": 1000}}, clock)
    assert target.values["requests_per_minute"] == 1000.0
    assert learner.refused("rate", clock.monotonic()) is True
    assert target.values["requests_per_minute"] == pytest.approx(1000 * RATE_DECREASE)
    step = RATE_INCREASE * 1000
    for second in range(1, 4):
        clock.advance(0.5)
        learner.succeeded(True)
        clock.advance(0.5)
        learner.succeeded(True)
        assert target.values["requests_per_minute"] == pytest.approx(800 + second * step)


def test_the_rate_does_not_grow_while_unsaturated() -> None:
    clock = FakeClock()
    learner, target = build(
        {"requests_per_minute": "auto", "auto": {"start_rpm": 100, "max_rpm": 1000}}, clock
    )
    for _ in range(5):
        clock.advance(1.0)
        learner.succeeded(False)
    assert target.values["requests_per_minute"] == 100.0


def test_one_overshoot_lowers_the_rate_once() -> None:
    clock = FakeClock()
    learner, target = build({"requests_per_minute": "auto", "auto": {"max_rpm": 1000}}, clock)
    sent = clock.monotonic()
    clock.advance(0.05)
    learner.refused("rate", sent)
    learner.refused("rate", sent)
    assert target.values["requests_per_minute"] == pytest.approx(800.0)
    learner.refused("rate", clock.monotonic())
    assert target.values["requests_per_minute"] == pytest.approx(640.0)
    # Without admission times, a short hold does the same.
    clock.advance(1.0)
    learner.refused("rate")
    learner.refused("rate")
    assert target.values["requests_per_minute"] == pytest.approx(512.0)


def test_the_rate_stays_within_its_bounds() -> None:
    clock = FakeClock()
    learner, target = build(
        {"requests_per_minute": "auto", "auto": {"min_rpm": 500, "max_rpm": 600}}, clock
    )
    for _ in range(5):
        clock.advance(5.0)
        learner.refused("rate", clock.monotonic())
    assert target.values["requests_per_minute"] == 500.0
    for _ in range(100):
        clock.advance(1.0)
        learner.succeeded(True)
    assert target.values["requests_per_minute"] == 600.0


# -- declared limits -------------------------------------------------------------------------------


OPENAI = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29000",
    "x-ratelimit-reset-tokens": "2s",
}
ANTHROPIC = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:00Z",
    "anthropic-ratelimit-tokens-limit": "40000",
}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (OPENAI, {"requests_per_minute": 500.0, "tokens_per_minute": 30000.0}),
        (ANTHROPIC, {"requests_per_minute": 50.0, "tokens_per_minute": 40000.0}),
        ({"x-ratelimit-limit-requests": "0"}, {"requests_per_minute": 6000.0}),
        ({"x-ratelimit-limit-requests": "-5"}, {"requests_per_minute": 6000.0}),
        ({"x-ratelimit-limit-requests": "nan"}, {"requests_per_minute": 6000.0}),
        ({"x-ratelimit-limit-requests": "1e309"}, {"requests_per_minute": 6000.0}),
        ({"x-ratelimit-limit-requests": str(10**12)}, {"requests_per_minute": 6000.0}),
        ({"x-ratelimit-limit-requests": "0.001"}, {"requests_per_minute": 1.0}),
        (
            {"x-ratelimit-limit-tokens": "5"},
            {"requests_per_minute": 6000.0, "tokens_per_minute": 1000.0},
        ),
        ({}, {"requests_per_minute": 6000.0}),
    ],
    ids=[
        "openai",
        "anthropic",
        "zero",
        "negative",
        "nan",
        "inf",
        "huge",
        "tiny",
        "few-tokens",
        "none",
    ],
)
def test_declared_limits_are_adopted_within_the_bounds(
    headers: dict[str, str], expected: dict[str, float]
) -> None:
    learner, _target = build({"requests_per_minute": "auto", "tokens_per_minute": "auto"})
    learner.observe(headers)
    assert learner.learned() == expected


def test_a_declared_rate_is_not_learned_down_by_refusals() -> None:
    clock = FakeClock()
    learner, target = build({"requests_per_minute": "auto"}, clock)
    learner.observe(OPENAI)
    assert learner.refused("rate", clock.monotonic()) is False  # the server's Retry-After rules
    assert target.values["requests_per_minute"] == 500.0


def test_configured_numbers_are_never_changed_by_headers() -> None:
    learner, target = build({"max_concurrent": "auto", "requests_per_minute": 60})
    learner.observe(OPENAI)
    assert target.values["requests_per_minute"] == 60
    assert target.updates == []


def test_a_memory_limiter_takes_the_learned_values() -> None:
    clock = FakeClock()
    config = LimitsConfig(max_concurrent="auto", requests_per_minute="auto")
    limiter = Limiter(**config.limiter_kwargs(), clock=clock)
    changes: list[tuple[str, float, float]] = []
    learner = Learner(
        limiter, config, clock=clock, on_change=lambda f, o, n: changes.append((f, o, n))
    )
    learner.observe({"x-ratelimit-limit-requests": "1200"})
    learner.refused("concurrency", clock.monotonic())
    assert limiter.limits()["max_concurrent"] == 2
    assert limiter.limits()["requests_per_minute"] == 1200.0
    # no burst configured: the smallest that absorbs the 20 ms allowance at 20/s
    assert limiter.limits()["burst"] == 2
    assert [c for c in changes if c[0] != "burst"] == [
        ("requests_per_minute", 6000.0, 1200.0),
        ("max_concurrent", 4.0, 2.0),
    ]


def test_a_declared_rate_keeps_a_configured_burst() -> None:
    clock = FakeClock()
    config = LimitsConfig(requests_per_minute="auto", burst=1)
    limiter = Limiter(**config.limiter_kwargs(), clock=clock)
    Learner(limiter, config, clock=clock).observe({"x-ratelimit-limit-requests": "6000"})
    assert limiter.limits()["burst"] == 1
    config = LimitsConfig(requests_per_minute="auto")
    limiter = Limiter(**config.limiter_kwargs(), clock=clock)
    Learner(limiter, config, clock=clock).observe({"x-ratelimit-limit-requests": "6000"})
    assert limiter.limits()["burst"] == 1 + 2  # 100/s x 20 ms = 2 tokens of slack


# -- configuration -------------------------------------------------------------------------------


def test_a_bare_limiter_refuses_auto_and_names_the_learner() -> None:
    with pytest.raises(ConfigError, match="Learner") as info:
        Limiter(max_concurrent="auto")
    assert info.value.field == "max_concurrent"


def provider(limits: dict[str, Any]) -> dict[str, Any]:
    return {"providers": [{"name": "p", "base_url": "http://x", "model": "m", "limits": limits}]}


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"burst": "auto"}, "providers[p].limits.burst"),
        ({"min_interval": "auto"}, "providers[p].limits.min_interval"),
        ({"max_concurrent": "automatic"}, "providers[p].limits.max_concurrent"),
        ({"max_concurrent": True}, "providers[p].limits.max_concurrent"),
        ({"requests_per_minute": math.inf}, "providers[p].limits.requests_per_minute"),
        ({"requests_per_minute": 0}, "providers[p].limits.requests_per_minute"),
        (
            {"auto": {"min_concurrent": 8, "max_concurrent": 4}},
            "providers[p].limits.auto.min_concurrent",
        ),
        ({"auto": {"min_rpm": 10, "max_rpm": 5}}, "providers[p].limits.auto.min_rpm"),
        ({"auto": {"start_rpm": 10_000}}, "providers[p].limits.auto.start_rpm"),
        ({"auto": {"max_rpm": math.nan}}, "providers[p].limits.auto.max_rpm"),
        ({"auto": {"min_concurrent": 0}}, "providers[p].limits.auto.min_concurrent"),
        ({"auto": {"max_tpm": -1}}, "providers[p].limits.auto.max_tpm"),
        ({"auto": {"max_concurrent": True}}, "providers[p].limits.auto.max_concurrent"),
        ({"auto": {"rpm": 5}}, "providers[p].limits.auto.rpm"),
    ],
)
def test_bad_auto_configuration_names_the_field(limits: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(provider(limits))
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_auto_is_for_providers_not_pools() -> None:
    data = provider({})
    data["pools"] = {"shared": {"requests_per_minute": "auto"}}
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(data)
    assert info.value.field == "pools.shared.requests_per_minute"


def test_auto_starts_at_the_start_values() -> None:
    config = LimitsConfig(
        max_concurrent="auto",
        requests_per_minute="auto",
        tokens_per_minute="auto",
        auto={"start_concurrent": 2, "start_rpm": 120},
    )
    kwargs = config.limiter_kwargs()
    assert (kwargs["max_concurrent"], kwargs["requests_per_minute"]) == (2, 120)
    assert kwargs["tokens_per_minute"] is None  # no token budget until one is declared
    assert config.auto_fields() == ("max_concurrent", "requests_per_minute", "tokens_per_minute")


# -- many uncoordinated processes ---------------------------------------------------------------


def simulate(
    processes: int, limit: float, burst: int, seconds: float, seed: int
) -> tuple[float, float]:
    """``processes`` learners, each pacing its own sends, against one token bucket.

    Event-driven on a FakeClock: each process sends at its learned rate (with up to
    5 ms of scheduling jitter), each answer arrives 25-75 ms later. Returns the
    429 share and the throughput (as a fraction of ``limit``) after the first 10 s.
    """
    rng = random.Random(seed)
    clock = FakeClock(start=0.0)
    config = LimitsConfig(requests_per_minute="auto")
    targets = [Target(**config.limiter_kwargs()) for _ in range(processes)]
    learners = [Learner(t, config, clock=clock) for t in targets]
    events: list[tuple[float, int, int, float]] = [
        (rng.random() * 0.01, 0, k, 0.0) for k in range(processes)
    ]
    heapq.heapify(events)
    tokens, last = float(burst), 0.0
    sent = refused = 0
    while events:
        at, kind, k, admitted = heapq.heappop(events)
        if at > seconds:
            break
        clock.advance(at - clock.monotonic())
        if kind == 0:  # a send
            tokens, last = min(float(burst), tokens + (at - last) * limit), at
            passed = tokens >= 1.0 - 1e-9
            tokens -= 1.0 if passed else 0.0
            if at >= 10.0:
                sent += 1
                refused += not passed
            answer = at + 0.05 * (0.5 + rng.random())
            heapq.heappush(events, (answer, 1 if passed else 2, k, at))
            rpm = targets[k].values["requests_per_minute"]
            heapq.heappush(events, (at + 60.0 / rpm + rng.random() * 0.005, 0, k, 0.0))
        elif kind == 1:
            learners[k].succeeded(True)
        else:
            learners[k].refused("rate", admitted)
    return refused / sent, (sent - refused) / (seconds - 10.0) / limit


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_eight_uncoordinated_processes_share_a_hidden_rate(seed: int) -> None:
    """8 processes, no shared backend, 40/s (burst 4) without headers: few 429s, most of it used."""
    share, throughput = simulate(processes=8, limit=40.0, burst=4, seconds=60.0, seed=seed)
    assert share <= 0.03
    assert throughput >= 0.85
