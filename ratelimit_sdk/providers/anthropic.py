"""Transport stage (4), Anthropic Messages wire format: ``POST {base_url}/messages``.

Receives a :class:`~ratelimit_sdk.models.ChatRequest` (OpenAI-style messages), hands back
a :class:`~ratelimit_sdk.models.Reply` or a :class:`~ratelimit_sdk.providers.StreamReply`;
the HTTP plumbing lives in ``_http``.

Body sent: ``{model, max_tokens, messages, system?, temperature?, ...mapped params,
**extra_body, stream?}``: system (and developer) messages leave ``messages`` and are
joined into ``system``; ``max_tokens`` is required by Anthropic and defaults to
:data:`DEFAULT_MAX_TOKENS` (``max_completion_tokens`` stands in for it when given).

The OpenAI chat parameters map where the Messages API has an equivalent:
``temperature``, ``top_p`` as they are; ``stop`` -> ``stop_sequences`` (a string becomes
a one-item list); ``tools`` (OpenAI ``{"type": "function", "function": {name,
description, parameters}}``) -> ``{name, description, input_schema}``; ``tool_choice``
``"auto"``/``"required"``/``"none"``/``{"function": {"name": n}}`` -> ``{"type": "auto"}``
/ ``{"type": "any"}`` / ``{"type": "none"}`` / ``{"type": "tool", "name": n}``, with
``parallel_tool_calls=False`` -> ``disable_parallel_tool_use``; ``user`` ->
``metadata.user_id``. The others (:data:`UNMAPPED`: ``n``, ``seed``, penalties,
``logprobs``, ``response_format`` ...) have none and are left out (logged at DEBUG).
Names that are not OpenAI chat parameters (a ``ChatRequest`` built by hand) go as they
are, and ``extra_body`` is merged last, as it is: that is the way to send
Anthropic-only fields (``{"top_k": 40}``, ``{"thinking": {...}}``).
Headers: ``x-api-key`` (only when there is a key) and ``anthropic-version``.
A success is a ``message`` whose ``content`` is a list of blocks; the ``text`` blocks are
joined. Errors look like ``{"type": "error", "error": {"type": "rate_limit_error", ...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .._redact import get_logger
from ..models import CHAT_PARAMS, ChatRequest, Completion, ErrorBody, Usage
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

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "UNMAPPED", "AnthropicProvider"]

_log = get_logger("ratelimit_sdk.providers")

#: The ``anthropic-version`` header sent (override with ``ProviderConfig.headers``).
ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` sent when the request leaves it unset (Anthropic requires one).
DEFAULT_MAX_TOKENS = 1024

_SYSTEM_ROLES = frozenset({"system", "developer"})

#: OpenAI chat parameters the Messages API has no equivalent for: not sent.
UNMAPPED: frozenset[str] = frozenset(
    {
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "metadata",
        "service_tier",
        "response_format",
        "reasoning_effort",
        "stream_options",
        "modalities",
        "store",
        "prediction",
        "audio",
        "web_search_options",
    }
)


def _tool(tool: Any) -> Any:
    """An OpenAI function tool as an Anthropic tool; anything else as it is."""
    if not isinstance(tool, Mapping) or tool.get("type") != "function":
        return tool
    function = tool.get("function")
    if not isinstance(function, Mapping):
        return tool
    converted: dict[str, Any] = {"name": function.get("name")}
    if function.get("description") is not None:
        converted["description"] = function["description"]
    converted["input_schema"] = function.get("parameters") or {"type": "object"}
    return converted


def _tool_choice(choice: Any, parallel: Any) -> Any:
    """An OpenAI ``tool_choice`` as Anthropic's (``None``: leave it out)."""
    mapped: Any
    if choice is None:
        mapped = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        mapped = {"type": "tool", "name": choice["function"].get("name")}
    else:
        mapped = choice  # already in Anthropic's shape, or something we cannot read
    if parallel is False and isinstance(mapped, Mapping) and mapped.get("type") != "none":
        mapped = {**mapped, "disable_parallel_tool_use": True}
    return mapped


def _map_params(params: Mapping[str, Any], body: dict[str, Any]) -> None:
    """Put the OpenAI-named ``params`` into an Anthropic ``body`` (see the module docstring)."""
    dropped = sorted(name for name in params if name in UNMAPPED)
    if dropped:
        _log.debug("anthropic: no equivalent for %s; not sent", ", ".join(dropped))
    for name, value in params.items():
        if name in UNMAPPED or name in ("stream", "tool_choice", "parallel_tool_calls"):
            continue
        if name == "stop":
            body["stop_sequences"] = [value] if isinstance(value, str) else list(value)
        elif name == "tools":
            body["tools"] = [_tool(tool) for tool in value]
        elif name == "user":
            body["metadata"] = {"user_id": value}
        elif name == "max_completion_tokens":
            continue  # handled with max_tokens
        elif name in CHAT_PARAMS or name not in body:
            body[name] = value
    choice = _tool_choice(params.get("tool_choice"), params.get("parallel_tool_calls"))
    if choice is not None:
        body["tool_choice"] = choice


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
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = request.params.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "messages": messages}
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        _map_params(request.params, body)
        body.update(request.extra_body)
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
