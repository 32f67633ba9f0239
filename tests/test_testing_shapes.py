"""ratelimit_sdk.testing.shapes: the server shapes a FakeProvider enforces, and today's SDK.

Two kinds of test per shape:

- The shape itself, driven with plain ``requests`` calls: exact arithmetic on an
  injected clock where the shape takes one, or a concurrent burst of raw
  requests on real time (only the shape's invariant is asserted, never a speed).
- An SDK ``Client`` configured with the matching limits, driven with a bounded
  number of requests: it must finish them all; the test records how many 429s
  the server sent (``record_property("server_429s")``) and asserts 0. Where the
  SDK lacks the feature that 0 needs, the test is ``xfail(strict=False)`` and
  the reason names the feature: an XPASS there is a lucky run, not a fix.
"""

from __future__ import annotations

import calendar
import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from ratelimit_sdk import Client
from ratelimit_sdk.testing import (
    FakeProvider,
    FixedWindow,
    HiddenConcurrency,
    HiddenRate,
    LeakyBucket,
    OpenAIHeaders,
    Shape,
    SlidingWindow,
)
from ratelimit_sdk.testing.shapes import NGINX_429_BODY

MESSAGES = [{"role": "user", "content": "hello there"}]


#: The fake runs in the test's own process: its handler threads share the GIL with
#: the client's 12-16 threads, so a request can reach the fake's limiter tens of
#: milliseconds after it was written, a delay the client cannot measure (a real
#: server has its own process; see benchmarks/bench_real_servers.py). The window
#: tests give the allowance that much (a window pays it once per window).
IN_PROCESS_MARGIN = 0.15


class ManualClock:
    """A settable clock for a shape's ``clock=`` (seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def chat(fake: FakeProvider, **body: Any) -> requests.Response:
    payload = {"model": "m", "messages": MESSAGES, **body}
    return requests.post(fake.base_url + "/chat/completions", json=payload, timeout=10)


def raw_burst(fake: FakeProvider, n: int) -> list[int]:
    """``n`` raw requests released at once from ``n`` threads; their statuses."""
    barrier = threading.Barrier(n, timeout=10)
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        code = chat(fake).status_code
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return statuses


def drive_client(
    fake: FakeProvider,
    limits: dict[str, Any],
    n: int,
    workers: int = 4,
    record: Callable[[str, object], None] | None = None,
) -> int:
    """Send ``n`` calls through a Client with ``limits``; all must succeed; return the 429s."""
    retry = {"max_retries": 6, "base_delay": 0.05, "max_delay": 1.0}
    config = {"providers": [fake.provider_config(limits=limits, retry=retry)]}
    prompts = [[{"role": "user", "content": f"request {i}"}] for i in range(n)]
    with Client(config) as client:
        results = client.map(
            prompts, max_workers=workers, progress=False, return_exceptions=True, timeout=30
        )
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures[:3]
    refused = fake.statuses[429]
    if record is not None:
        record("server_429s", refused)
    return refused


@pytest.fixture
def record(record_property: Callable[[str, object], None]) -> Callable[[str, object], None]:
    return record_property


# -- nginx limit_req: leaky bucket ---------------------------------------------------------------


def test_leaky_bucket_burst_nodelay_on_nginx_millisecond_accounting() -> None:
    """rate=40r/s burst=4 nodelay: 5 at once, then one per 25 ms; 429s without Retry-After."""
    clock = ManualClock(100.0)
    with FakeProvider(shapes=[LeakyBucket(rate=40, burst=4, clock=clock)]) as fake:
        codes = [chat(fake).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        refused = chat(fake)
        assert refused.status_code == 429
        assert "Retry-After" not in refused.headers
        assert refused.headers["Content-Type"] == "text/html"
        assert refused.text == NGINX_429_BODY
        clock.now += 0.025
        assert [chat(fake).status_code for _ in range(2)] == [200, 429]
        clock.now += 0.100  # four more drained
        assert [chat(fake).status_code for _ in range(5)] == [200] * 4 + [429]
        assert fake.statuses == {200: 10, 429: 4}
        assert [r.kind for r in fake.requests].count("leaky_bucket") == 4


def test_leaky_bucket_without_burst_counts_whole_milliseconds() -> None:
    """No burst: starts 1/R apart, measured between integer milliseconds as nginx does."""
    clock = ManualClock(10.0009)  # nginx ms 10000
    with FakeProvider(shapes=[LeakyBucket(rate=40, clock=clock)]) as fake:
        assert chat(fake).status_code == 200
        clock.now = 10.0249  # ms 10024: 24 ms after the last accepted one
        assert chat(fake).status_code == 429
        clock.now = 10.0250  # ms 10025
        assert chat(fake).status_code == 200
        clock.now = 10.0500  # ms 10050
        assert chat(fake).status_code == 200
        # 24.2 ms of real time, but 25 ticks: nginx lets it pass.
        clock.now = 10.0742  # ms 10074: 24 ms after ms 10050 -> refused
        assert chat(fake).status_code == 429
        clock.now = 10.0751  # ms 10075
        assert chat(fake).status_code == 200
        # A long pause gives no credit: the next two, 1 ms apart, are one too many.
        clock.now = 20.0
        assert [chat(fake).status_code for _ in range(2)] == [200, 429]


def test_leaky_bucket_raw_burst_is_refused() -> None:
    """12 raw requests at once against 1r/s burst=2: at most 3 + 1 per second get through."""
    with FakeProvider(shapes=[LeakyBucket(rate=1, burst=2)]) as fake:
        codes = raw_burst(fake, 12)
        ok = [r for r in fake.requests if r.status == 200]
        span = max(r.arrived for r in ok) - min(r.arrived for r in ok)
        assert len(codes) == 12
        assert codes.count(200) <= 3 + span * 1 + 1
        assert codes.count(429) >= 1


def test_sdk_against_nginx_burst_and_limit_conn(record: Callable[[str, object], None]) -> None:
    """limit_req rate=20r/s burst=2 nodelay + limit_conn 2, 20 ms latency: rpm 1200, burst 3."""
    shapes: list[Shape] = [HiddenConcurrency(2), LeakyBucket(rate=20, burst=2)]
    with FakeProvider(shapes=shapes, latency=0.02) as fake:
        limits = {"max_concurrent": 2, "requests_per_minute": 1200, "burst": 3}
        assert drive_client(fake, limits, 16, record=record) == 0
        assert fake.max_in_flight_seen <= 2


def test_sdk_against_nginx_without_burst(record: Callable[[str, object], None]) -> None:
    """limit_req rate=20r/s (no burst): min_interval 0.05 s, burst 1.

    A one-token limit can give the in-process fake's scheduling only a fifth of its
    interval (see IN_PROCESS_MARGIN): one 429 may come before the allowance widens
    by itself, never a second.
    """
    with FakeProvider(shapes=[LeakyBucket(rate=20)]) as fake:
        limits = {"requests_per_minute": 1200, "burst": 1, "min_interval": 0.05}
        assert drive_client(fake, limits, 16, record=record) <= 1


# -- windows ---------------------------------------------------------------------------------------


def test_sliding_window_counts_any_interval() -> None:
    """At most 3 in any 10 s: the 4th waits for the oldest to leave (Retry-After)."""
    clock = ManualClock(50.0)
    with FakeProvider(shapes=[SlidingWindow(limit=3, seconds=10.0, clock=clock)]) as fake:
        for _ in range(3):
            assert chat(fake).status_code == 200
            clock.now += 1.0
        clock.now = 55.0
        refused = chat(fake)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "5"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        clock.now = 60.0  # the first (at 50) has left the window
        assert [chat(fake).status_code for _ in range(2)] == [200, 429]
        assert fake.statuses == {200: 4, 429: 2}


def test_sliding_window_raw_burst_is_refused() -> None:
    """12 raw requests at once against 3 in any 5 s: 3 pass (unless 5 s go by)."""
    with FakeProvider(shapes=[SlidingWindow(limit=3, seconds=5.0)]) as fake:
        codes = raw_burst(fake, 12)
        ok = sorted(r.arrived for r in fake.requests if r.status == 200)
        for i in range(len(ok) - 3):
            assert ok[i + 3] - ok[i] > 5.0
        assert codes.count(429) >= 1


def test_sdk_against_sliding_window(record: Callable[[str, object], None]) -> None:
    """3 in any 1 s, and the matching client config: a sliding window of 3 per second."""
    with FakeProvider(shapes=[SlidingWindow(limit=3, seconds=1.0)]) as fake:
        limits = {"windows": [{"requests": 3, "per": 1}], "safety_margin": IN_PROCESS_MARGIN}
        assert drive_client(fake, limits, 12, record=record) == 0


def test_fixed_window_resets_at_utc_midnight_with_an_injected_clock() -> None:
    """A daily quota of 2: refused until 00:00 UTC, then 2 more, without waiting a day."""
    midnight = calendar.timegm((2026, 12, 2, 0, 0, 0))
    clock = ManualClock(midnight - 2.5)
    with FakeProvider(shapes=[FixedWindow(limit=2, seconds=86400, clock=clock)]) as fake:
        assert [chat(fake).status_code for _ in range(2)] == [200, 200]
        refused = chat(fake)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "3"
        assert "2026-12-02T00:00:00Z" in refused.json()["error"]["message"]
        clock.now = midnight  # the new day
        assert [chat(fake).status_code for _ in range(3)] == [200, 200, 429]
        clock.now = midnight + 86399.9
        assert chat(fake).status_code == 429
        clock.now = midnight + 86400
        assert chat(fake).status_code == 200


def test_fixed_window_raw_burst_is_refused() -> None:
    """12 raw requests at once against 3 per UTC-aligned 5 s window: at most 3 per window."""
    with FakeProvider(shapes=[FixedWindow(limit=3, seconds=5.0)]) as fake:
        codes = raw_burst(fake, 12)
        assert codes.count(429) >= 12 - 3 * 2  # the burst spans at most two windows
        assert codes.count(200) <= 6


def test_sdk_against_fixed_window(record: Callable[[str, object], None]) -> None:
    """3 per UTC-aligned second, and the matching client config: a UTC window of 3 per second."""
    with FakeProvider(shapes=[FixedWindow(limit=3, seconds=1.0)]) as fake:
        limits = {
            "windows": [{"requests": 3, "per": 1, "align": "utc"}],
            "safety_margin": IN_PROCESS_MARGIN,
        }
        assert drive_client(fake, limits, 12, record=record) == 0


# -- hidden limits ---------------------------------------------------------------------------------


def test_hidden_concurrency_answers_moonshots_429_and_announces_nothing() -> None:
    gate = threading.Event()

    def held() -> float:
        gate.wait(5.0)
        return 0.0

    with FakeProvider(shapes=[HiddenConcurrency(1)], latency=held) as fake:
        first: list[requests.Response] = []
        thread = threading.Thread(target=lambda: first.append(chat(fake)))
        thread.start()
        try:
            assert fake.wait_for_in_flight(1)
            refused = chat(fake)
        finally:
            gate.set()
            thread.join(10)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_reached_error"
        assert "max organization concurrency: 1" in error["message"]
        assert not [h for h in refused.headers if h.lower().startswith(("x-ratelimit", "retry"))]
        assert first[0].status_code == 200
        assert not [h for h in first[0].headers if h.lower().startswith("x-ratelimit")]
        assert fake.max_in_flight_seen == 1


def test_hidden_concurrency_raw_burst_is_refused() -> None:
    with FakeProvider(shapes=[HiddenConcurrency(2)], latency=0.3) as fake:
        codes = raw_burst(fake, 8)
        assert fake.max_in_flight_seen <= 2
        assert codes.count(429) >= 1


def test_sdk_against_hidden_concurrency(record: Callable[[str, object], None]) -> None:
    """max_concurrent 2 against a hidden limit of 2 (20 ms latency): no 429 at all."""
    with FakeProvider(shapes=[HiddenConcurrency(2)], latency=0.02) as fake:
        assert drive_client(fake, {"max_concurrent": 2}, 16, workers=6, record=record) == 0
        assert fake.max_in_flight_seen <= 2


def test_hidden_rate_refuses_with_no_header_at_all() -> None:
    clock = ManualClock(5.0)
    shape = HiddenRate(requests_per_minute=60, burst=2, clock=clock)
    with FakeProvider(shapes=[shape]) as fake:
        answers = [chat(fake) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        for answer in answers:
            assert not [h for h in answer.headers if h.lower().startswith(("x-ratelimit", "retry"))]
        clock.now += 1.0
        assert [chat(fake).status_code for _ in range(2)] == [200, 429]


def test_hidden_rate_raw_burst_is_refused() -> None:
    with FakeProvider(shapes=[HiddenRate(requests_per_minute=60, burst=2)]) as fake:
        codes = raw_burst(fake, 12)
        ok = [r for r in fake.requests if r.status == 200]
        span = max(r.arrived for r in ok) - min(r.arrived for r in ok)
        assert codes.count(200) <= 2 + span * 1 + 1
        assert codes.count(429) >= 1


def test_sdk_against_hidden_rate(record: Callable[[str, object], None]) -> None:
    """A hidden 600/min bucket of 2, and a client told the same: rpm 600, burst 2."""
    with FakeProvider(shapes=[HiddenRate(requests_per_minute=600, burst=2)]) as fake:
        limits = {"requests_per_minute": 600, "burst": 2}
        assert drive_client(fake, limits, 16, record=record) == 0


# -- OpenAI's headers --------------------------------------------------------------------------


def test_openai_headers_on_every_answer() -> None:
    clock = ManualClock(0.0)
    shape = OpenAIHeaders(requests_per_minute=3, tokens_per_minute=1000, clock=clock)
    with FakeProvider(shapes=[shape]) as fake:
        answers = [chat(fake, max_tokens=10) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == [
            "2",
            "1",
            "0",
            "0",
        ]
        first = answers[0].headers
        assert first["x-ratelimit-limit-requests"] == "3"
        assert first["x-ratelimit-reset-requests"] == "20s"
        assert first["x-ratelimit-limit-tokens"] == "1000"
        assert first["x-ratelimit-remaining-tokens"] == "987"  # 3 prompt tokens + max_tokens 10
        assert first["x-ratelimit-reset-tokens"] == "780ms"
        refused = answers[3]
        assert refused.headers["Retry-After"] == "20"
        assert "on requests per min" in refused.json()["error"]["message"]
        clock.now = 20.0
        too_big = chat(fake, max_tokens=5000)
        assert too_big.status_code == 429
        assert "on tokens per min" in too_big.json()["error"]["message"]
        assert too_big.headers["x-ratelimit-remaining-requests"] == "1"


def test_openai_headers_ride_on_other_shapes_429s() -> None:
    clock = ManualClock(0.0)
    shapes: list[Shape] = [
        OpenAIHeaders(requests_per_minute=100, clock=clock),
        SlidingWindow(limit=1, seconds=10.0, clock=clock),
    ]
    with FakeProvider(shapes=shapes) as fake:
        assert chat(fake).status_code == 200
        refused = chat(fake)
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-remaining-requests"] == "99"  # not charged
        assert "x-ratelimit-limit-tokens" not in refused.headers


def test_openai_headers_raw_burst_is_refused() -> None:
    with FakeProvider(shapes=[OpenAIHeaders(requests_per_minute=6)]) as fake:
        codes = raw_burst(fake, 12)
        assert codes.count(200) <= 6 + 1
        assert codes.count(429) >= 1


def test_sdk_against_openai_headers(record: Callable[[str, object], None]) -> None:
    """A full-minute bucket of 60 and a client told rpm 60, burst 60: 40 requests, no 429."""
    with FakeProvider(shapes=[OpenAIHeaders(requests_per_minute=60)]) as fake:
        limits = {"requests_per_minute": 60, "burst": 60}
        assert drive_client(fake, limits, 40, record=record) == 0


# -- combining and changing shapes -------------------------------------------------------------


def test_a_refused_request_is_charged_to_no_shape() -> None:
    clock = ManualClock(1.0)
    shapes: list[Shape] = [
        SlidingWindow(limit=2, seconds=100.0, clock=clock),
        LeakyBucket(rate=1, clock=clock),
    ]
    with FakeProvider(shapes=shapes, requests_per_minute=600, burst=10) as fake:
        assert [chat(fake).status_code for _ in range(5)] == [200, 429, 429, 429, 429]
        clock.now += 1.0  # the leaky bucket lets one more pass; the window still has room
        assert chat(fake).status_code == 200
        clock.now += 1.0
        assert chat(fake).status_code == 429  # now the window is full
        assert [r.kind for r in fake.requests][-1] == "sliding_window"


def test_set_shapes_replaces_with_fresh_state() -> None:
    with FakeProvider(shapes=[SlidingWindow(limit=1, seconds=60.0)]) as fake:
        assert [chat(fake).status_code for _ in range(2)] == [200, 429]
        fake.set_shapes([SlidingWindow(limit=1, seconds=60.0)])
        assert chat(fake).status_code == 200
        assert fake.shapes == (SlidingWindow(limit=1, seconds=60.0),)
        fake.set_shapes([])
        assert [chat(fake).status_code for _ in range(3)] == [200] * 3
        with pytest.raises(TypeError):
            fake.set_shapes(["nginx"])  # type: ignore[list-item]
        assert not fake.shapes


@pytest.mark.parametrize(
    "make",
    [
        lambda: LeakyBucket(rate=0),
        lambda: LeakyBucket(rate=1, burst=-1),
        lambda: SlidingWindow(limit=0, seconds=1),
        lambda: FixedWindow(limit=1, seconds=0),
        lambda: HiddenConcurrency(0),
        lambda: HiddenRate(requests_per_minute=float("nan")),
        lambda: OpenAIHeaders(),
    ],
)
def test_bad_shapes_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()
