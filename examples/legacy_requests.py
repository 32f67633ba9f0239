"""Legacy `requests` code under rate limits, without rewriting a single call site.

A thread pool posts to an API with plain `requests.Session.post`. Mounting a
RateLimitAdapter on the API's URL prefix is the only change: it keeps in flight
what the server allows, and a 429 with Retry-After pauses every thread.

Runs offline: the "API" is ratelimit_sdk.testing.FakeProvider on 127.0.0.1,
which rejects a third concurrent request with 429 and sends one scripted 429.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests

from ratelimit_sdk import Limiter, RateLimitAdapter
from ratelimit_sdk.testing import FakeProvider, Respond


def legacy_call(session: requests.Session, url: str, n: int) -> str:
    """Existing code: knows nothing about rate limits."""
    response = session.post(
        url,
        json={"model": "m", "messages": [{"role": "user", "content": f"item {n}"}]},
        timeout=(5, 30),
    )
    response.raise_for_status()
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def main() -> None:
    with FakeProvider("api", max_concurrency=2, latency=0.02) as fake:
        fake.script([Respond.rate_limited(retry_after=1)])  # one throttled answer

        limiter = Limiter(max_concurrent=2)
        session = requests.Session()
        # The one new line: everything under this prefix goes through the limiter.
        # retry_on_429=2: a 429 is re-sent (after its cooldown) instead of raised.
        session.mount(fake.base_url, RateLimitAdapter(limiter, timeout=60, retry_on_429=2))

        url = fake.base_url + "/chat/completions"
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda n: legacy_call(session, url, n), range(20)))
        elapsed = time.monotonic() - start

        print(f"{len(answers)} answers in {elapsed:.1f}s, first: {answers[0]!r}")
        print(f"requests the server saw: {fake.count} (one scripted 429, re-sent)")
        print(f"429s seen by the server: {fake.statuses[429] - 1} beyond the scripted one")
        print(f"most in flight at once: {fake.max_in_flight_seen} (limit 2)")
        print(f"permits still held: {limiter.in_flight}")
        assert fake.statuses[429] == 1 and fake.max_in_flight_seen <= 2
        assert limiter.in_flight == 0


if __name__ == "__main__":
    main()
