"""ratelimit_sdk: call LLM providers as fast as their rate limits allow, and never faster.

A synchronous, thread-safe client: per provider a concurrency limit, a token
bucket, a minimum spacing and a circuit breaker; an ordered fallback chain with
backoff, jitter and Retry-After; limits changeable while running; shared across
processes through Redis.

Reading order (one call, top to bottom): :mod:`.client` -> :mod:`.chain`
(:mod:`.retry`) -> :mod:`.guard` (:mod:`.breaker`, :mod:`.limiter`,
:mod:`.providers`) -> :mod:`.classify`; leaves: :mod:`.config`, :mod:`.models`,
:mod:`.errors`, :mod:`.hooks`, :mod:`.clock`.
"""

from __future__ import annotations

import logging

from .adapter import RateLimitAdapter
from .client import Client
from .config import (
    AutoLimits,
    BreakerConfig,
    ClientConfig,
    LimitsConfig,
    ProviderConfig,
    RetryConfig,
    TimeoutConfig,
    WindowConfig,
)
from .errors import (
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
from .hooks import Event
from .limiter import Limiter, Permit
from .models import Attempt, ChatRequest, ChatResponse, Outcome, ProviderStats, Usage
from .stream import ChatStream

__version__ = "0.1.0"

# A library never prints: without a handler of the user's, records go nowhere
# (instead of logging's last-resort handler writing warnings to stderr).
logging.getLogger("ratelimit_sdk").addHandler(logging.NullHandler())

__all__ = [
    "AcquireTimeout",
    "AllProvidersFailed",
    "Attempt",
    "AutoLimits",
    "BackendError",
    "BadRequestError",
    "BreakerConfig",
    "ChatRequest",
    "ChatResponse",
    "ChatStream",
    "CircuitOpenError",
    "Client",
    "ClientConfig",
    "ConfigError",
    "Event",
    "Limiter",
    "LimitsConfig",
    "Outcome",
    "Permit",
    "ProviderConfig",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStats",
    "ProviderTimeout",
    "QuotaExhaustedError",
    "RateLimitAdapter",
    "RateLimitSDKError",
    "RateLimitedError",
    "RequestTooLargeError",
    "RetryConfig",
    "TimeoutConfig",
    "Usage",
    "WindowConfig",
]
