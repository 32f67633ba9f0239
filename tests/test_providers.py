"""Transport stage: request shapes, parsing, hostile bodies, error translation, streams.

Most tests mock HTTP with ``responses``; a few that need a real socket (a read timeout in
the middle of a body, a broken chunked body, a live chunked event stream) use a tiny
scripted server on 127.0.0.1.
"""

from __future__ import annotations

import json
import pickle
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import responses
import urllib3

from ratelimit_sdk import _redact
from ratelimit_sdk.config import ProviderConfig
from ratelimit_sdk.errors import (
    BadRequestError,
    ConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
)
from ratelimit_sdk.models import ChatRequest, Reply, Usage
from ratelimit_sdk.providers import (
    AnthropicProvider,
    OpenAICompatProvider,
    Provider,
    StreamReply,
    _http,
    build_provider,
)
from ratelimit_sdk.providers._http import SSEEvent, SSEParser, StreamProtocolError

CANARY = "sk-canary-7f3a9Qx2LmZp0000CANARY"
BASE = "https://api.example.test/v1"
OPENAI_URL = BASE + "/chat/completions"
ANTHROPIC_URL = BASE + "/messages"
MESSAGES = [{"role": "user", "content": "hi"}]
REQUEST = ChatRequest(messages=MESSAGES)
TIMEOUTS = {"connect_timeout": 2.0, "read_timeout": 5.0}

OPENAI_OK = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "kimi-k2",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
ANTHROPIC_OK = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "text", "text": "hel"},
        {"type": "tool_use", "id": "t", "name": "f", "input": {}},
        {"type": "text", "text": "lo"},
    ],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 10,
        "output_tokens": 4,
        "cache_read_input_tokens": 5,
        "cache_creation_input_tokens": 1,
    },
}


def make_config(api: str = "openai", **extra: Any) -> ProviderConfig:
    return ProviderConfig(name=f"p-{api}", base_url=BASE, model="m-1", api=api, **extra)


@pytest.fixture
def openai() -> Iterator[Provider]:
    provider = build_provider(make_config("openai"), api_key=CANARY, pool_size=3)
    yield provider
    provider.close()


@pytest.fixture
def anthropic() -> Iterator[Provider]:
    provider = build_provider(make_config("anthropic"), api_key=CANARY)
    yield provider
    provider.close()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def sent_json(rsps: responses.RequestsMock, index: int = 0) -> Any:
    body = rsps.calls[index].request.body
    assert isinstance(body, bytes)
    return json.loads(body)


# -- construction -------------------------------------------------------------------------


def test_build_provider_picks_the_wire_format() -> None:
    a = build_provider(make_config("openai"), api_key=None)
    b = build_provider(make_config("anthropic"), api_key=None)
    try:
        assert isinstance(a, OpenAICompatProvider)
        assert isinstance(b, AnthropicProvider)
        assert isinstance(a, Provider) and isinstance(b, Provider)
        assert a.name == "p-openai"
    finally:
        a.close()
        b.close()


def test_session_has_no_urllib3_retries_and_the_pool_size() -> None:
    provider = build_provider(make_config(), api_key=None, pool_size=7)
    assert isinstance(provider, OpenAICompatProvider)
    for scheme in ("http://x", "https://x"):
        adapter = provider._session.get_adapter(scheme)
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        retry = adapter.max_retries
        assert (retry.total, retry.connect, retry.read, retry.redirect, retry.status) == (
            0,
            0,
            0,
            0,
            0,
        )
        assert vars(adapter)["_pool_maxsize"] == 7
        assert vars(adapter)["_pool_block"] is False
    assert provider._session.verify is True
    moved = requests.Response()
    moved.status_code = 307
    moved.headers["Location"] = "https://elsewhere.test/"
    assert provider._session.get_redirect_target(moved) is None  # 3xx bodies are not pre-read
    provider.close()
    default = build_provider(make_config(), api_key=None)
    adapter = default._session.get_adapter("https://x")  # type: ignore[attr-defined]
    assert vars(adapter)["_pool_maxsize"] == 10
    default.close()


def test_build_provider_registers_the_key() -> None:
    key = "sk-another-secret-key-42"
    provider = build_provider(make_config(), api_key=key)
    assert _redact.redact(f"echo {key}") == "echo ***"
    provider.close()


@pytest.mark.parametrize("key", ["sk-bad\nkey-12345", " sk-leading-space", "sk-ключ-12345", ""])
def test_malformed_key_is_a_config_error_without_the_key(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_provider(make_config(), api_key=key)
    if key.strip():
        assert key.strip() not in str(info.value)


# -- request shape ------------------------------------------------------------------------


def test_openai_request_shape(openai: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(OPENAI_URL, json=OPENAI_OK)
    request = ChatRequest(
        messages=MESSAGES,
        max_tokens=50,
        temperature=0.2,
        params={"top_p": 0.9, "stream": True},
    )
    openai.send(request, **TIMEOUTS)
    call = mocked.calls[0]
    assert call.request.url == OPENAI_URL
    assert call.request.method == "POST"
    headers = call.request.headers
    assert headers["Authorization"] == f"Bearer {CANARY}"
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("ratelimit_sdk/")
    assert "x-api-key" not in headers
    assert sent_json(mocked) == {
        "model": "m-1",
        "messages": MESSAGES,
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
    }


def test_openai_without_key_sends_no_auth_header(mocked: responses.RequestsMock) -> None:
    provider = build_provider(make_config(headers={"X-Trace": "abc"}), api_key=None)
    mocked.post(OPENAI_URL, json=OPENAI_OK)
    provider.send(REQUEST, **TIMEOUTS)
    headers = mocked.calls[0].request.headers
    assert "Authorization" not in headers
    assert headers["X-Trace"] == "abc"
    assert sent_json(mocked) == {"model": "m-1", "messages": MESSAGES}
    provider.close()


def test_no_key_ignores_netrc(
    mocked: responses.RequestsMock, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.example.test login user password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    provider = build_provider(make_config(), api_key=None)
    mocked.post(OPENAI_URL, json=OPENAI_OK)
    provider.send(REQUEST, **TIMEOUTS)
    assert "Authorization" not in mocked.calls[0].request.headers
    provider.close()


def test_anthropic_request_shape(anthropic: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(ANTHROPIC_URL, json=ANTHROPIC_OK)
    request = ChatRequest(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "be kind"}]},
            {"role": "assistant", "content": "yo"},
        ],
        temperature=0.5,
        params={"top_k": 3},
    )
    anthropic.send(request, **TIMEOUTS)
    call = mocked.calls[0]
    assert call.request.url == ANTHROPIC_URL
    headers = call.request.headers
    assert headers["x-api-key"] == CANARY
    assert headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers
    assert sent_json(mocked) == {
        "model": "m-1",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        "system": "be brief\n\nbe kind",
        "temperature": 0.5,
        "top_k": 3,
    }


def test_anthropic_without_key_and_explicit_max_tokens(mocked: responses.RequestsMock) -> None:
    provider = build_provider(make_config("anthropic"), api_key=None)
    mocked.post(ANTHROPIC_URL, json=ANTHROPIC_OK)
    provider.send(ChatRequest(messages=MESSAGES, max_tokens=7), **TIMEOUTS)
    assert "x-api-key" not in mocked.calls[0].request.headers
    body = sent_json(mocked)
    assert body["max_tokens"] == 7
    assert "system" not in body
    provider.close()


def test_unencodable_request_is_a_bad_request(openai: Provider) -> None:
    with pytest.raises(BadRequestError):
        openai.send(ChatRequest(messages=MESSAGES, temperature=float("nan")), **TIMEOUTS)
    with pytest.raises(BadRequestError):
        openai.send(ChatRequest(messages=MESSAGES, params={"x": object()}), **TIMEOUTS)


# -- success parsing ----------------------------------------------------------------------


def test_openai_success(openai: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(OPENAI_URL, json=OPENAI_OK, headers={"X-RateLimit-Remaining": "4"})
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.status == 200
    assert reply.completion is not None
    assert reply.completion.content == "hello"
    assert reply.completion.model == "kimi-k2"
    assert reply.completion.finish_reason == "stop"
    assert reply.completion.usage == Usage(3, 2, 5)
    assert reply.error is None
    assert reply.headers["x-ratelimit-remaining"] == "4"
    assert all(name == name.lower() for name in reply.headers)
    assert reply.elapsed >= 0
    assert reply.excerpt == ""  # a clean success carries no excerpt (hot path)
    assert len(reply.excerpt) <= 200


def test_openai_tool_calls_with_null_content(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    body = {
        "choices": [
            {
                "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    mocked.post(OPENAI_URL, json=body)
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.completion is not None
    assert reply.completion.content == ""
    assert reply.completion.usage is None
    assert reply.completion.finish_reason == "tool_calls"


def test_openai_text_parts_are_joined(openai: Provider, mocked: responses.RequestsMock) -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    mocked.post(OPENAI_URL, json={"choices": [{"message": {"content": parts}}]})
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.completion is not None and reply.completion.content == "ab"


def test_openai_usage_with_wrong_types_is_zeroed(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    body = {
        "choices": [{"message": {"content": "x"}}],
        "usage": {"prompt_tokens": "3", "completion_tokens": True, "total_tokens": -4},
    }
    mocked.post(OPENAI_URL, json=body)
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.completion is not None
    assert reply.completion.usage == Usage(0, 0, 0)


def test_anthropic_success(anthropic: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(ANTHROPIC_URL, json=ANTHROPIC_OK)
    reply = anthropic.send(REQUEST, **TIMEOUTS)
    assert reply.completion is not None
    assert reply.completion.content == "hello"
    assert reply.completion.model == "claude-x"
    assert reply.completion.finish_reason == "end_turn"
    assert reply.completion.usage == Usage(16, 4, 20)
    assert reply.error is None


# -- hostile bodies -----------------------------------------------------------------------

HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"<html><body>502 Bad Gateway</body></html>"),
    ("json null", b"null"),
    ("json list", b"[1, 2, 3]"),
    ("json string", b'"hello"'),
    ("json number", b"42"),
    ("huge integer", b"1" * 10_000),
    ("empty object", b"{}"),
    ("empty choices", b'{"choices": []}'),
    ("choices not a list", b'{"choices": "nope"}'),
    ("choice null", b'{"choices": [null]}'),
    ("message missing", b'{"choices": [{"finish_reason": "stop"}]}'),
    ("message a string", b'{"choices": [{"message": "hi"}]}'),
    ("content a number", b'{"choices": [{"message": {"content": 5}}]}'),
    ("content null, no tools", b'{"choices": [{"message": {"content": null}}]}'),
    (
        "content null, empty tools",
        b'{"choices": [{"message": {"content": null, "tool_calls": []}}]}',
    ),
    ("parts with a bad item", b'{"choices": [{"message": {"content": [1]}}]}'),
    ("anthropic content not a list", b'{"type": "message", "content": "hi"}'),
    ("anthropic block not an object", b'{"type": "message", "content": ["hi"]}'),
    (
        "anthropic text not a string",
        b'{"type": "message", "content": [{"type": "text", "text": 1}]}',
    ),
    ("anthropic wrong type", b'{"type": "completion", "content": []}'),
    ("deep nesting", b"[" * 200_000 + b"]" * 200_000),
    ("deep nesting object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ("non utf-8", b"\xff\xfe\xfa{\x00\x81garbage\xc3("),
    ("utf-8 then garbage", b'{"choices": [{"message": {"content": "\xff"}}]}'),
    ("truncated json", b'{"choices": [{"message": {"content": "hel'),
    ("control characters", b"\x00\x01\x02\x1b[31mred\x07"),
]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(("label", "body"), HOSTILE_BODIES, ids=[b[0] for b in HOSTILE_BODIES])
def test_hostile_body_never_crashes(
    api: str, label: str, body: bytes, mocked: responses.RequestsMock
) -> None:
    provider = build_provider(make_config(api), api_key=CANARY)
    url = OPENAI_URL if api == "openai" else ANTHROPIC_URL
    mocked.post(url, body=body, status=200, content_type="application/json")
    reply = provider.send(REQUEST, **TIMEOUTS)
    provider.close()
    assert reply.status == 200
    assert reply.completion is None, label
    assert isinstance(reply.excerpt, str)
    assert len(reply.excerpt) <= 200
    assert all(ch.isprintable() for ch in reply.excerpt)


def test_anthropic_empty_content_is_a_success(
    anthropic: Provider, mocked: responses.RequestsMock
) -> None:
    mocked.post(ANTHROPIC_URL, json={"type": "message", "content": [], "stop_reason": "end_turn"})
    reply = anthropic.send(REQUEST, **TIMEOUTS)
    assert reply.completion is not None and reply.completion.content == ""


def test_body_over_the_cap_is_a_reply_without_completion(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    padding = b" " * (_http.MAX_BODY_BYTES + 10)
    body = json.dumps(OPENAI_OK).encode() + padding
    mocked.post(OPENAI_URL, body=body, status=200, headers={"Retry-After": "3"})
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.status == 200
    assert reply.completion is None
    assert reply.error is None
    assert reply.headers["retry-after"] == "3"
    assert reply.excerpt.startswith('{"id": "chatcmpl-1"')


def test_body_just_under_the_cap_is_parsed(
    openai: Provider, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = json.dumps(OPENAI_OK).encode()
    monkeypatch.setattr(_http, "MAX_BODY_BYTES", len(body))
    mocked.post(OPENAI_URL, body=body)
    assert openai.send(REQUEST, **TIMEOUTS).completion is not None
    monkeypatch.setattr(_http, "MAX_BODY_BYTES", len(body) - 1)
    assert openai.send(REQUEST, **TIMEOUTS).completion is None


# -- error objects --------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, Any, tuple[str | None, str | None, str | None]]] = [
    (
        "openai",
        {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        },
        ("rate_limit_exceeded", "requests", "Rate limit reached"),
    ),
    (
        "openai quota",
        {
            "error": {
                "message": "You exceeded your quota",
                "type": "insufficient_quota",
                "code": None,
            }
        },
        (None, "insufficient_quota", "You exceeded your quota"),
    ),
    (
        "zhipu",
        {"error": {"code": "1302", "message": "concurrency too high"}},
        ("1302", None, "concurrency too high"),
    ),
    (
        "zhipu numeric code",
        {"error": {"code": 1113, "message": "arrears"}},
        ("1113", None, "arrears"),
    ),
    (
        "top-level code and msg",
        {"code": 1304, "msg": "daily quota used up", "success": False},
        ("1304", None, "daily quota used up"),
    ),
    (
        "top-level code and message",
        {"code": 429, "message": "too many requests"},
        ("429", None, "too many requests"),
    ),
    (
        "anthropic",
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        (None, "rate_limit_error", "slow down"),
    ),
    (
        "vllm",
        {"object": "error", "message": "bad model", "type": "NotFoundError", "code": 404},
        ("404", "NotFoundError", "bad model"),
    ),
    ("string error", {"error": "Rate limit exceeded"}, (None, None, "Rate limit exceeded")),
    ("fastapi", {"detail": "Not Found"}, (None, None, "Not Found")),
    (
        "google",
        {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}},
        ("429", "RESOURCE_EXHAUSTED", "quota"),
    ),
    (
        "list wrapper",
        [{"error": {"code": 503, "message": "overloaded"}}],
        ("503", None, "overloaded"),
    ),
    (
        "error object with odd types",
        {"error": {"code": True, "type": 5, "message": ["a", "b"]}},
        (None, None, '["a", "b"]'),
    ),
]


@pytest.mark.parametrize("status", [200, 400, 402, 403, 429, 500, 529])
@pytest.mark.parametrize(
    ("label", "body", "expected"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES]
)
def test_error_object_is_extracted_on_any_status(
    openai: Provider,
    mocked: responses.RequestsMock,
    status: int,
    label: str,
    body: Any,
    expected: tuple[str | None, str | None, str | None],
) -> None:
    mocked.post(OPENAI_URL, json=body, status=status)
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.status == status
    assert reply.completion is None
    assert reply.error is not None, label
    assert (reply.error.code, reply.error.type, reply.error.message) == expected


def test_anthropic_error_shape(anthropic: Provider, mocked: responses.RequestsMock) -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    mocked.post(ANTHROPIC_URL, json=body, status=529)
    reply = anthropic.send(REQUEST, **TIMEOUTS)
    assert reply.status == 529
    assert reply.error is not None
    assert (reply.error.type, reply.error.message) == ("overloaded_error", "Overloaded")
    assert reply.completion is None


@pytest.mark.parametrize(
    "body",
    [{"code": 0, "msg": "ok"}, {"code": 200, "message": "fine"}, {"object": "list"}, {}],
)
def test_success_codes_are_not_errors(
    openai: Provider, mocked: responses.RequestsMock, body: Any
) -> None:
    mocked.post(OPENAI_URL, json=body)
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.error is None
    assert reply.completion is None


def test_success_shape_with_error_object_is_not_a_success(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    mocked.post(OPENAI_URL, json={**OPENAI_OK, "error": {"message": "partial failure"}})
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.completion is None
    assert reply.error is not None and reply.error.message == "partial failure"


def test_null_error_key_does_not_spoil_a_success(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    mocked.post(OPENAI_URL, json={**OPENAI_OK, "error": None})
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.completion is not None and reply.error is None


def test_long_error_message_is_capped(openai: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(OPENAI_URL, json={"error": {"message": "x" * 100_000}}, status=500)
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.error is not None and reply.error.message is not None
    assert len(reply.error.message) <= 1000


# -- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_never_followed(
    openai: Provider, mocked: responses.RequestsMock, status: int
) -> None:
    evil = "https://evil.example.test/steal"
    mocked.post(OPENAI_URL, status=status, headers={"Location": evil}, body=b"moved")
    evil_post = mocked.post(evil, json=OPENAI_OK)
    evil_get = mocked.get(evil, json=OPENAI_OK)
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.status == status
    assert reply.headers["location"] == evil
    assert reply.completion is None
    assert len(mocked.calls) == 1
    assert evil_post.call_count == 0 and evil_get.call_count == 0


# -- transport errors -------------------------------------------------------------------------

TRANSPORT_ERRORS: list[tuple[BaseException, type[ProviderError]]] = [
    (requests.exceptions.ConnectTimeout("connect timed out"), ProviderTimeout),
    (requests.exceptions.ReadTimeout("read timed out"), ProviderTimeout),
    (requests.exceptions.ConnectionError("refused"), ProviderConnectionError),
    (requests.exceptions.SSLError("bad certificate"), ProviderConnectionError),
    (requests.exceptions.ChunkedEncodingError("broken chunk"), ProviderConnectionError),
    (requests.exceptions.ContentDecodingError("bad gzip"), ProviderConnectionError),
    (requests.exceptions.ProxyError("proxy down"), ProviderConnectionError),
    (requests.exceptions.TooManyRedirects("loop"), ProviderConnectionError),
    (requests.exceptions.InvalidHeader("bad header"), ProviderConnectionError),
    (urllib3.exceptions.ProtocolError("reset"), ProviderConnectionError),
    (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), ProviderTimeout),  # type: ignore[arg-type]
    (ConnectionResetError(104, "reset by peer"), ProviderConnectionError),
    (TimeoutError("socket timed out"), ProviderTimeout),
    (
        requests.exceptions.ConnectionError(
            urllib3.exceptions.ReadTimeoutError(None, "/", "during body")  # type: ignore[arg-type]
        ),
        ProviderTimeout,
    ),
    (
        requests.exceptions.ConnectionError(
            urllib3.exceptions.MaxRetryError(
                None,  # type: ignore[arg-type]
                "/",
                urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
            )
        ),
        ProviderConnectionError,
    ),
]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("exc", "expected"), TRANSPORT_ERRORS, ids=[type(e).__name__ for e, _ in TRANSPORT_ERRORS]
)
def test_transport_errors_are_translated_once(
    api: str, exc: BaseException, expected: type[ProviderError], mocked: responses.RequestsMock
) -> None:
    provider = build_provider(make_config(api), api_key=CANARY)
    mocked.post(OPENAI_URL if api == "openai" else ANTHROPIC_URL, body=exc)
    with pytest.raises(ProviderError) as info:
        provider.send(REQUEST, **TIMEOUTS)
    provider.close()
    error = info.value
    assert type(error) is expected
    assert error.provider == provider.name
    assert error.status is None
    assert error.__cause__ is exc
    assert provider.name in str(error)
    assert not isinstance(error, (requests.RequestException, urllib3.exceptions.HTTPError))
    assert type(pickle.loads(pickle.dumps(error))) is expected


def test_stream_transport_errors_are_translated(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    mocked.post(OPENAI_URL, body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(ProviderTimeout):
        openai.stream(REQUEST, **TIMEOUTS)


def test_send_after_close_fails_cleanly(mocked: responses.RequestsMock) -> None:
    provider = build_provider(make_config(), api_key=None)
    provider.close()
    provider.close()  # idempotent
    with pytest.raises(ProviderConnectionError):
        provider.send(REQUEST, **TIMEOUTS)
    assert len(mocked.calls) == 0


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_odd_timeouts_never_escape_as_value_errors(
    openai: Provider, mocked: responses.RequestsMock, timeout: float
) -> None:
    mocked.post(OPENAI_URL, json=OPENAI_OK)
    reply = openai.send(REQUEST, connect_timeout=timeout, read_timeout=timeout)
    assert reply.status == 200
    sent = vars(mocked.calls[0].request)["req_kwargs"]["timeout"]
    assert all(0 < value < float("inf") for value in sent)


# -- the key canary -------------------------------------------------------------------------


def test_key_never_in_repr_or_str(openai: Provider, anthropic: Provider) -> None:
    for provider in (openai, anthropic):
        for text in (repr(provider), str(provider), repr(vars(provider))):
            assert CANARY not in text
        assert "m-1" in repr(provider) and BASE in repr(provider)


def test_key_never_in_reply_fields(openai: Provider, mocked: responses.RequestsMock) -> None:
    echo = f"Incorrect API key provided: {CANARY}. Bearer {CANARY}"
    mocked.post(
        OPENAI_URL,
        status=401,
        json={"error": {"message": echo, "type": "invalid_request_error", "code": CANARY}},
        headers={"X-Echo": CANARY},
    )
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert reply.status == 401
    assert CANARY not in repr(reply)
    assert reply.error is not None and reply.error.message is not None
    assert "Incorrect API key provided" in reply.error.message


def test_key_never_in_transport_errors(openai: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(OPENAI_URL, body=requests.exceptions.ConnectionError(f"boom {CANARY}"))
    with pytest.raises(ProviderConnectionError) as info:
        openai.send(REQUEST, **TIMEOUTS)
    error = info.value
    formatted = "".join(traceback.format_exception(type(error), error, None))
    for text in (str(error), repr(error), formatted, repr(error.__reduce__())):
        assert CANARY not in text


def test_key_never_in_an_excerpt_even_across_the_cut(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    body = ("x" * 190 + CANARY).encode()
    mocked.post(OPENAI_URL, body=body, status=500)
    reply = openai.send(REQUEST, **TIMEOUTS)
    assert CANARY[:10] not in reply.excerpt


# -- streaming (responses) ----------------------------------------------------------------------


def sse(*events: str, newline: str = "\n") -> bytes:
    return "".join(event.replace("\n", newline) + newline * 2 for event in events).encode()


def openai_chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> str:
    choice: dict[str, Any] = {"index": 0, "delta": {}, "finish_reason": finish}
    if content is not None:
        choice["delta"]["content"] = content
    return "data: " + json.dumps({"model": "kimi-k2", "choices": [choice], **extra})


OPENAI_STREAM = [
    openai_chunk("Hel"),
    ": keep-alive comment",
    openai_chunk("lo"),
    openai_chunk("", finish="stop"),
    "data: "
    + json.dumps(
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    ),
    "data: [DONE]",
]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_openai_stream(openai: Provider, mocked: responses.RequestsMock, newline: str) -> None:
    mocked.post(
        OPENAI_URL, body=sse(*OPENAI_STREAM, newline=newline), content_type="text/event-stream"
    )
    with openai.stream(REQUEST, **TIMEOUTS) as stream:
        assert stream.reply is None
        assert stream.status == 200
        assert list(stream) == ["Hel", "lo"]
        assert stream.done
        assert stream.usage == Usage(3, 2, 5)
        assert stream.finish_reason == "stop"
        assert stream.model == "kimi-k2"
        assert stream.completion is not None and stream.completion.content == "Hello"
    assert sent_json(mocked)["stream"] is True
    assert mocked.calls[0].request.headers["Accept"] == "text/event-stream"


ANTHROPIC_STREAM = [
    "event: message_start\ndata: "
    + json.dumps(
        {
            "type": "message_start",
            "message": {"model": "claude-x", "usage": {"input_tokens": 12, "output_tokens": 1}},
        }
    ),
    'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
    '"content_block": {"type": "text", "text": ""}}',
    'event: ping\ndata: {"type": "ping"}',
    'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
    '"delta": {"type": "text_delta", "text": "Hi"}}',
    'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 1, '
    '"delta": {"type": "input_json_delta", "partial_json": "{}"}}',
    'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
    '"delta": {"type": "text_delta", "text": " there"}}',
    'event: content_block_stop\ndata: {"type": "content_block_stop", "index": 0}',
    'event: message_delta\ndata: {"type": "message_delta", '
    '"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}',
    'event: message_stop\ndata: {"type": "message_stop"}',
]


def test_anthropic_stream(anthropic: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(
        ANTHROPIC_URL,
        body=sse(*ANTHROPIC_STREAM),
        content_type="text/event-stream; charset=utf-8",
    )
    stream = anthropic.stream(REQUEST, **TIMEOUTS)
    assert list(stream) == ["Hi", " there"]
    assert stream.done
    assert stream.model == "claude-x"
    assert stream.finish_reason == "end_turn"
    assert stream.usage == Usage(12, 7, 19)
    assert stream.content == "Hi there"
    stream.close()
    stream.close()
    assert sent_json(mocked)["stream"] is True


@pytest.mark.parametrize("status", [429, 500, 307])
def test_stream_non_2xx_gives_a_reply_and_no_chunks(
    openai: Provider, mocked: responses.RequestsMock, status: int
) -> None:
    mocked.post(
        OPENAI_URL,
        status=status,
        json={"error": {"code": "1302", "message": "busy"}},
        headers={"Retry-After": "2"},
    )
    stream = openai.stream(REQUEST, **TIMEOUTS)
    assert isinstance(stream, StreamReply)
    assert isinstance(stream.reply, Reply)
    assert stream.reply.status == status
    assert stream.reply.error is not None and stream.reply.error.code == "1302"
    assert stream.reply.headers["retry-after"] == "2"
    assert list(stream) == []
    stream.close()


def test_stream_2xx_json_gives_a_reply(anthropic: Provider, mocked: responses.RequestsMock) -> None:
    mocked.post(ANTHROPIC_URL, json=ANTHROPIC_OK)
    with anthropic.stream(REQUEST, **TIMEOUTS) as stream:
        assert stream.reply is not None
        assert list(stream) == []
        assert stream.completion is not None and stream.completion.content == "hello"


def test_stream_2xx_sse_with_an_error_status_is_a_reply(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    mocked.post(OPENAI_URL, status=503, body=sse("data: oops"), content_type="text/event-stream")
    with openai.stream(REQUEST, **TIMEOUTS) as stream:
        assert stream.reply is not None and stream.reply.status == 503


STREAM_FAILURES: list[tuple[str, str, list[str]]] = [
    ("openai", "ends early", [openai_chunk("a")]),
    ("openai", "not json", [openai_chunk("a"), "data: {nope"]),
    ("openai", "json list", ["data: [1, 2]"]),
    ("openai", "error object", [openai_chunk("a"), 'data: {"error": {"message": "overloaded"}}']),
    ("openai", "error event", ["event: error\ndata: upstream failed"]),
    ("anthropic", "ends early", [ANTHROPIC_STREAM[0], ANTHROPIC_STREAM[3]]),
    (
        "anthropic",
        "error event",
        [
            ANTHROPIC_STREAM[3],
            'event: error\ndata: {"type": "error", "error": '
            '{"type": "overloaded_error", "message": "Overloaded"}}',
        ],
    ),
    ("anthropic", "not json", ["event: ping\ndata: <html>"]),
]


@pytest.mark.parametrize(
    ("api", "label", "events"), STREAM_FAILURES, ids=[f"{a}-{b}" for a, b, _ in STREAM_FAILURES]
)
def test_stream_failures_raise_connection_errors(
    api: str, label: str, events: list[str], mocked: responses.RequestsMock
) -> None:
    provider = build_provider(make_config(api), api_key=CANARY)
    url = OPENAI_URL if api == "openai" else ANTHROPIC_URL
    mocked.post(url, body=sse(*events), content_type="text/event-stream")
    stream = provider.stream(REQUEST, **TIMEOUTS)
    received: list[str] = []
    with pytest.raises(ProviderConnectionError) as info:
        received.extend(stream)
    assert info.value.provider == provider.name
    assert received in ([], ["a"], ["Hi"]), label
    assert not stream.done
    assert stream.completion is None
    assert list(stream) == []  # the iterator is finished, the response closed
    provider.close()


def test_stream_error_event_carries_the_code(
    anthropic: Provider, mocked: responses.RequestsMock
) -> None:
    event = (
        'event: error\ndata: {"type": "error", "error": '
        '{"type": "overloaded_error", "message": "Overloaded"}}'
    )
    mocked.post(ANTHROPIC_URL, body=sse(event), content_type="text/event-stream")
    stream = anthropic.stream(REQUEST, **TIMEOUTS)
    with pytest.raises(ProviderConnectionError) as info:
        list(stream)
    assert info.value.code == "overloaded_error"
    assert "Overloaded" in str(info.value)
    assert stream.error is not None and stream.error.type == "overloaded_error"


def test_stream_finish_reason_without_done_still_completes(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    body = sse(openai_chunk("a"), openai_chunk(finish="length"))
    mocked.post(OPENAI_URL, body=body, content_type="text/event-stream")
    stream = openai.stream(REQUEST, **TIMEOUTS)
    assert list(stream) == ["a"]
    assert stream.done and stream.finish_reason == "length"


def test_stream_last_event_without_blank_line(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    body = sse(openai_chunk("a")) + b"data: [DONE]"
    mocked.post(OPENAI_URL, body=body, content_type="text/event-stream")
    stream = openai.stream(REQUEST, **TIMEOUTS)
    assert list(stream) == ["a"]
    assert stream.done


def test_stream_closed_early_stops_quietly(
    openai: Provider, mocked: responses.RequestsMock
) -> None:
    mocked.post(OPENAI_URL, body=sse(*OPENAI_STREAM), content_type="text/event-stream")
    stream = openai.stream(REQUEST, **TIMEOUTS)
    iterator = iter(stream)
    assert next(iterator) == "Hel"
    stream.close()
    assert list(iterator) == []
    assert stream.completion is None


def test_stream_event_over_the_size_cap(
    openai: Provider, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_http, "MAX_EVENT_BYTES", 1000)
    body = sse(openai_chunk("x" * 5000))
    mocked.post(OPENAI_URL, body=body, content_type="text/event-stream")
    stream = openai.stream(REQUEST, **TIMEOUTS)
    with pytest.raises(ProviderConnectionError, match="longer than 1000 bytes"):
        list(stream)


# -- the SSE parser on its own ----------------------------------------------------------------


def parse_in_pieces(data: bytes, size: int) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for start in range(0, len(data), size):
        events.extend(parser.feed(data[start : start + size]))
    events.extend(parser.finish())
    return events


SSE_SAMPLE = (
    b": comment\r\n"
    b"event: first\r\n"
    b"data: line one\r\n"
    b"data:line two\r\n"
    b"id: 7\r\n"
    b"retry: 100\r\n"
    b"\r\n"
    b"data\n"
    b"\n"
    b"event: only-a-name\n"
    b"\n"
    b"data: caf\xc3\xa9 \xff\r"
    b"\r"
    b"unknown: field\n"
    b"data: last"
)
SSE_EXPECTED = [
    SSEEvent("first", "line one\nline two"),
    SSEEvent("message", ""),
    SSEEvent("message", "caf\u00e9 \ufffd"),
    SSEEvent("message", "last"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 10_000])
def test_sse_parser_is_independent_of_chunking(size: int) -> None:
    assert parse_in_pieces(SSE_SAMPLE, size) == SSE_EXPECTED


def test_sse_parser_rejects_long_lines_and_payloads() -> None:
    parser = SSEParser(max_bytes=100)
    with pytest.raises(StreamProtocolError):
        for _ in range(20):
            parser.feed(b"data: " + b"x" * 10)
    parser = SSEParser(max_bytes=100)
    with pytest.raises(StreamProtocolError):
        parser.feed(b"data: xxxxxxxxxx\n" * 20)


# -- real sockets on 127.0.0.1 ----------------------------------------------------------------

Script = Callable[[socket.socket, threading.Event], None]


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and plays a script on each; bounded by ``stop``."""

    def __init__(self, script: Script) -> None:
        self.stop = threading.Event()
        self._script = script
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(5.0)
                try:
                    self._read_request(conn)
                    self._script(conn, self.stop)
                except OSError:
                    pass

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            rest += chunk

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=10)
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def local_provider(server: ScriptedServer, api: str = "openai") -> Provider:
    config = ProviderConfig(name="local", base_url=server.base_url, model="m", api=api)
    return build_provider(config, api_key=CANARY)


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)


def test_real_read_timeout_in_the_middle_of_a_body(
    serve: Callable[[Script], ScriptedServer],
) -> None:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"choices": ['
        )
        stop.wait(10)

    provider = local_provider(serve(script))
    with pytest.raises(ProviderTimeout) as info:
        provider.send(REQUEST, connect_timeout=2.0, read_timeout=0.3)
    assert "read timeout" in str(info.value)
    provider.close()


def test_real_broken_chunked_body(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b'5\r\n{"cho\r\nZZ\r\nbroken'
        )

    provider = local_provider(serve(script))
    with pytest.raises(ProviderConnectionError):
        provider.send(REQUEST, connect_timeout=2.0, read_timeout=5.0)
    provider.close()


def test_real_connection_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    config = ProviderConfig(name="gone", base_url=f"http://127.0.0.1:{port}/v1", model="m")
    provider = build_provider(config, api_key=CANARY)
    with pytest.raises(ProviderConnectionError) as info:
        provider.send(REQUEST, connect_timeout=2.0, read_timeout=2.0)
    assert not isinstance(info.value, ProviderTimeout)
    assert CANARY not in str(info.value)
    provider.close()


def test_real_redirect_is_not_followed(serve: Callable[[Script], ScriptedServer]) -> None:
    target = serve(lambda conn, stop: None)

    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 307 Temporary Redirect\r\n"
            b"Location: " + target.base_url.encode() + b"/chat/completions\r\n"
            b"Content-Length: 5\r\n\r\nmoved"
        )

    provider = local_provider(serve(script))
    reply = provider.send(REQUEST, connect_timeout=2.0, read_timeout=5.0)
    assert reply.status == 307
    assert target.connections == 0
    provider.close()


def test_real_chunked_event_stream(serve: Callable[[Script], ScriptedServer]) -> None:
    events = [openai_chunk("one "), openai_chunk("two", finish="stop"), "data: [DONE]"]

    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        payload = sse(*events)
        # Split mid-line and mid-"\r\n" to exercise reassembly across HTTP chunks.
        conn.sendall(chunked(payload[:10], payload[10:37], payload[37:]) + b"0\r\n\r\n")

    provider = local_provider(serve(script))
    with provider.stream(REQUEST, connect_timeout=2.0, read_timeout=5.0) as stream:
        assert list(stream) == ["one ", "two"]
        assert stream.done
    provider.close()


def test_real_stream_read_timeout_mid_stream(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked(sse(openai_chunk("first")))
        )
        stop.wait(10)

    provider = local_provider(serve(script))
    stream = provider.stream(REQUEST, connect_timeout=2.0, read_timeout=0.3)
    received: list[str] = []
    with pytest.raises(ProviderTimeout):
        received.extend(stream)
    assert received == ["first"]
    provider.close()


def test_real_stream_connection_dropped(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked(sse(openai_chunk("first")))
        )

    provider = local_provider(serve(script))
    stream = provider.stream(REQUEST, connect_timeout=2.0, read_timeout=5.0)
    with pytest.raises(ProviderConnectionError):
        list(stream)
    provider.close()


def test_many_threads_share_one_provider(serve: Callable[[Script], ScriptedServer]) -> None:
    body = json.dumps(OPENAI_OK).encode()

    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    provider = local_provider(serve(script))
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                reply = provider.send(REQUEST, connect_timeout=2.0, read_timeout=10.0)
                assert reply.completion is not None
                results.append(reply.completion.content)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert results == ["hello"] * 12
    provider.close()
