"""Testing (fake provider side): the bytes a fake provider puts on the wire. Pure functions.

Builds the two wire formats (OpenAI-compatible chat completions and Anthropic
Messages), their streams (server-sent events), their error bodies, and whole
HTTP/1.1 responses as one ``bytes`` value so each can be written in one send.
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal, TypeAlias

Wire: TypeAlias = Literal["openai", "anthropic"]

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
ECHO_LIMIT = 64
"""Characters of the last user message the default reply echoes back."""


def wire_for_path(path: str) -> Wire | None:
    """Return the wire format served at ``path``, or ``None`` when nothing is served there."""
    path = path.rstrip("/")
    if path == OPENAI_PATH:
        return "openai"
    if path == ANTHROPIC_PATH:
        return "anthropic"
    return None


def message_text(content: Any) -> str:
    """Return the text of one message's ``content`` (a string or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def prompt_text(body: Mapping[str, Any]) -> str:
    """Join all message text of a request body (for the fake's token counts)."""
    messages = body.get("messages")
    parts = [message_text(body.get("system"))]
    if isinstance(messages, list):
        parts.extend(message_text(m.get("content")) for m in messages if isinstance(m, Mapping))
    return " ".join(p for p in parts if p)


def echo_reply(body: Mapping[str, Any]) -> str:
    """Make the default reply: ``"echo: "`` and the start of the last user message."""
    messages = body.get("messages")
    last = ""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, Mapping) and message.get("role") == "user":
                last = message_text(message.get("content"))
                break
    return "echo: " + last[:ECHO_LIMIT]


def count_tokens(text: str) -> int:
    """Count tokens roughly: one per four characters, at least one."""
    return len(text) // 4 + 1


def completion_body(
    wire: Wire, *, ident: str, model: str, content: str, prompt_tokens: int
) -> dict[str, Any]:
    """Build the success body of a non-streamed answer."""
    completion_tokens = count_tokens(content)
    if wire == "anthropic":
        return {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": content}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }
    return {
        "id": ident,
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def split_text(text: str, pieces: int) -> list[str]:
    """Cut ``text`` into at most ``pieces`` non-empty parts (one empty part for ``""``)."""
    if not text:
        return [""]
    size = max(1, math.ceil(len(text) / max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _sse(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def stream_events(
    wire: Wire, *, ident: str, model: str, pieces: Sequence[str], prompt_tokens: int
) -> list[bytes]:
    """Build the server-sent events of a streamed answer, one ``bytes`` per event."""
    completion_tokens = count_tokens("".join(pieces))
    if wire == "anthropic":
        start = {
            "type": "message_start",
            "message": {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 1},
            },
        }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        events = [_sse(start, "message_start"), _sse(block, "content_block_start")]
        for piece in pieces:
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            events.append(_sse(delta, "content_block_delta"))
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": completion_tokens},
        }
        events += [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(message_delta, "message_delta"),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        return events

    def chunk(delta: Mapping[str, Any], finish: str | None) -> bytes:
        return _sse(
            {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": piece}, None) for piece in pieces]
    events.append(chunk({}, "stop"))
    events.append(_sse("[DONE]"))
    return events


def error_body(wire: Wire, message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """Build an error body in the wire format's shape."""
    if wire == "anthropic":
        return {"type": "error", "error": {"type": type_, "message": message}}
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "requests"}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def default_error_body(wire: Wire, status: int) -> dict[str, Any]:
    """Build the body a scripted ``status(code)`` without a body answers with."""
    message = f"fake provider answered {status} {reason(status)}"
    if wire == "anthropic":
        return error_body(wire, message, _ANTHROPIC_TYPES.get(status, "api_error"))
    code = "rate_limit_exceeded" if status == 429 else None
    default_type = "server_error" if status >= 500 else "invalid_request_error"
    return error_body(wire, message, _OPENAI_TYPES.get(status, default_type), code)


def kimi_concurrency_body(limit: int) -> dict[str, Any]:
    """Moonshot's answer to a request over the organization's concurrency limit."""
    return {
        "error": {
            "message": f"Your account org-fake<ak-fake> request reached max organization "
            f"concurrency: {limit}, please try again after 1 seconds",
            "type": "rate_limit_reached_error",
        }
    }


def go_duration(seconds: float) -> str:
    """Write ``seconds`` as a Go duration, to the millisecond: "250ms", "1.5s", "6m0s"."""
    millis = round(seconds * 1000) if math.isfinite(seconds) and seconds > 0 else 0
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    sec = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def reason(status: int) -> str:
    """Return the reason phrase for ``status`` ("Unknown" for codes HTTP does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode_body(body: Mapping[str, Any] | str | bytes) -> tuple[bytes, str]:
    """Encode a body as bytes; return them with the content type that goes with them."""
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    return json.dumps(body, ensure_ascii=False).encode(), "application/json"


def _head(status: int, headers: Iterable[tuple[str, str]], *, close: bool) -> list[str]:
    lines = [
        f"HTTP/1.1 {status} {reason(status)}",
        "Server: ratelimit-sdk-fake",
        f"Date: {email.utils.formatdate(usegmt=True)}",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    if close:
        lines.append("Connection: close")
    return lines


def encode_response(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    content_type: str,
    close: bool,
) -> bytes:
    """Build a whole HTTP/1.1 response (status line, headers, body) as one value."""
    lines = _head(status, headers, close=close)
    lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def encode_stream_head(status: int, headers: Iterable[tuple[str, str]], *, close: bool) -> bytes:
    """Build the head of a chunked ``text/event-stream`` response."""
    lines = _head(status, headers, close=close)
    lines += [
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache",
        "Transfer-Encoding: chunked",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """Frame one chunk of a chunked body (an empty ``data`` gives the final chunk)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"
