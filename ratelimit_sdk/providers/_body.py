"""Transport stage (4), bodies: read a capped body and make sense of it, whatever it holds.

Receives the raw bytes of an answer (or of one stream event) and hands on plain values:
the parsed JSON or :data:`NOT_JSON`, a redacted excerpt, an
:class:`~ratelimit_sdk.models.ErrorBody` when the body carries an error object, a token
count. Hostile bodies never crash these helpers: invalid JSON, non-UTF-8, ``null``, lists
and nesting deep enough to make :func:`json.loads` raise ``RecursionError`` all come back
as "nothing usable". Reading is capped (:func:`read_capped`), so a huge body cannot
exhaust memory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import requests

from .._redact import redact
from ..models import ErrorBody

__all__ = [
    "EXCERPT_CHARS",
    "NOT_JSON",
    "READ_CHUNK",
    "extract_error",
    "extract_top_level_error",
    "make_excerpt",
    "parse_json",
    "read_capped",
    "str_or_none",
    "usage_int",
]

#: Characters of body kept in ``Reply.excerpt``.
EXCERPT_CHARS = 200
#: Bytes asked of the socket per read, for bodies and event streams alike.
READ_CHUNK = 64 * 1024
_MAX_ERROR_MESSAGE = 1000


class _NotJSON:
    """Marker for a body that did not parse as JSON."""

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJSON()


def parse_json(body: bytes | str) -> Any:
    """``json.loads(body)``, or :data:`NOT_JSON` for anything that is not JSON.

    Catches what decoding a hostile body raises, and only around ``json.loads``:
    invalid JSON (``json.JSONDecodeError``), invalid encoding (``UnicodeDecodeError``),
    an integer too long to convert (a plain ``ValueError``) and deep nesting
    (``RecursionError``). Such a body is the provider's answer being bad, never a
    transport error.
    """
    if not body:
        return NOT_JSON
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError):
        return NOT_JSON


def make_excerpt(body: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """Return the first ``limit`` printable characters of ``body``, spaces collapsed, redacted."""
    if isinstance(body, bytes):
        text = body[: limit * 16].decode("utf-8", errors="replace")
    else:
        text = body[: limit * 16]
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    collapsed = " ".join(printable.split())
    # Redact a wider window than we keep, so a secret across the cut is still removed.
    return redact(collapsed[: limit * 5])[:limit]


def _as_code(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return redact(value[:200])[:100]
    return None


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, dict)):
        try:
            text = json.dumps(value, ensure_ascii=False)[: _MAX_ERROR_MESSAGE * 2]
        except (ValueError, TypeError, RecursionError):
            return None
    else:
        return None
    text = redact(text)
    if len(text) > _MAX_ERROR_MESSAGE:
        text = text[: _MAX_ERROR_MESSAGE - 3] + "..."
    return text


def _error_object(obj: Mapping[str, Any]) -> ErrorBody:
    kind = obj.get("type")
    if not isinstance(kind, str):
        kind = obj.get("status")  # Google-style {"error": {"code": 429, "status": "..."}}
    message = obj.get("message")
    if message is None:
        message = obj.get("msg")
    return ErrorBody(
        code=_as_code(obj.get("code")),
        type=_as_code(kind) if isinstance(kind, str) else None,
        message=_as_text(message),
    )


def extract_error(data: Any) -> ErrorBody | None:
    """Return the ``{"error": {...}}`` or ``{"error": "..."}`` object of a parsed body, or None.

    Covers OpenAI-compatible servers, Zhipu (``{"error": {"code": "1302", ...}}``) and
    Anthropic (``{"type": "error", "error": {"type": ..., "message": ...}}``), on any status.
    A list whose first item holds such an object counts too. For the looser top-level
    forms see :func:`extract_top_level_error`.
    """
    if isinstance(data, list) and data and isinstance(data[0], dict) and "error" in data[0]:
        data = data[0]
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        return _error_object(error)
    if isinstance(error, str) and error:
        return ErrorBody(message=_as_text(error))
    return None


_NOT_ERROR_CODES = frozenset({"0", "200"})


def extract_top_level_error(data: Any) -> ErrorBody | None:
    """Return a top-level error without an ``error`` key, or None (for non-success bodies).

    Recognizes ``{"code": 1302, "msg": ...}`` (Zhipu, many gateways; codes 0 and 200 mean
    success there), ``{"object": "error", "message": ..., "code": 400}`` (vLLM) and
    ``{"detail": ...}`` (FastAPI servers).
    """
    if not isinstance(data, dict):
        return None
    code = _as_code(data.get("code"))
    message = data.get("message")
    if message is None:
        message = data.get("msg")
    marked = data.get("object") == "error" or data.get("type") == "error"
    failed = data.get("success") is False or (code is not None and code not in _NOT_ERROR_CODES)
    if marked or (failed and (message is not None or "msg" in data)):
        kind = data.get("type")
        return ErrorBody(
            code=code,
            type=_as_code(kind) if isinstance(kind, str) and kind != "error" else None,
            message=_as_text(message),
        )
    detail = data.get("detail")
    if detail is not None and len(data) == 1:
        return ErrorBody(message=_as_text(detail))
    return None


def usage_int(value: Any) -> int:
    """Read a token count from a body: a non-negative int, else 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)


def read_capped(response: requests.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the (decoded) body, and whether there was more."""
    buffer = bytearray()
    for chunk in response.iter_content(chunk_size=READ_CHUNK):
        buffer += chunk
        if len(buffer) > limit:
            return bytes(buffer[:limit]), True
    return bytes(buffer), False


def str_or_none(value: Any) -> str | None:
    """``value`` if it is a string, else ``None`` (for optional text fields of a body)."""
    return value if isinstance(value, str) else None
