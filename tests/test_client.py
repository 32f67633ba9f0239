"""The Client (client.py) against real loopback FakeProviders.

Lifecycle, chain picking (named chains, ``preferred_model``, ``use_fallback``),
``map``/``imap``, ``stats``, hot ``update_limits`` and ``reload``, hooks, and
the API-key canary. Delays are tiny (``base_delay`` 0.01); no assertion needs a
fast machine.
"""

from __future__ import annotations

import logging
import pickle
import random
import threading
import time
from collections.abc import Iterator

import pytest
from fleet_fixtures import (
    CANARY,
    REQUEST,
    EventLog,
    assert_no_permits,
    client_for,
    fake_config,
    run_threads,
    wait_until,
)

from ratelimit_sdk import (
    AllProvidersFailed,
    BadRequestError,
    ChatResponse,
    Client,
    ConfigError,
    ProviderError,
    RateLimitSDKError,
)
from ratelimit_sdk.models import ProviderStats
from ratelimit_sdk.testing import FakeProvider, Respond


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("a", model="model-a") as provider:
        yield provider


@pytest.fixture
def fakes() -> Iterator[tuple[FakeProvider, FakeProvider, FakeProvider]]:
    with (
        FakeProvider("a", model="model-a") as a,
        FakeProvider("b", model="model-b") as b,
        FakeProvider("c", model="model-c") as c,
    ):
        yield a, b, c


# -- lifecycle ---------------------------------------------------------------------------------


def test_chat_answers_and_close_is_idempotent(fake: FakeProvider) -> None:
    client = client_for(fake_config(fake))
    response = client.chat("hello there", max_tokens=20, temperature=0.2, top_p=0.9)
    assert isinstance(response, ChatResponse)
    assert response.content == "echo: hello there"
    assert (response.provider, response.model) == ("a", "model-a")
    assert [a.outcome.value for a in response.attempts] == ["ok"]
    body = fake.requests[-1].body
    assert body["max_tokens"] == 20 and body["temperature"] == 0.2 and body["top_p"] == 0.9
    client.close()
    client.close()
    assert "closed" in repr(client)
    with pytest.raises(RateLimitSDKError, match="closed"):
        client.chat("again")


def test_context_manager_closes(fake: FakeProvider) -> None:
    with client_for(fake_config(fake)) as client:
        assert client.chat([{"role": "user", "content": "hi"}]).content == "echo: hi"
        assert "open" in repr(client)
    assert "closed" in repr(client)
    with pytest.raises(RateLimitSDKError):
        client.chat("hi")


def test_close_wakes_waiting_calls_and_leaks_nothing(fake: FakeProvider) -> None:
    fake.set_latency(0.5)
    client = client_for(fake_config(fake, limits={"max_concurrent": 1}))

    def call(_: int) -> object:
        return client.chat("x", timeout=10)

    threads = threading.Thread(target=lambda: run_threads(3, call))
    threads.start()
    assert fake.wait_for_in_flight(1)
    client.close()
    threads.join(15)
    assert not threads.is_alive()  # the queued calls ended; none spun until its timeout
    assert fake.count <= 3
    assert client.guard("a").limiter.in_flight == 0


def test_close_ends_calls_waiting_for_any_provider() -> None:
    """Calls waiting for room on every provider of the chain end at close, not at timeout."""
    with FakeProvider("a", latency=1.0) as a, FakeProvider("b", latency=1.0) as b:
        client = client_for(
            fake_config(a, limits={"max_concurrent": 1}),
            fake_config(b, limits={"max_concurrent": 1}),
        )
        results: list[object] = []
        worker = threading.Thread(
            target=lambda: results.extend(
                run_threads(4, lambda _: client.chat("x", timeout=30), timeout=60)
            )
        )
        worker.start()
        assert a.wait_for_in_flight(1) and b.wait_for_in_flight(1)
        closed_at = time.monotonic()
        client.close()
        worker.join(40)
        assert not worker.is_alive()
        assert time.monotonic() - closed_at < 10  # not the 30 s timeout
        assert sum(isinstance(r, ChatResponse) for r in results) == 2
        assert sum(isinstance(r, AllProvidersFailed) for r in results) == 2
        assert client.guard("a").limiter.in_flight == 0
        assert client.guard("b").limiter.in_flight == 0


@pytest.mark.parametrize("bad", [-1, "5", float("nan"), True])
def test_bad_timeouts_are_refused(fake: FakeProvider, bad: object) -> None:
    with client_for(fake_config(fake)) as client, pytest.raises(ValueError, match="timeout"):
        client.chat("x", timeout=bad)  # type: ignore[arg-type]


def test_bad_messages_are_bad_requests_and_send_nothing(fake: FakeProvider) -> None:
    with client_for(fake_config(fake)) as client:
        for messages in ([], [{"content": "no role"}], None, [1, 2]):
            with pytest.raises(BadRequestError):
                client.chat(messages)  # type: ignore[arg-type]
        with pytest.raises(BadRequestError):
            client.chat("x", max_tokens=0)
    assert fake.count == 0


# -- which providers a call may use ---------------------------------------------------------------


def test_default_chain_follows_priority(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, c = fakes
    configs = [fake_config(a, priority=3), fake_config(b, priority=1), fake_config(c, priority=2)]
    with Client({"providers": configs}) as client:
        b.fail_all(503)
        response = client.chat("x")
    assert response.provider == "c"
    assert [x.provider for x in response.attempts] == ["b", "b", "b", "c"]
    assert a.count == 0


def test_named_chains(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, c = fakes
    chains = {"fast": ["c", "a"], "only_b": ["b"]}
    with client_for(fake_config(a), fake_config(b), fake_config(c), chains=chains) as client:
        assert client.chat("x", chain="fast").provider == "c"
        assert client.chat("x", chain="only_b").provider == "b"
        c.fail_all(401)
        response = client.chat("x", chain="fast")
        assert [x.provider for x in response.attempts] == ["c", "a"]
        with pytest.raises(ConfigError, match="unknown chain"):
            client.chat("x", chain="nope")
    assert b.count == 1


def test_preferred_model_uses_only_that_provider(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, c = fakes
    with client_for(fake_config(a), fake_config(b), fake_config(c)) as client:
        assert client.chat("x", preferred_model="b").provider == "b"
        assert client.chat("x", preferred_model="model-c").provider == "c"  # by model name
        b.fail_all(503)
        with pytest.raises(AllProvidersFailed) as info:
            client.chat("x", preferred_model="b")
        assert {x.provider for x in info.value.attempts} == {"b"}
        with pytest.raises(ConfigError):
            client.chat("x", preferred_model="unknown")
        with pytest.raises(ConfigError):
            client.chat("x", preferred_model="b", chain="default")
    assert a.count == 0


def test_use_fallback_false_keeps_one_provider(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, _ = fakes
    a.fail_all(503)
    client = client_for(fake_config(a), fake_config(b), use_fallback=False)
    with client, pytest.raises(AllProvidersFailed) as info:
        client.chat("x")
    assert [x.provider for x in info.value.attempts] == ["a", "a", "a"]
    assert b.count == 0


def test_bad_request_is_raised_with_its_attempts(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, _ = fakes
    a.fail_all(422)
    client = client_for(fake_config(a), fake_config(b))
    with client, pytest.raises(BadRequestError) as info:
        client.chat("x")
    assert info.value.status == 422
    assert b.count == 0 and a.count == 1


# -- many calls --------------------------------------------------------------------------------


def _shuffled_latency() -> float:
    return random.uniform(0.0, 0.03)


def test_map_keeps_input_order(fake: FakeProvider) -> None:
    fake.set_latency(_shuffled_latency)
    prompts = [f"prompt {i}" for i in range(40)]
    with client_for(fake_config(fake)) as client:
        results = client.map(prompts, max_workers=8, progress=False)
        assert [r.content for r in results] == [f"echo: {p}" for p in prompts]
        assert_no_permits(client)


def test_map_accepts_every_item_shape(fakes: tuple[FakeProvider, ...]) -> None:
    from ratelimit_sdk import ChatRequest

    a, b, _ = fakes
    items = [
        "plain",
        [{"role": "user", "content": "listed"}],
        {"messages": "as dict", "max_tokens": 5, "preferred_model": "b"},
        ChatRequest(messages=[{"role": "user", "content": "request"}]),
    ]
    with client_for(fake_config(a), fake_config(b)) as client:
        results = client.map(items, progress=False)
    assert [r.content for r in results] == [
        "echo: plain",
        "echo: listed",
        "echo: as dict",
        "echo: request",
    ]
    assert [r.provider for r in results] == ["a", "a", "b", "a"]


def test_map_return_exceptions_keeps_errors_in_place(fakes: tuple[FakeProvider, ...]) -> None:
    a, bad, _ = fakes
    bad.fail_all(400)
    items = [
        {"messages": f"p{i}", "preferred_model": "b"} if i % 3 == 0 else f"p{i}" for i in range(12)
    ]
    with client_for(fake_config(a), fake_config(bad)) as client:
        results = client.map(items, max_workers=4, progress=False, return_exceptions=True)
        assert_no_permits(client)
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, BadRequestError)
        else:
            assert isinstance(result, ChatResponse) and result.content == f"echo: p{i}"


def test_map_raises_the_first_error_and_stops_sending(fake: FakeProvider) -> None:
    fake.set_latency(0.02)
    fake.script([Respond.status(400)])
    with client_for(fake_config(fake)) as client:
        with pytest.raises(BadRequestError):
            client.map([f"p{i}" for i in range(30)], max_workers=2, progress=False)
        assert fake.count < 30
        client.chat("still usable")
        assert_no_permits(client)


def test_map_options_apply_to_every_item(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, _ = fakes
    with client_for(fake_config(a), fake_config(b)) as client:
        results = client.map(["x", "y"], preferred_model="b", timeout=10, progress=False)
        assert {r.provider for r in results} == {"b"}
        with pytest.raises(TypeError, match="unexpected"):
            client.map(["x"], colour="blue", progress=False)
        with pytest.raises(ValueError, match="max_workers"):
            client.map(["x"], max_workers=0, progress=False)
    assert a.count == 0


def test_imap_ordered_and_unordered(fake: FakeProvider) -> None:
    fake.set_latency(_shuffled_latency)
    prompts = [f"q{i}" for i in range(20)]
    with client_for(fake_config(fake)) as client:
        ordered = [r.content for r in client.imap(prompts, max_workers=6)]
        assert ordered == [f"echo: {p}" for p in prompts]
        pairs = list(client.imap(prompts, max_workers=6, ordered=False))
        assert sorted(i for i, _ in pairs) == list(range(20))
        assert all(r.content == f"echo: q{i}" for i, r in pairs)


# -- observation ---------------------------------------------------------------------------------


def test_stats_fields(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, _ = fakes
    config_a = fake_config(a, limits={"max_concurrent": 3, "requests_per_minute": 600, "burst": 5})
    with client_for(config_a, fake_config(b)) as client:
        a.script([Respond.status(500), Respond.rate_limited(0.2)])
        client.chat("one")  # 500, retry, 429 -> fallback to b
        stats = client.stats()
    assert set(stats) == {"a", "b"}
    sa = stats["a"]
    assert isinstance(sa, ProviderStats)
    assert sa.counters == {
        "requests": 2,
        "ok": 0,
        "rate_limited": 1,
        "errors": 1,
        "retries": 1,
        "fallbacks": 1,
    }
    assert (sa.in_flight, sa.queued, sa.breaker_state) == (0, 0, "closed")
    assert sa.tokens_available is not None and 0 <= sa.tokens_available <= 5
    assert 0 < sa.cooldown_remaining <= 0.2
    assert 0 <= sa.wait_p50 <= sa.wait_p95
    assert sa.limits["max_concurrent"] == 3
    assert stats["b"].ok == 1 and stats["b"].tokens_available is None


# -- hot changes ----------------------------------------------------------------------------------


def _load(client: Client, fake: FakeProvider, calls: int = 16) -> None:
    fake.reset_stats()
    client.map(["x"] * calls, max_workers=8, progress=False)


def test_update_limits_is_hot_and_visible_in_the_servers_concurrency(fake: FakeProvider) -> None:
    fake.set_latency(0.05)
    with client_for(fake_config(fake, limits={"max_concurrent": 4})) as client:
        _load(client, fake)
        assert fake.max_in_flight_seen == 4
        client.update_limits("a", max_concurrent=1)
        _load(client, fake, calls=8)
        assert fake.max_in_flight_seen == 1
        client.update_limits("a", max_concurrent=3)
        _load(client, fake)
        assert fake.max_in_flight_seen == 3
        assert client.config.provider("a").limits.max_concurrent == 3
        assert client.stats()["a"].limits["max_concurrent"] == 3
        assert_no_permits(client)


def test_update_limits_while_calls_run(fake: FakeProvider) -> None:
    fake.set_latency(0.03)
    with client_for(fake_config(fake, limits={"max_concurrent": 6})) as client:
        worker = threading.Thread(
            target=lambda: client.map(["x"] * 60, max_workers=12, progress=False)
        )
        worker.start()
        assert fake.wait_for_in_flight(4)
        client.update_limits("a", max_concurrent=2)
        # Once the calls admitted before the change are done, at most 2 run at once.
        wait_until(lambda: client.guard("a").limiter.in_flight <= 2)
        fake.reset_stats()
        worker.join(30)
        assert not worker.is_alive()
        assert fake.max_in_flight_seen <= 2
        assert_no_permits(client)


def test_update_limits_validates(fake: FakeProvider) -> None:
    with client_for(fake_config(fake)) as client:
        with pytest.raises(ConfigError, match="max_concurrent"):
            client.update_limits("a", max_concurrent=0)
        with pytest.raises(ConfigError):
            client.update_limits("a", max_concurent=2)
        with pytest.raises(ConfigError):
            client.update_limits("nobody", max_concurrent=2)
        assert client.config.provider("a").limits.max_concurrent is None


def test_reload_keeps_the_limiter_state_and_takes_new_limits(
    fakes: tuple[FakeProvider, ...],
) -> None:
    a, b, _ = fakes
    a.set_latency(0.05)
    with client_for(fake_config(a, limits={"max_concurrent": 4})) as client:
        guard_before = client.guard("a")
        guard_before.limiter.cooldown(0.3)
        new = client.config.model_dump()
        new["providers"][0]["limits"]["max_concurrent"] = 2
        new["providers"].append(fake_config(b, priority=5))
        client.reload(new)
        assert client.guard("a") is guard_before  # same endpoint: state kept
        assert client.guard("a").limiter.cooldown_remaining() > 0
        assert client.stats().keys() == {"a", "b"}
        assert client.chat("x").provider == "b"  # a is still cooling down
        wait_until(lambda: client.guard("a").limiter.cooldown_remaining() == 0)
        _load(client, a)
        assert a.max_in_flight_seen == 2
        # A changed endpoint gets a fresh guard.
        moved = client.config.model_dump()
        moved["providers"][0]["model"] = "other-model"
        client.reload(moved)
        assert client.guard("a") is not guard_before
        assert client.chat("x").model == "other-model"
        assert_no_permits(client)


def test_reload_keeps_pools_shared_and_takes_their_new_limits() -> None:
    def member(name: str, units: int = 1) -> dict[str, object]:
        url = "http://127.0.0.1:9/v1"
        return {"name": name, "base_url": url, "model": name, "pool": "plan", "pool_units": units}

    config: dict[str, object] = {
        "providers": [member("llama", 2), member("dolphin")],
        "pools": {"plan": {"max_concurrent": 4}},
    }
    with Client(config) as client:
        pool = client.guard("llama").limiter.pool  # type: ignore[attr-defined]
        assert pool is not None and client.guard("dolphin").limiter.pool is pool  # type: ignore[attr-defined]
        held = client.guard("llama").limiter.acquire(timeout=0)
        assert pool.in_flight == 2
        config["providers"] = [member("llama", 2), member("dolphin"), member("mistral")]
        config["pools"] = {"plan": {"max_concurrent": 3}}
        client.reload(config)
        assert client.guard("llama").limiter.pool is pool  # type: ignore[attr-defined]
        assert client.guard("mistral").limiter.pool is pool  # type: ignore[attr-defined]
        assert pool.limits()["max_concurrent"] == 3
        assert pool.in_flight == 2  # the held permit still counts against the pool
        assert client.guard("mistral").can_take_now(REQUEST)
        other = client.guard("mistral").limiter.acquire(timeout=0)
        assert not client.guard("dolphin").can_take_now(REQUEST)  # 2 + 1 units: pool full
        held.release()
        other.release()
        assert pool.in_flight == 0


def test_reload_refuses_a_bad_config_and_keeps_the_old_one(fake: FakeProvider) -> None:
    with client_for(fake_config(fake)) as client:
        with pytest.raises(ConfigError):
            client.reload({"providers": []})
        assert client.chat("still").provider == "a"


# -- hooks ----------------------------------------------------------------------------------------


def test_hooks_see_fallback_retry_rate_limited_cooldown_and_breaker_events(
    fakes: tuple[FakeProvider, ...],
) -> None:
    a, b, _ = fakes
    log = EventLog()
    config_a = fake_config(a, breaker={"fail_max": 2, "reset_timeout": 30})
    with client_for(config_a, fake_config(b)) as client:
        for name in ("fallback", "retry", "rate_limited", "cooldown", "breaker_open"):
            client.on(name, log)
        a.script([Respond.rate_limited(0.2)])
        assert client.chat("x").provider == "b"
        wait_until(lambda: client.guard("a").limiter.cooldown_remaining() == 0)
        a.fail_all(503)
        assert client.chat("x").provider == "b"  # 503, retry, 503: breaker opens
        assert client.chat("x").provider == "b"  # skipped: open
    names = log.names()
    assert "rate_limited" in names and "cooldown" in names
    assert names.count("retry") == 1  # none into the breaker that had just opened
    assert names.count("breaker_open") == 1
    assert names.count("fallback") == 3
    (opened,) = log.of("breaker_open")
    assert (opened.provider, opened.state) == ("a", "open")
    assert [e.to_provider for e in log.of("fallback")] == ["b", "b", "b"]
    assert a.count == 3


def test_hooks_that_raise_never_break_a_call(fakes: tuple[FakeProvider, ...]) -> None:
    a, b, _ = fakes

    def explode(event: object) -> None:
        raise RuntimeError("monitoring is down")

    with client_for(fake_config(a), fake_config(b)) as client:
        client.on("*", explode)
        a.script([Respond.status(500), Respond.rate_limited(0.1)])
        assert client.chat("x").provider == "b"
        client.off("*", explode)
        with pytest.raises(ValueError, match="unknown event"):
            client.on("no-such-event", explode)
        assert_no_permits(client)


# -- secrets --------------------------------------------------------------------------------------


def test_the_api_key_never_reaches_a_log_line_repr_str_or_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leaky = {"error": {"message": f"Incorrect API key provided: {CANARY}", "code": "bad_key"}}
    with (
        FakeProvider("a", require_key=CANARY) as a,
        FakeProvider("b") as b,
        FakeProvider("c") as c,
    ):
        caplog.set_level(logging.DEBUG)
        configs = [
            fake_config(a, api_key=CANARY),
            fake_config(b, api_key=CANARY),
            fake_config(c, api_key=CANARY),
        ]
        with client_for(*configs) as client:
            assert client.chat("hello").provider == "a"
            assert a.requests[-1].header("Authorization") == f"Bearer {CANARY}"
            a.fail_all(500, leaky)
            b.fail_all(401, leaky)
            c.fail_all(503, {"error": {"message": f"key={CANARY} failed"}})
            with pytest.raises(AllProvidersFailed) as info:
                client.chat("hello")
            error = info.value
            texts = [repr(client), str(client.config), repr(client.config), repr(client.stats())]
            texts += [str(error), repr(error), repr(error.attempts)]
            texts += [f"{x.error} {x.error!r}" for x in error.attempts]
            texts.append(repr(pickle.loads(pickle.dumps(error))))
            texts.append(repr(client.guard("a")))
            for attempt in error.attempts:
                assert isinstance(attempt.error, ProviderError)
        assert len(error.attempts) >= 5
        assert caplog.records, "the SDK logged nothing at DEBUG"
        texts += [record.getMessage() for record in caplog.records]
        texts.append(caplog.text)
    for text in texts:
        assert CANARY not in text
        assert CANARY[6:] not in text  # not even the tail of it


def test_reload_applies_a_changed_pool_units_to_a_kept_provider() -> None:
    base = {
        "pools": {"plan": {"max_concurrent": 4}},
        "providers": [
            {
                "name": "big",
                "base_url": "http://127.0.0.1:9/v1",
                "model": "m",
                "pool": "plan",
                "pool_units": 4,
            }
        ],
    }
    client = Client(base)
    try:
        limiter = client.guard("big").limiter
        changed = {**base, "providers": [{**base["providers"][0], "pool_units": 2}]}
        client.reload(changed)
        assert client.guard("big").limiter is limiter  # kept, state and all
        assert limiter.pool_units == 2  # type: ignore[attr-defined]
        first, second = limiter.acquire(timeout=1), limiter.acquire(timeout=1)
        assert limiter.pool.in_flight == 4  # type: ignore[attr-defined]
        first.release()
        second.release()
    finally:
        client.close()
