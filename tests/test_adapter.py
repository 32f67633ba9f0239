"""RateLimitAdapter: a requests transport adapter, tested against FakeProvider over real HTTP.

Limiters are built as ``MemoryLimiter`` (what ``Limiter(...)`` returns for the default
backend) because mypy refuses to instantiate the abstract ``Limiter`` class directly.
"""

from __future__ import annotations

import datetime
import email.utils
import gc
import io
import json
import logging
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
import requests.adapters

from ratelimit_sdk.adapter import DEFAULT_COOLDOWN, RateLimitAdapter
from ratelimit_sdk.errors import AcquireTimeout, ConfigError
from ratelimit_sdk.limiter import MemoryLimiter
from ratelimit_sdk.testing import FakeClock, FakeProvider, Respond

CANARY = "sk-canary-DO-NOT-LEAK-adapter-5e1d"
MESSAGES = [{"role": "user", "content": "hello there"}]
HTTP_TIMEOUT = (5.0, 10.0)
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "legacy_requests.py"


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("api") as provider:
        yield provider


def mounted(fake: FakeProvider, adapter: RateLimitAdapter) -> requests.Session:
    """A plain Session with the adapter mounted on the fake's base URL."""
    session = requests.Session()
    session.mount(fake.base_url, adapter)
    return session


def chat_url(fake: FakeProvider) -> str:
    return fake.base_url + "/chat/completions"


def post(session: requests.Session, fake: FakeProvider, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("json", {"model": "m", "messages": MESSAGES})
    kwargs.setdefault("timeout", HTTP_TIMEOUT)
    return session.post(chat_url(fake), **kwargs)


def run_threads(count: int, target: Callable[[int], None], timeout: float = 60.0) -> None:
    """Run ``target(i)`` on ``count`` threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "threads did not finish"
    if errors:
        raise errors[0]


# ---- admission -----------------------------------------------------------------------


def test_limits_enforced_across_sixteen_threads() -> None:
    with FakeProvider("kimi", max_concurrency=2, latency=0.02) as fake:
        limiter = MemoryLimiter(max_concurrent=2)
        session = mounted(fake, RateLimitAdapter(limiter))
        statuses: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(16, timeout=10)

        def worker(_: int) -> None:
            barrier.wait()
            for _ in range(3):
                response = post(session, fake)
                with lock:
                    statuses.append(response.status_code)

        run_threads(16, worker)
        assert statuses == [200] * 48
        assert fake.statuses[429] == 0
        assert fake.count == 48
        assert 1 <= fake.max_in_flight_seen <= 2
        assert limiter.in_flight == 0


def test_permit_held_while_the_request_is_in_flight() -> None:
    gate = threading.Event()

    def latency() -> float:
        gate.wait(10.0)
        return 0.0

    with FakeProvider("slow", latency=latency) as fake:
        limiter = MemoryLimiter(max_concurrent=3)
        session = mounted(fake, RateLimitAdapter(limiter))
        thread = threading.Thread(target=post, args=(session, fake), daemon=True)
        thread.start()
        try:
            assert fake.wait_for_in_flight(1, timeout=10)
            assert limiter.in_flight == 1
        finally:
            gate.set()
            thread.join(10)
        assert limiter.in_flight == 0


def test_acquire_timeout_when_saturated_sends_nothing(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=1, clock=FakeClock())
    session = mounted(fake, RateLimitAdapter(limiter, timeout=0.2))
    held = limiter.acquire()
    try:
        with pytest.raises(AcquireTimeout):
            post(session, fake)
    finally:
        held.release()
    assert fake.count == 0
    assert limiter.in_flight == 0
    assert limiter.queued == 0
    assert post(session, fake).status_code == 200


def test_acquire_timeout_on_real_clock(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=1)
    session = mounted(fake, RateLimitAdapter(limiter, timeout=0.05))
    with limiter.acquire(), pytest.raises(AcquireTimeout):
        post(session, fake)
    assert fake.count == 0


def test_mount_prefix_leaves_other_urls_alone() -> None:
    with FakeProvider("a") as fake_a, FakeProvider("b") as fake_b:
        limiter = MemoryLimiter(clock=FakeClock())
        limiter.cooldown(3600)  # nothing is admitted through this limiter
        session = mounted(fake_a, RateLimitAdapter(limiter, timeout=0))
        assert post(session, fake_b).status_code == 200
        with pytest.raises(AcquireTimeout):
            post(session, fake_a)
        assert fake_a.count == 0
        assert fake_b.count == 1
        assert not isinstance(session.get_adapter(fake_b.base_url), RateLimitAdapter)


# ---- cooldowns -----------------------------------------------------------------------


def test_429_retry_after_cools_the_limiter_down(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter))
    fake.script([Respond.rate_limited(retry_after=1)])

    first = post(session, fake)
    assert first.status_code == 429  # retry_on_429=0: handed back to the caller
    assert limiter.cooldown_remaining() == pytest.approx(1.0)
    assert limiter.in_flight == 0

    second = post(session, fake)
    assert second.status_code == 200
    assert sum(clock.sleeps) == pytest.approx(1.0)  # admission waited out the cooldown
    assert fake.count == 2


def test_429_cooldown_stops_every_thread_real_time(fake: FakeProvider) -> None:
    limiter = MemoryLimiter()
    session = mounted(fake, RateLimitAdapter(limiter))
    fake.script([Respond.rate_limited(retry_after=1)])
    assert post(session, fake).status_code == 429
    start = time.monotonic()
    waits: list[float] = []
    lock = threading.Lock()

    def worker(_: int) -> None:
        response = post(session, fake)
        assert response.status_code == 200
        with lock:
            waits.append(time.monotonic() - start)

    run_threads(4, worker)
    assert len(waits) == 4
    assert min(waits) >= 0.9  # generous lower bound; no upper bound on a noisy machine
    first_429 = fake.requests[0]
    assert first_429.status == 429
    assert all(r.arrived - first_429.arrived >= 0.9 for r in fake.requests[1:])


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "7"}, 7.0),
        (429, {"retry-after-ms": "1500"}, 1.5),
        (429, {"Retry-After": "30", "retry-after-ms": "250"}, 0.25),
        (429, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}, 2.0),
        (429, {"x-ratelimit-remaining-tokens": "12", "x-ratelimit-reset-tokens": "6m0s"}, 360.0),
        (429, {}, DEFAULT_COOLDOWN),
        (429, {"Retry-After": "garbage"}, DEFAULT_COOLDOWN),
        (429, {"Retry-After": "0"}, 0.0),
        (503, {"Retry-After": "4"}, 4.0),
        (503, {}, 0.0),
        (500, {"Retry-After": "4"}, 0.0),
        (200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3s"}, 3.0),
        (
            200,
            {
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            0.36,
        ),
        (200, {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "3s"}, 0.0),
    ],
)
def test_cooldown_from_headers(
    fake: FakeProvider, status: int, headers: dict[str, str], expected: float
) -> None:
    limiter = MemoryLimiter(clock=FakeClock())
    session = mounted(fake, RateLimitAdapter(limiter))
    body = {"error": {"message": "x"}} if status >= 400 else {"ok": True}
    fake.script([Respond.status(status, body, headers)])
    assert post(session, fake).status_code == status
    assert limiter.cooldown_remaining() == pytest.approx(expected)


def test_a_429_naming_no_wait_on_a_paced_limiter_waits_for_the_next_slot(
    fake: FakeProvider,
) -> None:
    """nginx's 429 has no Retry-After: the wait is the limiter's next slot, not 1 s."""
    limiter = MemoryLimiter(requests_per_minute=2400, burst=1, clock=FakeClock())  # 40/s
    session = mounted(fake, RateLimitAdapter(limiter))
    fake.script([Respond.status(429, {"error": {"message": "x"}}, {})])
    assert post(session, fake).status_code == 429
    # the next token (25 ms) plus the first, cold, admission's allowance (capped at 5 ms)
    assert limiter.cooldown_remaining() == pytest.approx(0.03)
    # and the allowance grew: the next request paces 5 ms wider
    assert limiter._jitter.extra == pytest.approx(0.005)


def test_http_date_retry_after_is_read_against_the_injected_clock(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter))
    date = email.utils.formatdate(clock.time() + 30, usegmt=True)
    fake.script([Respond.status(429, None, {"Retry-After": date})])
    assert post(session, fake).status_code == 429
    assert limiter.cooldown_remaining() == pytest.approx(30.0, abs=1.0)


def test_exhausted_budget_on_2xx_pauses_until_the_next_slot(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter))
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "60s",  # until the whole budget is back
    }
    fake.script([Respond.status(200, {"ok": True}, headers)])
    assert post(session, fake).status_code == 200
    assert limiter.cooldown_remaining() == pytest.approx(1.0)  # one request frees up in 1 s
    assert post(session, fake).status_code == 200
    assert sum(clock.sleeps) == pytest.approx(1.0)  # the next request waited for it


def test_exhausted_anthropic_budget_on_2xx(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter))
    reset = datetime.datetime.fromtimestamp(clock.time() + 50, datetime.timezone.utc)
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    fake.script([Respond.status(200, {"ok": True}, headers)])
    assert post(session, fake).status_code == 200
    assert limiter.cooldown_remaining() == pytest.approx(1.0)


def test_exhausted_budget_pauses_other_threads_real_time(fake: FakeProvider) -> None:
    limiter = MemoryLimiter()
    session = mounted(fake, RateLimitAdapter(limiter))
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}
    fake.script([Respond.status(200, {"ok": True}, headers)])
    assert post(session, fake).status_code == 200
    start = time.monotonic()
    run_threads(3, lambda _: post(session, fake).raise_for_status())
    assert time.monotonic() - start >= 0.9  # generous lower bound only
    assert all(r.arrived - fake.requests[0].arrived >= 0.9 for r in fake.requests[1:])


# ---- re-sending ----------------------------------------------------------------------


def test_retry_on_429_resends_after_the_cooldown(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=1))
    fake.script([Respond.rate_limited(retry_after=1)])
    response = post(session, fake)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert response.history == []
    assert clock.sleeps == [pytest.approx(1.0)]
    assert [r.status for r in fake.requests] == [429, 200]
    assert fake.requests[0].body == fake.requests[1].body
    assert limiter.in_flight == 0


def test_retry_on_429_real_time(fake: FakeProvider) -> None:
    limiter = MemoryLimiter()
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=1))
    fake.script([Respond.rate_limited(retry_after=1)])
    start = time.monotonic()
    response = post(session, fake)
    assert response.status_code == 200
    assert time.monotonic() - start >= 0.9
    assert fake.count == 2


def test_retry_count_is_bounded(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=2))
    fake.script([Respond.rate_limited(retry_after=1)] * 3)
    assert post(session, fake).status_code == 429
    assert fake.count == 3
    assert clock.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]
    assert limiter.in_flight == 0


def test_no_retry_when_the_wait_exceeds_max_retry_wait(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=3, max_retry_wait=5))
    fake.script([Respond.rate_limited(retry_after=30)])
    assert post(session, fake).status_code == 429
    assert fake.count == 1
    assert clock.sleeps == []
    assert limiter.cooldown_remaining() == pytest.approx(30.0)


def test_retry_on_503_with_retry_after(fake: FakeProvider) -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=1))
    fake.script([Respond.status(503, None, {"Retry-After": "2"}), Respond.status(503)])
    assert post(session, fake).status_code == 503  # the second 503 names no wait
    assert fake.count == 2
    assert clock.sleeps == [pytest.approx(2.0)]


def test_generator_body_is_not_resent(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(clock=FakeClock())
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=2))
    fake.script([Respond.rate_limited(retry_after=1)])
    payload = json.dumps({"model": "m", "messages": MESSAGES}).encode()

    def chunks() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    response = post(
        session, fake, json=None, data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 429
    assert fake.count == 1
    assert fake.requests[0].body == {"model": "m", "messages": MESSAGES}
    assert limiter.cooldown_remaining() == pytest.approx(1.0)  # the cooldown still applies


def test_seekable_file_body_is_rewound_and_resent(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(clock=FakeClock())
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=1))
    fake.script([Respond.rate_limited(retry_after=1)])
    payload = json.dumps({"model": "m", "messages": MESSAGES}).encode()
    body = io.BytesIO(payload)
    response = post(
        session, fake, json=None, data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert [r.status for r in fake.requests] == [429, 200]
    assert fake.requests[1].body == {"model": "m", "messages": MESSAGES}


def test_streamed_429_is_closed_before_the_resend(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(clock=FakeClock())
    session = mounted(fake, RateLimitAdapter(limiter, retry_on_429=1))
    fake.script([Respond.rate_limited(retry_after=1)])
    with post(
        session, fake, json={"model": "m", "messages": MESSAGES, "stream": True}, stream=True
    ) as response:
        assert response.status_code == 200
        assert limiter.in_flight == 1
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    assert limiter.in_flight == 0
    assert fake.count == 2


# ---- the permit always comes back ------------------------------------------------------


def test_permit_released_after_connection_reset(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=1)
    session = mounted(fake, RateLimitAdapter(limiter, timeout=5))
    fake.script([Respond.reset()])
    with pytest.raises(requests.ConnectionError):
        post(session, fake)
    assert limiter.in_flight == 0
    assert post(session, fake).status_code == 200


def test_permit_released_after_read_timeout(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=1)
    session = mounted(fake, RateLimitAdapter(limiter, timeout=5))
    fake.script([Respond.hang(5.0)])
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(session, fake, timeout=(5.0, 0.3))
    assert limiter.in_flight == 0
    assert post(session, fake).status_code == 200


def test_streamed_response_holds_the_permit_until_closed() -> None:
    with FakeProvider("stream", stream_chunks=4, stream_delay=0.3) as fake:
        limiter = MemoryLimiter(max_concurrent=2)
        session = mounted(fake, RateLimitAdapter(limiter))
        stream_body = {"model": "m", "messages": MESSAGES, "stream": True}
        response = post(session, fake, json=stream_body, stream=True)
        assert response.status_code == 200
        assert limiter.in_flight == 1
        lines = response.iter_lines()  # keep the iterator: dropping it closes the connection
        assert next(lines).startswith(b"data: ")
        assert limiter.in_flight == 1
        response.close()
        assert limiter.in_flight == 0
        response.close()  # idempotent
        assert limiter.in_flight == 0


def test_streamed_response_released_when_fully_read(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=2)
    session = mounted(fake, RateLimitAdapter(limiter))
    stream_body = {"model": "m", "messages": MESSAGES, "stream": True}
    sse = post(session, fake, json=stream_body, stream=True)
    assert limiter.in_flight == 1
    assert [line for line in sse.iter_lines() if line][-1] == b"data: [DONE]"
    assert limiter.in_flight == 0
    plain = post(session, fake, stream=True)  # a Content-Length body, streamed
    assert limiter.in_flight == 1
    assert plain.json()["object"] == "chat.completion"
    assert limiter.in_flight == 0


def test_abandoned_streamed_response_released_when_collected(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=2)
    session = mounted(fake, RateLimitAdapter(limiter))
    stream_body = {"model": "m", "messages": MESSAGES, "stream": True}
    response = post(session, fake, json=stream_body, stream=True)
    assert limiter.in_flight == 1
    del response
    gc.collect()
    assert limiter.in_flight == 0


@pytest.mark.parametrize("stream", [False, True])
def test_permit_released_after_keyboard_interrupt_in_a_response_hook(
    fake: FakeProvider, stream: bool
) -> None:
    limiter = MemoryLimiter(max_concurrent=1)
    session = mounted(fake, RateLimitAdapter(limiter, timeout=5))

    def hook(response: requests.Response, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    caught: BaseException | None = None
    try:
        post(session, fake, stream=stream, hooks={"response": hook})
    except KeyboardInterrupt as exc:
        caught = exc  # keeps the traceback (and every frame in it) alive
    assert caught is not None
    if stream:
        # Nobody can close a streamed response the hook took away: it is released when
        # the traceback that holds it is collected.
        caught = None
        gc.collect()
    assert limiter.in_flight == 0
    assert post(session, fake).status_code == 200


def test_permit_released_after_keyboard_interrupt_in_send(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=1)
    session = mounted(fake, RateLimitAdapter(limiter, timeout=5))
    with (
        mock.patch.object(requests.adapters.HTTPAdapter, "send", side_effect=KeyboardInterrupt),
        pytest.raises(KeyboardInterrupt) as info,
    ):
        post(session, fake)
    assert info.value.__traceback__ is not None  # frames still alive: no help from the GC
    assert limiter.in_flight == 0
    assert fake.count == 0
    assert post(session, fake).status_code == 200


def test_permit_released_when_the_body_read_fails(fake: FakeProvider) -> None:
    limiter = MemoryLimiter(max_concurrent=1)
    session = mounted(fake, RateLimitAdapter(limiter, timeout=5))
    with (
        mock.patch.object(requests.Response, "content", new_callable=mock.PropertyMock) as content,
        pytest.raises(requests.exceptions.ChunkedEncodingError),
    ):
        content.side_effect = requests.exceptions.ChunkedEncodingError("cut")
        post(session, fake)
    assert limiter.in_flight == 0


# ---- construction, repr, logs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"retry_on_429": -1}, "retry_on_429"),
        ({"retry_on_429": True}, "retry_on_429"),
        ({"retry_on_429": 1.5}, "retry_on_429"),
        ({"max_retry_wait": float("inf")}, "max_retry_wait"),
        ({"max_retry_wait": None}, "max_retry_wait"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitAdapter(MemoryLimiter(), **kwargs)
    assert info.value.field == field


def test_limiter_must_be_a_limiter() -> None:
    with pytest.raises(ConfigError):
        RateLimitAdapter(object())  # type: ignore[arg-type]


def test_clock_defaults_to_the_limiters() -> None:
    clock = FakeClock()
    assert RateLimitAdapter(MemoryLimiter(clock=clock)).clock is clock
    other = FakeClock()
    assert RateLimitAdapter(MemoryLimiter(clock=clock), clock=other).clock is other


def test_pool_settings_reach_http_adapter() -> None:
    adapter = RateLimitAdapter(MemoryLimiter(), pool_maxsize=3, pool_connections=2, max_retries=0)
    assert vars(adapter)["_pool_maxsize"] == 3
    assert vars(adapter)["_pool_connections"] == 2
    assert adapter.max_retries.total == 0


def test_repr_and_logs_never_show_headers(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = MemoryLimiter(max_concurrent=2, clock=FakeClock())
    adapter = RateLimitAdapter(limiter, timeout=3, retry_on_429=1)
    session = mounted(fake, adapter)
    session.headers["Authorization"] = f"Bearer {CANARY}"
    fake.script([Respond.rate_limited(retry_after=1)])
    with caplog.at_level(logging.DEBUG, logger="ratelimit_sdk"):
        assert post(session, fake, params={"api_key": CANARY}).status_code == 200
    text = repr(adapter)
    assert text.startswith("RateLimitAdapter(limiter=<MemoryLimiter")
    assert "retry_on_429=1" in text
    assert CANARY not in text
    assert "Authorization" not in text
    assert caplog.records, "expected debug lines about the cooldown"
    assert all(CANARY not in record.getMessage() for record in caplog.records)
    assert fake.requests[0].header("Authorization") == f"Bearer {CANARY}"  # sent, not shown


def test_not_picklable() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(RateLimitAdapter(MemoryLimiter()))


def test_legacy_requests_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "429s seen by the server: 0" in result.stdout
