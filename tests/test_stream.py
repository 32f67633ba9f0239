"""Streaming through the Client: the permit is held until the stream ends, closes or is dropped.

Real FakeProviders on 127.0.0.1 speaking both wire formats.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from ratelimit_sdk import AllProvidersFailed, ChatStream, Client
from ratelimit_sdk.testing import FakeProvider, Respond


def provider(name: str, fake: FakeProvider, api: str = "openai", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": fake.base_url,
        "model": "m",
        "api": api,
        "limits": {"max_concurrent": 1},
        "retry": {"max_retries": 0, "base_delay": 0.01},
        "timeout": {"connect": 2, "read": 5},
        **extra,
    }


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider]]:
    with FakeProvider("a", stream_chunks=5) as a, FakeProvider("b", stream_chunks=4) as b:
        yield a, b


@pytest.fixture
def client(fakes: tuple[FakeProvider, FakeProvider]) -> Iterator[Client]:
    a, b = fakes
    with Client({"providers": [provider("a", a), provider("b", b, api="anthropic")]}) as c:
        yield c


def in_flight(client: Client, name: str) -> int:
    return client.guard(name).limiter.in_flight


@pytest.mark.parametrize("name", ["a", "b"])  # OpenAI and Anthropic wire formats
def test_stream_yields_chunks_and_releases_at_the_end(client: Client, name: str) -> None:
    stream = client.chat("hello world", stream=True, preferred_model=name)
    assert isinstance(stream, ChatStream)
    assert in_flight(client, name) == 1  # held while the stream is open
    chunks = list(stream)
    assert len(chunks) > 1
    assert "".join(chunks) == stream.content == "echo: hello world"
    assert stream.closed
    assert in_flight(client, name) == 0
    assert [a.outcome.value for a in stream.attempts] == ["ok"]


def test_half_read_stream_gives_its_permit_back_when_closed(client: Client) -> None:
    stream = client.chat_stream("a long answer please", preferred_model="a")
    assert next(iter(stream))
    assert in_flight(client, "a") == 1
    stream.close()
    stream.close()  # idempotent
    assert in_flight(client, "a") == 0
    # The provider is usable at once: the concurrency-1 permit really came back.
    assert client.chat("again", preferred_model="a", timeout=5).content == "echo: again"


def test_abandoned_stream_gives_its_permit_back_when_collected(client: Client) -> None:
    stream = client.chat("drop me half way", stream=True, preferred_model="a")
    next(iter(stream))
    del stream
    gc.collect()
    assert in_flight(client, "a") == 0


def test_stream_as_context_manager_releases_on_exception(client: Client) -> None:
    with pytest.raises(RuntimeError), client.chat("x", stream=True, preferred_model="a") as s:
        next(iter(s))
        raise RuntimeError("consumer failed")
    assert in_flight(client, "a") == 0


def test_fallback_happens_before_the_first_chunk(
    client: Client, fakes: tuple[FakeProvider, FakeProvider]
) -> None:
    a, _ = fakes
    a.script([Respond.status(503)])
    stream = client.chat("fall back", stream=True)
    assert stream.provider == "b"
    assert "".join(stream) == "echo: fall back"
    assert [(x.provider, x.outcome.value) for x in stream.attempts] == [
        ("a", "error"),
        ("b", "ok"),
    ]
    assert in_flight(client, "a") == 0 and in_flight(client, "b") == 0


def test_a_stream_that_cannot_start_anywhere_raises(
    client: Client, fakes: tuple[FakeProvider, FakeProvider]
) -> None:
    a, b = fakes
    a.fail_all(status=500)
    b.fail_all(status=500)
    with pytest.raises(AllProvidersFailed):
        client.chat("nobody", stream=True, timeout=2)
    assert in_flight(client, "a") == 0 and in_flight(client, "b") == 0


def test_an_answer_sent_whole_to_a_stream_request_is_served_as_one_chunk(
    client: Client, fakes: tuple[FakeProvider, FakeProvider]
) -> None:
    a, _ = fakes
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}],
    }
    a.script([Respond.status(200, body=body)])
    stream = client.chat("x", stream=True, preferred_model="a")
    assert list(stream) == ["whole"]
    assert stream.content == "whole"
    assert stream.closed
    assert in_flight(client, "a") == 0
