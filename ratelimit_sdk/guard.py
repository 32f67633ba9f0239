"""Stage 3 (per provider): breaker gate -> limiter permit -> provider.send -> classify -> record.

A :class:`Guard` makes exactly one attempt on its provider and reports what it
came to (:class:`AttemptResult`); whether to retry or move on is the chain's
business. Every attempt, streamed or not, and every ``Client.guarded`` call goes
through one :class:`Admission` (breaker gate, then permit), a context manager
whose single ``__exit__`` gives everything back on every path (success, any
exception, KeyboardInterrupt); the breaker hears the classified outcome after
the request, never around it. :meth:`Guard.availability` answers "can you take
this call now, and if not, from when?" in one look.

:func:`build_guards` builds one guard per provider (limiter, transport, breaker)
from a :class:`~ratelimit_sdk.config.ClientConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._redact import get_logger
from .breaker import Breaker, Probe, shared_storage
from .classify import MAX_SERVER_WAIT, classify, classify_failure, error_for, server_wait
from .clock import Clock
from .config import ClientConfig, LimitsConfig, ProviderConfig
from .errors import AcquireTimeout, CircuitOpenError, ProviderError, RateLimitSDKError
from .hooks import Event, Held, Hooks
from .learn import Learner, learner_for
from .limiter import Limiter, Permit, from_backend
from .models import (
    Attempt,
    Availability,
    BreakerVote,
    ChatRequest,
    Completion,
    Outcome,
    ProviderStats,
    Reply,
    Verdict,
)
from .providers import Provider, build_provider, marking
from .retry import PROBE_POLL, Backoff, Decision, Step, decide, run_attempts
from .stream import ChatStream

__all__ = [
    "PROBE_POLL",
    "Admission",
    "AttemptResult",
    "CallResult",
    "Cancelled",
    "Guard",
    "build_guards",
]

_log = get_logger("ratelimit_sdk.guard")

T = TypeVar("T")

#: A reported ``usage`` is believed up to this many times what the request could
#: cost (prompt characters, each at most a token, plus ``max_tokens``): generous
#: for any tokenizer, and far from the 1e7 or 1e20 a hostile server may send.
USAGE_FACTOR = 2

#: How many recent admission waits each guard keeps for the p50/p95 figures.
WAIT_SAMPLES = 1024


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt's result: the record for the caller, plus what the chain needs.

    ``pause``: the provider's state after the attempt, as far as this process knows
    without asking anybody: for a skip, why it was skipped and for how long; for an
    attempt that set a cooldown or opened the breaker, that pause; ``None`` when the
    attempt left the provider open for business.

    ``retry_wait``: seconds a retry here waits instead of the backoff (``None``: the
    backoff): a paced provider's next slot after an overrun, or ``0.0`` after a
    concurrency refusal that lowered a learned limit (the limiter makes the retry
    wait for a release).
    """

    attempt: Attempt
    verdict: Verdict | None = None
    completion: Completion | None = None
    stream: ChatStream | None = None
    pause: Availability | None = None
    retry_wait: float | None = None

    @property
    def outcome(self) -> Outcome:
        """The attempt's outcome."""
        return self.attempt.outcome

    @property
    def wait_hint(self) -> float:
        """Seconds until the provider may take a call again (0.0: now, or unknown)."""
        pause = self.pause
        if pause is None or pause.wait is None:
            return 0.0
        return pause.wait


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


class Admission:
    """One attempt's admission to one provider: breaker gate, then permit. A context manager.

    ``with guard.admission(tokens=..., max_wait=...) as adm:`` asks the breaker,
    then the limiter (one look that admits or says from when, then, only if asked
    to wait, a bounded blocking wait). When refused, :attr:`refusal` says why
    (``circuit_open``, ``cooling_down``, ``busy``) and for how long, and nothing is
    held. When admitted, the body sends the request and calls :meth:`record` once
    with the classified outcome; the cooldown it calls for is set while the permit
    is still held (so no queued caller slips in), the breaker hears the outcome,
    and the single ``__exit__`` releases the permit on every path: success, any
    exception, KeyboardInterrupt. An exception before :meth:`record` gives the
    half-open probe back without a vote. A streamed answer takes the permit along
    with :meth:`hand_over`; the stream then releases it.

    One thread uses an admission; it is not reusable.
    """

    __slots__ = (
        "_cancel",
        "_ceiling",
        "_guard",
        "_handed_over",
        "_held",
        "_look",
        "_max_wait",
        "_pause_after",
        "_recorded",
        "_skip_paused",
        "_stream",
        "_tokens",
        "admitted_at",
        "permit",
        "probe",
        "rate_saturated",
        "refusal",
        "saturated",
        "started",
    )

    def __init__(
        self,
        guard: Guard,
        *,
        tokens: int,
        max_wait: float,
        cancel: threading.Event | None,
        skip_paused: bool,
        ceiling: int = 0,
        pause_after: float | None = None,
    ) -> None:
        self._guard = guard
        self._tokens = tokens
        self._ceiling = ceiling
        self._max_wait = max_wait
        # A window wait longer than this is a pause (skipped, as a cooldown), not a queue.
        self._pause_after = max_wait if pause_after is None else pause_after
        self._cancel = cancel
        self._skip_paused = skip_paused
        self._recorded = False
        self._handed_over = False
        self._look: Permit | Availability | None = None
        self._held: Held | None = None
        self._stream: ChatStream | None = None
        self.permit: Permit | None = None
        self.probe: Probe | None = None
        self.refusal: AttemptResult | None = None
        self.started = 0.0
        self.admitted_at = 0.0
        self.saturated = False
        self.rate_saturated = False

    def __enter__(self) -> Admission:
        try:
            self._admit()
            return self  # inside the try: an interrupt on this line still gives all back
        except BaseException:
            self._give_back_all()  # whatever was taken so far, on any exception
            raise

    def _admit(self) -> None:
        guard = self._guard
        self.started = guard.clock.monotonic()
        self.probe = guard.breaker.allow()
        if self.probe is None:
            self.refusal = guard._refuse_open()
            return
        try:
            # Stored at once (no line runs between the call and the store): whatever an
            # interrupt finds, the one release path sees the permit.
            self._look = got = guard.limiter.try_admit(tokens=self._tokens)
            if isinstance(got, Permit):
                self.permit = got
            elif self._skip_paused and (
                got.cooldown > 0 or got.wait == math.inf or got.window > self._pause_after
            ):
                self.refusal = guard._refuse_paused(got)
            elif self._max_wait <= 0:
                self.refusal = guard._refuse_busy(got, self.started)
            else:
                self.permit = guard.limiter.acquire(
                    timeout=self._max_wait, tokens=self._tokens, cancel=self._cancel
                )
        except AcquireTimeout as exc:
            if self._cancel is not None and self._cancel.is_set():
                raise Cancelled from None
            self.refusal = guard._refuse_timeout(exc, self.started)
        if self.refusal is not None:
            self._give_back_all()
            return
        if self._cancel is not None and self._cancel.is_set():  # nothing new once cancelled
            raise Cancelled
        self.admitted_at = guard.clock.monotonic()
        if guard.learner is not None:  # which limits were reached: only those may grow
            self.saturated = guard._full()
            self.rate_saturated = not isinstance(got, Permit) and bool(got.wait)
        guard._count_wait(self.admitted_at - self.started)
        self._held = guard.hooks.hold()  # no hook runs while this permit is held

    def record(
        self,
        verdict: Verdict,
        completion: Completion | None = None,
        *,
        retry_index: int = 0,
        error: BaseException | None = None,
    ) -> AttemptResult:
        """Count and report the attempt's outcome (once), pausing the provider as it calls for."""
        assert self.permit is not None and self.probe is not None and not self._recorded
        if self._tokens and completion is not None and completion.usage is not None:
            # Only a charged estimate needs settling (no token budget: nothing to correct).
            # A server's figure is believed only up to what the request could cost.
            usage, ceiling = completion.usage, self._ceiling
            used = max(0, min(usage.total_tokens, ceiling))
            self.permit.settle(
                tokens=used,
                input_tokens=max(0, min(usage.prompt_tokens, used)),
                output_tokens=max(0, min(usage.completion_tokens, used)),
            )
        result = self._guard._record(
            verdict, completion, self.probe, self.started, retry_index, error, self
        )
        self._recorded = True  # only now: an interrupt inside still gives the probe back
        return result

    def sent_mark(self) -> Callable[[], None] | None:
        """What the transport calls once the request is written (``None``: nothing to tell)."""
        permit = self.permit
        if permit is None or permit._allow == math.inf:
            return None
        return permit.mark_sent

    @property
    def token_ceiling(self) -> int | None:
        """The most tokens a reported ``usage`` may settle (``None``: none was charged)."""
        return self._ceiling if self._tokens else None

    def hand_over(self, stream: ChatStream) -> None:
        """``stream`` holds the permit from now on and releases it; ``__exit__`` keeps off it.

        The attempt's events fire when the stream closes (its permit is back then).
        """
        self._stream = stream
        self._handed_over = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._give_back_all()

    def _give_back_all(self) -> None:
        """The one release path: the probe (without a vote, unless recorded), then the permit.

        Safe to run more than once: a probe given back twice is harmless, and a
        permit's release is idempotent.
        """
        probe, permit = self.probe, self.permit
        if permit is None and isinstance(self._look, Permit):
            permit = self.permit = self._look  # interrupted between the look and its store
        try:
            if probe is not None and not self._recorded:
                self._recorded = True
                self._guard._give_back(probe)
        finally:
            try:
                if permit is not None and not self._handed_over:
                    permit.release()
            finally:
                self._fire_held()

    def _fire_held(self) -> None:
        """Run the hooks of the events held while the permit was (now it is back)."""
        held, self._held = self._held, None
        hooks = self._guard.hooks
        events = hooks.unhold(held)
        if not events:
            return
        if self._handed_over and self._stream is not None:
            self._stream.on_close(functools.partial(hooks.fire, events))
        else:
            hooks.fire(events)


class Guard:
    """Everything between the chain and one provider. Thread-safe; one per provider.

    The chain asks :meth:`availability` (can you take this call now, and if not,
    from when?) and :meth:`attempt` (one try); ``Client.guarded`` uses :meth:`call`.
    All three go through one :class:`Admission`.
    """

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
        self._set_budgets()
        self._counters = _Counters()
        self._closed = False
        self.learner: Learner | None = self._make_learner(config.limits)

    # -- state the chain reads ----------------------------------------------------------

    @property
    def model(self) -> str:
        """The model id this guard's provider is called with."""
        return self.config.model

    @property
    def max_queue_wait(self) -> float | None:
        """The longest wait for admission at this provider (``None``: up to the deadline)."""
        return self.config.limits.max_queue_wait

    def availability(self, request: ChatRequest | None = None) -> Availability:
        """Whether a call sent here now would be admitted at once, and if not, from when.

        One look (one round trip with Redis; the breaker is read locally); nothing
        is taken, and the answer may be stale. ``wait`` is ``inf`` once closed,
        ``None`` when only a release can tell (concurrency full, or another caller's
        half-open probe is out).
        """
        if self._closed:
            return _CLOSED
        if not self.breaker.would_allow():
            wait = self.breaker.retry_after()
            return Availability(wait if wait > 0 else None, reason=Outcome.CIRCUIT_OPEN)
        tokens = 0 if request is None else self._token_estimate(request)
        try:
            seen = self.limiter.availability(tokens=tokens)
        except RateLimitSDKError:
            return Availability(None, reason=Outcome.BUSY)
        if seen.wait == 0.0:
            return seen
        if seen.cooldown > 0:
            return Availability(
                seen.wait, cooldown=seen.cooldown, reason=Outcome.COOLING_DOWN, window=seen.window
            )
        return Availability(seen.wait, reason=Outcome.BUSY, window=seen.window)

    def unavailable_for(self) -> tuple[Outcome | None, float]:
        """``(None, 0)`` if the provider is not paused, else why (open, cooling) and how long."""
        seen = self.availability()
        if seen.reason in (Outcome.CIRCUIT_OPEN, Outcome.COOLING_DOWN):
            return seen.reason, seen.wait or 0.0
        return None, 0.0

    def can_take_now(self, request: ChatRequest) -> bool:
        """Whether a call sent here now would be admitted at once (nothing is taken)."""
        return self.availability(request).now

    def on_release(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` whenever this provider's limiter frees room (where it can tell)."""
        self.limiter.add_listener(fn)

    def token_ceiling(self, request: ChatRequest) -> int:
        """The most LLM tokens a reported ``usage`` may charge for ``request``.

        A server's figure (``usage.total_tokens``) is clamped to what the request
        could have cost, ``USAGE_FACTOR * (prompt characters + max_tokens)`` when
        ``max_tokens`` is known, and never to more than one window of the token
        budget (``tokens_per_minute``): no answer can lock a provider out for longer
        than a minute's budget takes to refill.
        """
        budgets = self._budgets
        ceiling = int(min(budgets)) if budgets else 0
        limit = request.max_tokens
        if limit is None:
            other = request.params.get("max_completion_tokens")
            limit = other if isinstance(other, int) and not isinstance(other, bool) else None
        if limit is not None:
            could = USAGE_FACTOR * (request.prompt_chars() + limit) + 16
            ceiling = min(ceiling, could) if ceiling else could
        return ceiling

    def _set_budgets(self) -> None:
        """The LLM token budgets in force (own and pool), kept with the config they come from."""
        pool = self._pool_limits
        own = self.config.limits
        self._budgets = tuple(
            b
            for b in (
                own.tokens_per_minute,
                None if pool is None else pool.tokens_per_minute,
                *(w.limit for w in own.windows if w.kind != "requests"),
                *(() if pool is None else (w.limit for w in pool.windows if w.kind != "requests")),
            )
            if b is not None
        )

    def _token_estimate(self, request: ChatRequest) -> int:
        budgets = self._budgets
        if not budgets:
            return 0
        return int(min(request.estimate_tokens(), *budgets))

    # -- admission ----------------------------------------------------------------------

    def admission(
        self,
        request: ChatRequest | None = None,
        *,
        max_wait: float,
        cancel: threading.Event | None = None,
        skip_paused: bool = True,
        pause_after: float | None = None,
    ) -> Admission:
        """The admission for one attempt (use it in a ``with``); see :class:`Admission`.

        ``max_wait``: seconds to wait for a permit when none is free at once (``0``:
        one look). ``skip_paused``: refuse at once while the provider cools down
        (the chain moves on); ``False`` waits through the cooldown within ``max_wait``.
        ``pause_after``: with ``skip_paused``, a window limit that holds the request
        back longer than this counts as a pause too (``None``: ``max_wait``).
        """
        tokens = 0 if request is None else self._token_estimate(request)
        ceiling = 0 if not tokens or request is None else self.token_ceiling(request)
        return Admission(
            self,
            tokens=tokens,
            max_wait=max_wait,
            cancel=cancel,
            skip_paused=skip_paused,
            ceiling=ceiling,
            pause_after=pause_after,
        )

    def _refuse_open(self) -> AttemptResult:
        wait = self.breaker.retry_after()
        error = CircuitOpenError(
            f"{self.name}: circuit breaker open", provider=self.name, retry_after=wait
        )
        # 0.0 means another caller's probe is out: look again shortly, not at once.
        return self._skip(Outcome.CIRCUIT_OPEN, error, wait or PROBE_POLL)

    def _refuse_paused(self, seen: Availability) -> AttemptResult:
        if seen.wait == math.inf:  # closed: it never comes back
            closed = AcquireTimeout(f"{self.name}: closed", waited=0.0, key=self.name)
            return self._skip(Outcome.BUSY, closed, math.inf)
        cool = seen.cooldown
        if seen.window > cool:  # a window limit (a quota spent) holds it back longer
            cool = seen.window
            error = ProviderError(
                f"{self.name}: window limit reached; next admission in {cool:.2f}s",
                provider=self.name,
                retry_after=cool,
            )
        else:
            error = ProviderError(
                f"{self.name}: cooling down for {cool:.2f}s", provider=self.name, retry_after=cool
            )
        return self._skip(Outcome.COOLING_DOWN, error, max(cool, seen.wait or 0.0))

    def _refuse_busy(self, seen: Availability, started: float) -> AttemptResult:
        error = AcquireTimeout(f"{self.name}: no admission at once", waited=0.0, key=self.name)
        hint = 0.0 if seen.wait is None else seen.wait
        return self._skip(Outcome.BUSY, error, hint, elapsed=self.clock.monotonic() - started)

    def _refuse_timeout(self, error: AcquireTimeout, started: float) -> AttemptResult:
        # A closed guard never comes back: say so, or the chain would retry it in a loop.
        comeback = math.inf if self._closed else 0.0
        return self._skip(Outcome.BUSY, error, comeback, elapsed=self.clock.monotonic() - started)

    def _count_wait(self, seconds: float) -> None:
        with self._counters.lock:
            self._counters.waits.append(seconds)

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
        remaining = deadline - self.clock.monotonic()
        wait = remaining if max_wait is None else min(max_wait, remaining)
        # A window wait past what this provider may ever be waited for in this call (a
        # spent quota) is skipped at once, as a cooldown; a shorter one is waited for.
        limit = self.max_queue_wait
        longest = remaining if limit is None else min(limit, remaining)
        with self.admission(
            request, max_wait=max(0.0, wait), cancel=cancel, pause_after=max(0.0, longest)
        ) as adm:
            if adm.refusal is not None:
                return adm.refusal
            if request.stream:
                return self._attempt_stream(adm, request, deadline)
            with marking(adm.sent_mark()):
                verdict, completion, error = self._send(request, deadline, adm.admitted_at)
            verdict = self._from_send(verdict, adm.admitted_at)
            return adm.record(verdict, completion, retry_index=retry_index, error=error)

    def _send(
        self, request: ChatRequest, deadline: float, now: float
    ) -> tuple[Verdict, Completion | None, ProviderError | None]:
        """One request: its verdict, the completion of a success, the transport error if any."""
        left = max(0.001, deadline - now)
        timeouts = self.config.timeout
        try:
            reply: Reply = self.provider.send(
                request,
                connect_timeout=min(timeouts.connect, left),
                read_timeout=min(timeouts.read, left),
                time_left=left,
            )
        except ProviderError as exc:  # the transport's own error names its cause: keep it
            return classify_failure(exc), None, exc
        verdict = classify(reply, now=self.clock.time())
        if self.learner is not None:
            self.learner.observe(reply.headers)
        return verdict, (reply.completion if verdict.outcome is Outcome.OK else None), None

    def _from_send(self, verdict: Verdict, admitted: float) -> Verdict:
        """A success's "remaining 0, reset in r" counts from the send, not from now."""
        if verdict.outcome is not Outcome.OK or not verdict.cooldown:
            return verdict
        # The provider took our request about when we sent it: the wait left is r minus
        # what the answer took (plus the margin that absorbs network jitter).
        spent = self.clock.monotonic() - admitted
        left = verdict.cooldown - spent + self.config.limits.safety_margin
        return dataclasses.replace(verdict, cooldown=left if left > 0 else None)

    def _attempt_stream(
        self, adm: Admission, request: ChatRequest, deadline: float
    ) -> AttemptResult:
        left = max(0.001, deadline - self.clock.monotonic())
        timeouts = self.config.timeout
        try:
            with marking(adm.sent_mark()):
                stream = self.provider.stream(
                    request,
                    connect_timeout=min(timeouts.connect, left),
                    read_timeout=min(timeouts.read, left),
                    time_left=left,
                    idle_timeout=timeouts.stream_idle,
                )
        except ProviderError as exc:
            return adm.record(classify_failure(exc), error=exc)
        if stream.reply is not None:  # not a stream: an error (or whole) answer to classify
            stream.close()
            verdict = classify(stream.reply, now=self.clock.time())
            if self.learner is not None:
                self.learner.observe(stream.reply.headers)
            completion = stream.reply.completion if verdict.outcome is Outcome.OK else None
            return adm.record(verdict, completion)
        # Read up to the first text chunk: until then, a failure is an ordinary attempt
        # the chain may retry or fall back from.
        try:
            first = next(iter(stream), None)
        except ProviderError as exc:
            stream.close()
            return adm.record(classify_failure(exc), error=exc)
        except BaseException:
            stream.close()
            raise
        ok = Verdict(Outcome.OK, BreakerVote.SUCCESS, retry_same=False, status=stream.status)
        result = adm.record(ok)
        assert adm.permit is not None
        held = ChatStream(
            stream,
            provider=self.name,
            model=stream.model or self.model,
            first=first,
            permit=adm.permit,
            token_ceiling=adm.token_ceiling,
        )
        adm.hand_over(held)
        return dataclasses.replace(result, stream=held)

    # -- any callable --------------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        deadline: float,
        failures: tuple[type[BaseException], ...] = (Exception,),
        retry_index: int = 0,
    ) -> CallResult[T]:
        """Run ``fn(*args, **kwargs)`` once under this provider's breaker and limits.

        Admission waits (FIFO, through any cooldown) until ``deadline``, within
        ``max_queue_wait``. Returns a :class:`CallResult`: the value, or the error in
        ``failures`` that ``fn`` raised (which counts against the breaker; one that
        carries an HTTP 429, ``exc.response.status_code``, sets a cooldown from its
        Retry-After instead), or a refusal (``CircuitOpenError``, ``AcquireTimeout``).
        Anything else ``fn`` raises propagates. The permit is released on every path.
        """
        remaining = max(0.0, deadline - self.clock.monotonic())
        max_wait = self.max_queue_wait
        wait = remaining if max_wait is None else min(max_wait, remaining)
        with self.admission(max_wait=wait, skip_paused=False) as adm:
            if adm.refusal is not None:
                error = adm.refusal.attempt.error
                assert error is not None
                return CallResult(adm.refusal, error=error)
            try:
                value = fn(*args, **kwargs)
            except failures as exc:
                throttle = _http_throttle(exc, self.clock.time())
                if throttle is None:
                    verdict = Verdict(Outcome.ERROR, BreakerVote.FAILURE, retry_same=True)
                else:
                    verdict = Verdict(
                        Outcome.RATE_LIMITED,
                        BreakerVote.IGNORE,
                        retry_same=True,
                        retry_after=throttle or None,
                        cooldown=throttle or None,
                        limit="rate",
                    )
                result = adm.record(verdict, retry_index=retry_index, error=exc)
                return CallResult(result, error=exc)
            ok = Verdict(Outcome.OK, BreakerVote.SUCCESS, retry_same=False)
            return CallResult(adm.record(ok, retry_index=retry_index), value=value)

    def call_with_retries(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        deadline: float,
        failures: tuple[type[BaseException], ...] = (Exception,),
    ) -> T:
        """:meth:`call`, retried after this provider's backoff while the policy allows.

        What ``Client.guarded`` runs. Retries an error in ``failures`` while retries
        remain and the wait fits ``max_delay`` and ``deadline``; then re-raises the
        last error. ``CircuitOpenError`` and ``AcquireTimeout`` are raised at once.
        """

        def attempt(retries: int) -> CallResult[T]:
            return self.call(
                fn, args, kwargs, deadline=deadline, failures=failures, retry_index=retries
            )

        def decision(done: CallResult[T], retries: int) -> Decision:
            error = done.error
            if error is None or isinstance(error, (CircuitOpenError, AcquireTimeout)):
                return Decision(Step.DONE)  # a value, or a refusal handed back as it is
            return decide(
                done.outcome,
                retries=retries,
                backoff=self.backoff,
                time_left=deadline - self.clock.monotonic(),
                retry_after=getattr(error, "retry_after", None),
                pause=done.result.pause,
                retry_wait=done.result.retry_wait,
            )

        def on_retry(done: CallResult[T], decided: Decision, retries: int) -> None:
            self.count_retry()
            wait = decided.delay
            _log.info("%s: %r; retry %d in %.2fs", self.name, done.error, retries, wait)
            self._emit(Event("retry", self.name, delay=wait, error=done.error))

        done, _ = run_attempts(attempt, decision, sleep=self.clock.sleep, on_retry=on_retry)
        if done.error is not None:
            raise done.error
        return done.value  # type: ignore[return-value]  # T may itself be None

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
        return AttemptResult(attempt=attempt, pause=Availability(wait, reason=outcome))

    def _record(
        self,
        verdict: Verdict,
        completion: Completion | None,
        probe: Probe,
        started: float,
        retry_index: int,
        error: BaseException | None = None,
        admission: Admission | None = None,
    ) -> AttemptResult:
        """Pause, count and report one attempt (the permit is still held)."""
        outcome = verdict.outcome
        if error is None and outcome is not Outcome.OK:
            error = error_for(verdict, self.name)
        learned = False if admission is None else self._learn(verdict, admission)
        # Pause the provider before the permit goes back, or a queued caller slips in.
        cooldown, retry_wait = self._cooldown_for(verdict, retry_index, learned)
        if cooldown:
            self.limiter.cooldown(cooldown)
        self.breaker.record(verdict.breaker, probe, error)
        elapsed = self.clock.monotonic() - started
        self._count(outcome)
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
        return AttemptResult(
            attempt=attempt,
            verdict=verdict,
            completion=completion,
            pause=self._pause_after(outcome, cooldown),
            retry_wait=retry_wait,
        )

    def _pause_after(self, outcome: Outcome, cooldown: float) -> Availability | None:
        """The pause an attempt left behind, known locally (an open breaker wins)."""
        if outcome is not Outcome.OK and not self.breaker.would_allow():
            reopens = self.breaker.retry_after()
            return Availability(reopens or PROBE_POLL, reason=Outcome.CIRCUIT_OPEN)
        if cooldown:
            return Availability(cooldown, cooldown=cooldown, reason=Outcome.COOLING_DOWN)
        return None

    def _count(self, outcome: Outcome) -> None:
        counters = self._counters
        with counters.lock:
            counters.requests += 1
            if outcome is Outcome.OK:
                counters.ok += 1
            elif outcome in (Outcome.RATE_LIMITED, Outcome.QUOTA_EXHAUSTED):
                counters.rate_limited += 1
            else:
                counters.errors += 1

    def _cooldown_for(
        self, verdict: Verdict, retry_index: int, learned: bool = False
    ) -> tuple[float, float | None]:
        """The pause ``verdict`` calls for, and the retry wait that replaces the backoff.

        The pause is at most :data:`MAX_SERVER_WAIT` (a day); the retry wait is
        ``None`` when the backoff applies. A rate-limit refusal that lowered a
        learned concurrency limit pauses nothing (the lower limit paces; the retry
        waits for a release). One that names no wait, on a provider whose rate we
        pace, means our pacing ran ahead of the server: the limiter widens its
        allowance (unless it lowered a learned rate: then the rate was the cause),
        and the pause and the retry last until its next slot.
        """
        if verdict.outcome is Outcome.RATE_LIMITED:
            if learned and verdict.limit == "concurrency":
                return 0.0, 0.0
            if verdict.limit == "rate" and not verdict.cooldown and self.limiter.paces:
                # A learned rate: the refusal was the rate (lowered just now, or by an
                # earlier refusal of the same overshoot), not jitter.
                limiter, learner = self.limiter, self.learner
                rate = learned or (learner is not None and learner.learns_rate)
                slot = limiter.snapshot().next_start_in if rate else limiter.report_overrun()
                slot = min(max(0.0, slot), MAX_SERVER_WAIT)
                return slot, slot
            wait = self.backoff.cooldown_for(retry_index, verdict.cooldown)
        elif verdict.outcome is Outcome.QUOTA_EXHAUSTED:
            wait = verdict.cooldown or self.config.limits.quota_cooldown
        else:
            wait = verdict.cooldown or 0.0
        return min(wait, MAX_SERVER_WAIT), None

    # -- learned limits -------------------------------------------------------------------

    def _make_learner(self, limits: LimitsConfig) -> Learner | None:
        """The learner of this provider's ``"auto"`` limits (``None``: nothing is learned)."""

        def changed(field: str, old: float, new: float) -> None:
            self._emit(Event("learned", self.name, state=f"{field}={new:g}"))

        return learner_for(
            self.limiter, limits, clock=self.clock, name=self.name, on_change=changed
        )

    def _learn(self, verdict: Verdict, adm: Admission) -> bool:
        """Tell the learner about an answer; True when a refusal was taken as its lesson."""
        learner = self.learner
        if learner is None:
            return False
        if verdict.outcome is Outcome.OK:
            learner.succeeded(adm.saturated, adm.rate_saturated)
        elif verdict.outcome is Outcome.RATE_LIMITED:
            return learner.refused(verdict.limit, adm.admitted_at)
        return False

    def _full(self) -> bool:
        """Whether this process holds as many permits as the concurrency limit allows.

        (With Redis, permits other processes hold do not count: a shared learned limit
        grows only when one process alone fills it, slower but never past what was used.)
        """
        limit = self.limiter.limits().get("max_concurrent")
        return limit is not None and self.limiter.in_flight >= limit

    def count_retry(self) -> None:
        """Count one retry on this provider (the chain decides them)."""
        with self._counters.lock:
            self._counters.retries += 1

    def count_fallback(self) -> None:
        """Count one move from this provider to the next (the chain decides them)."""
        with self._counters.lock:
            self._counters.fallbacks += 1

    def _emit(self, event: Event) -> None:
        if self.hooks.active:
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
            learned=None if self.learner is None else self.learner.learned(),
            windows=snap.windows,
            **figures,
        )

    def apply(self, config: ProviderConfig, pool_limits: LimitsConfig | None = None) -> None:
        """Take new limits, retry and breaker settings while running (same name, same URL).

        ``pool_limits``: the limits of the pool this provider draws from, as now
        configured. A changed ``pool_units`` applies to the requests admitted from now on.
        """
        limits = config.limits.limiter_kwargs()
        if self.learner is not None:  # keep what was learned for the limits still "auto"
            learned = self.learner.learned()
            limits.update((k, v) for k, v in learned.items() if k in config.limits.auto_fields())
        self.limiter.update(**limits)
        self.learner = self._make_learner(config.limits)
        if config.pool is not None and config.pool_units != self.config.pool_units:
            self.limiter.pool_units = config.pool_units  # type: ignore[attr-defined]
        self.breaker.reconfigure(config.breaker)
        self.backoff = Backoff(config.retry)
        self._pool_limits = pool_limits if config.pool is not None else None
        self.config = config
        self._set_budgets()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Close the transport and wake anybody waiting for admission. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.provider.close()
        self.limiter.close()

    def __repr__(self) -> str:
        return f"<Guard {self.name} model={self.model!r} breaker={self.breaker.state}>"


#: What a closed guard answers: never again.
_CLOSED = Availability(math.inf, reason=Outcome.BUSY)


@dataclass(frozen=True, slots=True)
class CallResult(Generic[T]):
    """One :meth:`Guard.call`: the attempt's record, and the value or the error."""

    result: AttemptResult
    value: T | None = None
    error: BaseException | None = None

    @property
    def outcome(self) -> Outcome:
        """The attempt's outcome."""
        return self.result.outcome


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
    extra = _backend_options(config)
    pools = {} if pools is None else pools
    for name, limits in config.pools.items():
        if name not in pools:
            pools[name] = make(
                **limits.limiter_kwargs(), backend=backend, key=f"pool:{name}", clock=clock, **extra
            )
    on_change = _breaker_events(hooks)
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
            provider=build_provider(pc, api_key=api_key, pool_size=_pool_size(pc.limits)),
            breaker=Breaker(pc.name, pc.breaker, storage=storage, on_change=on_change),
            clock=clock,
            hooks=hooks,
            pool_limits=None if pc.pool is None else config.pools[pc.pool],
        )
    return guards


def _pool_size(limits: LimitsConfig) -> int | None:
    """Connections to keep for a provider: its concurrency limit (learned: the upper bound)."""
    if isinstance(limits.max_concurrent, int):
        return limits.max_concurrent
    return None if limits.max_concurrent is None else limits.auto.max_concurrent


def _backend_options(config: ClientConfig) -> dict[str, Any]:
    """The limiter options a shared backend takes from the client's configuration."""
    if config.backend == "memory":
        return {}
    return {
        "prefix": config.key_prefix,
        "lease_timeout": config.lease_timeout,
        "on_backend_error": config.on_backend_error,
    }


def _breaker_events(hooks: Hooks) -> Callable[[str, str, str], None]:
    """A breaker's state-change listener that emits the matching hook event."""

    def on_change(provider: str, old: str, new: str) -> None:
        if hooks:
            name = {"open": "breaker_open", "closed": "breaker_close"}.get(new, "breaker_half_open")
            hooks.emit(Event(name, provider, state=new))

    return on_change


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
