"""Learned limits over real HTTP: a Client with "auto" limits against a FakeProvider's shapes.

Each test sends a bounded number of calls from a bounded number of threads, with
generous timeouts; only counts (429s the server sent, calls that failed, the value
learned) are asserted, never a speed.
"""

from __future__ import annotations

from typing import Any

import pytest

from ratelimit_sdk import Client
from ratelimit_sdk.testing import (
    FakeProvider,
    HiddenConcurrency,
    HiddenRate,
    LeakyBucket,
    OpenAIHeaders,
)

RETRY = {"max_retries": 6, "base_delay": 0.05, "max_delay": 1.0}


def run_batch(client: Client, fake: FakeProvider, n: int, workers: int = 8) -> int:
    """Send ``n`` calls; every one must succeed; return the 429s the server sent for them."""
    before = fake.statuses[429]
    prompts = [[{"role": "user", "content": f"request {i}"}] for i in range(n)]
    results = client.map(
        prompts, max_workers=workers, progress=False, return_exceptions=True, timeout=60
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures[:3]
    return fake.statuses[429] - before


def client_for(fake: FakeProvider, limits: dict[str, Any], **extra: Any) -> Client:
    return Client({"providers": [fake.provider_config(limits=limits, retry=RETRY)], **extra})


def test_a_hidden_concurrency_limit_is_learned() -> None:
    with FakeProvider(shapes=[HiddenConcurrency(3)], latency=0.03) as fake:
        with client_for(fake, {"max_concurrent": "auto"}) as client:
            learning = run_batch(client, fake, 100)
            learned = run_batch(client, fake, 100)
            stats = client.stats()[fake.name]
        assert learning <= 10
        assert learned <= 2
        assert stats.learned is not None
        assert 2 <= stats.learned["max_concurrent"] <= 4  # 3, or one of its rare probes
        assert stats.ok == 200
        assert f"conc=auto({stats.learned['max_concurrent']})" in client._repr_html_()


def test_a_declared_request_rate_is_adopted() -> None:
    with FakeProvider(shapes=[OpenAIHeaders(requests_per_minute=3000)], latency=0.01) as fake:
        with client_for(fake, {"requests_per_minute": "auto"}) as client:
            refused = run_batch(client, fake, 60)
            learned = client.stats()[fake.name].learned
        assert refused <= 2
        assert learned == {"requests_per_minute": 3000.0}


def test_a_declared_limit_never_raises_a_configured_one() -> None:
    with FakeProvider(shapes=[OpenAIHeaders(requests_per_minute=3000)], latency=0.01) as fake:
        limits = {"requests_per_minute": 1200, "max_concurrent": "auto"}
        with client_for(fake, limits) as client:
            run_batch(client, fake, 10, workers=2)
            assert client.guard(fake.name).limiter.limits()["requests_per_minute"] == 1200
            assert client.stats()[fake.name].learned == {"max_concurrent": 4}


def test_a_hidden_rate_without_headers_is_learned() -> None:
    """Starting at 6000/min against 1200/min: the rate comes down, then few 429s."""
    with FakeProvider(shapes=[HiddenRate(1200)], latency=0.02) as fake:
        with client_for(fake, {"requests_per_minute": "auto"}) as client:
            run_batch(client, fake, 60)
            settled = run_batch(client, fake, 80)
            learned = client.stats()[fake.name].learned
        assert learned is not None
        assert learned["requests_per_minute"] < 2400  # far below the start (6000)
        assert settled <= 8


@pytest.mark.redis
def test_clients_sharing_redis_see_one_learned_value(redis_url: str, redis_key: str) -> None:
    """Learned once for all processes: what one Client learns, the other uses."""
    with FakeProvider(shapes=[HiddenConcurrency(3)], latency=0.03) as fake:
        extra = {"backend": redis_url, "key_prefix": redis_key}
        with client_for(fake, {"max_concurrent": "auto"}, **extra) as a:
            run_batch(a, fake, 40)
            learned_a = a.stats()[fake.name].learned
            with client_for(fake, {"max_concurrent": "auto"}, **extra) as b:
                run_batch(b, fake, 10, workers=2)  # reads the shared limits
                learned_b = b.stats()[fake.name].learned
                a.chat([{"role": "user", "content": "again"}])
                assert learned_b is not None and learned_a is not None
                assert a.stats()[fake.name].learned == learned_b
                assert learned_b["max_concurrent"] <= 4
            assert learned_a["max_concurrent"] < 4 or learned_b["max_concurrent"] < 4


def test_an_nginx_429_on_a_paced_provider_pauses_for_the_slot_not_the_backoff() -> None:
    """nginx limit_req (no Retry-After) under our own pacing: no 1 s pause per refusal."""
    delays: list[float] = []
    with FakeProvider(shapes=[LeakyBucket(rate=20)], latency=0.01) as fake:
        limits = {"requests_per_minute": 1200, "min_interval": 0.05}
        retry = {"max_retries": 6, "base_delay": 1.0, "jitter": 0.0}
        config = {"providers": [fake.provider_config(limits=limits, retry=retry)]}
        with Client(config) as client:
            client.on("rate_limited", lambda event: delays.append(event.delay or 0.0))
            run_batch(client, fake, 30, workers=4)
    assert all(delay < 0.5 for delay in delays), delays  # the backoff would be 1.0 s
