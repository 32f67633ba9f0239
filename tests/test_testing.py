"""ratelimit_sdk.testing: the FakeProvider server, driven with plain `requests` calls."""

from __future__ import annotations

import json
import queue
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from ratelimit_sdk.testing import FakeFleet, FakeProvider, Fault, RecordedRequest, Respond, _wire

CANARY = "sk-canary-DO-NOT-LEAK-7f3a9c"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("kimi") as provider:
        yield provider


def chat(fake: FakeProvider, session: Any = requests, **body: Any) -> requests.Response:
    payload = {"model": "m", "messages": MESSAGES, **body}
    response: requests.Response = session.post(
        fake.base_url + "/chat/completions", json=payload, timeout=5
    )
    return response


def anthropic(fake: FakeProvider, **body: Any) -> requests.Response:
    payload = {"model": "claude-x", "max_tokens": 16, "messages": MESSAGES[1:], **body}
    return requests.post(fake.base_url + "/messages", json=payload, timeout=5)


def sse_data(response: requests.Response) -> list[str]:
    return [
        line[len("data: ") :]
        for line in response.iter_lines(decode_unicode=True)
        if line.startswith("data: ")
    ]


def held_until(gate: threading.Event) -> Any:
    """A latency callable that keeps a request in flight until the test opens the gate."""

    def latency() -> float:
        gate.wait(5.0)
        return 0.0

    return latency


def fake_threads(fake: FakeProvider) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(fake.thread_prefix)]


# ---- wire formats -----------------------------------------------------------------


def test_openai_chat_completion(fake: FakeProvider) -> None:
    response = chat(fake)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": "echo: hello there"}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert isinstance(body["id"], str)


def test_openai_stream(fake: FakeProvider) -> None:
    response = chat(fake, stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: hello there"
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_anthropic_message(fake: FakeProvider) -> None:
    response = anthropic(fake)
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message"
    assert body["content"] == [{"type": "text", "text": "echo: hello there"}]
    assert body["stop_reason"] == "end_turn"
    assert body["model"] == "claude-x"
    assert body["usage"]["input_tokens"] > 0
    assert body["usage"]["output_tokens"] > 0


def test_anthropic_stream(fake: FakeProvider) -> None:
    response = anthropic(fake, stream=True)
    assert response.status_code == 200
    events = [json.loads(d) for d in sse_data(response)]
    types = [e["type"] for e in events]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(deltas) == "echo: hello there"


def test_stream_delay_spaces_the_chunks() -> None:
    with FakeProvider(stream_delay=0.05, stream_chunks=2) as fake:
        start = time.monotonic()
        response = chat(fake, stream=True)
        assert sse_data(response)[-1] == "[DONE]"
        # role chunk, 2 content chunks, finish chunk, [DONE]: four gaps of 50 ms
        assert time.monotonic() - start >= 0.2


def test_reply_callable_and_default_model() -> None:
    seen: list[Any] = []

    def reply(request: Any) -> str:
        seen.append(request)
        return "custom " + str(len(request["messages"]))

    with FakeProvider(model="fake-llama", reply=reply) as fake:
        response = requests.post(
            fake.base_url + "/chat/completions", json={"messages": MESSAGES}, timeout=5
        )
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "custom 2"
        assert body["model"] == "fake-llama"
        assert seen[0]["messages"] == MESSAGES


def test_reply_callable_that_raises_gives_500() -> None:
    def reply(request: Any) -> str:
        raise RuntimeError("boom")

    with FakeProvider(reply=reply) as fake:
        response = chat(fake)
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "server_error"
        assert fake.requests[0].kind == "reply_error"


def test_unknown_path_bad_body_and_wrong_method(fake: FakeProvider) -> None:
    for wrong_path in (fake.root_url + "/chat/completions", fake.base_url + "/v1/messages"):
        assert requests.post(wrong_path, json={}, timeout=5).status_code == 404
    assert requests.get(fake.base_url + "/chat/completions", timeout=5).status_code == 405
    bad = requests.post(fake.base_url + "/chat/completions", data=b"{nope", timeout=5)
    assert bad.status_code == 400
    assert fake.requests[-1].body == "{nope"
    assert fake.count == 4
    assert fake.statuses == {404: 2, 405: 1, 400: 1}


# ---- keys and what is recorded ------------------------------------------------------


def test_authorization_is_recorded_but_never_shown() -> None:
    with FakeProvider("secretive", require_key=CANARY) as fake:
        headers = {"Authorization": f"Bearer {CANARY}"}
        ok = requests.post(
            fake.base_url + "/chat/completions",
            json={"messages": MESSAGES},
            headers=headers,
            timeout=5,
        )
        assert ok.status_code == 200
        wrong = requests.post(
            fake.base_url + "/chat/completions",
            json={"messages": MESSAGES},
            headers={"Authorization": "Bearer other"},
            timeout=5,
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        # Anthropic wants the key in x-api-key, not in Authorization
        misplaced = requests.post(
            fake.base_url + "/messages", json={"messages": MESSAGES}, headers=headers, timeout=5
        )
        assert misplaced.status_code == 401
        placed = requests.post(
            fake.base_url + "/messages",
            json={"messages": MESSAGES},
            headers={"x-api-key": CANARY},
            timeout=5,
        )
        assert placed.status_code == 200

        first = fake.requests[0]
        assert first.header("authorization") == f"Bearer {CANARY}"
        assert first.headers["Authorization"] == f"Bearer {CANARY}"
        assert fake.requests[3].header("X-API-KEY") == CANARY
        shown = [repr(fake), str(fake), repr(fake.requests), str(first), repr(FakeFleet(fake))]
        for text in shown:
            assert CANARY not in text
            assert "Bearer" not in text
        for message in (wrong.text, misplaced.text):
            assert CANARY not in message


def test_recorded_request_fields(fake: FakeProvider) -> None:
    before = time.monotonic()
    chat(fake)
    record = fake.requests[0]
    assert isinstance(record, RecordedRequest)
    assert record.method == "POST"
    assert record.path == "/v1/chat/completions"
    assert record.body["messages"] == MESSAGES
    assert record.status == 200
    assert record.kind == "ok"
    assert record.started is not None and record.ended is not None
    assert before <= record.arrived <= record.started <= record.ended
    assert record.duration is not None and record.duration >= 0
    with pytest.raises(AttributeError):
        record.status = 500  # type: ignore[misc]


def test_reset_stats(fake: FakeProvider) -> None:
    chat(fake)
    chat(fake)
    fake.reset_stats()
    assert fake.count == 0
    assert fake.requests == []
    assert fake.statuses == {}
    assert fake.max_in_flight_seen == 0
    chat(fake)
    assert fake.count == 1
    assert fake.statuses[200] == 1


# ---- server-side limits -------------------------------------------------------------


def test_concurrency_limit_answers_kimis_429() -> None:
    """Two requests are held in flight; the other 14 of 16 threads get Moonshot's 429."""
    gate = threading.Event()
    results: queue.Queue[requests.Response] = queue.Queue()
    with FakeProvider("kimi", max_concurrency=2, latency=held_until(gate)) as fake:
        barrier = threading.Barrier(16)

        def worker() -> None:
            barrier.wait(5.0)
            results.put(chat(fake))

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        rejected = [results.get(timeout=5.0) for _ in range(14)]
        assert fake.in_flight == 2
        gate.set()
        for thread in threads:
            thread.join(5.0)
        admitted = [results.get(timeout=5.0) for _ in range(2)]

        assert [r.status_code for r in admitted] == [200, 200]
        for response in rejected:
            assert response.status_code == 429
            error = response.json()["error"]
            assert error["type"] == "rate_limit_reached_error"
            expected = "max organization concurrency: 2, please try again after 1 seconds"
            assert expected in error["message"]
        assert fake.max_in_flight_seen == 2
        assert fake.statuses == {200: 2, 429: 14}
        kinds = sorted(r.kind for r in fake.requests)
        assert kinds == ["concurrency_limit"] * 14 + ["ok"] * 2


def test_in_flight_never_exceeds_the_limit_under_load() -> None:
    with FakeProvider(max_concurrency=3, latency=0.01) as fake:

        def worker() -> None:
            with requests.Session() as session:
                for _ in range(4):
                    response = chat(fake, session)
                    assert response.status_code in (200, 429)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        assert fake.count == 64
        assert 1 <= fake.max_in_flight_seen <= 3
        assert fake.in_flight == 0
        assert fake.statuses[200] + fake.statuses[429] == 64
        assert fake.statuses[200] >= 3


def test_token_bucket_allows_burst_then_429_with_retry_after() -> None:
    # 6 per minute: a token every 10 s, so nothing refills during the test
    with FakeProvider(requests_per_minute=6, burst=3) as fake:
        with requests.Session() as session:
            answers = [chat(fake, session) for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        remaining = [r.headers["x-ratelimit-remaining-requests"] for r in answers]
        assert remaining == ["2", "1", "0", "0"]
        limited = answers[3]
        assert 1 <= int(limited.headers["Retry-After"]) <= 10
        assert limited.headers["x-ratelimit-limit-requests"] == "3"  # the bucket capacity
        assert limited.headers["x-ratelimit-reset-requests"].endswith("s")
        error = limited.json()["error"]
        assert error["type"] == "requests"
        assert error["code"] == "rate_limit_exceeded"
        assert error["message"].startswith("Rate limit reached")
        assert fake.requests[3].kind == "rate_limit"
        assert fake.requests[3].started is None


def test_token_bucket_on_the_anthropic_path() -> None:
    with FakeProvider(requests_per_minute=6) as fake:
        first, second = anthropic(fake), anthropic(fake)
        assert first.status_code == 200
        assert first.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert first.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "rate_limit_error"
        assert int(second.headers["Retry-After"]) >= 1


def test_rate_limit_headers_can_be_turned_off() -> None:
    with FakeProvider(requests_per_minute=60, burst=5, rate_limit_headers=False) as fake:
        response = chat(fake)
        assert response.status_code == 200
        assert "x-ratelimit-remaining-requests" not in response.headers


def test_limits_change_while_running(fake: FakeProvider) -> None:
    assert chat(fake).status_code == 200
    fake.set_limits(requests_per_minute=6, burst=1)
    assert fake.limits == {"max_concurrency": None, "requests_per_minute": 6.0, "burst": 1}
    assert chat(fake).status_code == 200
    assert chat(fake).status_code == 429
    fake.set_limits(burst=2)  # resizing keeps the (empty) bucket's tokens
    assert chat(fake).status_code == 429
    fake.set_limits(requests_per_minute=None)
    assert chat(fake).status_code == 200

    with pytest.raises(ValueError):
        fake.set_limits(max_concurrency=0, requests_per_minute=5)
    assert fake.limits["requests_per_minute"] is None  # nothing changed

    gate = threading.Event()
    fake.set_latency(held_until(gate))
    fake.set_limits(max_concurrency=1)
    holder = threading.Thread(target=chat, args=(fake,))
    holder.start()
    try:
        assert fake.wait_for_in_flight(1, timeout=5.0)
        response = chat(fake)
        assert response.status_code == 429
        assert "max organization concurrency: 1" in response.json()["error"]["message"]
        fake.set_limits(max_concurrency=2)
        fake.set_latency(0.0)
        assert chat(fake).status_code == 200
    finally:
        gate.set()
        holder.join(5.0)


# ---- scripted faults ------------------------------------------------------------------

STATUS_CASES = [
    (Respond.status(500), 500, "server_error", {}),
    (Respond.status(503), 503, "server_error", {}),
    (Respond.status(401), 401, "invalid_request_error", {}),
    (Respond.status(400), 400, "invalid_request_error", {}),
    (Respond.status(429, headers={"Retry-After": "30"}), 429, "requests", {"Retry-After": "30"}),
    (Respond.rate_limited(retry_after=30), 429, "requests", {"Retry-After": "30"}),
    (Respond.insufficient_quota(), 429, "insufficient_quota", {}),
]


@pytest.mark.parametrize(("action", "status", "error_type", "headers"), STATUS_CASES)
def test_scripted_status(
    fake: FakeProvider, action: Any, status: int, error_type: str, headers: dict[str, str]
) -> None:
    fake.script([action])
    response = chat(fake)
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    for name, value in headers.items():
        assert response.headers[name] == value
    assert chat(fake).status_code == 200  # the script is used up


def test_scripted_zhipu_error_and_custom_body(fake: FakeProvider) -> None:
    fake.script(
        [
            Fault.zhipu("1302"),
            Fault.zhipu("1113", status=402),
            Respond.status(400, {"error": {"message": "context too long"}}, {"X-Custom": "1"}),
            Respond.status(502, "plain text body"),
            Respond.overloaded(),
        ]
    )
    first = chat(fake)
    assert first.status_code == 429
    assert first.json()["error"]["code"] == "1302"
    second = chat(fake)
    assert second.status_code == 402
    assert second.json()["error"]["code"] == "1113"
    third = chat(fake)
    assert third.json() == {"error": {"message": "context too long"}}
    assert third.headers["X-Custom"] == "1"
    fourth = chat(fake)
    assert (fourth.status_code, fourth.text) == (502, "plain text body")
    fifth = chat(fake)
    assert fifth.status_code == 529
    assert fifth.json()["error"]["type"] == "overloaded_error"


def test_scripted_status_on_the_anthropic_path_has_anthropic_shape(fake: FakeProvider) -> None:
    fake.script([Respond.status(529)])
    response = anthropic(fake)
    assert response.status_code == 529
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "overloaded_error"


def test_script_runs_in_order_then_normal(fake: FakeProvider) -> None:
    fake.script([Respond.status(500), Respond.ok("scripted!")])
    fake.script([Respond.status(503)])  # appends
    assert fake.scripted == 3
    with requests.Session() as session:
        codes = [chat(fake, session).status_code for _ in range(4)]
    assert codes == [500, 200, 503, 200]
    assert fake.scripted == 0
    assert fake.requests[1].kind == "ok"


def test_scripted_ok_streams_when_asked(fake: FakeProvider) -> None:
    fake.script([Respond.ok("streamed text")])
    data = sse_data(chat(fake, stream=True))
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "streamed text"


def test_reset_gives_a_connection_error(fake: FakeProvider) -> None:
    fake.script([Respond.reset()])
    with pytest.raises(requests.ConnectionError):
        chat(fake)
    record = fake.requests[0]
    assert (record.status, record.kind) == (None, "reset")
    assert fake.in_flight == 0
    assert chat(fake).status_code == 200


def test_hang_gives_a_read_timeout(fake: FakeProvider) -> None:
    fake.script([Respond.hang(30)])
    payload = {"messages": MESSAGES}
    with pytest.raises(requests.ReadTimeout):
        requests.post(fake.base_url + "/chat/completions", json=payload, timeout=(2.0, 0.3))
    assert fake.in_flight == 1
    assert fake.requests[0].kind == "pending"
    assert chat(fake).status_code == 200  # other connections are served meanwhile


def test_garbage_is_200_without_json(fake: FakeProvider) -> None:
    fake.script([Respond.garbage()])
    response = chat(fake)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_delay_holds_the_answer(fake: FakeProvider) -> None:
    fake.script([Respond.delay(0.2)])
    start = time.monotonic()
    assert chat(fake).status_code == 200
    assert time.monotonic() - start >= 0.2


def test_latency_counts_as_in_flight() -> None:
    with FakeProvider(latency=lambda: 0.1) as fake:
        start = time.monotonic()
        assert chat(fake).status_code == 200
        assert time.monotonic() - start >= 0.1
        assert fake.max_in_flight_seen == 1


def test_actions_are_checked() -> None:
    with pytest.raises(ValueError):
        Respond.hang(-1)
    with pytest.raises(ValueError):
        Respond.status(99)
    with pytest.raises(TypeError):
        FakeProvider().script([500])  # type: ignore[list-item]


def test_random_faults_are_seeded() -> None:
    def run() -> list[int]:
        fake = FakeProvider(fault_rate=0.5, faults=[Respond.status(500)], seed=7)
        with fake, requests.Session() as session:
            return [chat(fake, session).status_code for _ in range(20)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {200, 500}


def test_fail_all_and_heal(fake: FakeProvider) -> None:
    fake.fail_all(503)
    assert [chat(fake).status_code for _ in range(3)] == [503, 503, 503]
    fake.heal()
    assert chat(fake).status_code == 200
    fake.always(Respond.reset())
    fake.set_faults(1.0, [Respond.status(500)])
    fake.script([Respond.status(418)])
    assert chat(fake).status_code == 418  # script first
    with pytest.raises(requests.ConnectionError):
        chat(fake)  # then the "always" action
    fake.heal()
    assert chat(fake).status_code == 200  # heal drops random faults too


# ---- the server itself ---------------------------------------------------------------


def test_no_added_latency_on_keep_alive(fake: FakeProvider) -> None:
    """One send per answer and TCP_NODELAY: no ~40 ms Nagle/delayed-ACK stall per request."""
    durations = []
    with requests.Session() as session:
        chat(fake, session)  # connect
        for _ in range(50):
            start = time.perf_counter()
            assert chat(fake, session).status_code == 200
            durations.append(time.perf_counter() - start)
    assert statistics.median(durations) < 0.020
    assert {r.connection for r in fake.requests} == {1}  # one kept-alive connection


def test_serves_64_concurrent_connections() -> None:
    gate = threading.Event()
    with FakeProvider(latency=held_until(gate)) as fake:
        codes: queue.Queue[int] = queue.Queue()
        threads = [
            threading.Thread(target=lambda: codes.put(chat(fake).status_code)) for _ in range(64)
        ]
        for thread in threads:
            thread.start()
        try:
            assert fake.wait_for_in_flight(64, timeout=10.0)
            assert fake.in_flight == 64
        finally:
            gate.set()
            for thread in threads:
                thread.join(5.0)
        assert [codes.get(timeout=1.0) for _ in range(64)] == [200] * 64
        assert fake.max_in_flight_seen == 64


def test_binds_to_loopback_only(fake: FakeProvider) -> None:
    host, port = fake.address
    assert host == "127.0.0.1"
    assert port > 0
    assert fake.base_url == f"http://127.0.0.1:{port}/v1"
    assert fake.provider_config(priority=1) == {
        "name": "kimi",
        "base_url": fake.base_url,
        "model": "fake-model",
        "priority": 1,
    }


def test_stops_cleanly_and_idempotently() -> None:
    fake = FakeProvider("stopper").start()
    port = fake.port
    session = requests.Session()
    assert chat(fake, session).status_code == 200  # leaves an idle keep-alive connection
    fake.script([Respond.hang(30)])
    hung: queue.Queue[BaseException | None] = queue.Queue()

    def hang() -> None:
        try:
            chat(fake)
            hung.put(None)
        except requests.RequestException as exc:
            hung.put(exc)

    client = threading.Thread(target=hang)
    client.start()
    assert fake.wait_for_in_flight(1, timeout=5.0)

    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 3.0  # the 30 s hang was cut short
    client.join(5.0)
    assert isinstance(hung.get(timeout=1.0), requests.ConnectionError)
    assert fake_threads(fake) == []
    assert not fake.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    fake.stop()  # idempotent
    assert fake.count == 2  # statistics stay readable
    session.close()

    with fake:  # restarts, on a new port
        assert chat(fake).status_code == 200
    assert fake_threads(fake) == []


def test_wait_for_count_is_bounded(fake: FakeProvider) -> None:
    assert not fake.wait_for_count(1, timeout=0.05)
    chat(fake)
    assert fake.wait_for_count(1, timeout=1.0)


def test_fleet_starts_and_stops_named_providers() -> None:
    fleet = FakeFleet(
        FakeProvider("kimi", max_concurrency=1, requests_per_minute=4),
        FakeProvider("glm", max_concurrency=10),
        FakeProvider("llama"),
        FakeProvider("dolphin"),
    )
    with fleet:
        assert fleet.names == ["kimi", "glm", "llama", "dolphin"]
        assert len(set(fleet.base_urls.values())) == 4
        for provider in fleet:
            assert chat(provider).status_code == 200
        assert chat(fleet["kimi"]).status_code == 429
        configs = fleet.provider_configs()
        assert [c["name"] for c in configs] == fleet.names
        fleet.reset_stats()
        assert fleet["kimi"].count == 0
    assert not any(p.running for p in fleet)
    assert all(fake_threads(p) == [] for p in fleet)
    with pytest.raises(ValueError):
        FakeFleet(FakeProvider("a"), FakeProvider("a"))


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.25, "250ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (360.0, "6m0s"),
        (90.5, "1m30.5s"),
        (3723.0, "1h2m3s"),
        (float("inf"), "0s"),
    ],
)
def test_go_duration(seconds: float, expected: str) -> None:
    assert _wire.go_duration(seconds) == expected
