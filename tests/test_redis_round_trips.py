"""Round trips of the Redis limiter and of the breaker shared through it, counted at the client.

Uses :func:`redis_counting.count_round_trips` (commands sent by the test's thread).
Each test warms its limiter up first (scripts loaded, connection open).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_counting import count_round_trips

from ratelimit_sdk.breaker import Breaker, SharedBreakerStorage, shared_storage
from ratelimit_sdk.config import BreakerConfig
from ratelimit_sdk.limiter import Permit
from ratelimit_sdk.limiter.redis import RedisLimiter
from ratelimit_sdk.models import Availability, BreakerVote

pytestmark = pytest.mark.redis


@pytest.fixture
def make(redis_url: str, redis_key: str) -> Iterator[Callable[..., RedisLimiter]]:
    made: list[RedisLimiter] = []

    def factory(**kwargs: Any) -> RedisLimiter:
        kwargs = {"backend": redis_url, "key": redis_key, "on_backend_error": "raise", **kwargs}
        lim = RedisLimiter(**kwargs)
        made.append(lim)
        return lim

    yield factory
    for lim in made:
        lim.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def listening(*lims: RedisLimiter) -> None:
    """Wait until each limiter's listener is subscribed: a change published before that
    reaches a process with its next admission's reply instead (these tests make none)."""
    wait_until(lambda: all(lim.line.listening.is_set() for lim in lims))


def breaker_for(lim: RedisLimiter, fail_max: int = 2, reset_timeout: float = 30.0) -> Breaker:
    storage = shared_storage(lim.shared_breaker_cell(), lim.key)
    config = BreakerConfig(fail_max=fail_max, reset_timeout=reset_timeout)
    return Breaker(lim.key, config, storage=storage)


# -- the limiter ----------------------------------------------------------------------------


def test_try_admit_and_release_are_two_round_trips(make: Callable[..., RedisLimiter]) -> None:
    lim = make(max_concurrent=2, requests_per_minute=6000, burst=50, tokens_per_minute=1e6)
    lim.acquire().release()
    with count_round_trips(lim.redis_client) as trips:
        got = lim.try_admit(tokens=10)
        assert isinstance(got, Permit)
        got.release()
    assert trips.commands == ["EVALSHA", "EVALSHA"]


def test_a_refused_try_admit_is_one_round_trip_with_the_reason(
    make: Callable[..., RedisLimiter],
) -> None:
    lim = make(max_concurrent=1)
    held = lim.acquire()
    with count_round_trips(lim.redis_client) as trips:
        got = lim.try_admit()
    assert trips.count == 1
    assert isinstance(got, Availability) and got.wait is None
    held.release()
    lim.cooldown(5)
    with count_round_trips(lim.redis_client) as trips:
        got = lim.try_admit()
    assert trips.count == 1
    assert isinstance(got, Availability)
    assert got.wait is not None and 4 < got.wait <= 5.01
    assert 4 < got.cooldown <= 5.01


def test_availability_is_one_round_trip(make: Callable[..., RedisLimiter]) -> None:
    lim = make(max_concurrent=2, requests_per_minute=6000, burst=50)
    lim.availability()  # its script loaded (the first call of a script loads it)
    with count_round_trips(lim.redis_client) as trips:
        look = lim.availability()
    assert trips.count == 1
    assert look.now
    with lim.acquire(), lim.acquire():
        with count_round_trips(lim.redis_client) as trips:
            look = lim.availability()
        assert trips.count == 1
        assert look.wait is None


def test_uncontended_acquire_and_release_are_two_round_trips(
    make: Callable[..., RedisLimiter],
) -> None:
    lim = make(max_concurrent=2, requests_per_minute=6000, burst=50)
    lim.acquire().release()
    with count_round_trips(lim.redis_client) as trips:
        for _ in range(5):
            lim.acquire(timeout=5).release()
    assert trips.count == 10


def test_the_counter_sees_a_script_loaded_again(make: Callable[..., RedisLimiter]) -> None:
    lim = make(max_concurrent=2)
    lim.acquire().release()
    lim.redis_client.script_flush()
    with count_round_trips(lim.redis_client) as trips:
        lim.acquire().release()
    assert trips.commands[:3] == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]


# -- the shared breaker -----------------------------------------------------------------------


def test_breaker_reads_and_successes_on_a_closed_breaker_cost_nothing(
    make: Callable[..., RedisLimiter],
) -> None:
    lim = make(max_concurrent=2)
    breaker = breaker_for(lim)
    with count_round_trips(lim.redis_client, all_threads=True) as trips:
        for _ in range(20):
            probe = breaker.allow()
            assert probe is not None
            assert breaker.state == "closed"
            assert breaker.would_allow()
            assert breaker.retry_after() == 0.0
            breaker.record(BreakerVote.SUCCESS, probe)
    assert trips.count == 0, trips.commands


def test_a_failure_is_one_round_trip_and_a_success_after_it_one_more(
    make: Callable[..., RedisLimiter],
) -> None:
    lim = make(max_concurrent=2)
    breaker = breaker_for(lim, fail_max=3)
    probe = breaker.allow()
    assert probe is not None
    with count_round_trips(lim.redis_client) as trips:
        breaker.record(BreakerVote.FAILURE, probe, RuntimeError("500"))
    assert trips.count == 1
    assert lim.shared_breaker_cell().get().failures == 1
    with count_round_trips(lim.redis_client) as trips:
        breaker.record(BreakerVote.SUCCESS, probe)  # resets the shared count
        breaker.record(BreakerVote.SUCCESS, probe)  # nothing left to reset
    assert trips.count == 1
    assert lim.shared_breaker_cell().get().failures == 0


def test_an_opened_breaker_reaches_another_process_without_a_read(
    make: Callable[..., RedisLimiter],
) -> None:
    a_lim, b_lim = make(max_concurrent=2), make(max_concurrent=2)
    a, b = breaker_for(a_lim), breaker_for(b_lim)
    listening(a_lim, b_lim)
    for _ in range(2):
        probe = a.allow()
        assert probe is not None
        a.record(BreakerVote.FAILURE, probe, RuntimeError("500"))
    assert a.state == "open"
    wait_until(lambda: b.state == "open")  # published on the limiter's channel
    with count_round_trips(b_lim.redis_client, all_threads=True) as trips:
        assert b.allow() is None
        assert b.retry_after() > 25
    assert trips.count == 0


def test_failures_of_two_processes_add_up(make: Callable[..., RedisLimiter]) -> None:
    a_lim, b_lim = make(max_concurrent=2), make(max_concurrent=2)
    a, b = breaker_for(a_lim, fail_max=2), breaker_for(b_lim, fail_max=2)
    listening(a_lim, b_lim)
    pa, pb = a.allow(), b.allow()
    assert pa is not None and pb is not None
    a.record(BreakerVote.FAILURE, pa, RuntimeError("500"))
    b_lim.acquire().release()  # any reply of the limiter refreshes b's copy
    assert b_lim.shared_breaker_cell().get().failures == 1
    b.record(BreakerVote.FAILURE, pb, RuntimeError("500"))
    assert b.state == "open"
    wait_until(lambda: a.state == "open")


def test_half_open_lets_one_probe_per_process_through(make: Callable[..., RedisLimiter]) -> None:
    lims = [make(max_concurrent=2) for _ in range(2)]
    breakers = [breaker_for(lim, fail_max=1, reset_timeout=0.2) for lim in lims]
    listening(*lims)
    probe = breakers[0].allow()
    assert probe is not None
    breakers[0].record(BreakerVote.FAILURE, probe, RuntimeError("500"))
    wait_until(lambda: all(b.state == "open" for b in breakers))
    time.sleep(0.3)  # past reset_timeout
    granted: list[list[Any]] = [[], []]
    start = threading.Barrier(16)

    def ask(i: int) -> None:
        start.wait(10)
        p = breakers[i].allow()
        if p is not None:
            granted[i].append(p)

    threads = [threading.Thread(target=ask, args=(i % 2,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [len(g) for g in granted] == [1, 1]
    assert all(p.is_probe for g in granted for p in g)
    breakers[0].record(BreakerVote.SUCCESS, granted[0][0])
    assert breakers[0].state == "closed"
    wait_until(lambda: breakers[1].state == "closed")


def test_the_storage_is_a_pybreaker_storage(make: Callable[..., RedisLimiter]) -> None:
    lim = make(max_concurrent=1)
    storage = shared_storage(lim.shared_breaker_cell(), lim.key)
    assert isinstance(storage, SharedBreakerStorage)
    assert storage.state == "closed" and storage.counter == 0 and storage.opened_at is None


def test_a_reset_and_a_failure_in_one_write_leave_one_failure(
    make: Callable[..., RedisLimiter],
) -> None:
    lim = make(max_concurrent=1)
    cell = lim.shared_breaker_cell()
    cell.change(add_failures=3)
    assert cell.get().failures == 3
    cell.change(reset_failures=True, add_failures=1)
    assert cell.get().failures == 1
    other = make(max_concurrent=1)
    assert other.shared_breaker_cell().get().failures == 1
    listening(other)
    cell.change(state="open", opened_at=1234.5)
    wait_until(lambda: other.shared_breaker_cell().get().state == "open")
    assert other.shared_breaker_cell().get().opened_at == 1234.5
