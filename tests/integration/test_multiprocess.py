"""Several real processes share one budget through Redis (issue 6, "Done when").

Each child process (``multiprocessing`` "spawn", like separate workers) builds
its own ``Limiter(backend=redis://..., key=...)``. They call one strict
``FakeProvider`` whose server-side limits match the limiters', so any overshoot
would show as a 429 or as too many requests in flight. Counts and every wait are
bounded; a global time-out per test stops a hang.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import time
from typing import Any

import pytest
from redis_workers import call_provider, hold_forever, update_limits, wait_for_a_permit

from ratelimit_sdk.limiter import Limiter
from ratelimit_sdk.testing import FakeProvider

pytestmark = [pytest.mark.redis, pytest.mark.integration, pytest.mark.timeout(240)]

SPAWN = multiprocessing.get_context("spawn")


def _collect(results: Any, n: int, timeout: float) -> list[Any]:
    out = []
    deadline = time.monotonic() + timeout
    for _ in range(n):
        out.append(results.get(timeout=max(1.0, deadline - time.monotonic())))
    return out


def _stop(procs: list[Any]) -> None:
    for p in procs:
        p.join(10)
        if p.is_alive():  # pragma: no cover - only when something hung
            p.kill()
            p.join(5)


def test_four_processes_stay_within_one_providers_limits(redis_url: str, redis_key: str) -> None:
    rate_per_minute, burst, per_process = 600.0, 2, 8  # 10 starts per second
    # The server's limits exactly. The loopback hop does not take the same time for
    # every request (on 2 busy cores, process scheduling alone can add 100 ms), so the
    # limiters' buckets run 250 ms behind the server's (margin): a request that left on
    # time never arrives before its token. The margin costs 250 ms once, not per request.
    limits = {
        "max_concurrent": 2,
        "requests_per_minute": rate_per_minute,
        "burst": burst,
        "margin": 0.25,
    }
    with FakeProvider(
        max_concurrency=2,
        requests_per_minute=rate_per_minute,
        burst=burst,
        latency=0.15,  # long enough that the concurrency limit is reached often
    ) as fake:
        barrier = SPAWN.Barrier(4)
        results = SPAWN.Queue()
        url = fake.base_url + "/chat/completions"
        procs = [
            SPAWN.Process(
                target=call_provider,
                args=(redis_url, redis_key, limits, url, per_process, barrier, results),
            )
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        try:
            reports = _collect(results, 4, timeout=180)
        finally:
            _stop(procs)
        recorded = fake.requests
        statuses = fake.statuses
        peak = fake.max_in_flight_seen

    assert all(kind == "ok" for kind, _ in reports), reports
    assert sorted(itertools.chain.from_iterable(s for _, s in reports)) == [200] * 32
    assert statuses[429] == 0
    assert 1 <= peak <= 2
    starts = sorted(r.started for r in recorded if r.started is not None)
    assert len(starts) == 32
    rate = rate_per_minute / 60.0
    slack = 0.25  # seconds of loopback jitter between admission and arrival
    for i, j in itertools.combinations(range(len(starts)), 2):
        window = starts[j] - starts[i]
        assert j - i + 1 <= burst + rate * (window + slack) + 1e-9, (i, j, window)


def test_a_sigkilled_holder_loses_its_permit_after_the_lease(
    redis_url: str, redis_key: str
) -> None:
    lease = 2.0
    holding = SPAWN.Event()
    proc = SPAWN.Process(target=hold_forever, args=(redis_url, redis_key, lease, holding))
    proc.start()
    lim = None
    try:
        assert holding.wait(60), "the holder never got its permit"
        lim = Limiter(
            max_concurrent=1,
            backend=redis_url,
            key=redis_key,
            lease_timeout=lease,
            on_backend_error="raise",
        )
        assert lim.try_acquire() is None
        time.sleep(lease * 1.5)  # longer than a lease: the live holder keeps renewing it
        assert lim.try_acquire() is None
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        killed = time.monotonic()
        with lim.acquire(timeout=lease * 10):
            waited = time.monotonic() - killed
        # The lease was last renewed at most lease/3 before the kill.
        assert lease * 0.5 <= waited <= lease + 5.0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        if lim is not None:
            lim.close()


def test_a_hot_update_in_one_process_reaches_the_others(redis_url: str, redis_key: str) -> None:
    lim = Limiter(max_concurrent=1, backend=redis_url, key=redis_key, on_backend_error="raise")
    try:
        # Another process raises the limit; this one sees it at its next admission.
        holder = lim.acquire()
        assert lim.try_acquire() is None
        proc = SPAWN.Process(
            target=update_limits, args=(redis_url, redis_key, {"max_concurrent": 3})
        )
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        more = [lim.try_acquire(), lim.try_acquire()]
        assert all(p is not None for p in more)
        assert lim.try_acquire() is None

        # This process lowers it again and then raises it: a waiting process gets in.
        lim.update(max_concurrent=1)
        for p in more:
            assert p is not None
            p.release()
        waiting, admitted = SPAWN.Event(), SPAWN.Event()
        proc = SPAWN.Process(
            target=wait_for_a_permit, args=(redis_url, redis_key, waiting, admitted)
        )
        proc.start()
        try:
            assert waiting.wait(60)
            assert not admitted.wait(1.0)  # the holder still holds the only permit
            lim.update(max_concurrent=2)
            assert admitted.wait(30)  # woken by the change while the holder holds
        finally:
            _stop([proc])
        holder.release()
    finally:
        lim.close()
