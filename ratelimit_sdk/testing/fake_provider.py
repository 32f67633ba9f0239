"""Testing (fake provider side): FakeProvider, a real loopback HTTP server posing as an LLM API.

It answers the OpenAI-compatible ``POST /v1/chat/completions`` and the Anthropic
``POST /v1/messages`` (plain and streamed), enforces server-side limits the way
real providers do (Moonshot's concurrency 429, an OpenAI-style token bucket with
``Retry-After`` and ``x-ratelimit-*`` headers), injects scripted or random
faults, and records every request, so a test can check that the SDK never trips
a limit and copes with every failure.

The server runs on real time (``time.monotonic``): it plays the outside world,
not a part of the SDK, so no injected clock reaches it. It binds to 127.0.0.1
only, on a free port, and adds no latency of its own: every response is
written in one send on a socket with TCP_NODELAY.
"""

from __future__ import annotations

import collections
import datetime
import enum
import itertools
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypeAlias
from urllib.parse import urlsplit

from ratelimit_sdk.testing import _wire
from ratelimit_sdk.testing._bucket import (
    EPSILON,
    TokenBucket,
    check_burst,
    check_concurrency,
    check_rpm,
)
from ratelimit_sdk.testing._server import HOST, LoopbackServer, RequestHandler
from ratelimit_sdk.testing.faults import (
    Action,
    Delay,
    Garbage,
    Hang,
    Ok,
    Reset,
    Respond,
    Status,
)
from ratelimit_sdk.testing.records import Entry, RecordedRequest
from ratelimit_sdk.testing.shapes import (
    SHAPE_TYPES,
    Request,
    Shape,
    State,
    make_state,
    request_tokens,
)

__all__ = ["UNSET", "FakeProvider", "Latency", "RecordedRequest", "ReplyFn"]

_log = logging.getLogger(__name__)

_ACTION_TYPES = (Status, Hang, Garbage, Reset, Ok, Delay)

Latency: TypeAlias = float | Callable[[], float]
"""Seconds before each successful answer, or a callable returning them per request."""
ReplyFn: TypeAlias = Callable[[Mapping[str, Any]], str]
"""Makes the answer's text from the request's parsed JSON body."""


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET: Literal[_Unset.UNSET] = _Unset.UNSET
"""Marks an argument of :meth:`FakeProvider.set_limits` as "leave unchanged" (``None`` removes)."""


class _Rejection(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: dict[str, Any] | str
    kind: str
    content_type: str | None = None


class _Admission(NamedTuple):
    action: Action | None
    headers: list[tuple[str, str]]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _check_actions(actions: Iterable[Action]) -> list[Action]:
    checked = list(actions)
    for action in checked:
        if not isinstance(action, _ACTION_TYPES):
            raise TypeError(f"not a scripted action (use Respond.*): {action!r}")
    return checked


def _check_shapes(shapes: Iterable[Shape]) -> list[Shape]:
    checked = list(shapes)
    for shape in checked:
        if not isinstance(shape, SHAPE_TYPES):
            raise TypeError(f"not a server shape (use ratelimit_sdk.testing.shapes): {shape!r}")
    return checked


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


class FakeProvider:
    """A real HTTP server on 127.0.0.1 that behaves like an LLM provider, for tests.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`)::

        with FakeProvider("kimi", max_concurrency=1, requests_per_minute=4) as fake:
            client = Client({"providers": [fake.provider_config(...)]})
            ...
            assert fake.statuses[429] == 0
            assert fake.max_in_flight_seen <= 1

    It serves ``{base_url}/chat/completions`` (OpenAI-compatible) and
    ``{base_url}/messages`` (Anthropic), where ``base_url`` ends with ``/v1``.
    A request is answered in this order:

    1. Anything else than ``POST`` to those paths: 404 / 405; a body that is not
       a JSON object: 400; with ``require_key``, a missing or wrong key
       (``Authorization: Bearer`` for OpenAI, ``x-api-key`` for Anthropic): 401.
    2. Limits: with ``max_concurrency=N``, a request arriving while N are in
       flight gets Moonshot's 429 (``rate_limit_reached_error``, "max organization
       concurrency: N"). With ``requests_per_minute=R``, a token bucket holding
       ``burst`` requests (default 1; it starts full) refilled at R per minute;
       an empty bucket gets 429 with ``Retry-After`` (whole seconds until the next
       request is allowed, rounded up) and the rate-limit headers. Rejected
       requests never count as in flight and consume no token.
       ``shapes`` adds the server shapes of :mod:`ratelimit_sdk.testing.shapes`
       (checked in order, after those two): an nginx ``limit_req`` leaky bucket,
       a sliding window, a UTC-aligned fixed window, hidden concurrency and
       rate limits, OpenAI's request and token buckets with their headers on
       every answer. A request must pass every limit; a refused one is charged
       to none. :meth:`set_shapes` replaces them while running.
    3. An admitted request is in flight until its answer is sent. Its answer is
       the next scripted action (:meth:`script`), else the :meth:`always`
       action (:meth:`fail_all`), else, with probability ``fault_rate``, one of
       ``faults`` (drawn from ``random.Random(seed)``), else a normal answer.
    4. A normal answer waits ``latency`` seconds, then sends ``reply(body)``
       (default: ``"echo: "`` + the start of the last user message), streamed as
       server-sent events in ``stream_chunks`` pieces (``stream_delay`` seconds
       apart) when the body says ``"stream": true``. With a bucket and
       ``rate_limit_headers``, it carries the remaining/reset headers:
       ``x-ratelimit-limit-requests`` (the bucket's capacity),
       ``x-ratelimit-remaining-requests`` and
       ``x-ratelimit-reset-requests`` (a Go duration until the bucket is full
       again, OpenAI's meaning) on the OpenAI path; ``anthropic-ratelimit-
       requests-limit|remaining|reset`` (RFC 3339) on the Anthropic path.

    Thread-safety: every public method and property may be called from any
    thread while the server runs; one lock guards the limits, the script and
    the statistics, and it is never held while sleeping, calling ``reply`` or
    ``latency``, or writing to a socket. The server handles each connection on
    its own daemon thread (HTTP/1.1 keep-alive, hundreds of connections at once).
    ``reply`` and ``latency`` callables run on those threads, concurrently, and
    must be thread-safe themselves. Nothing here shows a header value in a
    repr or a log line.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        model: str = "fake-model",
        max_concurrency: int | None = None,
        requests_per_minute: float | None = None,
        burst: int | None = None,
        rate_limit_headers: bool = True,
        latency: Latency = 0.0,
        reply: ReplyFn | None = None,
        stream_chunks: int = 3,
        stream_delay: float = 0.0,
        fault_rate: float = 0.0,
        faults: Sequence[Action] | None = None,
        seed: int | None = 0,
        require_key: str | None = None,
        max_recorded: int = 100_000,
        shapes: Sequence[Shape] = (),
    ) -> None:
        if stream_chunks < 1:
            raise ValueError(f"stream_chunks must be >= 1, got {stream_chunks!r}")
        if not math.isfinite(stream_delay) or stream_delay < 0:
            raise ValueError(f"stream_delay must be >= 0, got {stream_delay!r}")
        self._name = name
        self._model = model
        self._rate_limit_headers = rate_limit_headers
        self._reply = reply
        self._stream_chunks = stream_chunks
        self._stream_delay = stream_delay
        self._require_key = require_key

        self._cond = threading.Condition(threading.Lock())
        self._life = threading.Lock()  # serializes start() and stop()
        self._max_concurrency = check_concurrency(max_concurrency)
        self._rpm = check_rpm(requests_per_minute)
        self._burst = check_burst(burst)
        self._bucket = (
            None
            if self._rpm is None
            else TokenBucket(self._rpm, self._burst or 1, time.monotonic())
        )
        self._latency: Latency = latency
        self._rng = random.Random(seed)
        self._fault_rate = 0.0
        self._faults: list[Action] = []
        self.set_faults(fault_rate, faults)
        self._script: collections.deque[Action] = collections.deque()
        self._shapes = _check_shapes(shapes)
        self._states: list[State] = [make_state(shape) for shape in self._shapes]
        self._override: Action | None = None

        self._entries: collections.deque[Entry] = collections.deque(maxlen=max_recorded)
        self._count = 0
        self._statuses: collections.Counter[int] = collections.Counter()
        self._in_flight = 0
        self._max_in_flight_seen = 0
        self._ids = itertools.count(1)

        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> FakeProvider:
        """Bind 127.0.0.1 on a free port and start serving; returns ``self``.

        Does nothing if already running. After :meth:`stop` it starts again, on
        a new port.
        """
        with self._life:
            if self._server is not None:
                return self
            server = LoopbackServer(self._serve, self.thread_prefix)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"{self.thread_prefix}-serve",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection and join every thread. Idempotent.

        Hanging and delayed requests are cut short; their connections close
        without an answer. Statistics stay readable afterwards.
        """
        with self._life:
            server, thread = self._server, self._thread
            if server is None:
                return
            server.stop_event.set()
            server.shutdown()
            if thread is not None:
                thread.join(timeout)
            server.server_close()
            server.close_connections(timeout)
            self._server, self._thread = None, None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        server = self._server
        where = f"http://{HOST}:{server.server_port}/v1" if server is not None else "stopped"
        return f"FakeProvider(name={self._name!r}, {where}, count={self.count})"

    # ---- where it is ------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name given at construction (used in thread names and provider configs)."""
        return self._name

    @property
    def model(self) -> str:
        """The model name answered when the request names none."""
        return self._model

    @property
    def thread_prefix(self) -> str:
        """Prefix of the names of every thread this fake starts."""
        return f"FakeProvider[{self._name}]"

    @property
    def running(self) -> bool:
        """Whether the server is serving now."""
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server is bound to; raises RuntimeError when not running."""
        server = self._server
        if server is None:
            raise RuntimeError(f"FakeProvider {self._name!r} is not running; call start()")
        host, port = server.socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        """The port the server is bound to (raises RuntimeError when not running)."""
        return self.address[1]

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>`` (raises RuntimeError when not running)."""
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what a provider config's ``base_url`` should say."""
        return self.root_url + "/v1"

    def provider_config(self, **extra: Any) -> dict[str, Any]:
        """Return a provider config dict for this fake: name, base_url, model, plus ``extra``."""
        return {"name": self._name, "base_url": self.base_url, "model": self._model, **extra}

    # ---- behaviour --------------------------------------------------------------

    def set_limits(
        self,
        *,
        max_concurrency: int | _Unset | None = UNSET,
        requests_per_minute: float | _Unset | None = UNSET,
        burst: int | _Unset | None = UNSET,
    ) -> None:
        """Change the server-side limits while running; ``None`` removes one, omitted keeps it.

        Lowering ``max_concurrency`` below what is in flight rejects new arrivals
        until enough finish. A new bucket starts full; a resized one keeps its
        tokens (at most the new ``burst``). Invalid values raise ValueError and
        change nothing.
        """
        with self._cond:
            concurrency = (
                self._max_concurrency
                if isinstance(max_concurrency, _Unset)
                else check_concurrency(max_concurrency)
            )
            rpm = (
                self._rpm
                if isinstance(requests_per_minute, _Unset)
                else check_rpm(requests_per_minute)
            )
            new_burst = self._burst if isinstance(burst, _Unset) else check_burst(burst)
            now = time.monotonic()
            if rpm is None:
                self._bucket = None
            elif self._bucket is None:
                self._bucket = TokenBucket(rpm, new_burst or 1, now)
            else:
                self._bucket.resize(rpm, new_burst or 1, now)
            self._max_concurrency, self._rpm, self._burst = concurrency, rpm, new_burst
            self._cond.notify_all()

    def set_shapes(self, shapes: Iterable[Shape]) -> None:
        """Replace the server shapes (see :mod:`ratelimit_sdk.testing.shapes`), with fresh state.

        Buckets start full, windows empty. ``set_shapes([])`` removes them all;
        ``max_concurrency`` and ``requests_per_minute`` stay as they are. A value
        that is not a shape raises TypeError and changes nothing.
        """
        checked = _check_shapes(shapes)
        states = [make_state(shape) for shape in checked]
        with self._cond:
            self._shapes, self._states = checked, states

    @property
    def shapes(self) -> tuple[Shape, ...]:
        """The server shapes enforced now, in the order they are checked."""
        with self._cond:
            return tuple(self._shapes)

    @property
    def limits(self) -> dict[str, Any]:
        """The limits now: ``max_concurrency``, ``requests_per_minute``, ``burst``."""
        with self._cond:
            burst = self._burst or (1 if self._rpm is not None else None)
            return {
                "max_concurrency": self._max_concurrency,
                "requests_per_minute": self._rpm,
                "burst": burst,
            }

    def set_latency(self, latency: Latency) -> None:
        """Seconds before each normal answer (a float, or a callable returning them)."""
        with self._cond:
            self._latency = latency

    def set_faults(
        self, fault_rate: float, faults: Sequence[Action] | None = None, seed: int | None = None
    ) -> None:
        """Answer a ``fault_rate`` share of admitted requests with a random one of ``faults``.

        ``faults`` defaults to 500 and 503 answers; ``seed`` (if given) restarts
        the random draws. The draws happen in arrival order under the lock, so
        a single client thread sees the same sequence on every run.
        """
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in 0..1, got {fault_rate!r}")
        chosen = _check_actions(
            faults if faults is not None else (Respond.status(500), Respond.status(503))
        )
        if fault_rate > 0 and not chosen:
            raise ValueError("faults must not be empty when fault_rate > 0")
        with self._cond:
            self._fault_rate, self._faults = float(fault_rate), chosen
            if seed is not None:
                self._rng.seed(seed)

    def script(self, actions: Iterable[Action]) -> None:
        """Append ``actions``: the next admitted requests get them, one each, in order."""
        checked = _check_actions(actions)
        with self._cond:
            self._script.extend(checked)

    @property
    def scripted(self) -> int:
        """How many scripted actions are still waiting for a request."""
        with self._cond:
            return len(self._script)

    def always(self, action: Action | None) -> None:
        """Answer every admitted request with ``action`` (after the script) until :meth:`heal`."""
        if action is not None:
            _check_actions([action])
        with self._cond:
            self._override = action

    def fail_all(
        self,
        status: int = 503,
        body: Mapping[str, Any] | str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer every admitted request with ``status`` until :meth:`heal`."""
        self.always(Respond.status(status, body, headers))

    def heal(self) -> None:
        """Back to normal answers: drop the script, the :meth:`always` action and random faults.

        Limits and latency stay as they are.
        """
        with self._cond:
            self._script.clear()
            self._override = None
            self._fault_rate = 0.0

    # ---- observation ------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshots of the recorded requests, in arrival order (the last ``max_recorded``)."""
        with self._cond:
            return [entry.snapshot() for entry in self._entries]

    @property
    def count(self) -> int:
        """Requests received since the start or :meth:`reset_stats` (any path, any answer)."""
        with self._cond:
            return self._count

    @property
    def statuses(self) -> collections.Counter[int]:
        """A copy of how many answers were sent with each HTTP status."""
        with self._cond:
            return collections.Counter(self._statuses)

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet answered."""
        with self._cond:
            return self._in_flight

    @property
    def max_in_flight_seen(self) -> int:
        """The most admitted requests ever in flight at once (since :meth:`reset_stats`)."""
        with self._cond:
            return self._max_in_flight_seen

    def reset_stats(self) -> None:
        """Forget recorded requests and counters; ``max_in_flight_seen`` restarts at in_flight."""
        with self._cond:
            self._entries.clear()
            self._count = 0
            self._statuses.clear()
            self._max_in_flight_seen = self._in_flight

    def wait_for_count(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``count >= n`` or ``timeout`` seconds pass; return whether it got there."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count >= n, timeout)

    def wait_for_in_flight(self, n: int, timeout: float = 5.0) -> bool:
        """Block until ``in_flight >= n`` or ``timeout`` seconds pass; return whether it did."""
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight >= n, timeout)

    # ---- serving (runs on the connection threads) -------------------------------

    def _serve(self, handler: RequestHandler) -> None:
        arrived = time.monotonic()
        raw = handler.read_body()
        entry = Entry(
            method=handler.command,
            path=urlsplit(handler.path).path,
            headers=dict(handler.headers.items()),
            body=_parse_body(raw),
            arrived=arrived,
            connection=handler.conn_id,
        )
        with self._cond:
            self._count += 1
            self._entries.append(entry)
            self._cond.notify_all()
        try:
            self._answer(handler, entry)
        finally:
            self._finish(entry, None, "aborted")

    def _finish(self, entry: Entry, status: int | None, kind: str) -> None:
        """Close the record (once): status, end time, and out of flight."""
        with self._cond:
            if entry.ended is not None:
                return
            entry.ended = time.monotonic()
            entry.status, entry.kind = status, kind
            if status is not None:
                self._statuses[status] += 1
            if entry.admitted:
                self._in_flight -= 1
            self._cond.notify_all()

    def _answer(self, handler: RequestHandler, entry: Entry) -> None:
        wire = _wire.wire_for_path(entry.path)
        if wire is None:
            message = (
                f"fake provider serves POST {_wire.OPENAI_PATH} and {_wire.ANTHROPIC_PATH}, "
                f"not {entry.path}"
            )
            body = _wire.error_body("openai", message, "not_found_error", "not_found")
            return self._send(handler, entry, 404, body, [], "not_found")
        if entry.method != "POST":
            body = _wire.error_body(wire, "use POST", "invalid_request_error")
            return self._send(handler, entry, 405, body, [("Allow", "POST")], "not_found")
        request = entry.body
        if not isinstance(request, dict):
            body = _wire.error_body(wire, "body must be a JSON object", "invalid_request_error")
            return self._send(handler, entry, 400, body, [], "bad_request")
        if not self._authorized(handler, wire):
            body = (
                _wire.error_body(wire, "invalid x-api-key", "authentication_error")
                if wire == "anthropic"
                else _wire.error_body(
                    wire, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
                )
            )
            return self._send(handler, entry, 401, body, [], "unauthorized")

        decision = self._admit(entry, wire, request)
        if isinstance(decision, _Rejection):
            return self._send(
                handler,
                entry,
                decision.status,
                decision.body,
                decision.headers,
                decision.kind,
                decision.content_type,
            )
        action, limit_headers = decision
        stop_event = handler.server.stop_event
        if isinstance(action, Reset):
            self._finish(entry, None, action.kind)
            return handler.abort()
        if isinstance(action, Hang):
            stop_event.wait(action.seconds)
            self._finish(entry, None, action.kind)
            handler.close_connection = True
            return None
        if isinstance(action, Status):
            status_body = (
                _wire.default_error_body(wire, action.code) if action.body is None else action.body
            )
            headers = list(action.headers.items())
            return self._send(handler, entry, action.code, status_body, headers, action.kind)
        if isinstance(action, Garbage):
            payload = _wire.encode_response(
                action.status,
                [],
                action.body,
                content_type=action.content_type,
                close=handler.close_connection,
            )
            self._finish(entry, action.status, action.kind)
            return handler.send_all(payload)
        if isinstance(action, Delay):
            stop_event.wait(action.seconds)
        self._answer_normally(handler, entry, wire, request, action, limit_headers)
        return None

    def _authorized(self, handler: RequestHandler, wire: _wire.Wire) -> bool:
        key = self._require_key
        if key is None:
            return True
        if wire == "anthropic":
            return handler.headers.get("x-api-key") == key
        return handler.headers.get("Authorization") == f"Bearer {key}"

    def _admit(
        self, entry: Entry, wire: _wire.Wire, request: Mapping[str, Any]
    ) -> _Rejection | _Admission:
        """Check the limits and pick the answer, in one critical section.

        Every limit is checked before any is charged, so a refused request
        counts against none of them.
        """
        with self._cond:
            now = time.monotonic()
            states = self._states
            announced = [h for state in states for h in state.headers()]
            limit = self._max_concurrency
            if limit is not None and self._in_flight >= limit:
                body = _wire.kimi_concurrency_body(limit)
                return _Rejection(429, announced, body, "concurrency_limit")
            bucket = self._bucket
            if bucket is not None:
                bucket.refill(now)
                if bucket.tokens < 1.0 - EPSILON:
                    return self._bucket_rejection(bucket, wire, announced)
            shaped = Request(wire, self._in_flight, request_tokens(dict(request)) if states else 0)
            for state in states:
                refusal = state.check(shaped)
                if refusal is not None:
                    headers = refusal.headers + announced
                    return _Rejection(
                        429, headers, refusal.body, refusal.kind, refusal.content_type
                    )
            if bucket is not None:
                bucket.take(now)
            for state in states:
                state.commit(shaped)
            entry.admitted = True
            entry.started = now
            self._in_flight += 1
            self._max_in_flight_seen = max(self._max_in_flight_seen, self._in_flight)
            self._cond.notify_all()
            headers = []
            if bucket is not None and self._rate_limit_headers:
                headers = self._bucket_headers(bucket, wire)
            if states:
                headers += [h for state in states for h in state.headers()]
            return _Admission(self._pick_action(), headers)

    def _bucket_rejection(
        self, bucket: TokenBucket, wire: _wire.Wire, announced: list[tuple[str, str]]
    ) -> _Rejection:
        wait = bucket.wait_for_one()
        headers = [("Retry-After", str(max(1, math.ceil(wait - EPSILON))))]
        headers += self._bucket_headers(bucket, wire) + announced
        message = (
            f"Rate limit reached for requests (fake): limit "
            f"{_number(bucket.per_minute)} per minute. Please try again in "
            f"{_wire.go_duration(wait)}."
        )
        if wire == "anthropic":
            body = _wire.error_body(wire, message, "rate_limit_error")
        else:
            body = _wire.error_body(wire, message, "requests", "rate_limit_exceeded")
        return _Rejection(429, headers, body, "rate_limit")

    def _bucket_headers(self, bucket: TokenBucket, wire: _wire.Wire) -> list[tuple[str, str]]:
        # The limit reported is the bucket's capacity, so that "reset" (the time until the
        # bucket is full again) divided by "limit" is the time per request, as it is for
        # OpenAI, whose per-minute bucket holds a whole minute's requests.
        limit, remaining = str(bucket.capacity), str(bucket.remaining())
        if wire == "anthropic":
            full_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
                seconds=bucket.time_to_full()
            )
            reset = full_at.isoformat(timespec="seconds").replace("+00:00", "Z")
            return [
                ("anthropic-ratelimit-requests-limit", limit),
                ("anthropic-ratelimit-requests-remaining", remaining),
                ("anthropic-ratelimit-requests-reset", reset),
            ]
        return [
            ("x-ratelimit-limit-requests", limit),
            ("x-ratelimit-remaining-requests", remaining),
            ("x-ratelimit-reset-requests", _wire.go_duration(bucket.time_to_full())),
        ]

    def _pick_action(self) -> Action | None:
        """Pick the answer for one admitted request. Called with the lock held."""
        if self._script:
            return self._script.popleft()
        if self._override is not None:
            return self._override
        if self._fault_rate > 0 and self._rng.random() < self._fault_rate:
            return self._rng.choice(self._faults)
        return None

    def _answer_normally(
        self,
        handler: RequestHandler,
        entry: Entry,
        wire: _wire.Wire,
        request: Mapping[str, Any],
        action: Action | None,
        headers: list[tuple[str, str]],
    ) -> None:
        with self._cond:
            latency, reply = self._latency, self._reply
        try:
            seconds = latency() if callable(latency) else latency
            if seconds > 0:
                handler.server.stop_event.wait(seconds)
            if isinstance(action, Ok):
                content = action.content
            elif reply is not None:
                content = reply(request)
            else:
                content = _wire.echo_reply(request)
        except Exception as exc:  # a user callable failed: answer 500, as a server would
            _log.debug("fake provider %r: reply or latency callable failed", self._name)
            message = f"fake provider: reply/latency callable raised {type(exc).__name__}"
            body = _wire.error_body(wire, message, "server_error")
            return self._send(handler, entry, 500, body, [], "reply_error")

        model = request.get("model")
        model = model if isinstance(model, str) else self._model
        prefix = "msg" if wire == "anthropic" else "chatcmpl"
        with self._cond:
            ident = f"{prefix}-fake-{next(self._ids)}"
        prompt_tokens = _wire.count_tokens(_wire.prompt_text(request))
        if request.get("stream") is True:
            pieces = _wire.split_text(content, self._stream_chunks)
            events = _wire.stream_events(
                wire, ident=ident, model=model, pieces=pieces, prompt_tokens=prompt_tokens
            )
            return self._stream(handler, entry, events, headers)
        body = _wire.completion_body(
            wire, ident=ident, model=model, content=content, prompt_tokens=prompt_tokens
        )
        return self._send(handler, entry, 200, body, headers, "ok")

    def _stream(
        self,
        handler: RequestHandler,
        entry: Entry,
        events: Sequence[bytes],
        headers: list[tuple[str, str]],
    ) -> None:
        head = _wire.encode_stream_head(200, headers, close=handler.close_connection)
        handler.send_all(head + _wire.encode_chunk(events[0]))
        for event in events[1:-1]:
            if self._stream_delay > 0:
                handler.server.stop_event.wait(self._stream_delay)
            handler.send_all(_wire.encode_chunk(event))
        if self._stream_delay > 0:
            handler.server.stop_event.wait(self._stream_delay)
        self._finish(entry, 200, "stream")
        handler.send_all(_wire.encode_chunk(events[-1]) + _wire.encode_chunk(b""))

    def _send(
        self,
        handler: RequestHandler,
        entry: Entry,
        status: int,
        body: Mapping[str, Any] | str | bytes,
        headers: list[tuple[str, str]],
        kind: str,
        content_type: str | None = None,
    ) -> None:
        """Write one whole response in one send; the record closes just before it."""
        data, default_type = _wire.encode_body(body)
        content_type = content_type or default_type
        payload = _wire.encode_response(
            status, headers, data, content_type=content_type, close=handler.close_connection
        )
        self._finish(entry, status, kind)
        handler.send_all(payload)
