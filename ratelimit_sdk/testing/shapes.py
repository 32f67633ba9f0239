"""Testing (fake provider side): the server-side limit shapes a FakeProvider can enforce.

Each public class is a frozen description of one limit, handed to
``FakeProvider(shapes=[...])`` or :meth:`FakeProvider.set_shapes`::

    FakeProvider(shapes=[LeakyBucket(rate=40, burst=4)])            # nginx limit_req
    FakeProvider(shapes=[SlidingWindow(limit=10, seconds=1.0)])     # 10 in any 1 s
    FakeProvider(shapes=[FixedWindow(limit=1000, seconds=86400)])   # a daily quota
    FakeProvider(shapes=[HiddenConcurrency(4), HiddenRate(600)])    # never announced
    FakeProvider(shapes=[OpenAIHeaders(requests_per_minute=500, tokens_per_minute=30_000)])

A request must pass every shape (and the constructor's ``max_concurrency`` and
``requests_per_minute``); a refused request is answered 429 and counts against
no shape. The fake turns each description into fresh state when it is set.
Every state here is pure arithmetic on times passed in; the FakeProvider's
lock guards it.
"""

from __future__ import annotations

import collections
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from ratelimit_sdk.testing import _wire
from ratelimit_sdk.testing._bucket import EPSILON, TokenBucket

__all__ = [
    "NGINX_429_BODY",
    "FixedWindow",
    "HiddenConcurrency",
    "HiddenRate",
    "LeakyBucket",
    "OpenAIHeaders",
    "Shape",
    "SlidingWindow",
]

Clock: TypeAlias = Callable[[], float]
"""A callable returning seconds (monotonic for the buckets, epoch seconds for FixedWindow)."""

NGINX_429_BODY = (
    "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    "<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
"""The body nginx sends with ``limit_req_status 429`` (no ``Retry-After`` header)."""


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _count(name: str, value: int, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class LeakyBucket:
    """nginx's ``limit_req zone=... rate=R burst=B nodelay`` (``limit_req_status 429``).

    ``rate`` is requests per second (``rate=40r/s`` is 40; ``rate=30r/m`` is
    0.5). nginx's accounting, to the millisecond: it keeps an integer
    ``excess`` (in thousandths of a request) and the integer millisecond of the
    last accepted request; a request at millisecond ``now`` computes
    ``excess - rate*1000 * (now - last) // 1000 + 1000`` (at least 0) and is
    refused when that exceeds ``burst * 1000``. So ``burst + 1`` requests pass
    at once, then one per ``1/rate`` s; with ``burst=0`` consecutive accepted
    requests must be at least ``1/rate`` apart *in whole milliseconds* (25 ms
    at 40r/s: 24.9 ms can be refused, or pass when the ticks fall right).
    Refusals are 429 with nginx's HTML body and no ``Retry-After``.
    ``clock`` (default ``time.monotonic``) is read in seconds.
    """

    rate: float
    burst: int = 0
    clock: Clock | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _positive("rate", self.rate)
        _count("burst", self.burst, least=0)


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """At most ``limit`` admitted requests in any ``seconds``-long interval (a sliding log).

    Refusals are 429 with ``Retry-After`` (whole seconds, rounded up, until the
    oldest counted request leaves the window). ``clock`` defaults to
    ``time.monotonic``.
    """

    limit: int
    seconds: float
    clock: Clock | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _count("limit", self.limit)
        _positive("seconds", self.seconds)


@dataclass(frozen=True, slots=True)
class FixedWindow:
    """At most ``limit`` requests per window; windows start at UTC multiples of ``seconds``.

    ``seconds=86400`` is a daily quota resetting at 00:00 UTC; ``3600`` resets on
    the hour. ``clock`` returns epoch seconds (default ``time.time``): inject one
    to cross a boundary without waiting. Refusals are 429 with ``Retry-After``
    (whole seconds until the next window, rounded up) and a message naming the
    window.
    """

    limit: int
    seconds: float
    clock: Clock | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _count("limit", self.limit)
        _positive("seconds", self.seconds)


@dataclass(frozen=True, slots=True)
class HiddenConcurrency:
    """At most ``limit`` requests in flight, never announced in any header.

    Refusals are Moonshot's 429 (``rate_limit_reached_error``, "max organization
    concurrency: N"), like the constructor's ``max_concurrency``.
    """

    limit: int

    def __post_init__(self) -> None:
        _count("limit", self.limit)


@dataclass(frozen=True, slots=True)
class HiddenRate:
    """A token bucket (``burst`` requests, refilled at ``requests_per_minute``), never announced.

    Refusals are 429 with a generic rate-limit body and no header at all (no
    ``Retry-After``, no ``x-ratelimit-*``): a client can only learn it.
    ``clock`` defaults to ``time.monotonic``.
    """

    requests_per_minute: float
    burst: int = 1
    clock: Clock | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _positive("requests_per_minute", self.requests_per_minute)
        _count("burst", self.burst)


@dataclass(frozen=True, slots=True)
class OpenAIHeaders:
    """OpenAI's request and token limits, enforced and announced on every answer.

    Each is a bucket holding a whole minute (``requests_per_minute`` requests,
    ``tokens_per_minute`` tokens; it starts full) refilled continuously. Every
    answer that passes the key check (200 and every 429, whatever refused it)
    carries ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
    ``x-ratelimit-reset-requests`` (a Go duration until full) and the same
    three ``-tokens`` headers, for the buckets set. A request costs one request
    and its estimated prompt tokens (4 characters each, as the fake counts)
    plus its ``max_tokens`` (or ``max_completion_tokens``); a refusal is 429
    with ``Retry-After`` and OpenAI's "Rate limit reached ... on requests|tokens
    per min" message. ``clock`` defaults to ``time.monotonic``.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    clock: Clock | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("OpenAIHeaders needs requests_per_minute or tokens_per_minute")
        if self.requests_per_minute is not None:
            _positive("requests_per_minute", self.requests_per_minute)
        if self.tokens_per_minute is not None:
            _positive("tokens_per_minute", self.tokens_per_minute)


Shape: TypeAlias = (
    LeakyBucket | SlidingWindow | FixedWindow | HiddenConcurrency | HiddenRate | OpenAIHeaders
)
"""Any one server-side limit shape."""

SHAPE_TYPES = (
    LeakyBucket,
    SlidingWindow,
    FixedWindow,
    HiddenConcurrency,
    HiddenRate,
    OpenAIHeaders,
)


# -- state (internal) ---------------------------------------------------------------------------


class Request(NamedTuple):
    """What a shape needs to know about one arriving request."""

    wire: _wire.Wire
    in_flight: int
    tokens: int


class Refusal(NamedTuple):
    """A 429 a shape answers with."""

    headers: list[tuple[str, str]]
    body: dict[str, Any] | str
    kind: str
    content_type: str | None = None


def _retry_after(seconds: float) -> tuple[str, str]:
    return ("Retry-After", str(max(1, math.ceil(seconds - EPSILON))))


def _rate_body(wire: _wire.Wire, message: str) -> dict[str, Any]:
    if wire == "anthropic":
        return _wire.error_body(wire, message, "rate_limit_error")
    return _wire.error_body(wire, message, "requests", "rate_limit_exceeded")


class State:
    """One shape's mutable state: check (no side effect), then commit on admission."""

    def check(self, request: Request) -> Refusal | None:
        """Return the refusal for ``request``, or ``None`` when this shape lets it pass."""
        return None

    def commit(self, request: Request) -> None:
        """Count the admitted ``request`` (called only when every shape let it pass)."""

    def headers(self) -> list[tuple[str, str]]:
        """Headers announced on every answer (none, for most shapes)."""
        return []


class LeakyBucketState(State):
    """nginx's ``ngx_http_limit_req_lookup`` for one key, in integer milliseconds."""

    def __init__(self, shape: LeakyBucket) -> None:
        self._clock = shape.clock or time.monotonic
        self._rate = int(shape.rate * 1000)  # nginx: ctx->rate, in thousandths per second
        self._burst = shape.burst * 1000
        self._last: int | None = None
        self._excess = 0
        self._pending: tuple[int, int] | None = None

    def check(self, request: Request) -> Refusal | None:
        now = math.floor(self._clock() * 1000)
        if self._last is None:
            self._pending = (now, 0)
            return None
        ms = now - self._last
        if ms < -60000:
            ms = 1
        elif ms < 0:
            ms = 0
        excess = max(0, self._excess - self._rate * ms // 1000 + 1000)
        if excess > self._burst:
            return Refusal([], NGINX_429_BODY, "leaky_bucket", "text/html")
        self._pending = (now if ms else self._last, excess)
        return None

    def commit(self, request: Request) -> None:
        if self._pending is not None:
            self._last, self._excess = self._pending
            self._pending = None


class SlidingWindowState(State):
    def __init__(self, shape: SlidingWindow) -> None:
        self._shape = shape
        self._clock = shape.clock or time.monotonic
        self._starts: collections.deque[float] = collections.deque()

    def check(self, request: Request) -> Refusal | None:
        now = self._clock()
        horizon = now - self._shape.seconds
        while self._starts and self._starts[0] <= horizon:
            self._starts.popleft()
        if len(self._starts) < self._shape.limit:
            return None
        wait = self._starts[0] - horizon
        message = (
            f"Rate limit reached (fake): at most {self._shape.limit} requests in any "
            f"{self._shape.seconds:g} s. Please try again in {_wire.go_duration(wait)}."
        )
        return Refusal([_retry_after(wait)], _rate_body(request.wire, message), "sliding_window")

    def commit(self, request: Request) -> None:
        self._starts.append(self._clock())


class FixedWindowState(State):
    def __init__(self, shape: FixedWindow) -> None:
        self._shape = shape
        self._clock = shape.clock or time.time
        self._window: int | None = None
        self._used = 0

    def _roll(self) -> float:
        now = self._clock()
        window = math.floor(now / self._shape.seconds)
        if window != self._window:
            self._window, self._used = window, 0
        return now

    def check(self, request: Request) -> Refusal | None:
        now = self._roll()
        if self._used < self._shape.limit:
            return None
        assert self._window is not None
        ends = (self._window + 1) * self._shape.seconds
        reset = datetime.datetime.fromtimestamp(ends, datetime.timezone.utc)
        message = (
            f"Rate limit reached (fake): {self._shape.limit} requests per "
            f"{self._shape.seconds:g} s window; it resets at "
            f"{reset.isoformat(timespec='seconds').replace('+00:00', 'Z')}."
        )
        return Refusal(
            [_retry_after(ends - now)], _rate_body(request.wire, message), "fixed_window"
        )

    def commit(self, request: Request) -> None:
        self._roll()
        self._used += 1


class HiddenConcurrencyState(State):
    def __init__(self, shape: HiddenConcurrency) -> None:
        self._limit = shape.limit

    def check(self, request: Request) -> Refusal | None:
        if request.in_flight < self._limit:
            return None
        return Refusal([], _wire.kimi_concurrency_body(self._limit), "hidden_concurrency")


class HiddenRateState(State):
    def __init__(self, shape: HiddenRate) -> None:
        self._clock = shape.clock or time.monotonic
        self._bucket = TokenBucket(shape.requests_per_minute, shape.burst, self._clock())

    def check(self, request: Request) -> Refusal | None:
        self._bucket.refill(self._clock())
        if self._bucket.tokens >= 1.0 - EPSILON:
            return None
        message = "Too many requests (fake). Please slow down."
        return Refusal([], _rate_body(request.wire, message), "hidden_rate")

    def commit(self, request: Request) -> None:
        self._bucket.tokens = max(0.0, self._bucket.tokens - 1.0)


class OpenAIHeadersState(State):
    def __init__(self, shape: OpenAIHeaders) -> None:
        self._clock = shape.clock or time.monotonic
        now = self._clock()
        rpm, tpm = shape.requests_per_minute, shape.tokens_per_minute
        self._requests = None if rpm is None else TokenBucket(rpm, math.ceil(rpm), now)
        self._tokens = None if tpm is None else TokenBucket(tpm, math.ceil(tpm), now)

    def check(self, request: Request) -> Refusal | None:
        now = self._clock()
        for unit, bucket, cost in (
            ("requests", self._requests, 1),
            ("tokens", self._tokens, request.tokens),
        ):
            if bucket is None:
                continue
            bucket.refill(now)
            if bucket.tokens >= cost - EPSILON:
                continue
            wait = (cost - bucket.tokens) / bucket.rate if cost <= bucket.capacity else 60.0
            message = (
                f"Rate limit reached for fake-model (fake) on {unit} per min: Limit "
                f"{_number(bucket.per_minute)}, Used {bucket.capacity - bucket.remaining()}, "
                f"Requested {cost}. Please try again in {_wire.go_duration(wait)}."
            )
            body = _wire.error_body(request.wire, message, unit, "rate_limit_exceeded")
            if request.wire == "anthropic":
                body = _wire.error_body(request.wire, message, "rate_limit_error")
            return Refusal([_retry_after(wait)], body, f"openai_{unit}")
        return None

    def commit(self, request: Request) -> None:
        if self._requests is not None:
            self._requests.tokens = max(0.0, self._requests.tokens - 1)
        if self._tokens is not None:
            self._tokens.tokens = max(0.0, self._tokens.tokens - request.tokens)

    def headers(self) -> list[tuple[str, str]]:
        now = self._clock()
        out: list[tuple[str, str]] = []
        for unit, bucket in (("requests", self._requests), ("tokens", self._tokens)):
            if bucket is None:
                continue
            bucket.refill(now)
            out += [
                (f"x-ratelimit-limit-{unit}", _number(bucket.per_minute)),
                (f"x-ratelimit-remaining-{unit}", str(bucket.remaining())),
                (f"x-ratelimit-reset-{unit}", _wire.go_duration(bucket.time_to_full())),
            ]
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def make_state(shape: Shape) -> State:
    """Fresh state for one shape description (raises TypeError for anything else)."""
    if isinstance(shape, LeakyBucket):
        return LeakyBucketState(shape)
    if isinstance(shape, SlidingWindow):
        return SlidingWindowState(shape)
    if isinstance(shape, FixedWindow):
        return FixedWindowState(shape)
    if isinstance(shape, HiddenConcurrency):
        return HiddenConcurrencyState(shape)
    if isinstance(shape, HiddenRate):
        return HiddenRateState(shape)
    if isinstance(shape, OpenAIHeaders):
        return OpenAIHeadersState(shape)
    raise TypeError(f"not a server shape (use ratelimit_sdk.testing.shapes): {shape!r}")


def request_tokens(body: dict[str, Any]) -> int:
    """The tokens an OpenAI-style token limit charges: prompt estimate plus ``max_tokens``."""
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    extra = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else 0
    return _wire.count_tokens(_wire.prompt_text(body)) + extra
