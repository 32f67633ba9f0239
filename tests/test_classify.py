"""Tables for stage 5: Reply (status x error body x headers) -> Verdict, and the header parsers."""

from __future__ import annotations

import email.utils
import math
import pickle
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit_sdk import classify as classify_module
from ratelimit_sdk._redact import register_secret
from ratelimit_sdk.classify import (
    MAX_SERVER_WAIT,
    PROVIDER_CODES,
    classify,
    classify_failure,
    declared_limits,
    error_for,
    parse_duration,
    parse_reset,
    parse_retry_after,
    remaining_reset,
    server_wait,
)
from ratelimit_sdk.errors import (
    BadRequestError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    QuotaExhaustedError,
    RateLimitedError,
)
from ratelimit_sdk.models import BreakerVote, Completion, ErrorBody, Outcome, Reply, Verdict

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
OK = Outcome.OK
RL = Outcome.RATE_LIMITED
QUOTA = Outcome.QUOTA_EXHAUSTED
ERR = Outcome.ERROR
BAD = Outcome.BAD_REQUEST
SUCCESS = BreakerVote.SUCCESS
FAILURE = BreakerVote.FAILURE
IGNORE = BreakerVote.IGNORE

CANARY = "canary-secret-7f3a9c2e41"
register_secret(CANARY)


def http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


def rfc3339(offset: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(NOW + offset, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reply(
    status: int,
    *,
    code: str | None = None,
    type: str | None = None,
    message: str | None = None,
    headers: Mapping[str, str] | None = None,
    completion: bool = False,
    excerpt: str = "",
) -> Reply:
    error = None
    if code is not None or type is not None or message is not None:
        error = ErrorBody(code=code, type=type, message=message)
    return Reply(
        status=status,
        headers=dict(headers or {}),
        completion=Completion(content="hi") if completion else None,
        error=error,
        excerpt=excerpt,
    )


def ok(headers: Mapping[str, str] | None = None, status: int = 200) -> Reply:
    return reply(status, headers=headers, completion=True)


# Each row: id, reply, outcome, breaker vote, retry_same, retry_after, cooldown.
ROWS: list[tuple[str, Reply, Outcome, BreakerVote, bool, float | None, float | None]] = [
    # --- row 1: 2xx with a completion and no error -> ok, plus a cooldown when exhausted
    ("ok", ok(), OK, SUCCESS, False, None, None),
    ("ok-201", ok(status=201), OK, SUCCESS, False, None, None),
    (
        "ok-openai-requests-exhausted",
        ok({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}),
        OK, SUCCESS, False, None, 360.0,
    ),
    (
        "ok-openai-requests-left",
        ok({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "6m0s"}),
        OK, SUCCESS, False, None, None,
    ),
    (
        "ok-openai-tokens-exhausted",
        ok({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "250ms"}),
        OK, SUCCESS, False, None, 0.25,
    ),
    (
        "ok-both-exhausted-latest-wins",
        ok({
            "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20s",
        }),
        OK, SUCCESS, False, None, 20.0,
    ),
    (
        "ok-moonshot-epoch",
        ok({"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 30)}),
        OK, SUCCESS, False, None, 30.0,
    ),
    (
        "ok-moonshot-duration",
        ok({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "12"}),
        OK, SUCCESS, False, None, 12.0,
    ),
    (
        "ok-moonshot-mixed-case-names",
        ok({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1.5s"}),
        OK, SUCCESS, False, None, 1.5,
    ),
    (
        "ok-anthropic-rfc3339",
        ok({
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": rfc3339(60),
        }),
        OK, SUCCESS, False, None, 60.0,
    ),
    (
        "ok-anthropic-input-tokens",
        ok({
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": rfc3339(5),
        }),
        OK, SUCCESS, False, None, 5.0,
    ),
    (
        "ok-exhausted-reset-in-past",
        ok({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": rfc3339(-5)}),
        OK, SUCCESS, False, None, None,
    ),
    (
        "ok-exhausted-garbage-reset",
        ok({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"}),
        OK, SUCCESS, False, None, None,
    ),
    ("ok-retry-after-ignored", ok({"retry-after": "30"}), OK, SUCCESS, False, None, None),
    # --- row 2: rate limited
    ("429-bare", reply(429), RL, IGNORE, True, None, None),
    ("429-retry-after", reply(429, headers={"retry-after": "5"}), RL, IGNORE, True, 5.0, 5.0),
    ("429-retry-after-0", reply(429, headers={"retry-after": "0"}), RL, IGNORE, True, 0.0, None),
    (
        "429-retry-after-date",
        reply(429, headers={"retry-after": http_date(120)}),
        RL, IGNORE, True, 120.0, 120.0,
    ),
    (
        "429-retry-after-ms-preferred",
        reply(429, headers={"retry-after-ms": "1500", "retry-after": "2"}),
        RL, IGNORE, True, 1.5, 1.5,
    ),
    (
        "429-retry-after-ms-garbage-falls-back",
        reply(429, headers={"retry-after-ms": "soon", "retry-after": "2"}),
        RL, IGNORE, True, 2.0, 2.0,
    ),
    (
        "429-openai-requests-exhausted",
        reply(
            429,
            code="rate_limit_exceeded",
            headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"},
        ),
        RL, IGNORE, True, 360.0, 360.0,
    ),
    (
        "429-exhausted-kind-wins",
        reply(429, headers={
            "x-ratelimit-remaining-requests": "10", "x-ratelimit-reset-requests": "30s",
            "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s",
        }),
        RL, IGNORE, True, 1.5, 1.5,
    ),
    (
        "429-nothing-exhausted-earliest-reset",
        reply(429, headers={
            "x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "30s",
            "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-tokens": "7s",
        }),
        RL, IGNORE, True, 7.0, 7.0,
    ),
    (
        "429-anthropic-reset",
        reply(429, type="rate_limit_error", headers={
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": rfc3339(45),
        }),
        RL, IGNORE, True, 45.0, 45.0,
    ),
    (
        "429-moonshot-text-hint",
        reply(
            429,
            type="rate_limit_reached_error",
            message="Your account org-1<ak-2> request reached organization max concurrency: 1, "
            "please try again after 1 seconds",
        ),
        RL, IGNORE, True, 1.0, 1.0,
    ),
    (
        "429-openai-text-hint-go-duration",
        reply(429, message="Rate limit reached for requests. Please try again in 6m0s. Visit"),
        RL, IGNORE, True, 360.0, 360.0,
    ),
    (
        "429-openai-text-hint-ms",
        reply(429, message="Rate limit reached. Please try again in 20ms."),
        RL, IGNORE, True, 0.02, 0.02,
    ),
    (
        "429-openai-text-hint-fraction",
        reply(429, message="Please try again in 1.898s. Visit https://x/y"),
        RL, IGNORE, True, 1.898, 1.898,
    ),
    (
        "429-retry-after-beats-text",
        reply(429, message="try again after 10 seconds", headers={"retry-after": "3"}),
        RL, IGNORE, True, 3.0, 3.0,
    ),
    (
        "429-exhausted-reset-beats-text",
        reply(
            429,
            message="try again after 10 seconds",
            headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "4"},
        ),
        RL, IGNORE, True, 4.0, 4.0,
    ),
    (
        "429-text-beats-earliest-guess",
        reply(
            429,
            message="try again after 10 seconds",
            headers={"x-ratelimit-remaining": "3", "x-ratelimit-reset": "4"},
        ),
        RL, IGNORE, True, 10.0, 10.0,
    ),
    (
        "429-openai-rate-limit-message-mentioning-billing-url",
        reply(
            429,
            message="Rate limit reached for gpt-4 in organization org-x on requests per min "
            "(RPM): Limit 3, Used 3. You can increase your rate limit by adding a payment "
            "method to your account at https://platform.openai.com/account/billing.",
        ),
        RL, IGNORE, True, None, None,
    ),
    ("400-rate-limit-text", reply(400, message="Rate limit reached"), RL, IGNORE, True, None, None),
    ("500-too-many-requests", reply(500, message="Too Many Requests"),
     RL, IGNORE, True, None, None),
    ("503-overloaded", reply(503, message="Service overloaded"), RL, IGNORE, True, None, None),
    ("529-anthropic-overloaded", reply(529, type="overloaded_error", message="Overloaded"),
     RL, IGNORE, True, None, None),
    ("529-overloaded-text", reply(529, excerpt="Overloaded"), RL, IGNORE, True, None, None),
    ("401-concurrency-text", reply(401, message="concurrency limit"), RL, IGNORE, True, None, None),
    ("200-error-rate-limit-type", reply(200, type="rate_limit_error"),
     RL, IGNORE, True, None, None),
    ("200-completion-and-rate-limit-error", reply(200, completion=True, type="rate_limit_error"),
     RL, IGNORE, True, None, None),
    ("zhipu-1302", reply(429, code="1302", message="High concurrency usage of this API"),
     RL, IGNORE, True, None, None),
    ("zhipu-1303", reply(429, code="1303", message="High frequency usage of this API"),
     RL, IGNORE, True, None, None),
    ("zhipu-1305", reply(429, code="1305", message="The service may be temporarily overloaded"),
     RL, IGNORE, True, None, None),
    ("moonshot-engine-overloaded", reply(429, type="engine_overloaded_error"),
     RL, IGNORE, True, None, None),
    ("openai-rate-limit-code", reply(429, code="rate_limit_exceeded", type="requests"),
     RL, IGNORE, True, None, None),
    ("502-html-excerpt", reply(502, excerpt="<html><h1>429 Too Many Requests</h1></html>"),
     RL, IGNORE, True, None, None),
    ("chinese-concurrency", reply(500, message="当前API请求并发过高"),
     RL, IGNORE, True, None, None),
    # --- row 3: quota exhausted (code first, then text, then status)
    (
        "openai-insufficient-quota",
        reply(
            429,
            code="insufficient_quota",
            type="insufficient_quota",
            message="You exceeded your current quota, please check your plan and billing details.",
        ),
        QUOTA, IGNORE, False, None, None,
    ),
    (
        "openai-insufficient-quota-with-reset",
        reply(429, code="insufficient_quota", headers={
            "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1h",
        }),
        QUOTA, IGNORE, False, 3600.0, 3600.0,
    ),
    (
        "quota-retry-after-is-only-informative",
        reply(429, code="insufficient_quota", headers={"retry-after": "20"}),
        QUOTA, IGNORE, False, 20.0, None,
    ),
    ("zhipu-1113-arrears", reply(429, code="1113", message="Your account is in arrears"),
     QUOTA, IGNORE, False, None, None),
    ("zhipu-1304-daily", reply(429, code="1304", message="daily call limit reached"),
     QUOTA, IGNORE, False, None, None),
    ("zhipu-1309-expired", reply(429, code="1309"), QUOTA, IGNORE, False, None, None),
    ("zhipu-1310-weekly", reply(429, code="1310", message="Weekly/Monthly Limit Exhausted"),
     QUOTA, IGNORE, False, None, None),
    (
        "zhipu-1308-reset-in-text-beijing-time",
        # NOW is 2023-11-15 06:13:20 in Beijing; the reset is two hours later.
        reply(
            429,
            code="1308",
            message="Usage limit reached for 5 hour. Your limit will reset at 2023-11-15 08:13:20",
        ),
        QUOTA, IGNORE, False, 7200.0, 7200.0,
    ),
    (
        "zhipu-1308-chinese",
        reply(
            429,
            code="1308",
            message="已达到 5 小时的使用上限。您的限额将在 2023-11-15 06:14:20 重置。",
        ),
        QUOTA, IGNORE, False, 60.0, 60.0,
    ),
    (
        "zhipu-1308-reset-in-past",
        reply(429, code="1308", message="Your limit will reset at 2020-01-01 00:00:00"),
        QUOTA, IGNORE, False, None, None,
    ),
    (
        "moonshot-403-quota-type",
        reply(
            403,
            type="exceeded_current_quota_error",
            message="You exceeded your current token quota: 0, please check your account balance",
        ),
        QUOTA, IGNORE, False, None, None,
    ),
    ("moonshot-429-quota-type", reply(429, type="exceeded_current_quota_error"),
     QUOTA, IGNORE, False, None, None),
    (
        "moonshot-403-insufficient-balance-text",
        reply(403, type="permission_denied_error", message="Insufficient balance"),
        QUOTA, IGNORE, False, None, None,
    ),
    (
        "kimi-403-billing-cycle",
        reply(403, message="You've reached your usage limit for this billing cycle"),
        QUOTA, IGNORE, False, None, None,
    ),
    ("anthropic-402-billing", reply(402, type="billing_error"), QUOTA, IGNORE, False, None, None),
    ("402-payment-required-excerpt", reply(402, excerpt="Payment Required"),
     QUOTA, IGNORE, False, None, None),
    (
        "anthropic-400-credit-balance",
        reply(400, type="invalid_request_error",
              message="Your credit balance is too low to access the Anthropic API."),
        QUOTA, IGNORE, False, None, None,
    ),
    ("chinese-balance", reply(429, message="账户余额不足"), QUOTA, IGNORE, False, None, None),
    ("code-beats-text-rate", reply(429, code="1302", message="insufficient balance"),
     RL, IGNORE, True, None, None),
    ("code-beats-text-quota", reply(429, code="insufficient_quota", message="rate limit"),
     QUOTA, IGNORE, False, None, None),
    ("per-minute-quota-is-a-rate-limit",
     reply(429, message="Quota exceeded for quota metric 'requests per minute'"),
     RL, IGNORE, True, None, None),
    ("quota-text-beats-rate-text", reply(429, message="quota exhausted; rate limit applies"),
     QUOTA, IGNORE, False, None, None),
    ("quota-code-on-any-status", reply(500, code="1113"), QUOTA, IGNORE, False, None, None),
    # quota *text* counts only on 400/402/403/429 (status last):
    ("500-balance-text", reply(500, message="insufficient balance"),
     ERR, FAILURE, True, None, None),
    ("200-balance-text", reply(200, message="insufficient balance"),
     ERR, FAILURE, True, None, None),
    ("401-balance-text", reply(401, message="insufficient balance"),
     ERR, FAILURE, False, None, None),
    # --- row 4: transient server errors
    ("500", reply(500), ERR, FAILURE, True, None, None),
    ("502", reply(502), ERR, FAILURE, True, None, None),
    ("503", reply(503), ERR, FAILURE, True, None, None),
    ("504", reply(504, excerpt="Gateway Timeout"), ERR, FAILURE, True, None, None),
    ("529-no-text", reply(529), ERR, FAILURE, True, None, None),
    ("500-api-error", reply(500, type="api_error", message="Internal server error"),
     ERR, FAILURE, True, None, None),
    ("503-retry-after", reply(503, headers={"retry-after": "7"}), ERR, FAILURE, True, 7.0, None),
    # --- row 5: 2xx that is not a success body
    ("200-no-completion", reply(200, excerpt="<html>oops</html>"), ERR, FAILURE, True, None, None),
    ("204-empty", reply(204), ERR, FAILURE, True, None, None),
    ("200-completion-and-error", reply(200, completion=True, code="internal", message="boom"),
     ERR, FAILURE, True, None, None),
    ("200-error-object", reply(200, code="500", message="Internal Error"),
     ERR, FAILURE, True, None, None),
    # --- row 6: errors not worth retrying here (breaker failure, move on)
    ("401", reply(401, type="invalid_authentication_error"), ERR, FAILURE, False, None, None),
    ("403-permission", reply(403, type="permission_denied_error",
                             message="The API you are accessing is not open"),
     ERR, FAILURE, False, None, None),
    ("402-plain", reply(402), ERR, FAILURE, False, None, None),
    ("301", reply(301, headers={"location": "https://elsewhere"}), ERR, FAILURE, False, None, None),
    ("302", reply(302), ERR, FAILURE, False, None, None),
    ("307", reply(307), ERR, FAILURE, False, None, None),
    ("405", reply(405), ERR, FAILURE, False, None, None),
    ("409", reply(409), ERR, FAILURE, False, None, None),
    ("418", reply(418), ERR, FAILURE, False, None, None),
    ("501", reply(501), ERR, FAILURE, False, None, None),
    ("505", reply(505), ERR, FAILURE, False, None, None),
    ("599", reply(599), ERR, FAILURE, False, None, None),
    ("100", reply(100), ERR, FAILURE, False, None, None),
    ("0", reply(0), ERR, FAILURE, False, None, None),
    ("negative", reply(-1), ERR, FAILURE, False, None, None),
    ("huge", reply(10**12), ERR, FAILURE, False, None, None),
    # --- row 7: bad request (no fallback)
    ("400", reply(400, type="invalid_request_error", message="messages: required"),
     BAD, IGNORE, False, None, None),
    ("404", reply(404, type="resource_not_found_error"), BAD, IGNORE, False, None, None),
    ("413", reply(413, excerpt="Request Entity Too Large"), BAD, IGNORE, False, None, None),
    ("422", reply(422, message="unprocessable"), BAD, IGNORE, False, None, None),
    ("zhipu-1214-bad-param", reply(400, code="1214", message="Invalid messages parameter"),
     BAD, IGNORE, False, None, None),
    ("zhipu-1301-sensitive", reply(400, code="1301", message="unsafe or sensitive content"),
     BAD, IGNORE, False, None, None),
    ("400-retry-after-not-used", reply(400, headers={"retry-after": "5"}),
     BAD, IGNORE, False, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("reply_", "outcome", "breaker", "retry_same", "retry_after", "cooldown"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_classify_table(
    reply_: Reply,
    outcome: Outcome,
    breaker: BreakerVote,
    retry_same: bool,
    retry_after: float | None,
    cooldown: float | None,
) -> None:
    verdict = classify(reply_, now=NOW)
    assert verdict.outcome is outcome
    assert verdict.breaker is breaker
    assert verdict.retry_same is retry_same
    assert verdict.retry_after == pytest.approx(retry_after)
    assert verdict.cooldown == pytest.approx(cooldown)
    assert verdict.status == reply_.status


@pytest.mark.parametrize(("code", "outcome"), sorted(PROVIDER_CODES.items()))
@pytest.mark.parametrize("status", [429, 200, 403])
def test_every_provider_code_decides(code: str, outcome: Outcome, status: int) -> None:
    # The code wins over the status and over text that says the opposite.
    misleading = "rate limit exceeded" if outcome is QUOTA else "insufficient balance"
    as_code = reply(status, code=code.upper(), message=misleading)
    as_type = reply(status, type=code.upper(), message=misleading)
    for item in (as_code, as_type):
        verdict = classify(item, now=NOW)
        assert verdict.outcome is outcome
        assert verdict.retry_same is (outcome is RL)


def test_zhipu_codes_split_between_rate_limit_and_quota() -> None:
    assert all(PROVIDER_CODES[c] is RL for c in ("1302", "1303", "1305"))
    assert all(PROVIDER_CODES[c] is QUOTA for c in ("1113", "1304", "1308", "1310"))


def test_code_with_surrounding_space() -> None:
    assert classify(reply(429, code=" 1304 "), now=NOW).outcome is QUOTA


# ------------------------------------------------------------------ message and code


def test_message_names_status_code_and_text() -> None:
    verdict = classify(reply(429, code="1302", message="High concurrency"), now=NOW)
    assert verdict.code == "1302"
    assert verdict.message == "HTTP 429 (1302): High concurrency"


def test_code_falls_back_to_type() -> None:
    verdict = classify(reply(529, type="overloaded_error"), now=NOW)
    assert verdict.code == "overloaded_error"
    assert verdict.message == "HTTP 529 (overloaded_error)"


def test_message_uses_excerpt_without_error() -> None:
    verdict = classify(reply(502, excerpt="Bad\n  Gateway"), now=NOW)
    assert verdict.code is None
    assert verdict.message == "HTTP 502: Bad Gateway"


def test_message_is_truncated() -> None:
    verdict = classify(reply(500, message="x" * 10_000), now=NOW)
    assert len(verdict.message) <= 330
    assert verdict.message.endswith("...")


@pytest.mark.parametrize(
    "leak",
    [
        CANARY,
        "Bearer sk-abcdefghijklmnop1234",
        "api_key=abcdefghijkl12345",
        "sk-proj-ABCDEFGHIJKLMNOP",
    ],
)
def test_message_never_contains_secrets(leak: str) -> None:
    secret = leak.split()[-1].split("=")[-1]
    replies = [
        reply(401, message=f"Incorrect API key provided: {leak}"),
        reply(429, code=leak, message=f"rate limit for {leak}"),
        reply(500, excerpt=f"<pre>{leak}</pre>"),
        reply(400, type=leak, message="x" * 290 + leak),
    ]
    for item in replies:
        verdict = classify(item, now=NOW)
        for text in (verdict.message, verdict.code or "", repr(verdict)):
            assert secret not in text
        error = error_for(verdict, "kimi")
        assert secret not in str(error) and secret not in repr(error)
    failure = classify_failure(ProviderConnectionError(f"refused, key {leak}"))
    assert secret not in failure.message


# ------------------------------------------------------------------ transport failures


@pytest.mark.parametrize(
    ("exc", "outcome", "breaker", "retry_same", "retry_after"),
    [
        (ProviderTimeout("read timed out"), Outcome.TIMEOUT, FAILURE, True, None),
        (ProviderConnectionError("connection refused"), ERR, FAILURE, True, None),
        (ProviderError("no answer"), ERR, FAILURE, True, None),
        (ProviderError("bad gateway", status=502), ERR, FAILURE, True, None),
        (ProviderError("unauthorized", status=401), ERR, FAILURE, False, None),
        (RateLimitedError("slow down", status=429, retry_after=3.0), RL, IGNORE, True, 3.0),
        (QuotaExhaustedError("no money", status=429), QUOTA, IGNORE, False, None),
        (BadRequestError("bad", status=400), BAD, IGNORE, False, None),
        (RuntimeError("a bug"), ERR, FAILURE, False, None),
        (OSError("socket"), ERR, FAILURE, False, None),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_classify_failure(
    exc: BaseException,
    outcome: Outcome,
    breaker: BreakerVote,
    retry_same: bool,
    retry_after: float | None,
) -> None:
    verdict = classify_failure(exc)
    assert verdict.outcome is outcome
    assert verdict.breaker is breaker
    assert verdict.retry_same is retry_same
    assert verdict.retry_after == retry_after
    assert type(exc).__name__ in verdict.message


def test_classify_failure_keeps_code_and_status() -> None:
    verdict = classify_failure(RateLimitedError("x", status=429, code="1302", retry_after=2.0))
    assert (verdict.code, verdict.status, verdict.cooldown) == ("1302", 429, 2.0)


# -------------------------------------------------------------------------- error_for


@pytest.mark.parametrize(
    ("outcome", "cls"),
    [
        (RL, RateLimitedError),
        (QUOTA, QuotaExhaustedError),
        (BAD, BadRequestError),
        (Outcome.TIMEOUT, ProviderTimeout),
        (ERR, ProviderError),
        (OK, ProviderError),
    ],
)
def test_error_for(outcome: Outcome, cls: type[ProviderError]) -> None:
    verdict = Verdict(
        outcome,
        IGNORE,
        retry_same=False,
        retry_after=4.0,
        message="HTTP 429 (1302): busy",
        code="1302",
        status=429,
    )
    error = error_for(verdict, "glm")
    assert type(error) is cls
    assert (error.provider, error.status, error.code, error.retry_after) == (
        "glm",
        429,
        "1302",
        4.0,
    )
    assert "glm" in str(error) and "HTTP 429 (1302): busy" in str(error)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls and clone.retry_after == 4.0 and str(clone) == str(error)


def test_error_for_round_trips_through_classify_failure() -> None:
    for row in ROWS:
        verdict = classify(row[1], now=NOW)
        if verdict.outcome is OK:
            continue
        back = classify_failure(error_for(verdict, "p"))
        assert back.outcome is verdict.outcome, row[0]
        assert back.breaker is verdict.breaker, row[0]


# ------------------------------------------------------------------------ the parsers


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        ("1e3", 1000.0),
        ("1e309", MAX_SERVER_WAIT),
        ("-1e309", 0.0),
        ("99999999999", MAX_SERVER_WAIT),
        ("86401", MAX_SERVER_WAIT),
        (http_date(120), 120.0),
        (http_date(-120), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Mon, 01 Jan 99999 00:00:00 GMT", None),
        ("inf", None),
        ("-inf", None),
        ("Infinity", None),
        ("nan", None),
        ("NaN", None),
        ("", None),
        ("   ", None),
        ("abc", None),
        ("5 seconds", None),
        ("0x10", None),
        ("1_000", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits: float() would accept them
        ("\uff15", None),  # fullwidth digit five
        ("1" * 10_000, None),
        ("\x00", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("2s", 2.0),
        ("20ms", 0.02),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("500us", 0.0005),
        ("1µs", 1e-6),
        ("300ns", 3e-7),
        (".5s", 0.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("30", 30.0),
        ("1.5", 1.5),
        ("-1s", 0.0),
        ("+2s", 2.0),
        ("9999h", MAX_SERVER_WAIT),
        ("1e309", MAX_SERVER_WAIT),
        ("", None),
        ("s", None),
        ("6m0", None),
        ("1d", None),
        ("1.2.3s", None),
        ("1s 2s", None),
        ("\u0661s", None),
        ("inf", None),
        ("1" * 200 + "s", None),
    ],
)
def test_parse_duration(value: str, expected: float | None) -> None:
    assert parse_duration(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6m0s", 360.0),
        ("30", 30.0),
        (str(int(NOW) + 90), 90.0),  # epoch seconds
        (str(int(NOW - 90)), 0.0),
        (str(int(NOW * 1000) + 90_000), 90.0),  # epoch milliseconds
        (rfc3339(60), 60.0),
        ("2023-11-15T06:14:20+08:00", 60.0),
        ("2023-11-14T17:14:20-0500", 60.0),
        ("2023-11-14T22:14:20.5Z", 60.5),
        ("2023-11-14T22:14:20", 60.0),  # no zone: UTC
        ("2023-11-14 22:14:20z", 60.0),
        (rfc3339(-60), 0.0),
        ("9999-12-31T23:59:59Z", MAX_SERVER_WAIT),
        ("0000-01-01T00:00:00Z", None),
        ("2023-13-40T00:00:00Z", None),
        ("2023-11-14T22:14:20+25:00", None),
        (http_date(30), 30.0),
        ("1e309", MAX_SERVER_WAIT),
        ("soon", None),
        ("", None),
    ],
)
def test_parse_reset(value: str, expected: float | None) -> None:
    assert parse_reset(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "5"}, 5.0),
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": http_date(60)}, 60.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "-5"}, 0.0),
        ({"retry-after-ms": "1e309"}, MAX_SERVER_WAIT),
        ({"retry-after-ms": "nan", "retry-after": "9"}, 9.0),
        ({"retry-after": "garbage"}, None),
        ({"retry-after": "x" * 100_000}, None),
        ({"x-ratelimit-reset": "5"}, None),  # a reset is not a request to wait
    ],
)
def test_server_wait(headers: dict[str, str], expected: float | None) -> None:
    assert server_wait(headers, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "6m0s"}, None),
        ({"x-ratelimit-remaining-requests": "0"}, None),  # no reset named
        ({"x-ratelimit-reset-requests": "6m0s"}, None),  # no remaining count
        ({"x-ratelimit-remaining-requests": "abc", "x-ratelimit-reset-requests": "1s"}, None),
        ({"x-ratelimit-remaining-requests": "-2", "x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-remaining-requests": "0.0", "x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "bad"}, None),
        (
            {
                "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s",
                "anthropic-ratelimit-tokens-remaining": "0",
                "anthropic-ratelimit-tokens-reset": rfc3339(30),
            },
            30.0,
        ),
        (
            {"anthropic-ratelimit-output-tokens-remaining": "0",
             "anthropic-ratelimit-output-tokens-reset": rfc3339(9)},
            9.0,
        ),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 3)}, 3.0),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "9" * 20}, MAX_SERVER_WAIT),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1e309"}, MAX_SERVER_WAIT),
    ],
)  # fmt: skip
def test_remaining_reset(headers: dict[str, str], expected: float | None) -> None:
    assert remaining_reset(headers, NOW) == pytest.approx(expected)


# ------------------------------------------------------------------- purity, robustness


def test_classify_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    def boom() -> float:
        raise AssertionError("classify must not read the clock")

    monkeypatch.setattr(time, "time", boom)
    monkeypatch.setattr(time, "monotonic", boom)
    headers = {"retry-after": http_date(10), "x-ratelimit-reset": rfc3339(20)}
    assert classify(reply(429, headers=headers), now=NOW).retry_after == pytest.approx(10.0)
    assert classify(reply(429, headers=headers), now=NOW + 4).retry_after == pytest.approx(6.0)


def test_module_imports_only_models_errors_and_redact() -> None:
    with open(classify_module.__file__, encoding="utf-8") as handle:
        source = handle.read()
    imports = {line.split()[1] for line in source.splitlines() if line.startswith("from .")}
    assert imports <= {".models", ".errors", "._redact"}


def _check_wait(value: float | None) -> None:
    assert value is None or (not math.isnan(value) and 0.0 <= value <= MAX_SERVER_WAIT)


HEADER_NAMES = st.sampled_from(
    [
        "retry-after",
        "retry-after-ms",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ]
)
HEADER_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["0", "-1", "1e309", "inf", "nan", "6m0s", "1.5s", "99999999999999"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers().map(str),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
)
HEADERS = st.dictionaries(st.one_of(HEADER_NAMES, st.text(max_size=30)), HEADER_VALUES, max_size=8)
NOWS = st.one_of(st.just(NOW), st.floats(allow_nan=True, allow_infinity=True))
TEXT = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.sampled_from([*PROVIDER_CODES, "try again in 6m0s", "reset at 2023-11-15 08:13:20"]),
)


@settings(max_examples=300, deadline=None)
@given(
    status=st.one_of(st.integers(), st.sampled_from([200, 400, 402, 403, 429, 500, 503, 529])),
    code=TEXT,
    type_=TEXT,
    message=TEXT,
    excerpt=st.text(max_size=300),
    headers=HEADERS,
    completion=st.booleans(),
    now=NOWS,
)
def test_classify_never_raises(
    status: int,
    code: str | None,
    type_: str | None,
    message: str | None,
    excerpt: str,
    headers: dict[str, str],
    completion: bool,
    now: float,
) -> None:
    item = reply(
        status,
        code=code,
        type=type_,
        message=message,
        headers=headers,
        completion=completion,
        excerpt=excerpt,
    )
    verdict = classify(item, now=now)
    _check_wait(verdict.retry_after)
    _check_wait(verdict.cooldown)
    assert verdict.cooldown is None or verdict.cooldown > 0
    assert len(verdict.message) <= 400
    expected_retry = {Outcome.RATE_LIMITED: True, Outcome.QUOTA_EXHAUSTED: False, BAD: False}
    if verdict.outcome in expected_retry:
        assert verdict.retry_same is expected_retry[verdict.outcome]
    error = error_for(verdict, "p")
    assert isinstance(error, ProviderError)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(HEADER_VALUES, st.text()), now=NOWS, headers=HEADERS)
def test_parsers_never_raise(value: str, now: float, headers: dict[str, str]) -> None:
    _check_wait(parse_retry_after(value, now))
    _check_wait(parse_duration(value))
    _check_wait(parse_reset(value, now))
    _check_wait(server_wait(headers, now))
    _check_wait(remaining_reset(headers, now))


@settings(deadline=None)
@given(
    exc=st.sampled_from([ValueError, ProviderError, ProviderTimeout, KeyboardInterrupt]),
    text=st.text(max_size=200),
)
def test_classify_failure_never_raises(exc: type[BaseException], text: str) -> None:
    verdict = classify_failure(exc(text))
    assert verdict.breaker is not BreakerVote.SUCCESS


def test_hostile_mapping_is_treated_as_no_headers() -> None:
    class Hostile(Mapping[str, str]):
        def __getitem__(self, key: str) -> str:
            raise RuntimeError("no")

        def __iter__(self) -> Any:
            raise RuntimeError("no")

        def __len__(self) -> int:
            return 1

    item = Reply(status=429, headers=Hostile())
    assert classify(item, now=NOW).outcome is RL


# -- which limit refused ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "limit"),
    [
        (
            reply(
                429,
                type="rate_limit_reached_error",
                message="Your account org-x<ak-y> request reached max organization "
                "concurrency: 4, please try again after 1 seconds",
            ),
            "concurrency",
        ),
        (
            reply(
                429,
                type="rate_limit_reached_error",
                message="Your account request reached max request: 200, please try again "
                "after 1 seconds",
            ),
            "rate",
        ),
        (reply(429, code="1302", message="High concurrency usage of this API"), "concurrency"),
        (reply(429, code="1302", message="当前API请求过多"), "concurrency"),
        (reply(429, code="1303", message="High frequency usage of this API"), "rate"),
        (reply(429, code="1305", message="The service may be temporarily overloaded"), None),
        (reply(429, message="并发数过高"), "concurrency"),
        (reply(429, message="too many concurrent requests"), "concurrency"),
        (reply(429, code="rate_limit_exceeded", message="Rate limit reached on requests"), "rate"),
        (reply(529, type="overloaded_error", message="Overloaded"), None),
        (reply(429, excerpt="<html>429 Too Many Requests</html>"), "rate"),
        (reply(503, message="Engine overloaded, rate limit"), None),
    ],
    ids=[
        "moonshot-concurrency",
        "moonshot-rpm",
        "zhipu-1302",
        "zhipu-1302-chinese",
        "zhipu-1303",
        "zhipu-1305-overload",
        "chinese-text",
        "english-text",
        "openai",
        "anthropic-overloaded",
        "nginx",
        "overload-text",
    ],
)
def test_a_rate_limit_says_which_limit_refused(answer: Reply, limit: str | None) -> None:
    verdict = classify(answer, now=NOW)
    assert verdict.limit == limit
    if verdict.outcome is not Outcome.RATE_LIMITED:
        assert limit is None


def test_only_rate_limits_name_a_limit() -> None:
    assert classify(ok(), now=NOW).limit is None
    assert classify(reply(500, message="internal error"), now=NOW).limit is None
    assert classify(reply(429, code="insufficient_quota"), now=NOW).limit is None


def test_declared_limits_read_every_family() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-reset-requests": "1.5s",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "junk",
    }
    assert declared_limits(headers, NOW) == {
        "requests": (500.0, 12.0, 1.5),
        "tokens": (40000.0, None, None),
    }
    assert declared_limits({"x-ratelimit-limit-requests": "0"}, NOW) == {}
    assert declared_limits({"x-ratelimit-limit-requests": "1e309"}, NOW) == {}
    assert declared_limits({"x-ratelimit-limit-requests": "9" * 200}, NOW) == {}
