"""Child-process bodies for ``test_multiprocess.py`` (spawned, so they must be importable).

Each builds its own ``Limiter(backend=redis_url, key=...)``, as a separate
worker process of a real service would, and reports through a multiprocessing
queue. Every wait is bounded so a broken limiter fails the test instead of
hanging it.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from ratelimit_sdk.limiter import Limiter

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


def call_provider(
    redis_url: str,
    key: str,
    limits: dict[str, Any],
    url: str,
    n: int,
    barrier: Any,
    results: Any,
) -> None:
    """Make ``n`` calls to ``url``, each under a permit; put the statuses on ``results``."""
    lim = Limiter(backend=redis_url, key=key, on_backend_error="raise", **limits)
    statuses: list[int] = []
    try:
        with requests.Session() as session:
            barrier.wait(60)  # everybody starts together
            for _ in range(n):
                with lim.acquire(timeout=60):
                    reply = session.post(url, json=BODY, timeout=30)
                    statuses.append(reply.status_code)
        results.put(("ok", statuses))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc)))
    finally:
        lim.close()


def hold_forever(redis_url: str, key: str, lease_timeout: float, holding: Any) -> None:
    """Take the only permit and keep it until killed."""
    lim = Limiter(max_concurrent=1, backend=redis_url, key=key, lease_timeout=lease_timeout)
    permit = lim.acquire(timeout=60)
    holding.set()
    time.sleep(600)
    permit.release()  # pragma: no cover - the test kills us first


def wait_for_a_permit(redis_url: str, key: str, waiting: Any, admitted: Any) -> None:
    """Wait (up to 60 s) for a permit of a ``max_concurrent=1`` limiter; signal when in."""
    lim = Limiter(max_concurrent=1, backend=redis_url, key=key, on_backend_error="raise")
    waiting.set()
    with lim.acquire(timeout=60):
        admitted.set()
    lim.close()


def update_limits(redis_url: str, key: str, changes: dict[str, Any]) -> None:
    """Another process changes the limits while running."""
    lim = Limiter(max_concurrent=1, backend=redis_url, key=key, on_backend_error="raise")
    lim.update(**changes)
    lim.close()
