"""Leaf: the text of :class:`~ratelimit_sdk.errors.AllProvidersFailed`, naming each cause.

Imports only ``models``, ``errors`` and ``_redact``. :func:`failure_message` turns the
attempts of a failed call into one line such as::

    all providers failed after 4 attempts: kimi: error (HTTP 401 invalid_api_key:
    Invalid Authentication); glm: error (HTTP 500) x2; llama: timeout after 5.0 s

Each entry is the provider, its outcome and the short cause (:func:`describe_attempt`):
the HTTP status with the provider's error code and words, a transport failure
(``connection refused``, ``timeout after 5.0 s``) or why a provider was skipped
(``circuit open, retry in 12 s``, ``cooling down 3.2 s``,
``busy: no admission within 2.0 s``). Causes are redacted (API keys, bearer tokens,
URL passwords) and cut at :data:`MAX_CAUSE` characters; consecutive identical entries
collapse into one with ``xN``.

The cause comes from the error's attributes where it has them (``status``, ``code``,
``retry_after``, ``reason`` of a :class:`~ratelimit_sdk.errors.ProviderError`,
``waited`` of an :class:`~ratelimit_sdk.errors.AcquireTimeout`) and otherwise from its
message, so it works both for the transport's own errors and for the ones ``classify``
rebuilds from a verdict.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ._redact import redact
from .errors import AcquireTimeout, CircuitOpenError
from .models import Attempt, Outcome

__all__ = ["MAX_CAUSE", "MAX_ENTRIES", "describe_attempt", "failure_message"]

#: Longest cause text kept per entry, in characters.
MAX_CAUSE = 120
#: Entries shown (after collapsing repeats); earlier ones are counted, not listed.
MAX_ENTRIES = 8

_REASON = re.compile(
    r"\b(connection refused|connection reset|connection broken|name resolution failed|"
    r"TLS error|proxy error|body could not be decoded|connection failed|"
    r"(?:read |connect )?timeout(?: after \d+(?:\.\d+)? s)?)"
)
_HTTP = re.compile(r"^HTTP (\d{3})(?: \(([^)]*)\))?(?::\s*(.*))?$", re.DOTALL)
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:Error|Timeout|Exception|Failed): ")


def failure_message(attempts: Sequence[Attempt]) -> str:
    """The message of an ``AllProvidersFailed``: every attempt's provider, outcome and cause.

    ``"all providers failed after 2 attempts: kimi: error (HTTP 401 invalid_api_key:
    Invalid Authentication); glm: error (connection refused)"``. Never shows a secret.
    """
    if not attempts:
        return "all providers failed: the deadline passed before any attempt"
    entries: list[tuple[str, int]] = []
    for attempt in attempts:
        text = describe_attempt(attempt)
        if entries and entries[-1][0] == text:
            entries[-1] = (text, entries[-1][1] + 1)
        else:
            entries.append((text, 1))
    shown = entries[-MAX_ENTRIES:]
    hidden = sum(count for _, count in entries[: len(entries) - len(shown)])
    count = len(attempts)
    head = f"all providers failed after {count} attempt{'' if count == 1 else 's'}"
    if hidden:
        head += f" (+{hidden} earlier not listed)"
    body = "; ".join(text if n == 1 else f"{text} x{n}" for text, n in shown)
    return f"{head}: {body}"


def describe_attempt(attempt: Attempt) -> str:
    """One attempt as ``"provider: outcome (cause)"``, or the skip's own words.

    ``"kimi: error (HTTP 401 invalid_api_key: Invalid Authentication)"``,
    ``"glm: timeout after 5.0 s"``, ``"llama: circuit open, retry in 12 s"``.
    """
    name = attempt.provider
    outcome = attempt.outcome
    error = attempt.error
    if outcome is Outcome.OK:
        return f"{name}: ok"
    if outcome is Outcome.CIRCUIT_OPEN:
        wait = _number(getattr(error, "retry_after", None))
        return f"{name}: circuit open" + (f", retry in {_whole(wait)} s" if wait else "")
    if outcome is Outcome.COOLING_DOWN:
        wait = _number(getattr(error, "retry_after", None))
        return f"{name}: cooling down" + (f" {wait:.1f} s" if wait else "")
    if outcome is Outcome.BUSY:
        return f"{name}: busy: {_busy_cause(attempt)}"
    if outcome is Outcome.TIMEOUT:
        return f"{name}: {_timeout_cause(attempt)}"
    cause = _cause(attempt)
    return f"{name}: {outcome.value}" + (f" ({cause})" if cause else "")


# -- the pieces -------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _whole(seconds: float) -> str:
    return str(max(1, round(seconds)))


def _short(text: str) -> str:
    clean = " ".join(redact(text[: MAX_CAUSE * 8]).split())
    return clean if len(clean) <= MAX_CAUSE else clean[: MAX_CAUSE - 3].rstrip() + "..."


def _message(error: BaseException | None, provider: str) -> str:
    """The error's text without the ``"provider: "`` and ``"ClassName: provider: "`` heads."""
    if error is None:
        return ""
    text = str(error).strip().removeprefix(f"{provider}: ")
    stripped = _PREFIX.sub("", text, count=1)
    if stripped != text:
        text = stripped.removeprefix(f"{provider}: ")
    return text.strip()


def _reason(error: BaseException | None, text: str) -> str | None:
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    match = _REASON.search(text)
    return match.group(1) if match else None


def _busy_cause(attempt: Attempt) -> str:
    error = attempt.error
    waited = _number(error.waited) if isinstance(error, AcquireTimeout) else None
    if waited is None:
        waited = _number(attempt.elapsed)
    text = _message(error, attempt.provider)
    if waited is None and text and "timed out" not in text:
        return _short(text)  # "limiter is closed", "cancelled"
    return "no admission" + (f" within {waited:.1f} s" if waited else "")


def _timeout_cause(attempt: Attempt) -> str:
    text = _message(attempt.error, attempt.provider)
    reason = _reason(attempt.error, text) or ""
    if "after" not in reason:
        elapsed = _number(attempt.elapsed)
        kind = "connect timeout" if reason.startswith("connect") else "timeout"
        return kind + (f" after {elapsed:.1f} s" if elapsed else "")
    return reason.removeprefix("read ")


def _cause(attempt: Attempt) -> str:
    error = attempt.error
    if isinstance(error, CircuitOpenError):
        return "circuit open"
    status = getattr(error, "status", None)
    if not isinstance(status, int):
        status = attempt.status
    code = getattr(error, "code", None)
    text = _message(error, attempt.provider)
    retry = (
        _number(getattr(error, "retry_after", None))
        if attempt.outcome
        in (
            Outcome.RATE_LIMITED,
            Outcome.QUOTA_EXHAUSTED,
        )
        else None
    )
    wait = f"; retry after {_whole(retry)} s" if retry else ""
    if status is None:
        reason = _reason(error, text)
        if reason is not None:
            return reason + wait
        return (_short(text) or (type(error).__name__ if error is not None else "")) + wait
    words = text
    match = _HTTP.match(text)
    if match is not None:
        code = code or match.group(2)
        words = match.group(3) or ""
    head = f"HTTP {status}"
    if isinstance(code, str) and code:
        head += f" {_short(code)[:40]}"
    words = words.strip()
    if words and words not in (code, str(status)):
        return f"{head}: {_short(words)}{wait}"
    return head + wait
