"""Tests for ratelimit_sdk.errors: the hierarchy, messages and pickling."""

from __future__ import annotations

import copy
import pickle
import sys
from typing import Any

import pytest

from ratelimit_sdk import errors
from ratelimit_sdk.errors import (
    AcquireTimeout,
    AllProvidersFailed,
    BackendError,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    QuotaExhaustedError,
    RateLimitedError,
    RateLimitSDKError,
    RequestTooLargeError,
)
from ratelimit_sdk.models import Attempt, Outcome

PROVIDER_KWARGS: dict[str, Any] = {
    "provider": "kimi",
    "status": 429,
    "code": "1302",
    "retry_after": 2.5,
}

# (class, keyword attributes) for one instance of every error class.
EXAMPLES: list[tuple[type[RateLimitSDKError], dict[str, Any]]] = [
    (RateLimitSDKError, {}),
    (ConfigError, {"field": "providers[kimi].limits.burst"}),
    (RequestTooLargeError, {}),
    (AcquireTimeout, {"waited": 1.5, "key": "kimi"}),
    (BackendError, {}),
    (CircuitOpenError, {"provider": "glm", "retry_after": 12.0}),
    (ProviderError, PROVIDER_KWARGS),
    (RateLimitedError, PROVIDER_KWARGS),
    (QuotaExhaustedError, {**PROVIDER_KWARGS, "status": 402, "code": "insufficient_quota"}),
    (ProviderTimeout, {**PROVIDER_KWARGS, "status": None}),
    (ProviderConnectionError, {**PROVIDER_KWARGS, "status": None}),
    (BadRequestError, {**PROVIDER_KWARGS, "status": 400}),
]


def roundtrip(exc: BaseException) -> Any:
    return pickle.loads(pickle.dumps(exc))


# -- hierarchy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (ConfigError, (RateLimitSDKError, ValueError)),
        (RequestTooLargeError, (RateLimitSDKError, ValueError)),
        (AcquireTimeout, (RateLimitSDKError, TimeoutError)),
        (BackendError, (RateLimitSDKError,)),
        (CircuitOpenError, (RateLimitSDKError,)),
        (ProviderError, (RateLimitSDKError,)),
        (RateLimitedError, (ProviderError,)),
        (QuotaExhaustedError, (RateLimitedError, ProviderError)),
        (ProviderTimeout, (ProviderError, TimeoutError)),
        (ProviderConnectionError, (ProviderError,)),
        (BadRequestError, (ProviderError, ValueError)),
        (AllProvidersFailed, (RateLimitSDKError,)),
    ],
)
def test_hierarchy(cls: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(cls, base)
    assert issubclass(cls, RateLimitSDKError)


@pytest.mark.parametrize(
    ("cls", "not_a"),
    [
        (RateLimitedError, ValueError),
        (ProviderError, ValueError),
        (ConfigError, ProviderError),
        (AllProvidersFailed, ProviderError),
        (CircuitOpenError, ProviderError),
        (AcquireTimeout, ProviderError),
        (BadRequestError, RateLimitedError),
        (ProviderTimeout, RateLimitedError),
    ],
)
def test_not_in_the_wrong_branch(cls: type[Exception], not_a: type[Exception]) -> None:
    assert not issubclass(cls, not_a)


def test_except_clauses_catch_as_documented() -> None:
    with pytest.raises(ValueError):
        raise ConfigError("x: bad", field="x")
    with pytest.raises(TimeoutError):
        raise AcquireTimeout(waited=1.0)
    with pytest.raises(RateLimitedError):
        raise QuotaExhaustedError("quota", provider="kimi")
    with pytest.raises(ValueError):
        raise BadRequestError("bad", provider="kimi", status=400)


def test_all_lists_every_error_class() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert set(errors.__all__) == classes
    assert errors.__all__ == sorted(errors.__all__)


def test_every_public_error_has_a_docstring() -> None:
    for name in errors.__all__:
        assert getattr(errors, name).__doc__


# -- messages ----------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs"), EXAMPLES)
def test_str_is_the_message(cls: type[RateLimitSDKError], kwargs: dict[str, Any]) -> None:
    exc = cls(f"{cls.__name__} happened", **kwargs)
    assert str(exc) == f"{cls.__name__} happened"
    assert exc.message == f"{cls.__name__} happened"
    assert exc.args == (f"{cls.__name__} happened",)
    for name, value in kwargs.items():
        assert getattr(exc, name) == value


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (AcquireTimeout(), "timed out waiting for admission"),
        (CircuitOpenError(), "circuit breaker open"),
        (ProviderError(), "provider error"),
        (RateLimitedError(), "provider error"),
        (AllProvidersFailed(), "all providers failed"),
    ],
)
def test_default_messages(exc: RateLimitSDKError, text: str) -> None:
    assert str(exc) == text


def test_default_attributes_are_none() -> None:
    exc = ProviderError("x")
    assert (exc.provider, exc.status, exc.code, exc.retry_after) == (None, None, None, None)
    timeout = AcquireTimeout()
    assert (timeout.waited, timeout.key) == (None, None)
    assert ConfigError("x").field is None


# -- pickling -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "kwargs"), EXAMPLES)
def test_pickle_roundtrip(cls: type[RateLimitSDKError], kwargs: dict[str, Any]) -> None:
    exc = cls(f"{cls.__name__}: something", **kwargs)
    back = roundtrip(exc)
    assert type(back) is cls
    assert str(back) == str(exc)
    assert back.args == exc.args
    for name, value in kwargs.items():
        assert getattr(back, name) == value


@pytest.mark.parametrize(("cls", "kwargs"), EXAMPLES)
def test_pickle_keeps_later_attributes_and_notes(
    cls: type[RateLimitSDKError], kwargs: dict[str, Any]
) -> None:
    exc = cls("m", **kwargs)
    exc.attempt_number = 3  # type: ignore[attr-defined]
    if sys.version_info >= (3, 11):
        exc.add_note("while calling kimi")
    back = roundtrip(exc)
    assert back.attempt_number == 3
    if sys.version_info >= (3, 11):
        assert back.__notes__ == ["while calling kimi"]


@pytest.mark.parametrize(("cls", "kwargs"), EXAMPLES)
def test_copy(cls: type[RateLimitSDKError], kwargs: dict[str, Any]) -> None:
    exc = cls("m", **kwargs)
    for clone in (copy.copy(exc), copy.deepcopy(exc)):
        assert type(clone) is cls and str(clone) == "m"
        for name, value in kwargs.items():
            assert getattr(clone, name) == value


def test_all_providers_failed_pickles_with_attempts() -> None:
    attempts = [
        Attempt("kimi", Outcome.RATE_LIMITED, RateLimitedError("429", provider="kimi", status=429)),
        Attempt("glm", Outcome.CIRCUIT_OPEN, CircuitOpenError(provider="glm", retry_after=3.0)),
        Attempt("llama", Outcome.TIMEOUT, ProviderTimeout("read timed out", provider="llama"), 2.0),
        Attempt("dolphin", Outcome.BUSY, None, 0.5),
    ]
    exc = AllProvidersFailed("all 4 providers failed", attempts=attempts)
    assert exc.attempts == tuple(attempts)
    back = roundtrip(exc)
    assert type(back) is AllProvidersFailed
    assert str(back) == "all 4 providers failed"
    assert isinstance(back.attempts, tuple) and len(back.attempts) == 4
    assert [a.provider for a in back.attempts] == ["kimi", "glm", "llama", "dolphin"]
    assert [a.outcome for a in back.attempts] == [a.outcome for a in attempts]
    first = back.attempts[0].error
    assert type(first) is RateLimitedError
    assert (str(first), first.provider, first.status) == ("429", "kimi", 429)
    assert back.attempts[1].error.retry_after == 3.0
    assert back.attempts[2].elapsed == 2.0
    assert back.attempts[3].error is None
    assert type(back.last_error) is ProviderTimeout
    assert str(back.last_error) == "read timed out"


def test_last_error() -> None:
    assert AllProvidersFailed().last_error is None
    skipped = AllProvidersFailed(attempts=[Attempt("kimi", Outcome.BUSY)])
    assert skipped.last_error is None
    err = ProviderError("boom")
    exc = AllProvidersFailed(
        attempts=[Attempt("a", Outcome.ERROR, err), Attempt("b", Outcome.BUSY)]
    )
    assert exc.last_error is err


def test_attempts_accepts_any_iterable() -> None:
    exc = AllProvidersFailed(attempts=(a for a in [Attempt("kimi", Outcome.BUSY)]))
    assert exc.attempts == (Attempt("kimi", Outcome.BUSY),)
