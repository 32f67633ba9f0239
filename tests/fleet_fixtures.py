"""Shared helpers for the call-path tests (retry, breaker, guard, chain, client, fleet).

Two kinds of doubles:

* :class:`StubProvider` stands in for the transport: it answers from a script of
  ``Reply`` objects, exceptions or callables, and records every call. With
  :func:`make_guard` and a ``FakeClock`` the guard and chain tests are exact and
  instant (no sockets, no sleeping).
* ``ratelimit_sdk.testing.FakeProvider`` (real HTTP on 127.0.0.1) for the client
  and fleet tests; :func:`fake_config` gives a provider config with short delays.

Plain functions only (no pytest fixtures), so test modules import what they use.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ratelimit_sdk import Client
from ratelimit_sdk.breaker import Breaker
from ratelimit_sdk.clock import Clock
from ratelimit_sdk.config import BreakerConfig, LimitsConfig, ProviderConfig, RetryConfig
from ratelimit_sdk.guard import Guard
from ratelimit_sdk.hooks import Event, Hooks
from ratelimit_sdk.limiter import MemoryLimiter
from ratelimit_sdk.models import ChatRequest, Completion, ErrorBody, Reply, Usage
from ratelimit_sdk.testing import FakeProvider

#: An API key that must never show up in a log line, repr, str or exception.
CANARY = "sk-canary-5d1e0c7b9a4f2e83"

#: Retries with tiny, jitter-free delays (the real-time tests must stay quick).
FAST_RETRY: dict[str, Any] = {"base_delay": 0.01, "max_delay": 1.0, "jitter": 0.0}
#: HTTP timeouts for the fake providers: short, but generous for a loaded machine.
SHORT_TIMEOUT: dict[str, Any] = {"connect": 2.0, "read": 5.0}

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hello"}])

Script = Reply | BaseException | type[BaseException] | Callable[[ChatRequest], Any]


# -- replies -------------------------------------------------------------------------------


def ok_reply(content: str = "fine", headers: Mapping[str, str] | None = None) -> Reply:
    """A 2xx answer with a parsed completion."""
    return Reply(
        status=200,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        completion=Completion(content, model="stub-model", usage=Usage(3, 2, 5)),
    )


def error_reply(
    status: int,
    message: str = "something went wrong",
    *,
    code: str | None = None,
    type_: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An answer with an error object in the body."""
    return Reply(
        status=status,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        error=ErrorBody(code=code, type=type_, message=message),
        excerpt=message,
    )


def rate_limited_reply(
    retry_after: float | None = None, headers: Mapping[str, str] | None = None
) -> Reply:
    """A 429 "rate limit reached", with ``Retry-After`` when given."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["retry-after"] = f"{retry_after:g}"
    return error_reply(
        429, "Rate limit reached for requests", code="rate_limit_exceeded", headers=all_headers
    )


def quota_reply(headers: Mapping[str, str] | None = None) -> Reply:
    """OpenAI's exhausted-quota answer."""
    return error_reply(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        code="insufficient_quota",
        type_="insufficient_quota",
        headers=headers,
    )


# -- the transport double ---------------------------------------------------------------------


class StubProvider:
    """A ``Provider`` that answers from a script and records every call. Thread-safe.

    Each ``send`` takes the next scripted item (else ``default``): a ``Reply`` is
    returned, an exception (instance or class) is raised, a callable is called with
    the request and its result treated the same way.
    """

    def __init__(
        self, name: str = "stub", script: Iterable[Script] = (), default: Script | None = None
    ) -> None:
        self.name = name
        self.default: Script = ok_reply() if default is None else default
        self.calls: list[dict[str, Any]] = []
        self.closed = False
        self._script: deque[Script] = deque(script)
        self._lock = threading.Lock()
        self._active = 0
        self.max_active = 0

    def push(self, *items: Script) -> None:
        """Append scripted answers."""
        with self._lock:
            self._script.extend(items)

    @property
    def count(self) -> int:
        """How many times ``send`` was called."""
        with self._lock:
            return len(self.calls)

    def send(
        self,
        request: ChatRequest,
        *,
        connect_timeout: float,
        read_timeout: float,
        time_left: float | None = None,
    ) -> Reply:
        """Answer with the next scripted item."""
        with self._lock:
            self.calls.append(
                {
                    "request": request,
                    "connect_timeout": connect_timeout,
                    "read_timeout": read_timeout,
                    "time_left": time_left,
                    "at": time.monotonic(),
                }
            )
            item = self._script.popleft() if self._script else self.default
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            return self._play(item, request)
        finally:
            with self._lock:
                self._active -= 1

    def _play(self, item: Any, request: ChatRequest) -> Reply:
        if isinstance(item, Reply):
            return item
        if isinstance(item, BaseException) or (
            isinstance(item, type) and issubclass(item, BaseException)
        ):
            raise item
        if callable(item):
            return self._play(item(request), request)
        raise TypeError(f"not a scripted answer: {item!r}")

    def stream(
        self,
        request: ChatRequest,
        *,
        connect_timeout: float,
        read_timeout: float,
        time_left: float | None = None,
        idle_timeout: float | None = None,
    ) -> Any:
        """Streaming is not scripted here."""
        raise NotImplementedError

    def close(self) -> None:
        """Remember that the guard closed it."""
        self.closed = True


# -- guards built by hand ----------------------------------------------------------------------


def provider_config(
    name: str,
    *,
    limits: Mapping[str, Any] | None = None,
    retry: Mapping[str, Any] | None = None,
    breaker: Mapping[str, Any] | None = None,
) -> ProviderConfig:
    """A provider config with fast retries (overridable) and an unreachable URL."""
    return ProviderConfig(
        name=name,
        base_url="http://127.0.0.1:9/v1",
        model=f"{name}-model",
        limits=LimitsConfig(**(limits or {})),
        retry=RetryConfig(**{**FAST_RETRY, **(retry or {})}),
        breaker=BreakerConfig(**(breaker or {})),
    )


def make_guard(
    name: str,
    provider: StubProvider | None = None,
    *,
    clock: Clock,
    hooks: Hooks | None = None,
    limits: Mapping[str, Any] | None = None,
    retry: Mapping[str, Any] | None = None,
    breaker: Mapping[str, Any] | None = None,
) -> Guard:
    """A guard over a stub provider, an in-memory limiter on ``clock`` and a real breaker."""
    pc = provider_config(name, limits=limits, retry=retry, breaker=breaker)
    hooks = hooks if hooks is not None else Hooks()

    def on_change(provider: str, old: str, new: str) -> None:
        event = {"open": "breaker_open", "closed": "breaker_close"}.get(new, "breaker_half_open")
        hooks.emit(Event(event, provider, state=new))

    return Guard(
        pc,
        limiter=MemoryLimiter(**pc.limits.limiter_kwargs(), key=name, clock=clock),
        provider=provider if provider is not None else StubProvider(name),
        breaker=Breaker(name, pc.breaker, on_change=on_change),
        clock=clock,
        hooks=hooks,
    )


def open_breaker(guard: Guard) -> None:
    """Trip ``guard``'s breaker by feeding it ``fail_max`` failures."""
    from ratelimit_sdk.breaker import Probe
    from ratelimit_sdk.models import BreakerVote

    for _ in range(guard.config.breaker.fail_max):
        guard.breaker.record(BreakerVote.FAILURE, Probe(False), RuntimeError("down"))
    assert guard.breaker.state == "open"


class EventLog:
    """A hook that records every event (thread-safe); register with ``hooks.on("*", log)``."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def names(self) -> list[str]:
        """Event names, in order."""
        with self._lock:
            return [e.name for e in self.events]

    def of(self, name: str) -> list[Event]:
        """The events called ``name``."""
        with self._lock:
            return [e for e in self.events if e.name == name]


# -- real HTTP fakes ----------------------------------------------------------------------------


def fake_config(fake: FakeProvider, **extra: Any) -> dict[str, Any]:
    """A provider config for ``fake`` with fast retries and short timeouts (overridable)."""
    retry = {**FAST_RETRY, **extra.pop("retry", {})}
    timeout = {**SHORT_TIMEOUT, **extra.pop("timeout", {})}
    return fake.provider_config(retry=retry, timeout=timeout, **extra)


def client_for(*configs: Mapping[str, Any], **options: Any) -> Client:
    """A client over provider config dicts (listed order = priority unless given)."""
    providers = []
    for index, config in enumerate(configs):
        providers.append({"priority": index + 1, **config})
    return Client({"providers": providers, "timeout": 20.0, **options})


def assert_no_permits(client: Client) -> None:
    """Every provider's limiter holds nothing and has nobody waiting."""
    for name, stats in client.stats().items():
        assert stats.in_flight == 0, f"{name}: {stats.in_flight} permits still held"
        assert stats.queued == 0, f"{name}: {stats.queued} threads still queued"
        assert client.guard(name).limiter.in_flight == 0


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a test condition (test side only); fail after a generous bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def run_threads(count: int, target: Callable[[int], Any], timeout: float = 60.0) -> list[Any]:
    """Run ``target(i)`` on ``count`` threads started together; results or exceptions."""
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def body(i: int) -> None:
        start.wait(timeout)
        try:
            results[i] = target(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "a worker thread did not finish in time"
    return results
