"""Clients sharing one budget through Redis (each Client stands in for a process).

Real redis-server (the session fixture starts its own), real FakeProviders.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ratelimit_sdk import AllProvidersFailed, Client, Outcome
from ratelimit_sdk.testing import FakeProvider, Respond

pytestmark = pytest.mark.redis


def config(url: str, prefix: str, fake: FakeProvider, **limits: Any) -> dict[str, Any]:
    return {
        "backend": url,
        "key_prefix": prefix,
        "providers": [
            {
                "name": "p",
                "base_url": fake.base_url,
                "model": "m",
                "limits": {"max_concurrent": 2, **limits},
                "retry": {"max_retries": 0, "base_delay": 0.01},
                "breaker": {"fail_max": 2, "reset_timeout": 30},
                "timeout": {"connect": 2, "read": 5},
            }
        ],
    }


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("p", max_concurrency=2, latency=0.03) as server:
        yield server


@pytest.fixture
def pair(redis_url: str, redis_key: str, fake: FakeProvider) -> Iterator[tuple[Client, Client]]:
    a = Client(config(redis_url, redis_key, fake))
    b = Client(config(redis_url, redis_key, fake))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_two_clients_share_one_concurrency_budget(
    pair: tuple[Client, Client], fake: FakeProvider
) -> None:
    a, b = pair
    errors: list[BaseException] = []

    def worker(client: Client) -> None:
        try:
            for i in range(6):
                client.chat(f"q{i}", timeout=30)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in (a, b) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert fake.statuses[200] == 72
    assert fake.statuses[429] == 0
    assert fake.max_in_flight_seen <= 2
    assert a.guard("p").limiter.in_flight == 0 and b.guard("p").limiter.in_flight == 0


def test_update_limits_on_one_client_reaches_the_other(pair: tuple[Client, Client]) -> None:
    a, b = pair
    a.update_limits("p", max_concurrent=1, requests_per_minute=120)
    snap = b.guard("p").limiter.snapshot()
    assert snap.max_concurrent == 1
    assert snap.requests_per_minute == 120


def test_a_cooldown_from_one_client_stops_the_other(
    pair: tuple[Client, Client], fake: FakeProvider
) -> None:
    a, b = pair
    fake.script([Respond.rate_limited(retry_after=20)])
    with pytest.raises(AllProvidersFailed):
        a.chat("x", timeout=1)
    before = fake.count
    with pytest.raises(AllProvidersFailed) as info:
        b.chat("y", timeout=1)
    assert fake.count == before  # b never reached the provider
    outcomes = {attempt.outcome for attempt in info.value.attempts}
    assert outcomes == {Outcome.COOLING_DOWN}


def test_a_breaker_opened_by_one_client_is_open_for_the_other(
    pair: tuple[Client, Client], fake: FakeProvider
) -> None:
    a, b = pair
    fake.fail_all(status=500)
    for _ in range(2):
        with pytest.raises(AllProvidersFailed):
            a.chat("x", timeout=5)
    assert a.stats()["p"].breaker_state == "open"
    assert b.stats()["p"].breaker_state == "open"
    before = fake.count
    with pytest.raises(AllProvidersFailed) as info:
        b.chat("y", timeout=1)
    assert fake.count == before
    outcomes = {attempt.outcome for attempt in info.value.attempts}
    assert outcomes == {Outcome.CIRCUIT_OPEN}
