"""reload() hygiene: a replaced guard closes once no call holds it; reload equals a fresh Client.

Real loopback FakeProviders; the file-descriptor count comes from ``/proc/self/fd``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fleet_fixtures import assert_no_permits, client_for, fake_config, wait_until

from ratelimit_sdk import Client
from ratelimit_sdk.testing import FakeProvider


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("a", model="model-a") as provider:
        yield provider


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_sixty_reloads_that_change_the_endpoint_keep_fds_and_threads_flat(
    fake: FakeProvider,
) -> None:
    with client_for(fake_config(fake)) as client:
        client.chat("warm up")
        fds, threads = _open_fds(), threading.active_count()
        for i in range(60):
            moved = client.config.model_dump()
            moved["providers"][0]["model"] = f"model-{i}"  # a new endpoint: a new guard
            client.reload(moved)
            assert client.chat("x").model == f"model-{i}"
        assert _open_fds() <= fds + 4
        assert threading.active_count() <= threads + 2
        assert_no_permits(client)


def test_a_replaced_guard_closes_when_its_last_call_ends(fake: FakeProvider) -> None:
    fake.set_latency(0.3)
    with client_for(fake_config(fake)) as client:
        old = client.guard("a")
        answered: list[str] = []
        caller = threading.Thread(target=lambda: answered.append(client.chat("slow").model))
        caller.start()
        assert fake.wait_for_in_flight(1, timeout=10)
        moved = client.config.model_dump()
        moved["providers"][0]["model"] = "model-new"
        client.reload(moved)
        assert not old.closed  # the running call still holds it
        caller.join(timeout=20)
        assert answered == ["model-a"]  # it finished on what it started with
        assert old.closed  # ... and then the replaced guard was closed
        fake.set_latency(0.0)
        assert client.chat("x").model == "model-new"


def test_an_open_stream_keeps_its_replaced_guard_open_until_it_closes(fake: FakeProvider) -> None:
    with client_for(fake_config(fake)) as client:
        old = client.guard("a")
        stream = client.chat("tell me", stream=True)
        moved = client.config.model_dump()
        moved["providers"][0]["model"] = "model-new"
        client.reload(moved)
        assert not old.closed
        text = "".join(stream)  # still readable: its session was not closed under it
        assert text
        assert stream.closed and old.closed


def test_guarded_calls_follow_a_reload_and_do_not_hit_a_closed_guard(fake: FakeProvider) -> None:
    with client_for(fake_config(fake)) as client:
        used: list[str] = []

        @client.guarded("a")
        def work() -> str:
            used.append(client.guard("a").model)
            return "done"

        assert work() == "done"
        moved = client.config.model_dump()
        moved["providers"][0]["model"] = "model-new"
        client.reload(moved)
        assert work() == "done"
        assert used == ["model-a", "model-new"]


def _pool_config(tokens_per_minute: int) -> dict[str, Any]:
    member = {"name": "llama", "base_url": "http://127.0.0.1:9/v1", "model": "m", "pool": "plan"}
    return {
        "providers": [member],
        "pools": {"plan": {"max_concurrent": 4, "tokens_per_minute": tokens_per_minute}},
        "timeout": 5.0,
    }


def test_after_reload_a_lowered_pool_budget_behaves_as_in_a_fresh_client(
    fake: FakeProvider,
) -> None:
    def config(tpm: int) -> dict[str, Any]:
        cfg = _pool_config(tpm)
        cfg["providers"][0]["base_url"] = fake.base_url
        return cfg

    big = "x" * 40_000  # about 10,000 tokens: more than the lowered budget holds
    fresh = Client(config(2_000))
    try:
        assert fresh.chat(big).content  # a fresh client charges at most the whole budget
    finally:
        fresh.close()
    with Client(config(100_000)) as client:
        client.chat("warm up")
        client.reload(config(2_000))
        assert client.chat(big).content  # no RequestTooLargeError from a stale budget
        wait_until(lambda: client.guard("llama").limiter.in_flight == 0)
