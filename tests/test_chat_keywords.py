"""``chat()`` takes the OpenAI chat parameters by name; anything else only via ``extra_body``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ratelimit_sdk import Client
from ratelimit_sdk.config import ProviderConfig
from ratelimit_sdk.models import CHAT_PARAMS, ChatRequest
from ratelimit_sdk.providers import build_provider
from ratelimit_sdk.testing import FakeProvider

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture
def client(fake: FakeProvider) -> Iterator[Client]:
    with Client({"providers": [fake.provider_config()]}) as c:
        yield c


def _last_body(fake: FakeProvider) -> dict[str, Any]:
    body = fake.requests[-1].body
    return body if isinstance(body, dict) else json.loads(body)


def test_a_typo_raises_type_error_with_a_suggestion_before_sending(
    client: Client, fake: FakeProvider
) -> None:
    before = fake.count
    with pytest.raises(TypeError) as info:
        client.chat(MESSAGES, temprature=0.3)  # type: ignore[call-overload]
    assert str(info.value) == (
        "chat() got an unexpected keyword argument 'temprature' (did you mean 'temperature'?)"
    )
    with pytest.raises(TypeError, match=r"'frobnicate'$"):
        client.chat(MESSAGES, frobnicate=1)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="did you mean 'max_tokens'"):
        client.chat_stream(MESSAGES, max_token=5)  # type: ignore[call-arg]
    assert fake.count == before


def test_named_params_are_sent_and_none_is_not(client: Client, fake: FakeProvider) -> None:
    client.chat(
        MESSAGES,
        temperature=0.3,
        top_p=0.9,
        max_tokens=20,
        stop=["\n"],
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=None,
        user="u1",
        response_format={"type": "json_object"},
        extra_body={"top_k": 5, "temperature": 0.1},
    )
    body = _last_body(fake)
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 20
    assert body["stop"] == ["\n"]
    assert body["seed"] == 7
    assert body["user"] == "u1"
    assert body["response_format"] == {"type": "json_object"}
    assert body["top_k"] == 5
    assert body["temperature"] == 0.1  # extra_body merges last
    assert "frequency_penalty" not in body
    assert "extra_body" not in body


def test_map_items_are_checked_too(client: Client, fake: FakeProvider) -> None:
    before = fake.count
    with pytest.raises(TypeError) as info:
        client.map([{"messages": MESSAGES, "temprature": 0.2}], progress=False)
    assert "'temprature'" in str(info.value) and "did you mean 'temperature'" in str(info.value)
    assert fake.count == before
    [answer] = client.map(
        [{"messages": MESSAGES, "top_p": 0.5, "extra_body": {"x": 1}}], progress=False
    )
    assert answer.content
    body = _last_body(fake)
    assert body["top_p"] == 0.5 and body["x"] == 1


def test_the_names_cover_the_openai_params() -> None:
    for name in [
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "n",
        "seed",
        "tools",
        "tool_choice",
        "response_format",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "user",
        "extra_body",
    ]:
        assert name in CHAT_PARAMS


def _anthropic_body(request: ChatRequest) -> dict[str, Any]:
    config = ProviderConfig(
        name="a", base_url="http://127.0.0.1:9", model="claude", api="anthropic"
    )
    provider = build_provider(config, api_key=None)
    try:
        return provider._body(request, stream=False)  # type: ignore[attr-defined,no-any-return]
    finally:
        provider.close()


def _openai_body(request: ChatRequest) -> dict[str, Any]:
    config = ProviderConfig(name="o", base_url="http://127.0.0.1:9", model="gpt")
    provider = build_provider(config, api_key=None)
    try:
        return provider._body(request, stream=False)  # type: ignore[attr-defined,no-any-return]
    finally:
        provider.close()


TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_anthropic_maps_what_it_can() -> None:
    request = ChatRequest(
        messages=[{"role": "system", "content": "be brief"}, *MESSAGES],
        temperature=0.2,
        params={
            "top_p": 0.8,
            "stop": "END",
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "user": "u1",
            "seed": 3,
            "n": 1,
            "presence_penalty": 0.5,
        },
        extra_body={"top_k": 40, "top_p": 0.7},
    )
    body = _anthropic_body(request)
    assert body["system"] == "be brief"
    assert body["temperature"] == 0.2
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["metadata"] == {"user_id": "u1"}
    assert body["top_k"] == 40
    assert body["top_p"] == 0.7  # extra_body merges last
    for name in ("stop", "seed", "n", "presence_penalty", "user", "extra_body"):
        assert name not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
def test_anthropic_tool_choice_strings(choice: str, expected: dict[str, Any]) -> None:
    body = _anthropic_body(
        ChatRequest(messages=MESSAGES, params={"tools": [TOOL], "tool_choice": choice})
    )
    assert body["tool_choice"] == expected


def test_anthropic_max_completion_tokens_is_max_tokens() -> None:
    body = _anthropic_body(ChatRequest(messages=MESSAGES, params={"max_completion_tokens": 77}))
    assert body["max_tokens"] == 77
    assert "max_completion_tokens" not in body


def test_openai_body_keeps_params_and_merges_extra_body_last() -> None:
    body = _openai_body(
        ChatRequest(
            messages=MESSAGES,
            max_tokens=5,
            params={"stop": "END", "tools": [TOOL], "stream": True},
            extra_body={"max_tokens": 9, "repetition_penalty": 1.1},
        )
    )
    assert body["stop"] == "END"
    assert body["tools"] == [TOOL]
    assert body["max_tokens"] == 9
    assert body["repetition_penalty"] == 1.1
    assert "stream" not in body
