"""Leaf: the exception hierarchy of ratelimit_sdk. Imports only ``_redact`` (itself a leaf).

Every error the SDK raises on purpose derives from :class:`RateLimitSDKError`.
The tree, shaped around what the caller does next::

    RateLimitSDKError
    ├── ConfigError (ValueError)          fix the configuration; never retried
    ├── RequestTooLargeError (ValueError) the request can never fit the limits
    ├── AcquireTimeout (TimeoutError)     admission wait ran out (outcome "busy")
    ├── BackendError                      the shared backend (Redis) failed
    ├── CircuitOpenError                  provider skipped: its breaker is open
    ├── ProviderError                     a provider answered badly or not at all
    │   ├── RateLimitedError              429 / concurrency / overloaded; wait then retry
    │   │   └── QuotaExhaustedError       quota, balance or billing exhausted
    │   ├── ProviderTimeout (TimeoutError)  connect or read timed out
    │   ├── ProviderConnectionError       connection refused or reset
    │   └── BadRequestError (ValueError)  the request itself is wrong; no fallback
    └── AllProvidersFailed                every provider in the chain failed

All errors pickle (``map()`` results and worker processes carry them) and none
ever holds an API key or a URL's password in its message or attributes: every
message goes through :func:`~ratelimit_sdk._redact.redact_message` when the error is
made.
"""

from __future__ import annotations

from typing import Any

from ._redact import redact_message

__all__ = [
    "AcquireTimeout",
    "AllProvidersFailed",
    "BackendError",
    "BadRequestError",
    "CircuitOpenError",
    "ConfigError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeout",
    "QuotaExhaustedError",
    "RateLimitSDKError",
    "RateLimitedError",
    "RequestTooLargeError",
]


def _rebuild(cls: type[RateLimitSDKError], message: str, kwargs: dict[str, Any]) -> Any:
    return cls(message, **kwargs)


class RateLimitSDKError(Exception):
    """Base class of every error the SDK raises on purpose.

    Subclasses keep their keyword arguments in ``_kwargs`` so that pickling
    rebuilds them through ``__init__`` (an ``Exception`` otherwise pickles only
    ``args``); attributes set later (and ``add_note`` notes) travel as state.
    ``str()`` is the message, redacted (registered secrets, key-shaped tokens and
    URL passwords masked).
    """

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        message = redact_message(message)
        super().__init__(message)
        self.message = message
        self._kwargs = kwargs

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._kwargs), dict(self.__dict__))

    def __str__(self) -> str:
        return self.message


class ConfigError(RateLimitSDKError, ValueError):
    """The configuration is invalid. The message names the field and the value.

    Not retryable: fix the configuration.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.field = field


class RequestTooLargeError(RateLimitSDKError, ValueError):
    """One request asks for more than a limit can ever grant.

    For example ``units=4`` on a limiter with ``max_concurrent=2``, or a token
    estimate above the whole ``tokens_per_minute`` budget. Not retryable.
    """


class AcquireTimeout(RateLimitSDKError, TimeoutError):
    """Waiting for admission ran past its deadline (``max_queue_wait`` or the call's timeout).

    Nothing was sent and no permit is held. Safe to retry later; in a chain this
    is the ``busy`` outcome and the call moves on to the next provider.
    """

    def __init__(
        self,
        message: str = "timed out waiting for admission",
        *,
        waited: float | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message, waited=waited, key=key)
        self.waited = waited
        self.key = key


class BackendError(RateLimitSDKError):
    """The shared limiter backend (Redis) failed and the policy is ``"raise"``."""


class CircuitOpenError(RateLimitSDKError):
    """The provider's circuit breaker is open: the provider was skipped, nothing was sent.

    ``retry_after`` is the number of seconds until the breaker lets a probe through.
    """

    def __init__(
        self,
        message: str = "circuit breaker open",
        *,
        provider: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, retry_after=retry_after)
        self.provider = provider
        self.retry_after = retry_after


class ProviderError(RateLimitSDKError):
    """A provider answered with an error, or could not be reached.

    Attributes: ``provider`` (name), ``status`` (HTTP status or ``None`` when no
    answer came), ``code`` (the provider's own error code or type, if any),
    ``retry_after`` (seconds the provider asked us to wait, if any), ``reason``
    (the cause in a few words, when known: ``"connection refused"``,
    ``"read timeout after 5.0 s"``; ``None`` otherwise).
    Whether it is worth retrying depends on the subclass; a plain
    ``ProviderError`` (5xx, malformed body, 401) is retried by the chain.
    """

    def __init__(
        self,
        message: str = "provider error",
        *,
        provider: str | None = None,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            status=status,
            code=code,
            retry_after=retry_after,
            reason=reason,
        )
        self.provider = provider
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.reason = reason


class RateLimitedError(ProviderError):
    """The provider throttled the request (429, concurrency, overloaded).

    Safe to retry after ``retry_after`` seconds; the limiter cools down meanwhile.
    """


class QuotaExhaustedError(RateLimitedError):
    """The account's quota, balance or billing is exhausted.

    Do not retry soon: the provider cools down until the reset it names, else for
    ``LimitsConfig.quota_cooldown`` seconds.
    """


class ProviderTimeout(ProviderError, TimeoutError):
    """Connecting to the provider or reading its answer timed out. Retryable."""


class ProviderConnectionError(ProviderError):
    """The connection was refused, reset or broken. Retryable."""


class BadRequestError(ProviderError, ValueError):
    """The provider rejected the request itself (400, 404, 413, 422).

    Not retryable and not worth a fallback: another provider would reject it too.
    """


class AllProvidersFailed(RateLimitSDKError):
    """Every provider in the chain failed or was skipped before the deadline.

    ``attempts`` lists every :class:`~ratelimit_sdk.models.Attempt`, in order.
    """

    def __init__(self, message: str = "all providers failed", *, attempts: Any = ()) -> None:
        attempts = tuple(attempts)
        super().__init__(message, attempts=attempts)
        self.attempts = attempts

    @property
    def last_error(self) -> BaseException | None:
        """The error of the last attempt that had one, or ``None``."""
        for attempt in reversed(self.attempts):
            if getattr(attempt, "error", None) is not None:
                return attempt.error  # type: ignore[no-any-return]
        return None
