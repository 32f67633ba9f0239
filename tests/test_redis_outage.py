"""Redis outages under load: a hung Redis (SIGSTOP) and a crashed one (SIGKILL + restart).

What must hold, under both failure policies, in the one process the test runs:

- never more than ``max_concurrent`` holders at once (counted inside the held
  region, under a lock), also while falling back to local limits and while
  handing back to Redis;
- every ``acquire(timeout=1)`` returns (admitted, AcquireTimeout or BackendError)
  within 1.3 s, however long Redis hangs;
- calls succeed again within 2 s of Redis answering: releases that failed during
  the outage are sent again, they do not wait for ``lease_timeout``.

Each test starts its own ``redis-server`` (``own_redis_server``); every loop is
bounded in count and in time.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from redis_server import RedisServer

from ratelimit_sdk.errors import AcquireTimeout, BackendError
from ratelimit_sdk.limiter import Limiter
from ratelimit_sdk.limiter.redis import RedisLimiter

pytestmark = pytest.mark.redis

MC = 4
TIMEOUT = 1.0
LATE = 0.3  # an acquire may return this much after its timeout
RECOVERY = 2.0  # calls succeed again within this long of Redis answering


def make(server: RedisServer, key: str, policy: str, **kwargs: Any) -> RedisLimiter:
    kwargs.setdefault("max_concurrent", MC)
    kwargs.setdefault("backend_retry", 0.5)
    lim = Limiter(backend=server.url, key=key, on_backend_error=policy, **kwargs)
    assert isinstance(lim, RedisLimiter)
    return lim


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """Redis hangs (SIGSTOP) inside the block, and answers again after it."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(10_000):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


class Load:
    """``threads`` threads acquiring with ``timeout`` and holding ``hold`` seconds, in a loop."""

    def __init__(self, lim: RedisLimiter, threads: int = 16, hold: float = 0.05) -> None:
        self.lim = lim
        self.lock = threading.Lock()
        self.holders = 0
        self.max_holders = 0
        self.worst = 0.0  # the longest acquire
        self.worst_kind = ""
        self.successes: list[float] = []  # when each admission returned
        self.stop = threading.Event()
        self.hold = hold
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        try:
            for _ in range(100_000):
                if self.stop.is_set():
                    return
                t0 = time.monotonic()
                try:
                    permit = self.lim.acquire(timeout=TIMEOUT)
                except (AcquireTimeout, BackendError) as exc:
                    self._took(time.monotonic() - t0, type(exc).__name__)
                    time.sleep(0.02)  # a refused connection fails at once: no hot loop
                    continue
                t1 = time.monotonic()
                self._took(t1 - t0, "admitted")
                try:
                    with self.lock:
                        self.successes.append(t1)
                        self.holders += 1
                        self.max_holders = max(self.max_holders, self.holders)
                    time.sleep(self.hold)
                    with self.lock:
                        self.holders -= 1
                finally:
                    permit.release()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def _took(self, seconds: float, kind: str) -> None:
        with self.lock:
            if seconds > self.worst:
                self.worst, self.worst_kind = seconds, kind

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads), "a worker hangs"

    def first_success_after(self, when: float) -> float | None:
        with self.lock:
            later = [t for t in self.successes if t >= when]
        return min(later) - when if later else None

    def check(self, answering_since: float) -> None:
        assert not self.errors, self.errors
        assert self.max_holders <= MC, f"{self.max_holders} holders at once, limit {MC}"
        assert self.worst <= TIMEOUT + LATE, (
            f"an acquire(timeout={TIMEOUT}) took {self.worst:.2f}s ({self.worst_kind})"
        )
        first = self.first_success_after(answering_since)
        assert first is not None and first <= RECOVERY, (
            f"first admission {first}s after Redis answered again"
        )


def shared_in_flight_drops_to_zero(lim: RedisLimiter, server: RedisServer, key: str) -> None:
    """Every permit was released: nothing is left in Redis (no lease waits to expire)."""
    other = make(server, key, "raise")
    try:
        wait_until(lambda: other.shared_stats()["in_flight"] == 0, timeout=5)
    finally:
        other.close()


@pytest.mark.parametrize("policy", ["local", "raise"])
def test_a_hung_redis_under_load(
    own_redis_server: RedisServer, redis_key: str, policy: str
) -> None:
    lim = make(own_redis_server, redis_key, policy)
    with Load(lim) as load:
        time.sleep(1.0)
        with stopped(own_redis_server):
            time.sleep(5.0)  # SIGSTOPped for 5 s, as in the report
        back = time.monotonic()
        time.sleep(RECOVERY + 1.0)
    load.check(back)
    shared_in_flight_drops_to_zero(lim, own_redis_server, redis_key)
    lim.close()


@pytest.mark.parametrize("policy", ["local", "raise"])
def test_a_crashed_and_restarted_redis_under_load(
    own_redis_server: RedisServer, redis_key: str, policy: str
) -> None:
    lim = make(own_redis_server, redis_key, policy)
    with Load(lim) as load:
        time.sleep(1.0)
        own_redis_server.kill()
        time.sleep(2.0)
        own_redis_server.start()
        back = time.monotonic()
        time.sleep(RECOVERY + 1.0)
    load.check(back)
    shared_in_flight_drops_to_zero(lim, own_redis_server, redis_key)
    lim.close()


@pytest.mark.parametrize("policy", ["local", "raise"])
def test_an_acquire_on_a_hung_redis_keeps_its_timeout(
    own_redis_server: RedisServer, redis_key: str, policy: str
) -> None:
    lim = make(own_redis_server, redis_key, policy, backend_retry=60.0)
    lim.acquire().release()  # connected, scripts loaded
    with stopped(own_redis_server):
        for timeout in (1.0, 0.4):
            t0 = time.monotonic()
            with suppress(AcquireTimeout, BackendError):
                lim.acquire(timeout=timeout).release()
            assert time.monotonic() - t0 <= timeout + LATE
    lim.close()


def test_the_local_fallback_counts_the_permits_still_held_on_redis(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    lim = make(own_redis_server, redis_key, "local", backend_retry=0.3, socket_timeout=0.5)
    held = [lim.acquire(timeout=5) for _ in range(MC)]  # all on Redis
    admitted: list[Any] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            p = lim.acquire(timeout=1.0)
        except AcquireTimeout:
            return
        with lock:
            admitted.append(p)

    with stopped(own_redis_server):
        threads = [threading.Thread(target=one) for _ in range(2 * MC)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert admitted == [], f"{len(admitted)} admitted locally with {MC} held on Redis"
        assert lim.in_flight == MC
        for p in held[:2]:  # released while Redis hangs: counted out here at once
            p.release()
        local = [lim.acquire(timeout=1.0) for _ in range(2)]
        assert lim.degraded
        with pytest.raises(AcquireTimeout):
            lim.acquire(timeout=0.2)
    # Redis answers again: 2 held on Redis, 2 held locally. No path admits a fifth.
    wait_until(lambda: lim.shared_stats()["backend"] == "redis")
    with pytest.raises(AcquireTimeout):
        lim.acquire(timeout=0.5)
    for p in local:  # released to the local limiter, and room for Redis admissions
        p.release()
    again = [lim.acquire(timeout=2.0) for _ in range(2)]
    with pytest.raises(AcquireTimeout):
        lim.acquire(timeout=0.3)
    assert lim.shared_stats()["in_flight"] == MC  # the two released on the hang are gone
    for p in [*again, *held[2:]]:
        p.release()
    assert lim.shared_stats()["in_flight"] == 0
    lim.close()


def test_releases_that_failed_on_a_hung_redis_are_sent_again(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    lim = make(own_redis_server, redis_key, "raise")  # lease_timeout: the default 30 s
    held = [lim.acquire(timeout=5) for _ in range(MC)]
    with stopped(own_redis_server):
        for p in held:
            p.release()  # never raises, never waits past a short bound
        with pytest.raises(BackendError):
            lim.acquire(timeout=0.5)
    back = time.monotonic()
    got = None
    for _ in range(100):
        try:
            got = lim.acquire(timeout=0.5)
            break
        except (AcquireTimeout, BackendError):
            if time.monotonic() - back > RECOVERY:
                break
    assert got is not None, "nothing admitted within 2 s of Redis answering again"
    assert time.monotonic() - back <= RECOVERY + LATE
    got.release()
    shared_in_flight_drops_to_zero(lim, own_redis_server, redis_key)
    lim.close()


@pytest.mark.parametrize("policy", ["local", "raise"])
def test_a_chat_on_a_hung_redis_keeps_its_deadline(
    own_redis_server: RedisServer, redis_key: str, policy: str
) -> None:
    from ratelimit_sdk import Client
    from ratelimit_sdk.testing import FakeProvider

    with FakeProvider("p", latency=0.01) as fake:
        client = Client(
            {
                "backend": own_redis_server.url,
                "key_prefix": redis_key,
                "on_backend_error": policy,
                "providers": [
                    {
                        "name": "p",
                        "base_url": fake.base_url,
                        "model": "m",
                        "limits": {"max_concurrent": 2},
                        "retry": {"max_retries": 0, "base_delay": 0.01},
                    }
                ],
            }
        )
        try:
            client.chat("warm up", timeout=10)
            with stopped(own_redis_server):
                for deadline in (2.0, 1.0):
                    t0 = time.monotonic()
                    try:
                        client.chat("q", timeout=deadline)
                        ok = True
                    except Exception:
                        ok = False
                    took = time.monotonic() - t0
                    assert took <= deadline + LATE, f"chat(timeout={deadline}) took {took:.2f}s"
                    if policy == "local":
                        assert ok, "the local fallback admits the call"
        finally:
            client.close()


def test_a_waiter_of_a_full_process_hears_higher_limits_set_elsewhere(
    redis_url: str, redis_key: str
) -> None:
    a = Limiter(max_concurrent=1, backend=redis_url, key=redis_key, on_backend_error="raise")
    b = Limiter(max_concurrent=1, backend=redis_url, key=redis_key, on_backend_error="raise")
    assert isinstance(a, RedisLimiter) and isinstance(b, RedisLimiter)
    holder = a.acquire()
    got: list[float] = []

    def waiter() -> None:
        with a.acquire(timeout=10):
            got.append(time.monotonic())

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: a.shared_stats()["waiting"] == 1)  # it keeps its place in line
    time.sleep(0.2)
    raised = time.monotonic()
    b.update(max_concurrent=2)
    t.join(15)
    assert got, "not admitted"
    assert got[0] - raised < 1.5  # woken by the change, not by the end of a 2 s slice
    holder.release()
    a.close()
    b.close()


def test_a_short_wait_that_runs_out_on_a_slow_redis_is_no_outage(
    own_redis_server: RedisServer, redis_key: str
) -> None:
    lim = make(own_redis_server, redis_key, "local", backend_retry=60.0)
    lim.acquire().release()
    with stopped(own_redis_server):
        t0 = time.monotonic()
        with pytest.raises(AcquireTimeout):
            lim.acquire(timeout=0.2)
        assert time.monotonic() - t0 <= 0.2 + LATE
        assert not lim.degraded  # its own time ran out; Redis was not given long enough
        with suppress(AcquireTimeout):
            lim.acquire(timeout=1.0).release()  # given long enough: now it is an outage
        assert lim.degraded
    lim.close()
