"""Faults at the client's edge: hostile usage figures, bad arguments, hooks and held permits.

Real loopback FakeProviders. Each test names the defect it pins down.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fleet_fixtures import assert_no_permits, client_for, fake_config

from ratelimit_sdk import BadRequestError, ChatResponse, Client, ConfigError
from ratelimit_sdk.testing import FakeProvider, Respond


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("a", model="model-a") as provider:
        yield provider


def _ok_with_usage(total: float) -> Respond:
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "model-a",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": total, "total_tokens": total},
    }
    return Respond.status(200, body)  # type: ignore[return-value]


# -- hostile usage figures ----------------------------------------------------------------------


@pytest.mark.parametrize("total", [10**7, 10**20], ids=["1e7", "1e20"])
@pytest.mark.parametrize("max_tokens", [None, 50], ids=["no-max_tokens", "max_tokens"])
def test_a_hostile_usage_figure_cannot_lock_the_provider_out(
    fake: FakeProvider, total: int, max_tokens: int | None
) -> None:
    """A 200 saying it used 1e7 (or 1e20) tokens, with ``tokens_per_minute=60000``.

    Before: the provider was locked out for 2.8 h (or 1e13 h). Now the figure is
    clamped to what the request could cost, and never to more than one window.
    """
    fake.script([_ok_with_usage(total)])
    limits = {"tokens_per_minute": 60_000, "max_concurrent": 2}
    with client_for(fake_config(fake, limits=limits)) as client:
        assert client.chat("hello", max_tokens=max_tokens).content == "hi"
        again = client.chat("hello again", max_tokens=max_tokens, timeout=5)
        assert again.provider == "a"
        tokens = client.stats()["a"].tokens_available
        assert tokens is None or tokens >= 0  # the request bucket, untouched by usage
        assert_no_permits(client)


# -- bad arguments are typed ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf * -1, True, "5"])
def test_a_bad_timeout_is_a_config_error_naming_it(fake: FakeProvider, bad: object) -> None:
    with client_for(fake_config(fake)) as client:
        with pytest.raises(ConfigError) as caught:
            client.chat("x", timeout=bad)  # type: ignore[arg-type]
        assert caught.value.field == "timeout"
        assert isinstance(caught.value, ValueError)
        assert fake.count == 0


@pytest.mark.parametrize("bad", [0, -3, True, 2.5])
def test_bad_max_workers_is_a_config_error_naming_it(fake: FakeProvider, bad: object) -> None:
    with client_for(fake_config(fake)) as client:
        with pytest.raises(ConfigError) as caught:
            client.map(["x"], max_workers=bad)  # type: ignore[arg-type]
        assert caught.value.field == "max_workers"
        assert fake.count == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_concurrent", True), ("requests_per_minute", False), ("burst", True)],
)
def test_update_limits_refuses_booleans_as_numbers(
    fake: FakeProvider, field: str, value: bool
) -> None:
    with client_for(fake_config(fake, limits={"max_concurrent": 3})) as client:
        with pytest.raises(ConfigError, match="boolean") as caught:
            client.update_limits("a", **{field: value})
        assert field in str(caught.value)
        assert client.config.providers[0].limits.max_concurrent == 3


def test_config_refuses_booleans_as_numbers_everywhere() -> None:
    provider: dict[str, Any] = {"name": "p", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    for section, field in [("retry", "max_retries"), ("breaker", "fail_max"), ("timeout", "read")]:
        with pytest.raises(ConfigError, match="boolean"):
            Client({"providers": [{**provider, section: {field: True}}]})
    with pytest.raises(ConfigError, match="boolean"):
        Client({"providers": [provider], "timeout": True})
    assert Client({"providers": [provider], "use_fallback": False}).config.use_fallback is False


def test_map_with_return_exceptions_keeps_a_bad_items_error_in_its_slot(
    fake: FakeProvider,
) -> None:
    """Before: ``map(["ok", None, "ok"], return_exceptions=True)`` raised BadRequestError."""
    with client_for(fake_config(fake)) as client:
        results = client.map(["ok", None, "ok"], return_exceptions=True, progress=False)
        assert isinstance(results[0], ChatResponse) and isinstance(results[2], ChatResponse)
        assert isinstance(results[1], BadRequestError)
        assert fake.count == 2
        with pytest.raises(BadRequestError):  # without it, a bad item fails before any send
            client.map(["ok", None, "ok"], progress=False)
        assert fake.count == 2


# -- hooks never run under their caller's permit -------------------------------------------------


def _reentrant(client: Client, inner: list[ChatResponse | BaseException]) -> Any:
    lock = threading.Lock()

    def hook(event: Any) -> None:
        with lock:
            if inner:
                return
            inner.append(RuntimeError("running"))
        try:
            inner[0] = client.chat("from a hook", timeout=3)
        except BaseException as exc:  # recorded for the assertion
            inner[0] = exc

    return hook


def test_a_hook_may_call_the_client_again_on_a_provider_of_one(fake: FakeProvider) -> None:
    """Before: hooks ran while the attempt's permit was held; the inner call waited its deadline."""
    with client_for(fake_config(fake, limits={"max_concurrent": 1})) as client:
        inner: list[ChatResponse | BaseException] = []
        client.on("attempt", _reentrant(client, inner))
        assert client.chat("outer", timeout=10).provider == "a"
        assert len(inner) == 1 and isinstance(inner[0], ChatResponse), inner
        assert_no_permits(client)


def test_a_hook_fired_by_a_stream_runs_once_its_permit_is_back(fake: FakeProvider) -> None:
    """Before: a hook calling the client while the outer call streamed waited its whole deadline."""
    with client_for(fake_config(fake, limits={"max_concurrent": 1})) as client:
        inner: list[ChatResponse | BaseException] = []
        client.on("attempt", _reentrant(client, inner))
        stream = client.chat("outer", stream=True, timeout=10)
        assert inner == []  # the stream holds the permit: its hooks wait for it
        text = "".join(stream)
        assert text
        assert len(inner) == 1 and isinstance(inner[0], ChatResponse), inner
        assert_no_permits(client)


def test_a_streams_hostile_usage_is_clamped_when_it_settles() -> None:
    from ratelimit_sdk import Limiter
    from ratelimit_sdk.models import Usage
    from ratelimit_sdk.stream import ChatStream
    from ratelimit_sdk.testing import FakeClock

    class Source:
        content = "hi"
        usage = Usage(prompt_tokens=1, completion_tokens=10**9, total_tokens=10**9)
        finish_reason = "stop"

        def __iter__(self) -> Any:
            return iter(())

        def close(self) -> None:
            pass

    clock = FakeClock()
    lim = Limiter(tokens_per_minute=60_000, clock=clock)
    permit = lim.acquire(tokens=10)
    stream = ChatStream(
        Source(), provider="p", model="m", first="hi", permit=permit, token_ceiling=200
    )
    assert "".join(stream) == "hi"
    llm = lim.snapshot().llm_tokens
    assert llm is not None and llm >= 60_000 - 200 - 1e-6  # charged 200 at most, not 1e9
