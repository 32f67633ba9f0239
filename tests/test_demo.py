"""The offline demo: it runs, every request is answered, the servers see no 429; its arithmetic."""

from __future__ import annotations

import math

import pytest

from ratelimit_sdk import ClientConfig
from ratelimit_sdk.cli import EXIT_OK, main
from ratelimit_sdk.demo import (
    LATENCY,
    SPEED,
    demo_config,
    optimal_makespan,
    run_demo,
    scale_config,
)
from ratelimit_sdk.presets import seed_config


def one(limits: dict[str, object], **extra: object) -> ClientConfig:
    return ClientConfig.load(
        {
            "providers": [
                {"name": "p", "base_url": "http://127.0.0.1:1/v1", "model": "m", "limits": limits}
                | extra
            ]
        }
    )


@pytest.mark.integration
def test_quick_demo_answers_everything_without_a_single_429() -> None:
    report = run_demo(requests=40, workers=16, seed=3, progress=False)
    assert report.ok, report.render()
    assert report.answered == 40
    assert report.server_429s == 0
    assert report.problems == ()
    by_name = {p.name: p for p in report.providers}
    assert list(by_name) == list(LATENCY)
    assert sum(p.ok for p in report.providers) == 40
    for p in report.providers:
        assert p.max_concurrent is not None and p.max_in_flight <= p.max_concurrent
    assert by_name["kimi"].max_in_flight <= 1
    assert by_name["kimi"].fallbacks >= 1  # kimi is tight: most calls move on at once
    assert by_name["llama"].retries >= 1  # the injected outage was retried, then left
    assert report.pool_units_limit == 4 and report.pool_units_max <= 4
    assert report.optimum > 0 and report.makespan >= report.optimum * 0.99
    text = report.render()
    assert "PASS" in text and "ratio" in text


@pytest.mark.integration
def test_demo_command_exits_0_and_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--requests", "24", "--workers", "8", "--no-progress", "--no-faults"])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, out + err
    assert "Traceback" not in out + err
    for name in LATENCY:
        assert name in out
    assert "429s seen by the servers: 0" in out
    assert "no injected faults" in out
    assert "PASS" in out


def test_demo_config_is_the_seed_pointed_at_the_fakes_and_sped_up() -> None:
    urls = {name: f"http://127.0.0.1:{9000 + i}/v1" for i, name in enumerate(LATENCY)}
    config = demo_config(urls)
    seed = seed_config()
    for pc in config.providers:
        real = seed.provider(pc.name)
        assert pc.base_url == urls[pc.name]
        assert pc.api_key_env is None and pc.api_key is None
        assert pc.model == real.model
        assert pc.limits.max_concurrent == real.limits.max_concurrent
        assert pc.limits.min_interval == pytest.approx(real.limits.min_interval / SPEED)
        if real.limits.requests_per_minute is not None:
            assert pc.limits.requests_per_minute == pytest.approx(
                real.limits.requests_per_minute * SPEED
            )
        assert pc.retry.base_delay == pytest.approx(real.retry.base_delay / SPEED)
        assert pc.breaker.reset_timeout == pytest.approx(real.breaker.reset_timeout / SPEED)
    assert config.chains == seed.chains
    assert config.pools["featherless"].max_concurrent == seed.pools["featherless"].max_concurrent


def test_scale_config_divides_times_and_multiplies_rates() -> None:
    config = one(
        {
            "max_concurrent": 3,
            "requests_per_minute": 6,
            "tokens_per_minute": 600,
            "min_interval": 2.0,
            "max_queue_wait": 10.0,
            "quota_cooldown": 100.0,
        },
        retry={"base_delay": 4.0, "max_delay": 40.0},
    )
    fast = scale_config(config, 2.0).providers[0]
    assert fast.limits.max_concurrent == 3
    assert fast.limits.requests_per_minute == 12
    assert fast.limits.tokens_per_minute == 1200
    assert fast.limits.min_interval == 1.0
    assert fast.limits.max_queue_wait == 5.0
    assert fast.limits.quota_cooldown == 50.0
    assert (fast.retry.base_delay, fast.retry.max_delay) == (2.0, 20.0)
    assert config.providers[0].limits.min_interval == 2.0  # the original is untouched
    with pytest.raises(ValueError, match="speed"):
        scale_config(config, 0.0)


@pytest.mark.parametrize(
    ("limits", "latency", "n", "expected"),
    [
        ({"max_concurrent": 1}, 1.0, 5, 5.0),  # one at a time
        ({"max_concurrent": 2}, 1.0, 5, 3.0),  # waves of two
        ({"requests_per_minute": 60}, 0.5, 5, 4.5),  # one start a second, the first at 0
        ({"requests_per_minute": 60, "burst": 3}, 0.5, 5, 2.5),  # three at once, then 1/s
        ({"min_interval": 0.25}, 1.0, 5, 2.0),  # starts 0.25 s apart
        ({"max_concurrent": 1, "requests_per_minute": 30}, 1.0, 3, 5.0),  # the rate binds
        ({}, 0.7, 100, 0.7),  # no limit at all: everything at once
    ],
)
def test_optimal_makespan_of_one_provider(
    limits: dict[str, object], latency: float, n: int, expected: float
) -> None:
    assert optimal_makespan(n, one(limits), {"p": latency}) == pytest.approx(expected, abs=2e-3)


def test_optimal_makespan_adds_providers_and_respects_a_pool() -> None:
    def provider(name: str, **extra: object) -> dict[str, object]:
        return {"name": name, "base_url": "http://127.0.0.1:1/v1", "model": name} | extra

    two = ClientConfig.load(
        {"providers": [provider("a", limits={"max_concurrent": 1}), provider("b")]}
    )
    # b has no limit of its own: everything can finish within its latency.
    assert optimal_makespan(10, two, {"a": 1.0, "b": 2.0}) == pytest.approx(2.0, abs=2e-3)
    pooled = ClientConfig.load(
        {
            "providers": [
                provider("big", pool="acct", pool_units=4),
                provider("small", pool="acct", pool_units=1),
            ],
            "pools": {"acct": {"max_concurrent": 4}},
        }
    )
    # 4 units for 1 s: four small requests a second, or one big one.
    assert optimal_makespan(8, pooled, {"big": 1.0, "small": 1.0}) == pytest.approx(2.0, abs=2e-3)
    assert optimal_makespan(0, pooled, {"big": 1.0, "small": 1.0}) == 0.0


def test_the_demo_optimum_is_finite_and_seed_shaped() -> None:
    urls = {name: "http://127.0.0.1:1/v1" for name in LATENCY}
    latencies = {name: LATENCY[name] / SPEED for name in LATENCY}
    best = optimal_makespan(150, demo_config(urls), latencies)
    assert math.isfinite(best)
    # GLM alone (10 in flight, 1 s per answer) would need 15 s; the others shave some off.
    assert 10.0 < best < 15.0


def test_run_demo_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="requests"):
        run_demo(requests=0)
    with pytest.raises(ValueError, match="workers"):
        run_demo(workers=0)
