"""The public surface: names, sorted __all__, docstrings, pickling, no secret anywhere."""

from __future__ import annotations

import inspect
import pickle

import pytest

import ratelimit_sdk
from ratelimit_sdk import (
    AcquireTimeout,
    AllProvidersFailed,
    Attempt,
    BadRequestError,
    CircuitOpenError,
    Client,
    ConfigError,
    Outcome,
    ProviderError,
    QuotaExhaustedError,
    RateLimitedError,
    RateLimitSDKError,
)

CONTRACT = {
    "ClientConfig",
    "ProviderConfig",
    "LimitsConfig",
    "RetryConfig",
    "BreakerConfig",
    "TimeoutConfig",
    "Client",
    "Limiter",
    "Permit",
    "RateLimitSDKError",
    "ConfigError",
    "RateLimitedError",
    "QuotaExhaustedError",
    "ProviderError",
    "CircuitOpenError",
    "AcquireTimeout",
    "BadRequestError",
    "AllProvidersFailed",
    "ChatResponse",
    "Attempt",
    "ProviderStats",
}


def test_contract_names_are_exported_and_all_is_sorted() -> None:
    assert set(ratelimit_sdk.__all__) >= CONTRACT
    assert list(ratelimit_sdk.__all__) == sorted(ratelimit_sdk.__all__)
    for name in ratelimit_sdk.__all__:
        assert hasattr(ratelimit_sdk, name), name


def test_every_public_name_has_a_docstring() -> None:
    for name in ratelimit_sdk.__all__:
        obj = getattr(ratelimit_sdk, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member):
                    continue
                assert getattr(member, "__doc__", None), f"{name}.{attr}"


def test_error_tree() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(AcquireTimeout, TimeoutError)
    assert issubclass(QuotaExhaustedError, RateLimitedError)
    assert issubclass(RateLimitedError, ProviderError)
    for cls in (ConfigError, AcquireTimeout, ProviderError, CircuitOpenError, AllProvidersFailed):
        assert issubclass(cls, RateLimitSDKError)


@pytest.mark.parametrize(
    "error",
    [
        RateLimitedError("x", provider="kimi", status=429, retry_after=3.0),
        BadRequestError("bad", provider="glm", status=400),
        AcquireTimeout("busy", waited=1.5, key="kimi"),
        AllProvidersFailed(
            "all", attempts=[Attempt("kimi", Outcome.RATE_LIMITED, RateLimitedError("r"), 0.1)]
        ),
    ],
)
def test_errors_pickle(error: RateLimitSDKError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.__dict__.keys() >= {"message"}


def test_client_repr_and_errors_never_show_the_key() -> None:
    canary = "sk-canary-public-api-0123456789"
    client = Client(
        {
            "providers": [
                {
                    "name": "p",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "m",
                    "api_key": canary,
                    "timeout": {"connect": 0.2, "read": 0.2},
                    "retry": {"max_retries": 0},
                }
            ]
        }
    )
    try:
        with pytest.raises(AllProvidersFailed) as info:
            client.chat("hi", timeout=2)
        texts = [repr(client), str(client.config), repr(client.config), str(info.value)]
        texts += [repr(a) for a in info.value.attempts]
        texts += [str(a.error) for a in info.value.attempts]
        texts += [repr(client.stats())]
        assert all(canary not in t for t in texts)
    finally:
        client.close()
