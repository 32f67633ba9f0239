"""``str(AllProvidersFailed)`` names each provider's outcome and its short cause."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from ratelimit_sdk import Client
from ratelimit_sdk._failure import describe_attempt, failure_message
from ratelimit_sdk._redact import register_secret
from ratelimit_sdk.errors import (
    AcquireTimeout,
    AllProvidersFailed,
    CircuitOpenError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    RateLimitedError,
)
from ratelimit_sdk.models import Attempt, Outcome
from ratelimit_sdk.testing import FakeProvider, Respond

NO_RETRY: dict[str, Any] = {"retry": {"max_retries": 0}, "breaker": {"fail_max": 50}}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider, FakeProvider]]:
    with (
        FakeProvider(name="kimi") as a,
        FakeProvider(name="glm") as b,
        FakeProvider(name="llama") as c,
    ):
        yield a, b, c


def test_real_failures_name_each_cause(
    fakes: tuple[FakeProvider, FakeProvider, FakeProvider],
) -> None:
    kimi, glm, llama = fakes
    kimi.always(
        Respond.status(
            401,
            {"error": {"code": "invalid_api_key", "message": "Invalid Authentication"}},
        )
    )
    glm.always(Respond.status(500, {"error": {"message": "internal error"}}))
    llama.always(Respond.hang(5.0))
    providers = [
        {"name": "kimi", "base_url": kimi.base_url, "model": "k", "priority": 1, **NO_RETRY},
        {"name": "glm", "base_url": glm.base_url, "model": "g", "priority": 2, **NO_RETRY},
        {
            "name": "dead",
            "base_url": f"http://127.0.0.1:{_closed_port()}/v1",
            "model": "d",
            "priority": 3,
            **NO_RETRY,
        },
        {
            "name": "llama",
            "base_url": llama.base_url,
            "model": "l",
            "priority": 4,
            "timeout": {"connect": 2.0, "read": 0.5},
            **NO_RETRY,
        },
    ]
    with (
        Client({"providers": providers, "timeout": 2.0}) as client,
        pytest.raises(AllProvidersFailed) as info,
    ):
        client.chat("hi")
    text = str(info.value)
    assert "kimi: error (HTTP 401 invalid_api_key: Invalid Authentication)" in text
    assert "glm: error (HTTP 500: internal error)" in text
    assert "dead: error (connection refused)" in text
    assert "llama: timeout after 0.5 s" in text
    assert text.startswith("all providers failed after ")
    assert "Traceback" not in text and "HTTPConnectionPool" not in text
    assert len(text) < 600


def test_one_attempt_is_singular() -> None:
    error = ProviderError("fake: HTTP 503", provider="fake", status=503)
    text = failure_message([Attempt("fake", Outcome.ERROR, error=error, status=503)])
    assert text == "all providers failed after 1 attempt: fake: error (HTTP 503)"


def test_repeats_collapse() -> None:
    error = ProviderError("glm: HTTP 500", provider="glm", status=500)
    attempts = [Attempt("glm", Outcome.ERROR, error=error, status=500)] * 3
    ok = ProviderConnectionError("kimi: connection refused (x)", reason="connection refused")
    attempts.append(Attempt("kimi", Outcome.ERROR, error=ok))
    assert failure_message(attempts) == (
        "all providers failed after 4 attempts: glm: error (HTTP 500) x3; "
        "kimi: error (connection refused)"
    )


def test_skips_say_why_and_for_how_long() -> None:
    assert (
        describe_attempt(
            Attempt(
                "glm",
                Outcome.CIRCUIT_OPEN,
                error=CircuitOpenError("glm: circuit breaker open", provider="glm", retry_after=12),
            )
        )
        == "glm: circuit open, retry in 12 s"
    )
    cooling = ProviderError("kimi: cooling down for 3.20s", provider="kimi", retry_after=3.2)
    assert (
        describe_attempt(Attempt("kimi", Outcome.COOLING_DOWN, error=cooling))
        == "kimi: cooling down 3.2 s"
    )
    busy = AcquireTimeout("timed out after 2.000s waiting for admission", waited=2.0, key="k")
    assert (
        describe_attempt(Attempt("kimi", Outcome.BUSY, error=busy, elapsed=2.0))
        == "kimi: busy: no admission within 2.0 s"
    )


def test_rate_limited_names_the_wait() -> None:
    error = RateLimitedError(
        "kimi: HTTP 429 (rate_limit_exceeded): slow down",
        provider="kimi",
        status=429,
        code="rate_limit_exceeded",
        retry_after=3.0,
    )
    assert describe_attempt(Attempt("kimi", Outcome.RATE_LIMITED, error=error, status=429)) == (
        "kimi: rate_limited (HTTP 429 rate_limit_exceeded: slow down; retry after 3 s)"
    )


def test_transport_errors_seen_through_classify() -> None:
    # What the guard records today: a ProviderError built from classify_failure's text.
    refused = ProviderError(
        "dead: ProviderConnectionError: dead: connection refused (ConnectionError: "
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded)",
        provider="dead",
    )
    timeout = ProviderTimeout(
        "slow: ProviderTimeout: slow: read timeout after 5.0 s (ReadTimeout: ...)",
        provider="slow",
    )
    assert describe_attempt(Attempt("dead", Outcome.ERROR, error=refused)) == (
        "dead: error (connection refused)"
    )
    assert describe_attempt(Attempt("slow", Outcome.TIMEOUT, error=timeout)) == (
        "slow: timeout after 5.0 s"
    )


def test_causes_are_redacted_and_short() -> None:
    secret = "sk-live-0123456789abcdefSECRET"
    register_secret(secret)
    words = f"bad key {secret} Bearer abcdefghijklmnop redis://:hunter22@h/0 " + "x" * 400
    error = ProviderError(f"p: HTTP 401: {words}", provider="p", status=401)
    text = failure_message([Attempt("p", Outcome.ERROR, error=error, status=401)])
    assert secret not in text
    assert "abcdefghijklmnop" not in text
    assert "hunter22" not in text
    assert len(text) < 220


def test_no_attempts() -> None:
    assert "deadline passed before any attempt" in failure_message([])
