"""Any callable under a provider's limits, breaker and retries: ``client.guarded(...)``.

The Client's clock is a FakeClock (backoff sleeps are instant and recorded); the
wrapped functions are plain Python, so nothing here touches a socket.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ratelimit_sdk import AcquireTimeout, CircuitOpenError, Client
from ratelimit_sdk.testing import FakeClock


class HTTPError(Exception):
    """Shaped like ``requests.HTTPError``: carries a response with a status and headers."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("R", (), {"status_code": status, "headers": headers or {}})()


def make_client(clock: FakeClock, **provider: Any) -> Client:
    config = {
        "name": "api",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "none",
        "limits": {"max_concurrent": 2},
        "retry": {"max_retries": 2, "base_delay": 1.0, "jitter": 0.0},
        "breaker": {"fail_max": 3, "reset_timeout": 60},
        **provider,
    }
    return Client({"providers": [config]}, clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_success_passes_through_and_holds_a_permit_meanwhile(clock: FakeClock) -> None:
    client = make_client(clock)
    seen: list[int] = []

    @client.guarded("api")
    def call(x: int) -> int:
        seen.append(client.guard("api").limiter.in_flight)
        return x + 1

    assert call(1) == 2
    assert seen == [1]
    assert client.guard("api").limiter.in_flight == 0
    assert call.__name__ == "call"
    stats = client.stats()["api"]
    assert (stats.requests, stats.ok) == (1, 1)


def test_failures_are_retried_after_the_backoff_then_raised(clock: FakeClock) -> None:
    client = make_client(clock)
    calls = 0

    @client.guarded("api", retry_on=(ValueError,))
    def flaky() -> str:
        nonlocal calls
        calls += 1
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        flaky()
    assert calls == 3  # 1 + max_retries
    assert clock.sleeps == [pytest.approx(1.0), pytest.approx(2.0)]
    assert client.guard("api").limiter.in_flight == 0
    assert client.stats()["api"].retries == 2


def test_exceptions_outside_retry_on_are_raised_at_once(clock: FakeClock) -> None:
    client = make_client(clock)
    calls = 0

    @client.guarded("api", retry_on=(ValueError,))
    def broken() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with pytest.raises(KeyError):
        broken()
    assert calls == 1
    assert client.guard("api").limiter.in_flight == 0


def test_a_carried_429_sets_a_cooldown_from_retry_after(clock: FakeClock) -> None:
    client = make_client(clock)
    answers: list[Any] = [HTTPError(429, {"Retry-After": "7"}), "ok"]

    @client.guarded("api")
    def call() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call() == "ok"
    # The retry waited for the backoff (1 s), then admission waited out the rest of
    # the 7 s cooldown the 429 set for every caller of this provider.
    assert sum(clock.sleeps) == pytest.approx(7.0)
    stats = client.stats()["api"]
    assert (stats.rate_limited, stats.ok, stats.errors) == (1, 1, 0)
    assert stats.breaker_state == "closed"  # a rate limit is not a breaker failure


def test_breaker_opens_and_then_refuses_without_calling(clock: FakeClock) -> None:
    client = make_client(clock, retry={"max_retries": 0})
    calls = 0

    @client.guarded("api")
    def down() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            down()
    with pytest.raises(CircuitOpenError):
        down()
    assert calls == 3
    assert client.stats()["api"].breaker_state == "open"


def test_admission_past_the_timeout_raises_acquire_timeout(clock: FakeClock) -> None:
    client = make_client(clock, limits={"max_concurrent": 1})
    held = client.guard("api").limiter.acquire()
    ran = threading.Event()

    @client.guarded("api", timeout=3.0)
    def call() -> None:
        ran.set()

    with pytest.raises(AcquireTimeout):
        call()
    assert not ran.is_set()
    held.release()
    assert client.guard("api").limiter.in_flight == 0


def test_keyboard_interrupt_in_the_callable_releases_the_permit(clock: FakeClock) -> None:
    client = make_client(clock)

    @client.guarded("api")
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert client.guard("api").limiter.in_flight == 0
    assert client.stats()["api"].breaker_state == "closed"


def test_client_and_stats_render_as_html_tables(clock: FakeClock) -> None:
    client = make_client(clock, name="a<b>")
    html = client._repr_html_()
    assert html.startswith("<table>") and "a&lt;b&gt;" in html  # escaped
    assert "conc=2" in html and "closed" in html
    assert client.stats()._repr_html_().count("<tr>") == 2  # header + one provider
    assert "in_flight=0" in repr(client)
