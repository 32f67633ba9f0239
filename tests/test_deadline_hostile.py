"""The call's one deadline holds while reading: hostile servers cannot keep a call past it.

Each server is a raw socket on 127.0.0.1, served by bounded threads: it trickles the body
(headers, then one byte every 0.5 s), trickles the headers (one byte every 0.3 s), or sends
an event stream that makes no progress (only ``: keep-alive`` comments, or only
role-only deltas). Every byte arrives well within the read timeout, so only the deadline
can end the call: ``chat(timeout=2)`` must end within deadline + 0.5 s with a
``ProviderTimeout`` as the attempt's error, and give its permit back.

Every server loop is bounded (a fixed number of sends and a stop event), so a regression
fails the timing assertion instead of hanging the suite.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ratelimit_sdk import AllProvidersFailed, ChatStream, Client
from ratelimit_sdk.config import ProviderConfig
from ratelimit_sdk.errors import ProviderTimeout
from ratelimit_sdk.models import ChatRequest
from ratelimit_sdk.providers import OpenAICompatProvider, _deadline
from ratelimit_sdk.providers._deadline import arm
from ratelimit_sdk.testing import FakeProvider

#: The call's deadline in these tests, seconds.
DEADLINE = 2.0
#: What a call may take beyond its deadline (thread wake-ups on a noisy machine).
SLACK = 0.5
#: Most sends of any hostile server, so that no loop runs unbounded.
MAX_SENDS = 60

Behaviour = Callable[[socket.socket, threading.Event], None]


def _read_request(conn: socket.socket) -> None:
    """Read one request: its head, then Content-Length bytes of body (bounded)."""
    data = b""
    conn.settimeout(5.0)
    while b"\r\n\r\n" not in data and len(data) < 65536:
        piece = conn.recv(4096)
        if not piece:
            return
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        piece = conn.recv(4096)
        if not piece:
            return
        body += piece


def _trickle(conn: socket.socket, stop: threading.Event, data: bytes, every: float) -> None:
    for index in range(min(len(data), MAX_SENDS)):
        if stop.wait(every):
            return
        conn.sendall(data[index : index + 1])


def body_trickle(conn: socket.socket, stop: threading.Event) -> None:
    """Headers at once, then the body one byte every 0.5 s."""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
    )
    _trickle(conn, stop, b'{"choices": [' + b" " * 4000, 0.5)


def header_trickle(conn: socket.socket, stop: threading.Event) -> None:
    """The head one byte every 0.3 s: it never ends within the test."""
    _trickle(conn, stop, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 4000, 0.3)


_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def _repeat(conn: socket.socket, stop: threading.Event, event: bytes, every: float) -> None:
    for _ in range(MAX_SENDS):
        if stop.wait(every):
            return
        conn.sendall(event)


def keep_alive_stream(conn: socket.socket, stop: threading.Event) -> None:
    """An event stream of ``: keep-alive`` comments only."""
    conn.sendall(_SSE_HEAD)
    _repeat(conn, stop, b": keep-alive\n\n", 0.3)


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


ROLE_ONLY = _data({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})


def role_only_stream(conn: socket.socket, stop: threading.Event) -> None:
    """An event stream of deltas that carry only ``role``, never any content."""
    conn.sendall(_SSE_HEAD)
    _repeat(conn, stop, ROLE_ONLY, 0.3)


def first_chunk_then_stall(conn: socket.socket, stop: threading.Event) -> None:
    """One text chunk, then only keep-alive comments and role-only deltas."""
    conn.sendall(_SSE_HEAD + ROLE_ONLY)
    conn.sendall(_data({"choices": [{"index": 0, "delta": {"content": "hello"}}]}))
    for index in range(MAX_SENDS):
        if stop.wait(0.2):
            return
        conn.sendall(ROLE_ONLY if index % 2 else b": keep-alive\n\n")


class HostileServer:
    """A raw-socket HTTP server on 127.0.0.1 that answers every request with ``behaviour``.

    With ``tls``, each connection is wrapped in it first (HTTPS).
    """

    def __init__(self, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self._behaviour = behaviour
        self._tls = tls
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.requests = 0
        #: Set when a send failed: the client dropped the connection.
        self.dropped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def base_url(self) -> str:
        """Where the server listens."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        deadline = time.monotonic() + 120.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self.requests += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self._tls is not None:
                    conn.settimeout(5.0)
                    conn = self._tls.wrap_socket(conn, server_side=True)
                _read_request(conn)
                self._behaviour(conn, self._stop)
            except OSError:
                self.dropped.set()  # the client hung up: that is what the deadline does

    def close(self) -> None:
        """Stop serving and wait (bounded) for the threads."""
        self._stop.set()
        self._acceptor.join(timeout=5.0)
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._listener.close()


def _server(behaviour: Behaviour) -> Iterator[HostileServer]:
    server = HostileServer(behaviour)
    try:
        yield server
    finally:
        server.close()


def _client(server: HostileServer, api: str = "openai", **timeouts: float) -> Client:
    return Client(
        {
            "providers": [
                {
                    "name": "hostile",
                    "base_url": server.base_url,
                    "model": "m",
                    "api": api,
                    "limits": {"max_concurrent": 1},
                    "retry": {"max_retries": 0, "base_delay": 0.01},
                    "timeout": {"connect": 2.0, "read": 5.0, **timeouts},
                }
            ]
        }
    )


def _assert_timed_out(client: Client, stream: bool) -> ProviderTimeout:
    started = time.monotonic()
    with pytest.raises(AllProvidersFailed) as caught:
        client.chat("hi", timeout=DEADLINE, stream=stream)  # type: ignore[call-overload]
    elapsed = time.monotonic() - started
    # The watchdog acts at the deadline; the slack covers thread wake-ups.
    assert elapsed < DEADLINE + SLACK, f"took {elapsed:.2f} s"
    attempts = caught.value.attempts
    assert attempts, "no attempt was made"
    assert all(a.outcome.value == "timeout" for a in attempts), attempts
    error = attempts[-1].error
    assert isinstance(error, ProviderTimeout), error
    assert "deadline passed" in str(error)
    assert client.stats()["hostile"].in_flight == 0
    return error


BEHAVIOURS: dict[str, Behaviour] = {
    "body trickle": body_trickle,
    "header trickle": header_trickle,
    "keep-alive only": keep_alive_stream,
    "role-only deltas": role_only_stream,
}


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize("kind", list(BEHAVIOURS))
def test_the_deadline_ends_a_hostile_answer(kind: str, stream: bool) -> None:
    for server in _server(BEHAVIOURS[kind]):
        with _client(server) as client:
            error = _assert_timed_out(client, stream)
        phase = {
            "body trickle": "reading the body",
            "header trickle": "waiting for the answer",
        }.get(kind, "waiting for the first text chunk" if stream else "reading the body")
        assert phase in str(error)
        # The connection was dropped: the server's sends start failing soon after.
        assert server.dropped.wait(5.0)


def anthropic_pings(conn: socket.socket, stream_stop: threading.Event) -> None:
    """An Anthropic stream that starts a message, then only pings."""
    start = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 1}}}
    conn.sendall(_SSE_HEAD + b"event: message_start\n" + _data(start))
    _repeat(conn, stream_stop, b"event: ping\n" + _data({"type": "ping"}), 0.3)


def test_the_deadline_ends_an_anthropic_stream_of_pings() -> None:
    for server in _server(anthropic_pings):
        with _client(server, api="anthropic") as client:
            error = _assert_timed_out(client, stream=True)
        assert "waiting for the first text chunk" in str(error)


def test_a_stream_that_stalls_after_its_first_chunk_times_out_from_the_iteration() -> None:
    for server in _server(first_chunk_then_stall):
        with _client(server, stream_idle=1.0) as client:
            stream = client.chat("hi", timeout=30, stream=True)
            assert isinstance(stream, ChatStream)
            assert client.stats()["hostile"].in_flight == 1
            started = time.monotonic()
            chunks: list[str] = []
            with pytest.raises(ProviderTimeout, match="idle"):
                for chunk in stream:
                    chunks.append(chunk)
            elapsed = time.monotonic() - started
            assert chunks == ["hello"]
            # Keep-alive comments and role-only deltas kept arriving: only the idle
            # timeout (1 s, measured from the first chunk) could end it.
            assert elapsed < 1.0 + SLACK + 0.5, f"took {elapsed:.2f} s"
            assert stream.closed
            assert client.stats()["hostile"].in_flight == 0


def test_the_provider_alone_enforces_its_deadline() -> None:
    """``send(time_left=...)`` bounds the exchange without the guard around it."""
    for server in _server(header_trickle):
        provider = OpenAICompatProvider(
            ProviderConfig(name="p", base_url=server.base_url, model="m"), api_key=None
        )
        started = time.monotonic()
        with pytest.raises(ProviderTimeout, match="deadline passed"):
            provider.send(
                ChatRequest(messages=({"role": "user", "content": "hi"},)),
                connect_timeout=2.0,
                read_timeout=5.0,
                time_left=1.0,
            )
        assert time.monotonic() - started < 1.0 + SLACK
        provider.close()


def test_a_finished_watch_never_touches_a_connection_reused_after_it() -> None:
    """A fast call's deadline passes while its kept-alive connection serves a slow one."""
    with FakeProvider("reuse") as fake:
        provider = OpenAICompatProvider(
            ProviderConfig(name="p", base_url=fake.base_url, model="m"),
            api_key=None,
            pool_size=1,
        )
        request = ChatRequest(messages=({"role": "user", "content": "hi"},))
        for _ in range(3):  # short deadlines, all met
            reply = provider.send(request, connect_timeout=2.0, read_timeout=5.0, time_left=0.3)
            assert reply.status == 200
        fake.set_latency(0.8)  # the same connection now outlives all three deadlines
        reply = provider.send(request, connect_timeout=2.0, read_timeout=5.0, time_left=10.0)
        assert reply.status == 200 and reply.completion is not None
        with provider.stream(
            request, connect_timeout=2.0, read_timeout=5.0, time_left=10.0, idle_timeout=5.0
        ) as stream:
            assert "".join(stream).startswith("echo")
        provider.close()


def test_no_bound_means_no_watch() -> None:
    assert arm(None) is None
    assert arm(math.inf) is None
    assert arm(math.nan) is None
    watch = arm(30.0)
    assert watch is not None and watch.active
    assert watch.finish() is False
    assert watch.finish() is False  # idempotent
    assert not watch.active


def test_a_watch_fires_on_time_without_a_connection() -> None:
    watch = arm(0.2)
    assert watch is not None
    started = time.monotonic()
    for _ in range(100):  # bounded: 100 x 0.05 s
        if watch.fired:
            break
        time.sleep(0.05)
    assert watch.fired
    assert 0.15 < time.monotonic() - started < 0.2 + SLACK + 1.0
    assert watch.finish() is True
    error = watch.timeout("p")
    assert isinstance(error, ProviderTimeout)
    assert str(error) == "p: deadline passed while waiting for the answer after 0.2 s"


def test_finished_watches_do_not_pile_up() -> None:
    for _ in range(5000):
        watch = arm(600.0)
        assert watch is not None
        watch.finish()
    assert len(_deadline._WATCHDOG._heap) < 4000


def test_a_watch_that_fires_late_leaves_a_pooled_connection_alone() -> None:
    """Its exchange's connection went back to the pool unfinished: another request owns it."""
    with FakeProvider("late", latency=0.0) as fake:
        provider = OpenAICompatProvider(
            ProviderConfig(name="p", base_url=fake.base_url, model="m"),
            api_key=None,
            pool_size=1,
        )
        request = ChatRequest(messages=({"role": "user", "content": "hi"},))
        late = arm(0.3)
        assert late is not None
        payload = provider._encode(request, stream=False)
        response = provider._post(payload, 2.0, 5.0, "application/json", late)
        assert response.content  # read whole: the connection is back in the pool
        fake.set_latency(0.8)  # the next request, on that connection, outlives `late`
        reply = provider.send(request, connect_timeout=2.0, read_timeout=5.0, time_left=10.0)
        assert late.fired  # it fired while the connection served the other request
        assert reply.status == 200 and reply.completion is not None
        assert late.finish() is True
        provider.close()


def text_then_pause_then_text(conn: socket.socket, stop: threading.Event) -> None:
    """A chunk, then 1.3 s of nothing, then the rest (sent while the consumer still sleeps)."""
    conn.sendall(_SSE_HEAD + _data({"choices": [{"index": 0, "delta": {"content": "one"}}]}))
    if stop.wait(1.3):
        return
    conn.sendall(_data({"choices": [{"index": 0, "delta": {"content": " two"}}]}))
    conn.sendall(b"data: [DONE]\n\n")


def test_the_consumer_s_own_time_is_not_idle_time() -> None:
    """The idle clock runs only while the stream waits for the server, not for the caller."""
    for server in _server(text_then_pause_then_text):
        with _client(server, stream_idle=1.0) as client:
            stream = client.chat("hi", timeout=30, stream=True)
            assert isinstance(stream, ChatStream)
            chunks = iter(stream)
            assert next(chunks) == "one"
            time.sleep(1.6)  # the caller is busy for longer than the idle timeout
            assert list(chunks) == [" two"]
            assert stream.content == "one two"
            assert client.stats()["hostile"].in_flight == 0


def test_the_watchdog_thread_ends_when_nothing_is_watched() -> None:
    watch = arm(30.0)
    assert watch is not None
    assert any(t.name == "ratelimit_sdk-deadline" for t in threading.enumerate())
    watch.finish()
    for _ in range(100):  # bounded: 100 x 0.05 s; it ends after one idle tick (0.5 s)
        if not any(t.name == "ratelimit_sdk-deadline" for t in threading.enumerate()):
            break
        time.sleep(0.05)
    assert not any(t.name == "ratelimit_sdk-deadline" for t in threading.enumerate())
    again = arm(0.1)  # and starts again with the next watch
    assert again is not None
    for _ in range(100):
        if again.fired:
            break
        time.sleep(0.05)
    assert again.fired and again.finish()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_deadline_ends_a_header_trickle_over_tls(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TLS the watchdog shuts the raw socket under the TLS layer down: same result."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))

    server = HostileServer(header_trickle, tls=context)
    try:
        provider = OpenAICompatProvider(
            ProviderConfig(name="p", base_url=f"https://127.0.0.1:{server.port}/v1", model="m"),
            api_key=None,
        )
        started = time.monotonic()
        with pytest.raises(ProviderTimeout, match="deadline passed while waiting for the answer"):
            provider.send(
                ChatRequest(messages=({"role": "user", "content": "hi"},)),
                connect_timeout=2.0,
                read_timeout=5.0,
                time_left=1.5,
            )
        assert time.monotonic() - started < 1.5 + SLACK
        provider.close()
    finally:
        server.close()
