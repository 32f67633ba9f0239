"""Stage 3 (per provider): breaker gate -> limiter permit -> provider.send -> classify -> record.

A :class:`Guard` makes exactly one attempt on its provider and reports what it
came to (:class:`AttemptResult`); whether to retry or move on is the chain's
business. The permit is released in ``finally`` on every path (success, any
exception, KeyboardInterrupt); the breaker hears the classified outcome after
the request, never around it.

:func:`build_guards` builds one guard per provider (limiter, transport, breaker)
from a :class:`~ratelimit_sdk.config.ClientConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._redact import get_logger
from .breaker import Breaker, Probe, shared_storage
from .classify import classify, classify_failure, error_for, server_wait
from .clock import Clock
from .config import ClientConfig, LimitsConfig, ProviderConfig
from .errors import AcquireTimeout, CircuitOpenError, ProviderError, RateLimitSDKError
from .hooks import Event, Hooks
from .limiter import Limiter, Permit, from_backend
from .models import (
    Attempt,
    BreakerVote,
    ChatRequest,
    Completion,
    Outcome,
    ProviderStats,
    Reply,
    Verdict,
)
from .providers import Provider, build_provider
from .retry import Backoff
from .stream import ChatStream

__all__ = ["AttemptResult", "Cancelled", "Guard", "build_guards"]

_log = get_logger("ratelimit_sdk.guard")

T = TypeVar("T")

#: How many recent admission waits each guard keeps for the p50/p95 figures.
WAIT_SAMPLES = 1024

#: Seconds a call skipped while another thread's half-open probe is out waits before it
#: looks again (the probe's end has no known time; polling beats spinning).
PROBE_POLL = 0.05


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt's result: the record for the caller, plus what the chain needs."""

    attempt: Attempt
    verdict: Verdict | None = None
    completion: Completion | None = None
    stream: ChatStream | None = None
    wait_hint: float = 0.0  # skipped providers: seconds until they may take a call

    @property
    def outcome(self) -> Outcome:
        """The attempt's outcome."""
        return self.attempt.outcome


class Cancelled(BaseException):
    """The call was cancelled (``Client.map`` interrupted); nothing more is sent.

    A ``BaseException``, like KeyboardInterrupt, so that no ``except Exception``
    on the way swallows it.
    """


class _Counters:
    """Per-guard counters (this process). Updated under a small lock of their own."""

    __slots__ = (
        "errors",
        "fallbacks",
        "lock",
        "ok",
        "rate_limited",
        "requests",
        "retries",
        "waits",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.ok = 0
        self.rate_limited = 0
        self.errors = 0
        self.retries = 0
        self.fallbacks = 0
        self.waits: deque[float] = deque(maxlen=WAIT_SAMPLES)


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


class Guard:
    """Everything between the chain and one provider. Thread-safe; one per provider."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        limiter: Limiter,
        provider: Provider,
        breaker: Breaker,
        clock: Clock,
        hooks: Hooks,
        pool_limits: LimitsConfig | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.limiter = limiter
        self.provider = provider
        self.breaker = breaker
        self.clock = clock
        self.hooks = hooks
        self.backoff = Backoff(config.retry)
        self._pool_limits = pool_limits
        self._counters = _Counters()
        self._closed = False

    # -- state the chain reads ----------------------------------------------------------

    @property
    def model(self) -> str:
        """The model id this guard's provider is called with."""
        return self.config.model

    def unavailable_for(self) -> tuple[Outcome | None, float]:
        """``(None, 0)`` if the provider may be tried now, else why not and for how long."""
        if not self.breaker.would_allow():
            return Outcome.CIRCUIT_OPEN, self.breaker.retry_after()
        cool = self.limiter.cooldown_remaining()
        if cool > 0:
            return Outcome.COOLING_DOWN, cool
        return None, 0.0

    def can_take_now(self, request: ChatRequest) -> bool:
        """Whether a call sent here now would be admitted at once (nothing is taken)."""
        if self.unavailable_for()[0] is not None:
            return False
        try:
            return self.limiter.would_admit(tokens=self._token_estimate(request))
        except RateLimitSDKError:
            return False

    def time_to_take(self, request: ChatRequest) -> float | None:
        """Seconds until a call sent here could be admitted at once (``0.0``: now).

        ``None`` when only a release can tell (concurrency is full, another
        thread's half-open probe is out); ``inf`` once the guard is closed. Nothing
        is taken; the answer may be stale.
        """
        if self._closed:
            return math.inf
        reason, wait = self.unavailable_for()
        if reason is Outcome.COOLING_DOWN:
            return wait
        if reason is Outcome.CIRCUIT_OPEN:
            return wait if wait > 0 else None
        try:
            return self.limiter.time_to_admit(tokens=self._token_estimate(request))
        except RateLimitSDKError:
            return None

    def on_release(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` whenever this provider's limiter frees room (where it can tell)."""
        self.limiter.add_listener(fn)

    def _token_estimate(self, request: ChatRequest) -> int:
        limits = self.config.limits
        pool = self._pool_limits
        if limits.tokens_per_minute is None and (pool is None or pool.tokens_per_minute is None):
            return 0
        budget = min(
            b
            for b in (limits.tokens_per_minute, None if pool is None else pool.tokens_per_minute)
            if b is not None
        )
        return int(min(request.estimate_tokens(), budget))

    # -- one attempt ----------------------------------------------------------------------

    def attempt(
        self,
        request: ChatRequest,
        *,
        deadline: float,
        max_wait: float | None,
        retry_index: int = 0,
        cancel: threading.Event | None = None,
    ) -> AttemptResult:
        """Make one attempt, bounded by ``deadline`` (monotonic) and ``max_wait`` for admission.

        Never raises for provider trouble: every outcome comes back as a result
        (``BadRequestError`` included, in ``attempt.error``). KeyboardInterrupt and
        other BaseExceptions propagate after the permit is released.
        """
        clock = self.clock
        started = clock.monotonic()
        probe = self.breaker.allow()
        if probe is None:
            wait = self.breaker.retry_after()
            opened = CircuitOpenError(
                f"{self.name}: circuit breaker open", provider=self.name, retry_after=wait
            )
            # 0.0 means another caller's probe is out: look again shortly, not at once.
            return self._skip(Outcome.CIRCUIT_OPEN, opened, wait or PROBE_POLL)
        cool = self.limiter.cooldown_remaining()
        if cool > 0:
            self._give_back(probe)
            error = ProviderError(
                f"{self.name}: cooling down for {cool:.2f}s", provider=self.name, retry_after=cool
            )
            return self._skip(Outcome.COOLING_DOWN, error, cool)

        remaining = deadline - started
        admit_wait = remaining if max_wait is None else min(max_wait, remaining)
        try:
            permit = self.limiter.acquire(
                timeout=max(0.0, admit_wait), tokens=self._token_estimate(request), cancel=cancel
            )
        except AcquireTimeout as exc:
            self._give_back(probe)
            if cancel is not None and cancel.is_set():
                raise Cancelled from None
            # A closed guard never comes back: say so, or the chain would retry it in a loop.
            comeback = math.inf if self._closed else 0.0
            return self._skip(Outcome.BUSY, exc, comeback, elapsed=clock.monotonic() - started)
        except BaseException:
            self._give_back(probe)
            raise
        if cancel is not None and cancel.is_set():  # nothing new is sent once cancelled
            permit.release()
            self._give_back(probe)
            raise Cancelled
        admitted = clock.monotonic()
        with self._counters.lock:
            self._counters.waits.append(admitted - started)
        if request.stream:
            return self._attempt_stream(request, permit, probe, deadline, started)
        try:
            verdict, completion = self._send(request, deadline, admitted)
            if verdict.outcome is Outcome.OK and verdict.cooldown:
                # "Remaining 0, reset in r" counts from when the provider took our request,
                # about when we sent it: the wait left is r minus what the answer took
                # (plus the margin that absorbs network jitter).
                spent = self.clock.monotonic() - admitted
                left = verdict.cooldown - spent + self.config.limits.safety_margin
                verdict = dataclasses.replace(verdict, cooldown=left if left > 0 else None)
            if completion is not None and completion.usage is not None:
                permit.settle(tokens=completion.usage.total_tokens)
            # Pause the provider before the permit goes back, or a queued caller slips in.
            cooldown = self._apply_cooldown(verdict, retry_index)
        except BaseException:
            self._give_back(probe)
            raise
        finally:
            permit.release()
        return self._record(verdict, completion, probe, started, retry_index, cooldown)

    def _send(
        self, request: ChatRequest, deadline: float, now: float
    ) -> tuple[Verdict, Completion | None]:
        left = max(0.001, deadline - now)
        timeouts = self.config.timeout
        try:
            reply: Reply = self.provider.send(
                request,
                connect_timeout=min(timeouts.connect, left),
                read_timeout=min(timeouts.read, left),
            )
        except ProviderError as exc:
            return classify_failure(exc), None
        verdict = classify(reply, now=self.clock.time())
        return verdict, (reply.completion if verdict.outcome is Outcome.OK else None)

    def _attempt_stream(
        self, request: ChatRequest, permit: Permit, probe: Probe, deadline: float, started: float
    ) -> AttemptResult:
        left = max(0.001, deadline - self.clock.monotonic())
        timeouts = self.config.timeout
        try:
            stream = self.provider.stream(
                request,
                connect_timeout=min(timeouts.connect, left),
                read_timeout=min(timeouts.read, left),
            )
        except ProviderError as exc:
            permit.release()
            return self._record(classify_failure(exc), None, probe, started, 0)
        except BaseException:
            permit.release()
            self._give_back(probe)
            raise
        if stream.reply is not None:  # not a stream: an error answer to classify
            try:
                stream.close()
                verdict = classify(stream.reply, now=self.clock.time())
                cooldown = self._apply_cooldown(verdict, 0)  # before the permit goes back
            finally:
                permit.release()
            completion = stream.reply.completion if verdict.outcome is Outcome.OK else None
            return self._record(verdict, completion, probe, started, 0, cooldown)
        # Read up to the first text chunk: until then, a failure is an ordinary attempt
        # the chain may retry or fall back from.
        try:
            first = next(iter(stream), None)
        except ProviderError as exc:
            stream.close()
            permit.release()
            return self._record(classify_failure(exc), None, probe, started, 0)
        except BaseException:
            stream.close()
            permit.release()
            self._give_back(probe)
            raise
        ok = Verdict(Outcome.OK, BreakerVote.SUCCESS, retry_same=False, status=stream.status)
        result = self._record(ok, None, probe, started, 0)
        held = ChatStream(
            stream, provider=self.name, model=stream.model or self.model, first=first, permit=permit
        )
        return AttemptResult(attempt=result.attempt, verdict=ok, stream=held)

    # -- any callable --------------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        deadline: float,
        failures: tuple[type[BaseException], ...] = (Exception,),
    ) -> T:
        """Run ``fn(*args, **kwargs)`` under this provider's breaker and limits (one try).

        Raises ``CircuitOpenError`` when the breaker is open and ``AcquireTimeout``
        when admission does not come before ``deadline`` (waiting through any
        cooldown). An exception in ``failures`` counts against the breaker; one that
        carries an HTTP 429 (``exc.response.status_code``) sets a cooldown from its
        Retry-After instead. The permit is released on every path.
        """
        probe = self.breaker.allow()
        if probe is None:
            wait = self.breaker.retry_after()
            raise CircuitOpenError(
                f"{self.name}: circuit breaker open", provider=self.name, retry_after=wait
            )
        started = self.clock.monotonic()
        max_wait = self.config.limits.max_queue_wait
        remaining = max(0.0, deadline - started)
        try:
            permit = self.limiter.acquire(
                timeout=remaining if max_wait is None else min(max_wait, remaining)
            )
        except BaseException:
            self._give_back(probe)
            raise
        with self._counters.lock:
            self._counters.waits.append(self.clock.monotonic() - started)
            self._counters.requests += 1
        try:
            result = fn(*args, **kwargs)
        except failures as exc:
            throttle = _http_throttle(exc, self.clock.time())
            with self._counters.lock:
                if throttle is None:
                    self._counters.errors += 1
                else:
                    self._counters.rate_limited += 1
            if throttle is None:
                self.breaker.record(BreakerVote.FAILURE, probe, exc)
            else:
                self._give_back(probe)
                wait = throttle or self.backoff.delay(0)
                self.limiter.cooldown(wait)
                self._emit(Event("cooldown", self.name, outcome=Outcome.RATE_LIMITED, delay=wait))
            raise
        except BaseException:
            self._give_back(probe)
            raise
        finally:
            permit.release()
        with self._counters.lock:
            self._counters.ok += 1
        self.breaker.record(BreakerVote.SUCCESS, probe)
        return result

    # -- bookkeeping ---------------------------------------------------------------------------

    def _give_back(self, probe: Probe) -> None:
        if probe.is_probe:
            self.breaker.record(BreakerVote.IGNORE, probe)

    def _skip(
        self, outcome: Outcome, error: BaseException, wait: float, elapsed: float = 0.0
    ) -> AttemptResult:
        _log.debug("%s: skipped (%s)", self.name, outcome.value)
        attempt = Attempt(self.name, outcome, error=error, elapsed=elapsed)
        self._emit(Event("attempt", self.name, outcome=outcome, error=error, elapsed=elapsed))
        return AttemptResult(attempt=attempt, wait_hint=wait)

    def _record(
        self,
        verdict: Verdict,
        completion: Completion | None,
        probe: Probe,
        started: float,
        retry_index: int,
        cooldown: float | None = None,
    ) -> AttemptResult:
        """Count and report one attempt; ``cooldown``: already applied (None: apply it now)."""
        outcome = verdict.outcome
        error = None if outcome is Outcome.OK else error_for(verdict, self.name)
        self.breaker.record(verdict.breaker, probe, error)
        elapsed = self.clock.monotonic() - started
        counters = self._counters
        with counters.lock:
            counters.requests += 1
            if outcome is Outcome.OK:
                counters.ok += 1
            elif outcome in (Outcome.RATE_LIMITED, Outcome.QUOTA_EXHAUSTED):
                counters.rate_limited += 1
            else:
                counters.errors += 1
        if cooldown is None:
            cooldown = self._apply_cooldown(verdict, retry_index)
        if cooldown:
            level = _log.info if outcome is Outcome.OK else _log.warning
            level("%s: %s; cooling down for %.2fs", self.name, outcome.value, cooldown)
            self._emit(Event("cooldown", self.name, outcome=outcome, delay=cooldown))
        if outcome in (Outcome.RATE_LIMITED, Outcome.QUOTA_EXHAUSTED):
            self._emit(
                Event("rate_limited", self.name, outcome=outcome, error=error, delay=cooldown)
            )
        _log.debug(
            "%s: attempt %s in %.3fs%s",
            self.name,
            outcome.value,
            elapsed,
            f" ({verdict.message})" if verdict.message else "",
        )
        attempt = Attempt(self.name, outcome, error=error, elapsed=elapsed, status=verdict.status)
        self._emit(Event("attempt", self.name, outcome=outcome, error=error, elapsed=elapsed))
        return AttemptResult(attempt=attempt, verdict=verdict, completion=completion)

    def _apply_cooldown(self, verdict: Verdict, retry_index: int) -> float:
        """Put the limiter in the cooldown ``verdict`` calls for; return its length (0: none)."""
        cooldown = self._cooldown_for(verdict, retry_index)
        if cooldown:
            self.limiter.cooldown(cooldown)
        return cooldown

    def _cooldown_for(self, verdict: Verdict, retry_index: int) -> float:
        if verdict.outcome is Outcome.RATE_LIMITED:
            return self.backoff.cooldown_for(retry_index, verdict.cooldown)
        if verdict.outcome is Outcome.QUOTA_EXHAUSTED:
            return verdict.cooldown or self.config.limits.quota_cooldown
        return verdict.cooldown or 0.0

    def count_retry(self) -> None:
        """Count one retry on this provider (the chain decides them)."""
        with self._counters.lock:
            self._counters.retries += 1

    def count_fallback(self) -> None:
        """Count one move from this provider to the next (the chain decides them)."""
        with self._counters.lock:
            self._counters.fallbacks += 1

    def _emit(self, event: Event) -> None:
        if self.hooks:
            self.hooks.emit(event)

    # -- observation and control ------------------------------------------------------------------

    def stats(self) -> ProviderStats:
        """The figures of this guard for ``Client.stats()``."""
        counters = self._counters
        with counters.lock:
            waits = list(counters.waits)
            figures = {
                "requests": counters.requests,
                "ok": counters.ok,
                "rate_limited": counters.rate_limited,
                "errors": counters.errors,
                "retries": counters.retries,
                "fallbacks": counters.fallbacks,
            }
        snap = self.limiter.snapshot()
        shared_fn = getattr(self.limiter, "shared_stats", None)
        shared = None
        if callable(shared_fn):
            try:
                shared = shared_fn()
            except RateLimitSDKError:
                shared = None
        return ProviderStats(
            name=self.name,
            in_flight=snap.in_flight,
            queued=snap.queued,
            breaker_state=self.breaker.state,
            tokens_available=snap.tokens,
            cooldown_remaining=snap.cooldown_remaining,
            wait_p50=_percentile(waits, 0.50),
            wait_p95=_percentile(waits, 0.95),
            limits=self.config.limits.model_dump(),
            shared=shared,
            **figures,
        )

    def apply(self, config: ProviderConfig) -> None:
        """Take new limits, retry and breaker settings while running (same name, same URL).

        A changed ``pool_units`` applies to the requests admitted from now on.
        """
        self.limiter.update(**config.limits.limiter_kwargs())
        if config.pool is not None and config.pool_units != self.config.pool_units:
            self.limiter.pool_units = config.pool_units  # type: ignore[attr-defined]
        self.breaker.reconfigure(config.breaker)
        self.backoff = Backoff(config.retry)
        self.config = config

    def close(self) -> None:
        """Close the transport and wake anybody waiting for admission."""
        self._closed = True
        self.provider.close()
        self.limiter.close()

    def __repr__(self) -> str:
        return f"<Guard {self.name} model={self.model!r} breaker={self.breaker.state}>"


def _http_throttle(exc: BaseException, now: float) -> float | None:
    """For an exception carrying an HTTP 429 answer: the server's wait (0.0 if unsaid).

    ``None`` when the exception is not a rate limit. Reads ``exc.response`` as
    ``requests`` and ``httpx`` errors carry it.
    """
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status != 429:
        return None
    headers = getattr(response, "headers", None) or {}
    try:
        wait = server_wait({str(k).lower(): str(v) for k, v in dict(headers).items()}, now)
    except Exception:  # a foreign object with odd headers: treat as "unsaid"
        wait = None
    return wait or 0.0


def build_guards(
    config: ClientConfig,
    *,
    clock: Clock,
    hooks: Hooks,
    limiter_factory: Any = None,
    pools: dict[str, Limiter] | None = None,
) -> dict[str, Guard]:
    """One guard per provider of ``config`` (limiters, pools, transports, breakers).

    ``pools``: pool limiters by name to reuse (a reload keeps their state and their
    members); every other pool of ``config`` is built and added to it.
    """
    make = limiter_factory or from_backend
    backend = config.backend
    extra: dict[str, Any] = {}
    if backend != "memory":
        extra = {
            "prefix": config.key_prefix,
            "lease_timeout": config.lease_timeout,
            "on_backend_error": config.on_backend_error,
        }
    pools = {} if pools is None else pools
    for name, limits in config.pools.items():
        if name not in pools:
            pools[name] = make(
                **limits.limiter_kwargs(), backend=backend, key=f"pool:{name}", clock=clock, **extra
            )

    def on_change(provider: str, old: str, new: str) -> None:
        if hooks:
            name = {"open": "breaker_open", "closed": "breaker_close"}.get(new, "breaker_half_open")
            hooks.emit(Event(name, provider, state=new))

    guards: dict[str, Guard] = {}
    for pc in config.providers:
        api_key = pc.resolve_api_key()
        pool_kwargs: dict[str, Any] = {}
        if pc.pool is not None:
            pool_kwargs = {"pool": pools[pc.pool], "pool_units": pc.pool_units}
        limiter = make(
            **pc.limits.limiter_kwargs(),
            backend=backend,
            key=pc.name,
            clock=clock,
            **extra,
            **pool_kwargs,
        )
        storage = _breaker_storage(config, pc.name, limiter)
        guards[pc.name] = Guard(
            pc,
            limiter=limiter,
            provider=build_provider(pc, api_key=api_key, pool_size=pc.limits.max_concurrent),
            breaker=Breaker(pc.name, pc.breaker, storage=storage, on_change=on_change),
            clock=clock,
            hooks=hooks,
            pool_limits=None if pc.pool is None else config.pools[pc.pool],
        )
    return guards


def _breaker_storage(config: ClientConfig, name: str, limiter: Limiter) -> Any:
    """The breaker storage shared through the limiter's keys when the backend is Redis.

    A limiter with ``shared_breaker_cell()`` (the Redis one) keeps the provider's
    breaker state with its own; reads cost no round trip (see :mod:`.breaker`).
    """
    if config.backend == "memory":
        return None
    cell = getattr(limiter, "shared_breaker_cell", None)
    if cell is None:
        return None
    return shared_storage(cell(), name)
