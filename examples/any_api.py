"""Any API, not only chat: the same limits, breaker and retries around your own function.

Two ways:

* ``@client.guarded("weather")``: each call of the decorated function gets the
  ``weather`` provider's limits, circuit breaker and retries from the Client's
  config. A ``requests`` error carrying a 429 puts the provider in cooldown for
  the server's Retry-After (every thread waits it out), then the call is retried.
* ``@Limiter(...)``: just admission control (concurrency, rate, spacing) for a
  function, no Client needed.

Runs offline: the "APIs" are FakeProviders on 127.0.0.1. They speak an LLM wire
format, but to the code below they are just JSON over HTTP: it posts with
``requests`` and reads the JSON answer. The weather API allows 2 requests in
flight and throws one 429 with ``Retry-After: 1``.

    python examples/any_api.py             # 12 calls each
    python examples/any_api.py 40          # or ANY_API_CALLS=40
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from ratelimit_sdk import Client, Event, Limiter
from ratelimit_sdk.testing import FakeProvider, Respond


def weather_reply(body: Mapping[str, Any]) -> str:
    """What the fake weather API answers."""
    return f"{body.get('city')}: 21 C, light wind"


def geo_reply(body: Mapping[str, Any]) -> str:
    """What the fake geocoding API answers."""
    return f"{body.get('city')}: 48.1 N, 11.6 E"


def show_cooldown(event: Event) -> None:
    """A hook: the SDK calls it when a provider is put in cooldown (here: after the 429)."""
    print(f"  429 from {event.provider}: cooldown {event.delay:g}s, every thread waits")


def main(n: int) -> None:
    weather = FakeProvider("weather", max_concurrency=2, reply=weather_reply, latency=0.02)
    geo = FakeProvider("geo", max_concurrency=3, reply=geo_reply, latency=0.02)
    with weather, geo:
        weather.script([Respond.rate_limited(retry_after=1)])  # one 429, Retry-After: 1

        config = {
            "providers": [
                weather.provider_config(
                    limits={"max_concurrent": 2},
                    retry={"max_retries": 2, "base_delay": 0.2},
                )
            ]
        }
        with Client(config) as client:
            client.on("cooldown", show_cooldown)
            session = requests.Session()
            weather_url = weather.base_url + "/chat/completions"

            # 1. A plain function calling some HTTP API, under the provider's limits.
            @client.guarded("weather", retry_on=(requests.RequestException,), timeout=30)
            def forecast(city: str) -> str:
                r = session.post(weather_url, json={"city": city}, timeout=10)
                r.raise_for_status()  # a 429 raises HTTPError carrying the response
                text: str = r.json()["choices"][0]["message"]["content"]
                return text

            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(forecast, [f"city-{i}" for i in range(n)]))
            elapsed = time.monotonic() - started
            print(f"guarded: {len(answers)} forecasts in {elapsed:.1f}s, first {answers[0]!r}")
            s = client.stats()["weather"]
            print(
                f"  stats: requests={s.requests} ok={s.ok} rate_limited={s.rate_limited} "
                f"retries={s.retries} errors={s.errors} breaker={s.breaker_state}"
            )
            print(
                f"  server: 429s={weather.statuses[429]} (the scripted one), "
                f"most in flight {weather.max_in_flight_seen} (limit 2)"
            )

        # 2. A bare Limiter as a decorator: each call holds a permit while it runs.
        @Limiter(max_concurrent=3, requests_per_minute=6000, burst=5)
        def locate(city: str) -> str:
            r = requests.post(geo.base_url + "/chat/completions", json={"city": city}, timeout=10)
            r.raise_for_status()
            text: str = r.json()["choices"][0]["message"]["content"]
            return text

        with ThreadPoolExecutor(max_workers=8) as pool:
            places = list(pool.map(locate, [f"city-{i}" for i in range(n)]))
        print(f"limiter: {len(places)} lookups, first {places[0]!r}")
        print(
            f"  server: 429s={geo.statuses[429]}, most in flight {geo.max_in_flight_seen} (limit 3)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("ANY_API_CALLS", "12")))
