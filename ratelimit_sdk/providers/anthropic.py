"""Transport stage (4), Anthropic Messages wire format: ``POST {base_url}/messages``.

Receives a :class:`~ratelimit_sdk.models.ChatRequest` (OpenAI-style messages), hands back
a :class:`~ratelimit_sdk.models.Reply` or a :class:`~ratelimit_sdk.providers.StreamReply`;
the HTTP plumbing lives in ``_http``.

Body sent: ``{model, max_tokens, messages, system?, temperature?, **params, stream?}``:
system (and developer) messages leave ``messages`` and are joined into ``system``;
``max_tokens`` is required by Anthropic and defaults to :data:`DEFAULT_MAX_TOKENS`.
Headers: ``x-api-key`` (only when there is a key) and ``anthropic-version``.
A success is a ``message`` whose ``content`` is a list of blocks; the ``text`` blocks are
joined. Errors look like ``{"type": "error", "error": {"type": "rate_limit_error", ...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ..models import ChatRequest, Completion, ErrorBody, Usage
from ._body import str_or_none
from ._http import (
    NOT_JSON,
    HTTPProvider,
    KeyAuth,
    SSEEvent,
    StreamProtocolError,
    StreamState,
    extract_error,
    parse_json,
    usage_int,
)

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicProvider"]

#: The ``anthropic-version`` header sent (override with ``ProviderConfig.headers``).
ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` sent when the request leaves it unset (Anthropic requires one).
DEFAULT_MAX_TOKENS = 1024

_SYSTEM_ROLES = frozenset({"system", "developer"})


def _system_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _prompt_tokens(usage: Mapping[str, Any]) -> int:
    """Input tokens, cached ones included (Anthropic counts those separately)."""
    return (
        usage_int(usage.get("input_tokens"))
        + usage_int(usage.get("cache_creation_input_tokens"))
        + usage_int(usage.get("cache_read_input_tokens"))
    )


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, Mapping):
        return None
    prompt = _prompt_tokens(value)
    output = usage_int(value.get("output_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output)


class AnthropicProvider(HTTPProvider):
    """An Anthropic Messages endpoint (``ProviderConfig.api == "anthropic"``).

    Safe to share across threads; see :class:`~ratelimit_sdk.providers._http.HTTPProvider`.
    """

    path: ClassVar[str] = "/messages"
    api: ClassVar[str] = "anthropic"

    def _make_auth(self, api_key: str | None) -> KeyAuth:
        return KeyAuth("x-api-key", api_key)

    def _default_headers(self) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION}

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for message in request.messages:
            if message.get("role") in _SYSTEM_ROLES:
                text = _system_text(message.get("content"))
                if text:
                    system.append(text)
            else:
                messages.append(dict(message))
        max_tokens = request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "messages": messages}
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        body.update(request.params)
        body.pop("stream", None)  # send() and stream() decide that, not params
        if stream:
            body["stream"] = True
        return body

    def _parse_completion(self, data: Any) -> Completion | None:
        if not isinstance(data, Mapping) or data.get("type", "message") != "message":
            return None
        blocks = data.get("content")
        if not isinstance(blocks, list):
            return None
        texts: list[str] = []
        for block in blocks:
            if not isinstance(block, Mapping):
                return None
            if block.get("type") == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    return None
                texts.append(text)
        return Completion(
            content="".join(texts),
            model=str_or_none(data.get("model")),
            usage=_usage(data.get("usage")),
            finish_reason=str_or_none(data.get("stop_reason")),
        )

    def _on_event(self, event: SSEEvent, state: StreamState) -> str | None:
        payload = parse_json(event.data)
        if payload is NOT_JSON or not isinstance(payload, Mapping):
            raise StreamProtocolError("an event's data is not a JSON object")
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = event.event
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, Mapping) and delta.get("type", "text_delta") == "text_delta":
                text = delta.get("text")
                return text if isinstance(text, str) else None
            return None
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                state.model = str_or_none(message.get("model")) or state.model
                state.usage = _usage(message.get("usage")) or state.usage
        elif kind == "message_delta":
            self._message_delta(payload, state)
        elif kind == "message_stop":
            state.done = True
        elif kind == "error":
            state.error = extract_error(payload) or ErrorBody(message="error event")
        return None

    @staticmethod
    def _message_delta(payload: Mapping[str, Any], state: StreamState) -> None:
        delta = payload.get("delta")
        if isinstance(delta, Mapping) and isinstance(delta.get("stop_reason"), str):
            state.finish_reason = delta["stop_reason"]
        usage = payload.get("usage")
        if not isinstance(usage, Mapping):
            return
        before = state.usage or Usage()
        prompt = _prompt_tokens(usage) if "input_tokens" in usage else before.prompt_tokens
        output = usage_int(usage.get("output_tokens")) or before.completion_tokens
        state.usage = Usage(
            prompt_tokens=prompt, completion_tokens=output, total_tokens=prompt + output
        )
