"""What only the Redis backend does: sharing between instances, leases, scripts, failures.

Two ``RedisLimiter`` instances with the same key stand for two processes (each
has its own local queue, ticket, lease thread and wake-up listener); the real
multi-process checks live in ``tests/integration/test_multiprocess.py``.
Every test runs against a redis-server started by the tests (``tests/redis_server.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_server import RedisServer

from ratelimit_sdk.errors import AcquireTimeout, BackendError, ConfigError
from ratelimit_sdk.limiter import Limiter
from ratelimit_sdk.limiter.redis import RedisLimiter

pytestmark = pytest.mark.redis

SLOW = 5.0


@pytest.fixture
def make(redis_url: str, redis_key: str) -> Iterator[Callable[..., RedisLimiter]]:
    made: list[RedisLimiter] = []

    def factory(**kwargs: Any) -> RedisLimiter:
        kwargs.setdefault("backend", redis_url)
        kwargs.setdefault("key", redis_key)
        kwargs.setdefault("on_backend_error", "raise")
        lim = Limiter(**kwargs)
        assert isinstance(lim, RedisLimiter)
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        lim.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# -- construction ---------------------------------------------------------------------------


def test_redis_url_builds_a_redis_limiter(make: Callable[..., RedisLimiter]) -> None:
    lim = make(max_concurrent=2)
    assert isinstance(lim, RedisLimiter)
    assert isinstance(lim, Limiter)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "key"),
        ({"key": ""}, "key"),
        ({"key": "k", "on_backend_error": "ignore"}, "on_backend_error"),
        ({"key": "k", "lease_timeout": 0}, "lease_timeout"),
        ({"key": "k", "lease_timeout": float("nan")}, "lease_timeout"),
        ({"key": "k", "prefix": ""}, "prefix"),
        ({"key": "k", "max_concurrent": 0}, "max_concurrent"),
    ],
)
def test_bad_arguments_raise_config_error(
    redis_url: str, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        Limiter(backend=redis_url, **kwargs)
    assert info.value.field == field


def test_keys_are_namespaced_by_prefix_and_key(
    make: Callable[..., RedisLimiter], raw: Any, redis_key: str
) -> None:
    lim = make(max_concurrent=1, prefix="myapp")
    with lim.acquire():
        keys = set(raw.keys(f"myapp:{{{redis_key}}}:*"))
    assert {f"myapp:{{{redis_key}}}:cfg", f"myapp:{{{redis_key}}}:leases"} <= keys
    assert not raw.keys(f"ratelimit_sdk:{{{redis_key}}}:*")
    other = make(max_concurrent=1, prefix="other")  # another namespace: its own budget
    with lim.acquire(), other.acquire(timeout=SLOW):
        pass


# -- scripts ----------------------------------------------------------------------------------


def test_scripts_are_loaded_again_after_script_flush(
    make: Callable[..., RedisLimiter], raw: Any
) -> None:
    lim = make(max_concurrent=1, requests_per_minute=6000)
    lim.acquire().release()
    raw.script_flush()
    with lim.acquire(timeout=SLOW) as p:
        assert lim.try_acquire() is None
        p.settle(tokens=0)
    lim.update(max_concurrent=2)
    lim.cooldown(0.01)
    assert lim.snapshot().max_concurrent == 2


def test_one_round_trip_per_admission_and_per_release(
    make: Callable[..., RedisLimiter], raw: Any
) -> None:
    lim = make(max_concurrent=2, requests_per_minute=6000, burst=50)
    lim.acquire().release()  # scripts loaded

    def evalsha_calls() -> int:
        stats = raw.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    before = evalsha_calls()
    for _ in range(10):
        lim.acquire().release()
    assert evalsha_calls() - before == 20


# -- sharing between instances (processes) ----------------------------------------------------


def test_concurrency_is_shared_between_instances(make: Callable[..., RedisLimiter]) -> None:
    a = make(max_concurrent=2)
    b = make(max_concurrent=2)
    pa = a.acquire()
    pb = b.acquire()
    assert a.try_acquire() is None and b.try_acquire() is None
    assert a.in_flight == 1 and b.in_flight == 1  # this "process"'s own
    assert a.shared_stats()["in_flight"] == 2
    pb.release()
    assert a.try_acquire() is not None
    pa.release()


def test_hot_update_on_one_instance_reaches_another(make: Callable[..., RedisLimiter]) -> None:
    a = make(max_concurrent=1, requests_per_minute=60)
    b = make(max_concurrent=1, requests_per_minute=60)
    version = b.shared_stats()["limits_version"]
    a.update(max_concurrent=3, requests_per_minute=None)
    snap = b.snapshot()
    assert snap.max_concurrent == 3
    assert snap.requests_per_minute is None
    assert b.shared_stats()["limits_version"] > version
    held = [b.try_acquire() for _ in range(3)]
    assert all(p is not None for p in held)
    assert b.limits()["max_concurrent"] == 3
    assert a.try_acquire() is None


def test_hot_update_wakes_a_waiter_of_another_instance(make: Callable[..., RedisLimiter]) -> None:
    a = make(max_concurrent=1)
    b = make(max_concurrent=1)
    holder = a.acquire()
    got = threading.Event()

    def worker() -> None:
        with b.acquire(timeout=30):
            got.set()

    t = threading.Thread(target=worker)
    t.start()
    wait_until(lambda: b.queued == 1)
    time.sleep(0.2)  # it is asleep, waiting for a release
    assert not got.is_set()
    a.update(max_concurrent=2)
    assert got.wait(SLOW)  # woken by the change, not by a release
    t.join(10)
    holder.release()


def test_cooldown_from_one_instance_blocks_the_other(make: Callable[..., RedisLimiter]) -> None:
    a = make()
    b = make()
    t0 = time.monotonic()
    a.cooldown(0.5)
    assert b.try_acquire() is None
    assert 0.2 < b.cooldown_remaining() <= 0.5
    b.acquire(timeout=SLOW).release()
    assert time.monotonic() - t0 >= 0.9 * 0.5


def test_limits_on_construct_keep_hot_updates_of_the_same_config(
    make: Callable[..., RedisLimiter],
) -> None:
    a = make(max_concurrent=2, requests_per_minute=60)
    a.update(max_concurrent=5)
    restarted = make(max_concurrent=2, requests_per_minute=60)  # same config: keeps the update
    assert restarted.limits()["max_concurrent"] == 5
    redeployed = make(max_concurrent=7, requests_per_minute=60)  # new config: it wins
    assert redeployed.limits()["max_concurrent"] == 7
    assert a.snapshot().max_concurrent == 7


def test_waiters_of_two_instances_are_served_in_arrival_order(
    make: Callable[..., RedisLimiter],
) -> None:
    a = make(max_concurrent=1)
    b = make(max_concurrent=1)
    holder = a.acquire()
    order: list[str] = []

    def worker(lim: RedisLimiter, name: str) -> None:
        with lim.acquire(timeout=30):
            order.append(name)
            time.sleep(0.01)

    plan = [(a, "a1"), (b, "b1"), (a, "a2"), (b, "b2")]
    threads = []
    for lim, name in plan:
        before = lim.queued
        t = threading.Thread(target=worker, args=(lim, name))
        t.start()
        wait_until(lambda lim=lim, before=before: lim.queued == before + 1)  # type: ignore[misc]
        time.sleep(0.05)  # the leader has put its ticket in line
        threads.append(t)
    holder.release()
    for t in threads:
        t.join(30)
    assert order == ["a1", "b1", "a2", "b2"]


def test_a_crashed_waiters_ticket_expires(
    make: Callable[..., RedisLimiter], raw: Any, redis_key: str
) -> None:
    lim = make(max_concurrent=1, lease_timeout=1.5)
    lim.acquire().release()
    seconds, micros = raw.time()
    now_us = seconds * 1_000_000 + micros
    base = f"ratelimit_sdk:{{{redis_key}}}"
    raw.zadd(f"{base}:q", {"ghost": now_us - 1_000_000})  # arrived first, then died
    raw.zadd(f"{base}:qx", {"ghost": now_us + 600_000})
    assert lim.try_acquire() is None  # nobody overtakes a waiter...
    t0 = time.monotonic()
    lim.acquire(timeout=SLOW * 2).release()  # ...until its ticket expires
    assert time.monotonic() - t0 >= 0.3


# -- leases ---------------------------------------------------------------------------------


def test_a_holder_that_stops_renewing_loses_its_permit_after_the_lease(
    make: Callable[..., RedisLimiter],
) -> None:
    crashed = make(max_concurrent=1, lease_timeout=1.0)
    other = make(max_concurrent=1, lease_timeout=1.0)
    t0 = time.monotonic()
    held = crashed.acquire()
    crashed.leases.paused = True  # as if the process had died
    assert other.try_acquire() is None
    other.acquire(timeout=SLOW * 2).release()
    waited = time.monotonic() - t0
    assert 0.9 * 1.0 <= waited < SLOW * 2
    assert not held.released  # the dead process never gave it back


def test_a_renewed_lease_outlives_the_lease_timeout(make: Callable[..., RedisLimiter]) -> None:
    holder = make(max_concurrent=1, lease_timeout=0.6)
    other = make(max_concurrent=1, lease_timeout=0.6)
    with holder.acquire():
        time.sleep(1.5)  # well past the lease: the lease thread kept it alive
        assert other.try_acquire() is None
    other.acquire(timeout=SLOW).release()


def test_pool_units_are_admitted_with_the_member_limits(
    make: Callable[..., RedisLimiter], redis_key: str
) -> None:
    pool = make(max_concurrent=4, key=redis_key + "-pool")
    llama = make(max_concurrent=5, key=redis_key + "-llama", pool=pool, pool_units=4)
    dolphin = make(max_concurrent=5, key=redis_key + "-dolphin", pool=pool, pool_units=1)
    p = llama.acquire()
    assert pool.in_flight == 4 and llama.in_flight == 1
    assert pool.shared_stats()["in_flight"] == 4
    assert dolphin.try_acquire() is None  # pool full, own limit fine
    assert dolphin.shared_stats()["in_flight"] == 0  # nothing half-taken
    p.release()
    q = [dolphin.try_acquire() for _ in range(4)]
    assert all(x is not None for x in q)
    assert llama.try_acquire() is None
    for x in q:
        assert x is not None
        x.release()
    assert pool.shared_stats()["in_flight"] == 0
    with pytest.raises(ConfigError, match="pool_units"):
        make(key=redis_key + "-big", pool=pool, pool_units=5)


def test_a_pooled_big_request_is_not_overtaken_by_small_ones(
    make: Callable[..., RedisLimiter], redis_key: str
) -> None:
    pool = make(max_concurrent=4, key=redis_key + "-pool")
    llama = make(key=redis_key + "-llama", pool=pool, pool_units=4)
    dolphin = make(key=redis_key + "-dolphin", pool=pool, pool_units=1)
    held = dolphin.acquire()
    order: list[str] = []

    def run(lim: RedisLimiter, name: str) -> None:
        with lim.acquire(timeout=30):
            order.append(name)

    t1 = threading.Thread(target=run, args=(llama, "llama"))
    t1.start()
    wait_until(lambda: llama.queued == 1)
    time.sleep(0.1)
    t2 = threading.Thread(target=run, args=(dolphin, "dolphin"))
    t2.start()
    wait_until(lambda: dolphin.queued == 1)
    time.sleep(0.2)
    assert order == []  # three pool units free, yet dolphin waits behind llama
    held.release()
    t1.join(30)
    t2.join(30)
    assert order == ["llama", "dolphin"]


# -- Redis failing ----------------------------------------------------------------------------


def test_redis_down_with_local_policy_keeps_working_and_comes_back(
    own_redis_server: RedisServer, redis_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_redis_server.url
    opts: dict[str, Any] = {
        "backend": url,
        "key": redis_key,
        "max_concurrent": 2,
        "on_backend_error": "local",
        "backend_retry": 0.2,
        "socket_timeout": 0.5,
    }
    lim = Limiter(**opts)
    assert isinstance(lim, RedisLimiter)
    lim.acquire().release()
    lim.update(max_concurrent=3)  # stored in Redis, then lost with it
    own_redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="ratelimit_sdk"):
        held = [lim.acquire(timeout=SLOW) for _ in range(3)]  # local limits, same values
        assert lim.degraded
        assert lim.try_acquire() is None  # still bounded by max_concurrent
        assert lim.shared_stats()["backend"] == "local"
        for p in held:
            p.release()
        for _ in range(5):
            lim.acquire(timeout=SLOW).release()
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per call
    own_redis_server.start()  # a restart that lost everything

    def back() -> bool:
        lim.acquire(timeout=SLOW).release()
        return not lim.degraded

    wait_until(back, timeout=20)
    other = Limiter(**{**opts, "on_backend_error": "raise"})
    assert isinstance(other, RedisLimiter)
    assert other.limits()["max_concurrent"] == 3  # written back from the local view
    with lim.acquire(timeout=SLOW):
        assert other.shared_stats()["in_flight"] == 1  # shared again
    other.close()
    lim.close()


def test_redis_down_with_raise_policy_raises_backend_error(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    import redis

    lim = Limiter(
        backend=own_redis_server.url,
        key=redis_key,
        max_concurrent=2,
        on_backend_error="raise",
        socket_timeout=0.5,
    )
    held = lim.acquire()
    own_redis_server.kill()
    with pytest.raises(BackendError) as info:
        lim.acquire(timeout=1)
    assert not isinstance(info.value, redis.RedisError)
    assert isinstance(info.value.__cause__, redis.RedisError)
    with pytest.raises(BackendError):
        lim.update(max_concurrent=1)
    with pytest.raises(BackendError):
        lim.cooldown(1)
    with pytest.raises(BackendError):
        lim.snapshot()
    held.release()  # never raises: the lease would expire by itself
    assert lim.in_flight == 0
    lim.close()


def test_redis_unreachable_at_start_falls_back(redis_key: str) -> None:
    from redis_server import free_port

    lim = Limiter(
        backend=f"redis://127.0.0.1:{free_port()}/0",
        key=redis_key,
        max_concurrent=1,
        socket_timeout=0.5,
    )
    assert isinstance(lim, RedisLimiter) and lim.degraded
    with lim.acquire(timeout=SLOW):
        assert lim.try_acquire() is None
    with pytest.raises(AcquireTimeout), lim.acquire(timeout=SLOW):
        lim.acquire(timeout=0.05)
    lim.close()
    with pytest.raises(BackendError):
        Limiter(
            backend=f"redis://127.0.0.1:{free_port()}/0",
            key=redis_key,
            on_backend_error="raise",
            socket_timeout=0.5,
        )


def test_shared_stats_report_the_shared_state(make: Callable[..., RedisLimiter]) -> None:
    lim = make(max_concurrent=3, requests_per_minute=60, burst=2, tokens_per_minute=1000)
    with lim.acquire(units=2, tokens=100):
        stats = lim.shared_stats()
    assert stats["backend"] == "redis"
    assert stats["in_flight"] == 2 and stats["holders"] == 1
    assert stats["tokens"] == pytest.approx(1.0, abs=0.2)
    assert stats["llm_tokens"] == pytest.approx(900, abs=50)
    assert stats["limits"]["max_concurrent"] == 3
    assert stats["cooldown_remaining"] == 0.0
    assert "RedisLimiter" in repr(lim) and "max_concurrent=3" in repr(lim)


def test_cancel_and_wake_all_end_a_wait_and_leave_the_line(
    make: Callable[..., RedisLimiter],
) -> None:
    lim = make(max_concurrent=1)
    held = lim.acquire()
    cancel = threading.Event()
    caught: list[BaseException] = []

    def worker() -> None:
        try:
            lim.acquire(timeout=30, cancel=cancel)
        except AcquireTimeout as exc:
            caught.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    wait_until(lambda: lim.queued == 1)
    wait_until(lambda: lim.shared_stats()["waiting"] == 1)  # its ticket is in line
    cancel.set()
    lim.wake_all()
    t.join(10)
    assert len(caught) == 1 and "cancelled" in str(caught[0])
    assert lim.queued == 0
    assert lim.shared_stats()["waiting"] == 0  # and it left the line
    held.release()
    assert lim.try_acquire() is not None


def test_would_admit_reads_the_shared_state(make: Callable[..., RedisLimiter]) -> None:
    a = make(max_concurrent=1)
    b = make(max_concurrent=1)
    assert b.would_admit()
    with a.acquire():
        assert not b.would_admit()
    assert b.would_admit()
    a.cooldown(0.5)
    assert not b.would_admit()


def test_started_while_redis_was_down_states_its_limits_when_it_is_back(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    opts: dict[str, Any] = {
        "backend": own_redis_server.url,
        "key": redis_key,
        "backend_retry": 0.2,
        "socket_timeout": 0.5,
    }
    old = Limiter(max_concurrent=1, **opts)  # the limits stored so far
    own_redis_server.kill()
    new = Limiter(max_concurrent=4, **opts)  # a deploy with a new config, Redis down
    assert isinstance(new, RedisLimiter) and new.degraded
    own_redis_server.start()
    old.update(max_concurrent=1)  # Redis has the old config again

    def back() -> bool:
        new.acquire(timeout=SLOW).release()
        return not new.degraded

    wait_until(back, timeout=20)
    assert old.snapshot().max_concurrent == 4  # the new configuration won, as at a start
    old.close()
    new.close()


def test_the_redis_password_never_reaches_a_log_line_or_a_repr(
    redis_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    from redis_server import free_port

    secret = "s3cret-canary-pw"
    with caplog.at_level(logging.DEBUG, logger="ratelimit_sdk"):
        lim = Limiter(
            backend=f"redis://:{secret}@127.0.0.1:{free_port()}/0",
            key=redis_key,
            max_concurrent=1,
            socket_timeout=0.5,
        )
        assert isinstance(lim, RedisLimiter)
        lim.acquire(timeout=SLOW).release()
        text = repr(lim) + str(lim.shared_stats())
        lim.close()
    assert caplog.records  # the outage was logged...
    assert secret not in caplog.text and secret not in text  # ...without the password


def test_time_to_admit_reads_the_shared_state(make: Callable[..., RedisLimiter]) -> None:
    a = make(max_concurrent=1, requests_per_minute=60, burst=1)
    b = make(max_concurrent=1, requests_per_minute=60, burst=1)
    assert b.time_to_admit() == 0.0
    with a.acquire():
        assert b.time_to_admit() is None  # only a release can help
    wait = b.time_to_admit()
    # the next token, plus the first (cold) admission's jitter allowance: 4 x 20 ms
    assert wait is not None and 0.5 < wait <= 1.0 + 0.08 + 0.01
    b.update(requests_per_minute=None)
    assert a.time_to_admit() == 0.0


def test_listeners_hear_releases(make: Callable[..., RedisLimiter]) -> None:
    lim = make(max_concurrent=1)
    heard: list[int] = []
    lim.add_listener(lambda: heard.append(1))

    def broken() -> None:
        raise RuntimeError("listener bug")

    lim.add_listener(broken)  # a failing listener breaks nothing
    with lim.acquire():
        assert heard == []
    assert heard == [1]
    assert lim.in_flight == 0


def test_built_from_limits_config_as_the_client_does(redis_url: str, redis_key: str) -> None:
    from ratelimit_sdk.config import LimitsConfig

    kwargs = LimitsConfig(max_concurrent=2, requests_per_minute=60, burst=2).limiter_kwargs()
    lim = Limiter(**kwargs, backend=redis_url, key=redis_key)
    assert isinstance(lim, RedisLimiter)
    assert lim.limits()["max_concurrent"] == 2
    assert lim.limits()["margin"] == kwargs["margin"]
    with lim.acquire(timeout=SLOW):
        pass
    lim.close()


def test_waiters_that_time_out_leave_no_ticket_behind(
    make: Callable[..., RedisLimiter], raw: Any, redis_key: str
) -> None:
    # Successors get their ticket from their predecessor's call; whoever gives up
    # (timeouts here, while queued locally or leading) must take it out again.
    a, b = make(max_concurrent=1), make(max_concurrent=1)
    errors: list[BaseException] = []
    admitted = [0]

    def worker(lim: RedisLimiter, i: int) -> None:
        for j in range(6):
            try:
                with lim.acquire(timeout=0.02 + 0.01 * ((i + j) % 4)):
                    admitted[0] += 1
                    time.sleep(0.01)
            except AcquireTimeout:
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(lim, i)) for lim in (a, b) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert admitted[0] > 0
    assert a.queued == 0 and b.queued == 0 and a.in_flight == 0 and b.in_flight == 0
    base = f"ratelimit_sdk:{{{redis_key}}}"
    assert raw.zcard(f"{base}:q") == 0 and raw.zcard(f"{base}:qx") == 0
    assert raw.zcard(f"{base}:leases") == 0
    assert a.try_acquire() is not None  # nobody is left in line


def test_a_widened_allowance_is_shared_by_every_process(make: Callable[..., RedisLimiter]) -> None:
    """One process's overrun report widens what every process sharing the key admits."""
    a = make(requests_per_minute=6, burst=1, margin=1.0)  # one per 10 s
    b = make(requests_per_minute=6, burst=1, margin=1.0)
    assert a.report_overrun() == 0.0  # full: the next slot is now
    b.acquire(timeout=5).release()
    wait = b.time_to_admit()
    # 10 s + the margin capped at 2 s (a fifth of the interval) + the grown 0.25 s
    assert wait is not None and 12.1 < wait <= 12.25


def test_a_request_that_leaves_late_paces_every_process_from_its_departure(
    make: Callable[..., RedisLimiter],
) -> None:
    a = make(requests_per_minute=60, burst=1, margin=0.02)  # one per second
    b = make(requests_per_minute=60, burst=1, margin=0.02)
    permit = a.acquire(timeout=5)
    time.sleep(0.3)  # left 0.3 s late: far over its allowance
    permit.mark_sent()
    permit.release()
    wait = b.time_to_admit()
    # the next token counts from the late departure plus half the (cold) allowance, 0.04 s
    assert wait is not None and 0.9 < wait <= 1.05


def test_a_request_that_leaves_late_leaves_a_shared_window_late(
    make: Callable[..., RedisLimiter],
) -> None:
    a = make(windows=[{"requests": 2, "per": 1}])
    b = make(windows=[{"requests": 2, "per": 1}])
    first = a.acquire(timeout=5)
    time.sleep(0.3)  # left 0.3 s after its admission
    first.mark_sent()
    first.release()
    b.acquire(timeout=5).release()
    wait = b.availability().wait
    # the first charge counts from its departure: about 1.0 s to wait (unmoved: 0.72)
    assert wait is not None and 0.85 < wait <= 1.05
