"""Testing (fake provider side): scripted answers and faults a :class:`FakeProvider` can give.

Each helper on :class:`Respond` (also spelled :data:`Fault`) builds an immutable
:data:`Action`. Hand actions to ``FakeProvider.script([...])`` to have the next
admitted requests answered that way, in order, or to ``fault_rate=`` /
``set_faults()`` for seeded random faults, or to ``always()`` for every request::

    fake.script([Respond.status(503), Respond.reset(), Respond.ok("fine")])

Actions are frozen values: safe to share across threads and to reuse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

__all__ = ["Action", "Delay", "Fault", "Garbage", "Hang", "Ok", "Reset", "Respond", "Status"]

Body: TypeAlias = Mapping[str, Any] | str | bytes | None
"""A response body: a mapping (sent as JSON), text, raw bytes, or ``None`` (a default)."""


@dataclass(frozen=True, slots=True)
class Status:
    """Answer with this HTTP status, body and headers, whatever the request was.

    ``body=None`` means a default error body in the request's wire format
    (OpenAI-style ``{"error": {...}}`` or Anthropic-style ``{"type": "error", ...}``).
    """

    kind: ClassVar[str] = "status"
    code: int
    body: Body = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hang:
    """Read the request, then hold the connection open without answering for ``seconds``.

    Afterwards (or when the fake stops) the connection is closed, still without
    an answer. A client with a shorter read timeout sees a read timeout.
    """

    kind: ClassVar[str] = "hang"
    seconds: float


@dataclass(frozen=True, slots=True)
class Garbage:
    """Answer ``status`` (200) with a body that is not the expected JSON."""

    kind: ClassVar[str] = "garbage"
    body: bytes = b"<html><body>this is not JSON {]</body></html>"
    status: int = 200
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Reset:
    """Abort the TCP connection without an answer (SO_LINGER 0, then close: a reset)."""

    kind: ClassVar[str] = "reset"


@dataclass(frozen=True, slots=True)
class Ok:
    """Answer successfully with this content (streamed if the request asked for a stream)."""

    kind: ClassVar[str] = "ok"
    content: str


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``seconds`` (counted as in flight), then answer normally."""

    kind: ClassVar[str] = "delay"
    seconds: float


Action: TypeAlias = Status | Hang | Garbage | Reset | Ok | Delay
"""Any one scripted answer."""

#: Zhipu (GLM) error codes and the messages its API sends with them.
ZHIPU_MESSAGES: Mapping[str, str] = {  # the full-width commas are Zhipu's own
    "1113": "您的账户已欠费，请充值后重试。",  # noqa: RUF001
    "1302": "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。",  # noqa: RUF001
    "1303": "您当前使用该API的频率过高，请降低频率，或联系客服增加限额。",  # noqa: RUF001
    "1304": "该API的调用次数已达到今日上限，请明日再试或联系客服购买更多次数。",  # noqa: RUF001
    "1305": "当前API请求过多，请稍后重试。",  # noqa: RUF001
}


def _check_seconds(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    return float(seconds)


class Respond:
    """Namespace of constructors for scripted answers (also available as ``Fault``).

    Every method returns a frozen :data:`Action`; none has side effects.
    """

    @staticmethod
    def status(code: int, body: Body = None, headers: Mapping[str, str] | None = None) -> Status:
        """Answer ``code`` with ``body`` (``None``: a default error body) and ``headers``."""
        if not 100 <= code <= 599:
            raise ValueError(f"HTTP status must be in 100..599, got {code!r}")
        return Status(code, body, dict(headers or {}))

    @staticmethod
    def hang(seconds: float = 30.0) -> Hang:
        """Hold the connection ``seconds`` without answering, then close it."""
        return Hang(_check_seconds(seconds))

    @staticmethod
    def garbage(body: bytes | None = None) -> Garbage:
        """Answer 200 with a body that is not JSON (``body`` to choose the bytes)."""
        return Garbage() if body is None else Garbage(body=body)

    @staticmethod
    def reset() -> Reset:
        """Abort the connection with a TCP reset instead of answering."""
        return Reset()

    @staticmethod
    def ok(content: str) -> Ok:
        """Answer successfully with ``content``."""
        return Ok(content)

    @staticmethod
    def delay(seconds: float) -> Delay:
        """Wait ``seconds``, then answer normally."""
        return Delay(_check_seconds(seconds))

    @staticmethod
    def rate_limited(retry_after: float | None = 30.0) -> Status:
        """429 with an OpenAI-like rate-limit body and ``Retry-After`` (``None``: no header)."""
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        body = {
            "error": {
                "message": "Rate limit reached for requests (fake). Please try again later.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        return Status(429, body, headers)

    @staticmethod
    def insufficient_quota(status: int = 429) -> Status:
        """OpenAI's "quota exhausted" answer (``insufficient_quota``), 429 by default."""
        body = {
            "error": {
                "message": "You exceeded your current quota, please check your plan and "
                "billing details (fake).",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        }
        return Status(status, body)

    @staticmethod
    def zhipu(code: str = "1302", message: str | None = None, status: int = 429) -> Status:
        """Build a Zhipu (GLM) error: ``{"error": {"code": code, "message": ...}}``.

        Codes: 1302 concurrency, 1303 frequency, 1305 overloaded (all rate limits);
        1304 daily quota and 1113 arrears (quota exhausted).
        """
        text = message if message is not None else ZHIPU_MESSAGES.get(code, "请求失败")
        return Status(status, {"error": {"code": code, "message": text}})

    @staticmethod
    def overloaded(status: int = 529) -> Status:
        """Anthropic's ``overloaded_error`` (529 by default)."""
        body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return Status(status, body)


Fault = Respond
"""The same namespace as :class:`Respond`, for code that reads better as ``Fault.reset()``."""
