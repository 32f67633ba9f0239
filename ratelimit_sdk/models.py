"""Leaf: the value types handed along the data path. Imports nothing from the package.

All are frozen, slotted dataclasses (cheap, immutable, safe to share across
threads): :class:`ChatRequest` goes down the path, a provider hands back a
:class:`Reply`, ``classify`` turns it into a :class:`Verdict`, the chain records an
:class:`Attempt` per try, and the caller gets a :class:`ChatResponse`.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

__all__ = [
    "CHAT_PARAMS",
    "Attempt",
    "Availability",
    "BreakerVote",
    "ChatParams",
    "ChatRequest",
    "ChatResponse",
    "Completion",
    "ErrorBody",
    "LimitKind",
    "LimiterSnapshot",
    "Outcome",
    "ProviderStats",
    "Reply",
    "Usage",
    "Verdict",
    "check_keywords",
]

#: Which server limit refused a request: too many in flight, or too many per unit of time.
LimitKind = Literal["concurrency", "rate"]


class Outcome(str, enum.Enum):
    """What one attempt on one provider came to (``Attempt.outcome``)."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    ERROR = "error"
    TIMEOUT = "timeout"
    CIRCUIT_OPEN = "circuit_open"
    COOLING_DOWN = "cooling_down"
    BUSY = "busy"
    BAD_REQUEST = "bad_request"

    def __str__(self) -> str:
        return self.value


class BreakerVote(str, enum.Enum):
    """How an outcome counts for the provider's circuit breaker."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORE = "ignore"


class ChatParams(TypedDict, total=False):
    """The OpenAI chat-completion parameters ``Client.chat`` takes by name (all optional).

    Each is sent under its own name in the OpenAI wire format; the Anthropic one maps
    what it can (see :mod:`ratelimit_sdk.providers.anthropic`). ``None`` means "not
    sent". ``extra_body`` is merged into the request body last, for any field not
    listed here (``{"top_k": 40}``, a provider's own options).
    """

    temperature: float | None
    top_p: float | None
    max_tokens: int | None
    max_completion_tokens: int | None
    stop: str | Sequence[str] | None
    n: int | None
    seed: int | None
    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: str | Mapping[str, Any] | None
    parallel_tool_calls: bool | None
    response_format: Mapping[str, Any] | None
    presence_penalty: float | None
    frequency_penalty: float | None
    logit_bias: Mapping[str, float] | None
    logprobs: bool | None
    top_logprobs: int | None
    user: str | None
    metadata: Mapping[str, str] | None
    reasoning_effort: str | None
    stream_options: Mapping[str, Any] | None
    modalities: Sequence[str] | None
    service_tier: str | None
    store: bool | None
    prediction: Mapping[str, Any] | None
    audio: Mapping[str, Any] | None
    web_search_options: Mapping[str, Any] | None
    extra_body: Mapping[str, Any] | None


#: The names of :class:`ChatParams`, the body parameters ``Client.chat`` accepts.
CHAT_PARAMS: frozenset[str] = frozenset(ChatParams.__annotations__)


def check_keywords(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise ``TypeError`` for the first name in ``given`` that is not in ``allowed``.

    The message reads like Python's own, plus the closest allowed name when one is
    close: ``chat() got an unexpected keyword argument 'temprature' (did you mean
    'temperature'?)``.
    """
    known = set(allowed)
    for name in given:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint}")


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call, as the caller asked for it (wire-format neutral).

    ``params`` holds the other :class:`ChatParams` fields given (``top_p``, ``stop``,
    ``tools`` ...; never ``None`` values), in OpenAI's names: the OpenAI wire format
    sends them as they are, the Anthropic one maps them. ``extra_body`` is merged
    into the body last, as it is, in either format.
    """

    messages: Sequence[Mapping[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def prompt_chars(self) -> int:
        """Characters of message text, for the token estimate."""
        total = 0
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                        total += len(part["text"])
        return total

    def estimate_tokens(self) -> int:
        """Tokens charged before the call: prompt characters / 4 + ``max_tokens``.

        ``max_completion_tokens`` stands in for ``max_tokens`` when only it is given.
        """
        limit = self.max_tokens
        if limit is None:
            other = self.params.get("max_completion_tokens")
            limit = other if isinstance(other, int) and not isinstance(other, bool) else None
        return self.prompt_chars() // 4 + 1 + (limit or 0)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage a provider reported for one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    """The parsed success body of a provider answer."""

    content: str
    model: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The error object a provider put in its body (any of the fields may be absent)."""

    code: str | None = None
    type: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, as a provider's transport hands it up (before classification).

    ``headers`` has lower-case names. ``completion`` is set only when the body
    parsed as the wire format's success shape; ``error`` when it held an error
    object. ``excerpt`` is a short, printable start of the body for messages.
    """

    status: int
    headers: Mapping[str, str]
    completion: Completion | None = None
    error: ErrorBody | None = None
    excerpt: str = ""
    elapsed: float = 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``classify`` decided about one answer (or one transport failure).

    ``retry_after``: seconds the server asked us to wait before the next try
    (``None``: it did not say). ``cooldown``: seconds during which nobody
    should be admitted to this provider (``None``: no cooldown).
    ``retry_same``: worth another try on the same provider. ``limit``: for a
    ``rate_limited`` answer, which limit refused it: ``"concurrency"`` (too many
    requests in flight), ``"rate"`` (too many per unit of time), or ``None``
    (an overloaded server, or not said).
    """

    outcome: Outcome
    breaker: BreakerVote
    retry_same: bool
    retry_after: float | None = None
    cooldown: float | None = None
    message: str = ""
    code: str | None = None
    status: int | None = None
    limit: LimitKind | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try on one provider (or one skip), as recorded by the chain."""

    provider: str
    outcome: Outcome
    error: BaseException | None = None
    elapsed: float = 0.0
    status: int | None = None


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """The answer to ``Client.chat``: the text, who gave it, and how it got there."""

    content: str
    provider: str
    model: str
    attempts: tuple[Attempt, ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a limiter (or a whole guard) could admit one request now, and if not, from when.

    ``wait``: ``0.0`` admits now; a positive number is the seconds until it may
    (tokens, spacing, a cooldown, an open breaker); ``None`` means only a release
    can tell (concurrency is full, or others queue ahead); ``math.inf`` means never
    (closed). ``cooldown``: seconds of cooldown left (``0.0``: none), part of
    ``wait``. ``reason``: for a guard, the :class:`Outcome` a skip would record
    (``cooling_down``, ``circuit_open``, ``busy``); ``None`` when it admits now.
    ``window``: seconds until the limiter's window limits (``windows=``) allow the
    request (``0.0``: none holds it back; ``inf``: it never fits one), part of
    ``wait`` unless only a release can tell; a guard skips a provider whose window
    wait is longer than it may wait, as it does one cooling down.
    A look, not a reservation: it may be stale by the time the caller acts.
    """

    wait: float | None
    cooldown: float = 0.0
    reason: Outcome | None = None
    window: float = 0.0

    @property
    def now(self) -> bool:
        """True when a request would be admitted at once."""
        return self.wait == 0.0


#: A limiter that would admit now (shared instance; availabilities are immutable).
AVAILABLE_NOW = Availability(0.0)


@dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """A consistent view of one limiter at one moment.

    ``tokens``: requests the bucket would admit now (``None``: no rate limit).
    ``llm_tokens``: LLM tokens left in the ``tokens_per_minute`` budget
    (``None``: no budget). ``cooldown_remaining`` and ``next_start_in`` are seconds.
    ``windows``: one dict per window limit, its definition (``requests`` or a
    tokens kind, ``per``, ``align``) with ``used`` (what counts now, allowance
    included) and ``limit``; empty without windows.
    """

    in_flight: int
    queued: int
    max_concurrent: int | None
    requests_per_minute: float | None
    burst: int
    min_interval: float
    tokens_per_minute: float | None
    tokens: float | None
    llm_tokens: float | None
    cooldown_remaining: float
    next_start_in: float
    windows: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderStats:
    """Per-provider figures from ``Client.stats()`` (this process's counts).

    With a Redis backend, ``shared`` holds the figures every process sees.
    ``learned``: for a provider with ``"auto"`` limits, the values in force now
    (``{"max_concurrent": 3, "requests_per_minute": 2400.0}``); ``None`` otherwise.
    ``windows``: each window limit with its ``used`` and ``limit`` now (see
    :class:`LimiterSnapshot`).
    """

    name: str
    in_flight: int
    queued: int
    breaker_state: str
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    errors: int = 0
    retries: int = 0
    fallbacks: int = 0
    tokens_available: float | None = None
    cooldown_remaining: float = 0.0
    wait_p50: float = 0.0
    wait_p95: float = 0.0
    limits: Mapping[str, Any] = field(default_factory=dict)
    shared: Mapping[str, Any] | None = None
    learned: Mapping[str, float] | None = None
    windows: tuple[Mapping[str, Any], ...] = ()

    @property
    def counters(self) -> dict[str, int]:
        """The counters as a dict: requests, ok, rate_limited, errors, retries, fallbacks."""
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rate_limited": self.rate_limited,
            "errors": self.errors,
            "retries": self.retries,
            "fallbacks": self.fallbacks,
        }
