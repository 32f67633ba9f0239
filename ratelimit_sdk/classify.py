"""Stage 5 of the data path: classify a provider's answer into a :class:`Verdict`.

Receives a :class:`~ratelimit_sdk.models.Reply` (or the transport error the provider
layer raised) and hands the guard a :class:`~ratelimit_sdk.models.Verdict`: the
outcome, how it counts for the breaker, whether the same provider is worth another
try, and how long the server asked us to wait or pause. Everything here is pure: the
wall-clock time comes in as ``now`` (epoch seconds), nothing reads a clock, does I/O
or starts a thread, and no function raises on odd input.

The classification, first match wins:

1. 2xx with a completion and no error object -> ``ok`` (breaker success). If the
   rate-limit headers say a budget is used up (remaining 0) until a reset,
   ``cooldown`` is the time until that reset, so the limiter stops before a 429.
2. throttled -> ``rate_limited`` (breaker ignores it, retry here): 429, or any status
   whose error code/type maps to it in :data:`PROVIDER_CODES`, or whose text says
   rate limit / too many requests / concurrency / overloaded.
3. quota, balance or billing exhausted -> ``quota_exhausted`` (ignored, move on): an
   error code in :data:`PROVIDER_CODES`, or quota text on 400/402/403/429. The body's
   code decides first, then the text, then the status: Zhipu sends both throttling
   (1302) and an exhausted daily quota (1304) as 429.
4. 500, 502, 503, 504, 529 -> ``error``, breaker failure, retry here.
5. 2xx without the expected body, or with an error object -> ``error``, retry here.
6. 400, 404, 413, 422 (no rate-limit text) -> ``bad_request``: no retry, no fallback.
7. anything else (401, 403, 3xx, other 4xx/5xx) -> ``error``, breaker failure, move on.

(Rows 6 and 7 are swapped against the table, which is harmless: they never overlap.)

Every wait a server names is clamped to ``[0, MAX_SERVER_WAIT]``.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Final

from ._redact import redact
from .errors import (
    BadRequestError,
    ProviderError,
    ProviderTimeout,
    QuotaExhaustedError,
    RateLimitedError,
)
from .models import BreakerVote, ErrorBody, LimitKind, Outcome, Reply, Verdict

__all__ = [
    "CONCURRENCY_PATTERNS",
    "LIMIT_CODES",
    "MAX_SERVER_WAIT",
    "OVERLOAD_PATTERNS",
    "PROVIDER_CODES",
    "QUOTA_PATTERNS",
    "RATE_LIMIT_PATTERNS",
    "classify",
    "classify_failure",
    "declared_limits",
    "error_for",
    "limit_kind",
    "next_slot",
    "parse_duration",
    "parse_reset",
    "parse_retry_after",
    "remaining_reset",
    "server_wait",
]

#: Longest wait (seconds) taken from a server: one day. A larger Retry-After or
#: reset (or an absurd one such as ``1e309``) is clamped to it; a quota that resets
#: next week is then probed again once a day, which costs one request.
MAX_SERVER_WAIT: Final = 86_400.0

#: Error codes and types (lower-case) that decide the outcome before any text or
#: status is read. One table for every provider; add a row to teach it a new one.
#: Values are ``RATE_LIMITED`` or ``QUOTA_EXHAUSTED`` (other outcomes are not read).
PROVIDER_CODES: Final[Mapping[str, Outcome]] = {
    # Zhipu / Z.ai business codes (error.code, sent as strings, mostly with HTTP 429).
    "1302": Outcome.RATE_LIMITED,  # high concurrency
    "1303": Outcome.RATE_LIMITED,  # high frequency
    "1305": Outcome.RATE_LIMITED,  # service overloaded
    "1113": Outcome.QUOTA_EXHAUSTED,  # account in arrears
    "1304": Outcome.QUOTA_EXHAUSTED,  # daily call limit reached
    "1308": Outcome.QUOTA_EXHAUSTED,  # usage limit for the (5-hour) window; "reset at ..."
    "1309": Outcome.QUOTA_EXHAUSTED,  # coding plan expired
    "1310": Outcome.QUOTA_EXHAUSTED,  # weekly / monthly limit exhausted; "reset at ..."
    # OpenAI (error.code and error.type).
    "insufficient_quota": Outcome.QUOTA_EXHAUSTED,
    "billing_hard_limit_reached": Outcome.QUOTA_EXHAUSTED,
    "rate_limit_exceeded": Outcome.RATE_LIMITED,
    # Moonshot / Kimi (error.type).
    "exceeded_current_quota_error": Outcome.QUOTA_EXHAUSTED,
    "rate_limit_reached_error": Outcome.RATE_LIMITED,
    "engine_overloaded_error": Outcome.RATE_LIMITED,
    # Anthropic (error.type).
    "billing_error": Outcome.QUOTA_EXHAUSTED,
    "rate_limit_error": Outcome.RATE_LIMITED,
    "overloaded_error": Outcome.RATE_LIMITED,
}

#: Text (searched case-insensitively in code, type and message) that means the
#: account's quota, balance or billing is exhausted. Read before RATE_LIMIT_PATTERNS.
QUOTA_PATTERNS: Final[tuple[str, ...]] = (
    r"insufficient[_ ]quota",
    r"exceeded[_ ](?:your[_ ])?current[_ ](?:token[_ ])?quota",
    r"quota[_ ](?:has[_ ]been[_ ]|is[_ ])?(?:exhausted|used[_ ]up)",
    r"insufficient[_ ](?:account[_ ])?(?:balance|funds|credits?)",
    r"balance[_ ](?:is[_ ])?(?:insufficient|exhausted|not[_ ]enough|too[_ ]low)",
    r"credit[_ ]balance[_ ]is[_ ]too[_ ]low",  # Anthropic, sent as 400
    r"check[_ ]your[_ ]plan[_ ]and[_ ]billing",
    r"check[_ ]your[_ ](?:account[_ ])?balance",
    # "You've reached your usage limit for this billing cycle" (Kimi), not "Quota exceeded for
    # quota metric 'requests per minute'" (a per-minute limit).
    r"(?:reached|exceeded)\s+(?:your|the)\s[^.]{0,30}\b(?:quota|billing)\b",
    r"payment[_ ]required",
    r"\barrears\b",
    r"余额不足",  # insufficient balance
    r"欠费",  # in arrears
)

#: Text that means "slow down": throttling, concurrency limits, overload.
RATE_LIMIT_PATTERNS: Final[tuple[str, ...]] = (
    r"rate[ _-]?limit",
    r"too[ _]many[ _]requests",
    r"concurren(?:cy|t)",
    r"overload",
    r"并发",  # concurrency
    r"频率",  # frequency
    r"过载",  # overload
    r"限流",  # throttled
)

#: Which limit a ``rate_limited`` answer names, by error code or type (lower-case),
#: read before the text: ``"concurrency"``, ``"rate"``, or ``None`` for an overloaded
#: server (no limit of ours to learn). Add a row to teach it a new code.
LIMIT_CODES: Final[Mapping[str, LimitKind | None]] = {
    "1302": "concurrency",  # Zhipu: high concurrency
    "1303": "rate",  # Zhipu: high frequency
    "1305": None,  # Zhipu: service overloaded
    "engine_overloaded_error": None,  # Moonshot
    "overloaded_error": None,  # Anthropic
}

#: Text of a ``rate_limited`` answer that means "too many requests in flight"
#: (Moonshot's "max organization concurrency: 4"). Read after LIMIT_CODES.
CONCURRENCY_PATTERNS: Final[tuple[str, ...]] = (
    r"concurren(?:cy|t)",
    r"并发",  # concurrency
)

#: Text of a ``rate_limited`` answer that means the server is overloaded (no limit
#: of ours). Any other rate-limit answer counts as a ``"rate"`` refusal.
OVERLOAD_PATTERNS: Final[tuple[str, ...]] = (
    r"overload",
    r"过载",  # overload
)

_CONCURRENCY_TEXT = re.compile("|".join(CONCURRENCY_PATTERNS), re.IGNORECASE)
_OVERLOAD_TEXT = re.compile("|".join(OVERLOAD_PATTERNS), re.IGNORECASE)
_NOT_FOUND: Final = object()

_QUOTA_TEXT = re.compile("|".join(QUOTA_PATTERNS), re.IGNORECASE)
_RATE_LIMIT_TEXT = re.compile("|".join(RATE_LIMIT_PATTERNS), re.IGNORECASE)

_TRANSIENT_STATUSES: Final = frozenset({500, 502, 503, 504, 529})
_BAD_REQUEST_STATUSES: Final = frozenset({400, 404, 413, 422})
_QUOTA_TEXT_STATUSES: Final = frozenset({400, 402, 403, 429})

_MAX_MESSAGE: Final = 300  # characters of provider text in Verdict.message
_MAX_CODE: Final = 100
_MAX_SCAN: Final = 4_000  # characters of error text searched for patterns
_MAX_HEADER_VALUE: Final = 100  # longer header values are garbage, not waits
_EPOCH_SECONDS_FLOOR: Final = 1e9  # a bare reset number above this is a Unix time
_EPOCH_MILLIS_FLOOR: Final = 1e12  # ... and above this, a Unix time in milliseconds

#: Time zone of reset timestamps printed without one in error text (Zhipu's
#: "Your limit will reset at 2026-07-12 04:30:37"): Beijing time. If the guess is
#: wrong the cooldown ends early, and the next answer names the reset again.
_NAIVE_TEXT_TZ: Final = timezone(timedelta(hours=8))

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_DURATION = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS: Final[Mapping[str, float]] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # micro sign
    "μs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(\.[0-9]+)?([Zz]|[+-][0-9]{2}:?[0-9]{2})?"
)

_RATELIMIT_REMAINING = re.compile(r"x-ratelimit-remaining(?:-([a-z0-9-]+))?")
_ANTHROPIC_REMAINING = re.compile(r"anthropic-ratelimit-([a-z0-9-]+)-remaining")
_RATELIMIT_RESET = re.compile(r"x-ratelimit-reset(?:-[a-z0-9-]+)?")
_ANTHROPIC_RESET = re.compile(r"anthropic-ratelimit-[a-z0-9-]+-reset")

# "please try again after 1 seconds" (Moonshot), "Please try again in 6m0s" (OpenAI).
_WAIT_HINT = re.compile(
    r"(?:try\s+again|retry)\s+(?:in|after)\s+(?P<token>[0-9][0-9a-zµμ.]*)"
    r"(?:\s*(?P<word>milliseconds?|seconds?|secs?|minutes?|mins?|hours?)\b)?",
    re.IGNORECASE,
)
_WORD_UNITS: Final[Mapping[str, float]] = {
    "millisecond": 1e-3,
    "second": 1.0,
    "sec": 1.0,
    "minute": 60.0,
    "min": 60.0,
    "hour": 3600.0,
}
_RESET_HINT = re.compile(r"reset|重置", re.IGNORECASE)


# --------------------------------------------------------------------------- headers


def _clamp(seconds: float) -> float | None:
    """Clamp a wait to ``[0, MAX_SERVER_WAIT]``; ``None`` for NaN."""
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_SERVER_WAIT)


def _clean(value: object) -> str | None:
    """Strip a header value; ``None`` when empty, not text, or too long to be real."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > _MAX_HEADER_VALUE:
        return None
    return value


def _number(value: str) -> float | None:
    """Read a plain ASCII decimal number (no ``inf``/``nan``/unicode digits), else ``None``."""
    if not _NUMBER.fullmatch(value):
        return None
    try:
        number = float(value)  # an overflowing literal such as 1e309 becomes +-inf
    except ValueError:  # pragma: no cover - the pattern admits only valid literals
        return None
    return number


def _http_date(value: str, now: float) -> float | None:
    """Seconds from ``now`` until an RFC 9110 HTTP-date, clamped; ``None`` if not one."""
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return _clamp(when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


def _rfc3339(value: str, now: float, naive_tz: timezone = timezone.utc) -> float | None:
    """Seconds from ``now`` until an RFC 3339 timestamp, clamped; ``None`` if not one."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    tz = naive_tz
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        try:
            tz = timezone(sign * offset)
        except ValueError:  # offset of a day or more
            return None
    elif zone:
        tz = timezone.utc
    try:
        when = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
        stamp = when.timestamp() + (float(fraction) if fraction else 0.0)
    except (ValueError, OverflowError, OSError):
        return None
    return _clamp(stamp - now)


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date.

    ``now`` is the wall-clock time (epoch seconds) the date is measured from.
    Negative delays and past dates give ``0.0``; waits above :data:`MAX_SERVER_WAIT`
    (including overflowing literals such as ``1e309``) are clamped to it; ``inf``,
    ``nan``, unicode digits, garbage and empty values give ``None``. Never raises.
    """
    text = _clean(value)
    if text is None:
        return None
    number = _number(text)
    if number is not None:
        return _clamp(number)
    return _http_date(text, now)


def parse_duration(value: str) -> float | None:
    """Seconds in a Go-style duration (``6m0s``, ``1.5s``, ``250ms``, ``1h2m3.5s``).

    A bare number counts as seconds. Negative durations give ``0.0``, long ones are
    clamped to :data:`MAX_SERVER_WAIT`, anything else gives ``None``. Never raises.
    """
    text = _clean(value)
    if text is None:
        return None
    number = _number(text)
    if number is not None:
        return _clamp(number)
    if not _DURATION.fullmatch(text):
        return None
    total = 0.0
    for amount, unit in _DURATION_PART.findall(text):
        total += float(amount) * _DURATION_UNITS[unit]
    return _clamp(-total if text.startswith("-") else total)


def parse_reset(value: str, now: float) -> float | None:
    """Seconds from ``now`` until a rate-limit reset, however the header spells it.

    Accepts a duration (:func:`parse_duration`, bare numbers as seconds), a bare
    number above 1e9 as a Unix time in seconds (above 1e12: in milliseconds), an
    RFC 3339 timestamp (Anthropic; no zone means UTC) or an HTTP-date. The result is
    clamped to ``[0, MAX_SERVER_WAIT]``; unreadable values give ``None``. Never raises.
    """
    text = _clean(value)
    if text is None:
        return None
    number = _number(text)
    if number is not None:
        if number > _EPOCH_MILLIS_FLOOR and math.isfinite(number):
            return _clamp(number / 1000.0 - now)
        if number > _EPOCH_SECONDS_FLOOR and math.isfinite(number):
            return _clamp(number - now)
        return _clamp(number)
    duration = parse_duration(text)
    if duration is not None:
        return duration
    stamp = _rfc3339(text, now)
    if stamp is not None:
        return stamp
    return _http_date(text, now)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Copy the headers with lower-case names (the transport lowers them already)."""
    try:
        return {str(name).lower(): value for name, value in headers.items()}
    except Exception:  # a hostile mapping; treat it as no headers
        return {}


def server_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``Retry-After``.

    ``retry-after-ms`` wins when both are present and readable, because it is the
    more precise of the two (the same order as openai-python). ``None`` when neither
    is there or readable. Clamped like :func:`parse_retry_after`. Never raises.
    """
    lowered = _lower(headers)
    text = _clean(lowered.get("retry-after-ms"))
    if text is not None:
        millis = _number(text)
        if millis is not None:
            return _clamp(millis / 1000.0)
    retry_after = lowered.get("retry-after")
    if isinstance(retry_after, str):
        return parse_retry_after(retry_after, now)
    return None


def _budgets_named(headers: Mapping[str, str], now: float) -> list[tuple[bool | None, float, str]]:
    """Every rate-limit budget with a readable reset: (exhausted?, seconds until reset).

    ``exhausted`` is ``None`` when the family sent a reset but no readable remaining
    count. Families: ``x-ratelimit-remaining[-kind]`` with ``x-ratelimit-reset[-kind]``
    (OpenAI, Moonshot, most OpenAI-compatible servers) and
    ``anthropic-ratelimit-<kind>-remaining|reset``.
    """
    lowered = _lower(headers)
    pairs: dict[str, str | None] = {}  # reset header name -> remaining value
    for name, value in lowered.items():
        match = _RATELIMIT_REMAINING.fullmatch(name)
        if match is not None:
            kind = match.group(1)
            pairs["x-ratelimit-reset" + (f"-{kind}" if kind else "")] = value
            continue
        match = _ANTHROPIC_REMAINING.fullmatch(name)
        if match is not None:
            pairs[f"anthropic-ratelimit-{match.group(1)}-reset"] = value
    for name in lowered:
        if _RATELIMIT_RESET.fullmatch(name) or _ANTHROPIC_RESET.fullmatch(name):
            pairs.setdefault(name, None)  # a reset without a remaining count
    budgets: list[tuple[bool | None, float, str]] = []
    for reset_name, remaining in pairs.items():
        reset_value = lowered.get(reset_name)
        if not isinstance(reset_value, str):
            continue
        wait = parse_reset(reset_value, now)
        if wait is None:
            continue
        left = _number(remaining.strip()) if isinstance(remaining, str) else None
        budgets.append((None if left is None else left <= 0, wait, reset_name))
    return budgets


def _budgets(headers: Mapping[str, str], now: float) -> list[tuple[bool | None, float]]:
    """:func:`_budgets_named` without the header names."""
    return [(exhausted, wait) for exhausted, wait, _ in _budgets_named(headers, now)]


def remaining_reset(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until an exhausted budget (remaining 0) resets; ``None`` if none is.

    Reads every header family (see :func:`parse_reset` for the spellings); when
    several budgets are exhausted, the latest reset wins, since nothing can pass
    before it. Clamped to ``[0, MAX_SERVER_WAIT]``. Never raises.
    """
    waits = [wait for exhausted, wait in _budgets(headers, now) if exhausted]
    return max(waits) if waits else None


def next_slot(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until an exhausted budget (remaining 0) admits the *next* request.

    OpenAI-style ``x-ratelimit-reset-*`` counts until the budget is whole again;
    with remaining 0 and a readable ``limit`` of the same kind, one request frees
    up after ``reset / limit`` (a token bucket refills evenly). Without a limit
    header the whole reset is used. The latest of the exhausted budgets wins.
    Used on successes, to stop before the 429 without idling longer than needed.
    """
    lowered = _lower(headers)
    waits = []
    for exhausted, wait, reset_name in _budgets_named(headers, now):
        if not exhausted:
            continue
        limit_value = lowered.get(reset_name.replace("reset", "limit"))
        limit = _number(limit_value.strip()) if isinstance(limit_value, str) else None
        waits.append(wait / limit if limit is not None and limit >= 1 else wait)
    return max(waits) if waits else None


def declared_limits(
    headers: Mapping[str, str], now: float
) -> dict[str, tuple[float, float | None, float | None]]:
    """The limits a server declares: ``{"requests"|"tokens": (limit, remaining, reset)}``.

    Reads ``x-ratelimit-limit-<kind>`` with ``-remaining-<kind>`` and ``-reset-<kind>``
    (OpenAI, Moonshot and most OpenAI-compatible servers) and
    ``anthropic-ratelimit-<kind>-limit|remaining|reset``. ``limit`` is a finite
    number > 0 (anything else is not a declaration); ``remaining`` and ``reset``
    (seconds from ``now``) are ``None`` when absent or unreadable. Never raises.
    """
    lowered = _lower(headers)
    found: dict[str, tuple[float, float | None, float | None]] = {}
    for kind in ("requests", "tokens"):
        for limit_name, remaining_name, reset_name in (
            (
                f"x-ratelimit-limit-{kind}",
                f"x-ratelimit-remaining-{kind}",
                f"x-ratelimit-reset-{kind}",
            ),
            (
                f"anthropic-ratelimit-{kind}-limit",
                f"anthropic-ratelimit-{kind}-remaining",
                f"anthropic-ratelimit-{kind}-reset",
            ),
        ):
            limit = _header_number(lowered.get(limit_name))
            if limit is None or not limit > 0:
                continue
            reset_value = lowered.get(reset_name)
            reset = parse_reset(reset_value, now) if isinstance(reset_value, str) else None
            found[kind] = (limit, _header_number(lowered.get(remaining_name)), reset)
            break
    return found


def _header_number(value: object) -> float | None:
    """A header's finite number, or ``None``."""
    if not isinstance(value, str) or len(value) > _MAX_HEADER_VALUE:
        return None
    number = _number(value.strip())
    return number if number is not None and math.isfinite(number) else None


def _earliest_reset(headers: Mapping[str, str], now: float) -> float | None:
    """Return the earliest reset any budget announces, exhausted or not (a best guess).

    A 429 for tokens often leaves a few tokens "remaining" (the request needed more),
    so no budget reads 0; the earliest reset is then when something frees up.
    """
    waits = [wait for _, wait in _budgets(headers, now)]
    return min(waits) if waits else None


# ------------------------------------------------------------------------------ text


def _error_text(reply: Reply) -> str:
    """Join the text the patterns read: the error's code, type and message, else excerpt."""
    error = reply.error
    parts: list[str] = []
    if error is not None:
        parts = [str(part) for part in (error.code, error.type, error.message) if part]
    text = " ".join(parts) if parts else str(reply.excerpt or "")
    return text[:_MAX_SCAN]


def _code_outcome(error: ErrorBody | None) -> Outcome | None:
    """Look the error's code, else its type, up in :data:`PROVIDER_CODES`."""
    if error is None:
        return None
    for field in (error.code, error.type):
        if field:
            outcome = PROVIDER_CODES.get(str(field).strip().lower())
            if outcome is not None:
                return outcome
    return None


def limit_kind(error: ErrorBody | None, text: str) -> LimitKind | None:
    """Which limit a rate-limit answer names: :data:`LIMIT_CODES`, then the text.

    ``"concurrency"`` for :data:`CONCURRENCY_PATTERNS`, ``None`` for
    :data:`OVERLOAD_PATTERNS`, else ``"rate"``.
    """
    if error is not None:
        for field in (error.code, error.type):
            if field:
                kind = LIMIT_CODES.get(str(field).strip().lower(), _NOT_FOUND)
                if kind is not _NOT_FOUND:
                    return kind  # type: ignore[return-value]
    if _CONCURRENCY_TEXT.search(text):
        return "concurrency"
    if _OVERLOAD_TEXT.search(text):
        return None
    return "rate"


def _text_wait(text: str) -> float | None:
    """Read a "try again in 6m0s" / "try again after 1 seconds" hint in error text."""
    match = _WAIT_HINT.search(text)
    if match is None:
        return None
    token = match.group("token").rstrip(".")
    word = match.group("word")
    if word:
        number = _number(token)
        if number is None:
            return None
        unit = word.lower().rstrip("s")
        return _clamp(number * _WORD_UNITS.get(unit, 1.0))
    return parse_duration(token)


def _text_reset(text: str, now: float) -> float | None:
    """Seconds until a reset time named in error text ("Your limit will reset at ...")."""
    if _RESET_HINT.search(text) is None:
        return None
    for match in _RFC3339.finditer(text):
        wait = _rfc3339(match.group(0), now, naive_tz=_NAIVE_TEXT_TZ)
        if wait is not None:
            return wait
    return None


def _message(reply: Reply, code: str | None) -> str:
    """Write a short, secret-free text naming the status, the code and the provider's words."""
    head = f"HTTP {reply.status}" + (f" ({code})" if code else "")
    words = ""
    if reply.error is not None and reply.error.message:
        words = str(reply.error.message)
    elif reply.excerpt:
        words = str(reply.excerpt)
    words = " ".join(redact(words[:_MAX_SCAN]).split())
    if len(words) > _MAX_MESSAGE:
        words = words[: _MAX_MESSAGE - 3] + "..."
    return f"{head}: {words}" if words else head


def _code(error: ErrorBody | None) -> str | None:
    """Return the provider's error code, else its type, redacted and bounded."""
    if error is None:
        return None
    for field in (error.code, error.type):
        if field:
            return redact(str(field).strip())[:_MAX_CODE] or None
    return None


# -------------------------------------------------------------------------- classify


def _positive(seconds: float | None) -> float | None:
    """``seconds`` if it is a real pause (> 0), else ``None``."""
    return seconds if seconds is not None and seconds > 0 else None


def classify(reply: Reply, *, now: float) -> Verdict:
    """Decide what one provider answer means (the rows are in the module docstring).

    ``now`` is the wall-clock time in epoch seconds, used for HTTP-date and RFC 3339
    resets. ``Verdict.cooldown`` is ``None`` or positive. Never raises on odd input.
    """
    status = reply.status
    headers = reply.headers
    is_2xx = 200 <= status < 300
    if is_2xx and reply.completion is not None and reply.error is None:
        return Verdict(
            Outcome.OK,
            BreakerVote.SUCCESS,
            retry_same=False,
            cooldown=_positive(next_slot(headers, now)),
            status=status,
        )

    code = _code(reply.error)
    message = _message(reply, code)
    text = _error_text(reply)
    throttle = _code_outcome(reply.error)
    if throttle is None and status in _QUOTA_TEXT_STATUSES and _QUOTA_TEXT.search(text):
        throttle = Outcome.QUOTA_EXHAUSTED
    if throttle is None and (status == 429 or _RATE_LIMIT_TEXT.search(text)):
        throttle = Outcome.RATE_LIMITED
    asked = server_wait(headers, now)

    if throttle is Outcome.RATE_LIMITED:
        wait = asked
        if wait is None:
            wait = remaining_reset(headers, now)
        if wait is None:
            wait = _text_wait(text)
        if wait is None:
            wait = _earliest_reset(headers, now)
        return Verdict(
            Outcome.RATE_LIMITED,
            BreakerVote.IGNORE,
            retry_same=True,
            retry_after=wait,
            cooldown=_positive(wait),
            message=message,
            code=code,
            status=status,
            limit=limit_kind(reply.error, text),
        )
    if throttle is Outcome.QUOTA_EXHAUSTED:
        reset = _positive(remaining_reset(headers, now))
        if reset is None:
            reset = _positive(_text_reset(text, now))
        return Verdict(
            Outcome.QUOTA_EXHAUSTED,
            BreakerVote.IGNORE,
            retry_same=False,
            retry_after=asked if asked is not None else reset,
            cooldown=reset,
            message=message,
            code=code,
            status=status,
        )
    if status in _TRANSIENT_STATUSES or is_2xx:
        return Verdict(
            Outcome.ERROR,
            BreakerVote.FAILURE,
            retry_same=True,
            retry_after=asked,
            message=message,
            code=code,
            status=status,
        )
    if status in _BAD_REQUEST_STATUSES:
        return Verdict(
            Outcome.BAD_REQUEST,
            BreakerVote.IGNORE,
            retry_same=False,
            message=message,
            code=code,
            status=status,
        )
    return Verdict(
        Outcome.ERROR,
        BreakerVote.FAILURE,
        retry_same=False,
        retry_after=asked,
        message=message,
        code=code,
        status=status,
    )


def classify_failure(exc: BaseException) -> Verdict:
    """Decide what a transport failure (an exception from the provider layer) means.

    :class:`ProviderTimeout` -> ``timeout``; a :class:`ProviderError` without a status
    (connection refused, reset, broken) -> ``error``; both count as breaker failures
    and are retried here. An SDK error that already names its kind maps back to it
    (the inverse of :func:`error_for`). Any other exception -> ``error``, breaker
    failure, not retried here (it is most likely a bug, not the provider's state).
    """
    text = " ".join(redact(str(exc)[:_MAX_SCAN]).split())[:_MAX_MESSAGE]
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, ProviderTimeout):
        return Verdict(
            Outcome.TIMEOUT, BreakerVote.FAILURE, retry_same=True, message=message, code=exc.code
        )
    if not isinstance(exc, ProviderError):
        return Verdict(Outcome.ERROR, BreakerVote.FAILURE, retry_same=False, message=message)
    kind = Outcome.ERROR
    breaker = BreakerVote.FAILURE
    retry_same = exc.status is None or exc.status in _TRANSIENT_STATUSES
    if isinstance(exc, RateLimitedError):  # QuotaExhaustedError included
        quota = isinstance(exc, QuotaExhaustedError)
        kind = Outcome.QUOTA_EXHAUSTED if quota else Outcome.RATE_LIMITED
        breaker, retry_same = BreakerVote.IGNORE, not quota
    elif isinstance(exc, BadRequestError):
        kind, breaker, retry_same = Outcome.BAD_REQUEST, BreakerVote.IGNORE, False
    throttled = kind in (Outcome.RATE_LIMITED, Outcome.QUOTA_EXHAUSTED)
    return Verdict(
        kind,
        breaker,
        retry_same=retry_same,
        retry_after=exc.retry_after,
        cooldown=_positive(exc.retry_after) if throttled else None,
        message=message,
        code=exc.code,
        status=exc.status,
    )


_ERROR_CLASSES: Final[Mapping[Outcome, type[ProviderError]]] = {
    Outcome.RATE_LIMITED: RateLimitedError,
    Outcome.QUOTA_EXHAUSTED: QuotaExhaustedError,
    Outcome.BAD_REQUEST: BadRequestError,
    Outcome.TIMEOUT: ProviderTimeout,
}


def error_for(verdict: Verdict, provider: str) -> ProviderError:
    """Build (not raise) the exception that stands for ``verdict``.

    ``rate_limited`` -> :class:`RateLimitedError`, ``quota_exhausted`` ->
    :class:`QuotaExhaustedError`, ``bad_request`` -> :class:`BadRequestError`,
    ``timeout`` -> :class:`ProviderTimeout`, anything else -> :class:`ProviderError`;
    each carries the provider name, status, code, retry_after and message.
    """
    cls = _ERROR_CLASSES.get(verdict.outcome, ProviderError)
    message = f"{provider}: {verdict.message or verdict.outcome.value}"
    return cls(
        message,
        provider=provider,
        status=verdict.status,
        code=verdict.code,
        retry_after=verdict.retry_after,
    )
