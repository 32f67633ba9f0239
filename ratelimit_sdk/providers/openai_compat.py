"""Transport stage (4), OpenAI wire format: ``POST {base_url}/chat/completions``.

Spoken by OpenAI, Moonshot Kimi, Zhipu GLM, Featherless, vLLM, Ollama and most other chat
APIs. Receives a :class:`~ratelimit_sdk.models.ChatRequest`, hands back a
:class:`~ratelimit_sdk.models.Reply` or a :class:`~ratelimit_sdk.providers.StreamReply`;
the HTTP plumbing (session, pool, caps, error translation) lives in ``_http``.

Body sent: ``{model, messages, max_tokens?, temperature?, **params, **extra_body,
stream?}`` (the chat parameters under their OpenAI names, then ``extra_body`` merged
last, as openai-python does), with ``Authorization: Bearer <key>`` only when there is
a key. A success is a body whose
``choices[0].message.content`` is a string (a list of text parts is joined); a ``null``
content counts as ``""`` only when the message carries tool calls. For usage in a stream,
pass ``stream_options={"include_usage": True}`` where the server supports it.
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

__all__ = ["OpenAICompatProvider"]


def _text(content: Any) -> str | None:
    """``content`` as text: a string, or the joined text parts of a list; else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts: list[str] = []
        for part in content:
            if not isinstance(part, Mapping):
                return None
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    return None
                texts.append(text)
        return "".join(texts) if texts else None
    return None


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, Mapping):
        return None
    prompt = usage_int(value.get("prompt_tokens"))
    completion = usage_int(value.get("completion_tokens"))
    total = usage_int(value.get("total_tokens")) or prompt + completion
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)


class OpenAICompatProvider(HTTPProvider):
    """An OpenAI-compatible chat completions endpoint (``ProviderConfig.api == "openai"``).

    Safe to share across threads; see :class:`~ratelimit_sdk.providers._http.HTTPProvider`.
    """

    path: ClassVar[str] = "/chat/completions"
    api: ClassVar[str] = "openai"

    def _make_auth(self, api_key: str | None) -> KeyAuth:
        return KeyAuth("Authorization", api_key, prefix="Bearer ")

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(message) for message in request.messages],
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        body.update(request.params)
        body.update(request.extra_body)
        body.pop("stream", None)  # send() and stream() decide that, not params
        if stream:
            body["stream"] = True
        return body

    def _parse_completion(self, data: Any) -> Completion | None:
        if not isinstance(data, Mapping):
            return None
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            return None
        first = choices[0]
        if not isinstance(first, Mapping):
            return None
        message = first.get("message")
        if not isinstance(message, Mapping):
            return None
        content = _text(message.get("content"))
        if content is None:
            calls = message.get("tool_calls") or message.get("function_call")
            if message.get("content") is not None or not isinstance(calls, (list, Mapping)):
                return None
            if not calls:
                return None
            content = ""
        return Completion(
            content=content,
            model=str_or_none(data.get("model")),
            usage=_usage(data.get("usage")),
            finish_reason=str_or_none(first.get("finish_reason")),
        )

    def _on_event(self, event: SSEEvent, state: StreamState) -> str | None:
        data = event.data.strip()
        if data == "[DONE]":
            state.done = True
            return None
        payload = parse_json(data)
        if payload is NOT_JSON or not isinstance(payload, Mapping):
            if event.event == "error":
                state.error = ErrorBody(message=data[:200] or "error event")
                return None
            raise StreamProtocolError("an event's data is not a JSON object")
        error = extract_error(payload)
        if error is not None:
            state.error = error
            return None
        model = payload.get("model")
        if isinstance(model, str):
            state.model = model
        usage = _usage(payload.get("usage"))
        if usage is not None:
            state.usage = usage
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            return None
        first = choices[0]
        finish = first.get("finish_reason")
        if isinstance(finish, str):
            state.finish_reason = finish
        delta = first.get("delta")
        if not isinstance(delta, Mapping):
            return None
        return _text(delta.get("content"))
