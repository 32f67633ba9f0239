"""Only the HTTP stack's own exceptions become transport errors; our bugs surface as they are."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3.exceptions

from ratelimit_sdk.config import ProviderConfig
from ratelimit_sdk.errors import ProviderConnectionError, ProviderTimeout
from ratelimit_sdk.models import ChatRequest
from ratelimit_sdk.providers import _http, _sse, build_provider
from ratelimit_sdk.providers._translate import TRANSPORT_ERRORS, map_transport_errors
from ratelimit_sdk.testing import FakeProvider, Respond

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}])
TIMEOUTS = {"connect_timeout": 2.0, "read_timeout": 2.0}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


def _provider(base_url: str, api: str = "openai") -> Any:
    config = ProviderConfig(name="p", base_url=base_url, model="m", api=api)  # type: ignore[arg-type]
    return build_provider(config, api_key=None)


class _Bug(Exception):
    pass


@pytest.mark.parametrize("bug", [ValueError("bug"), OSError("bug"), AttributeError("bug")])
def test_a_bug_while_reading_the_body_is_not_a_connection_error(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise bug

    monkeypatch.setattr(_http, "read_capped", broken)
    provider = _provider(fake.base_url)
    try:
        with pytest.raises(type(bug)) as info:
            provider.send(REQUEST, **TIMEOUTS)
        assert info.value is bug
    finally:
        provider.close()


@pytest.mark.parametrize("bug", [ValueError("bug"), OSError("bug"), AttributeError("bug")])
def test_a_bug_before_sending_is_not_a_connection_error(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise bug

    monkeypatch.setattr(_http.HTTPProvider, "_post", broken)
    provider = _provider(fake.base_url, api="anthropic")
    try:
        with pytest.raises(type(bug)):
            provider.send(REQUEST, **TIMEOUTS)
        with pytest.raises(type(bug)):
            provider.stream(REQUEST, **TIMEOUTS)
    finally:
        provider.close()


@pytest.mark.parametrize("bug", [ValueError("bug"), OSError("bug"), KeyError("bug")])
def test_a_bug_in_the_stream_reader_is_not_a_connection_error(
    fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    def broken(self: Any, event: Any, state: Any) -> Any:
        raise bug

    monkeypatch.setattr(type(_provider(fake.base_url)), "_on_event", broken)
    provider = _provider(fake.base_url)
    try:
        reply = provider.stream(REQUEST, **TIMEOUTS)
        with pytest.raises(type(bug)):
            list(reply)
    finally:
        provider.close()


def test_the_table_names_only_http_stack_types() -> None:
    for kind in TRANSPORT_ERRORS:
        assert kind not in (ValueError, OSError, Exception, BaseException)
    assert _sse.__name__  # the stream reader translates through the same table


def test_the_context_manager_translates_and_passes_the_rest() -> None:
    original = requests.exceptions.ConnectionError("boom")
    with pytest.raises(ProviderConnectionError) as info, map_transport_errors("p"):
        raise original
    assert info.value.__cause__ is original
    with pytest.raises(ProviderTimeout), map_transport_errors("p", read_timeout=5.0):
        raise urllib3.exceptions.ReadTimeoutError(None, "/", "slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError), map_transport_errors("p"):
        raise ValueError("ours")
    with pytest.raises(_Bug), map_transport_errors("p"):
        raise _Bug


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_real_failures_still_map() -> None:
    provider = _provider(f"http://127.0.0.1:{_closed_port()}/v1")
    try:
        with pytest.raises(ProviderConnectionError) as info:
            provider.send(REQUEST, **TIMEOUTS)
        assert "connection refused" in str(info.value)
        assert info.value.reason == "connection refused"
    finally:
        provider.close()
    with FakeProvider() as server:
        provider = _provider(server.base_url)
        try:
            server.script([Respond.hang(5.0)])
            with pytest.raises(ProviderTimeout) as timeout:
                provider.send(REQUEST, connect_timeout=2.0, read_timeout=0.3)
            assert timeout.value.reason == "read timeout after 0.3 s"
            server.script([Respond.reset()])
            with pytest.raises(ProviderConnectionError):
                provider.send(REQUEST, **TIMEOUTS)
        finally:
            provider.close()
