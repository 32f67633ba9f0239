"""Stage 2: the chain walks the providers in order and decides: retry here, move on, or wait.

It talks only to :class:`~ratelimit_sdk.guard.Guard` objects (never to a limiter or a
socket), records an :class:`~ratelimit_sdk.models.Attempt` per try or skip, and
returns the first success, or raises ``BadRequestError`` / ``AllProvidersFailed``.

The rules (DESIGN.md section 3, "The chain"):

* One deadline covers the whole call: admission waits, retries, backoff sleeps
  and fallbacks.
* A provider whose breaker is open or that is cooling down is skipped at once.
* Admission waits at most ``max_queue_wait``, and not at all while a later
  provider could take the call now (outcome ``busy``: move on).
* ``error``/``timeout``: retry here after the backoff while retries remain and the
  wait fits ``max_delay`` and the deadline; else move on.
* ``rate_limited``: move on at once if a later provider can take the call now;
  otherwise retry here after ``max(backoff, Retry-After)`` if that fits.
* ``quota_exhausted``: move on (the guard set a long cooldown).
* ``bad_request``: stop; raise ``BadRequestError`` (another provider would refuse too).
* When every provider has been tried or skipped, wait for the first skipped
  provider that becomes available before the deadline and try it again;
  otherwise raise ``AllProvidersFailed`` with every attempt.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence

from ._redact import get_logger
from .clock import Clock
from .errors import AllProvidersFailed, BadRequestError
from .guard import PROBE_POLL, AttemptResult, Cancelled, Guard
from .hooks import Event, Hooks
from .models import Attempt, ChatRequest, ChatResponse, Outcome

__all__ = ["Cancelled", "Chain"]

_log = get_logger("ratelimit_sdk.chain")

#: Longest a call waiting for "any provider" sleeps between looks when no provider
#: names a time (a release normally wakes it first; this bounds a missed one, such as
#: a release from another process or a permit freed by the garbage collector).
FLEET_WAKE_CAP = 0.5


class Fleet:
    """Where calls wait when every provider of their chain is full.

    Each guard's limiter tells the fleet when it frees room; a waiting call then
    walks its chain again in priority order. Time-based openings (tokens,
    spacing, cooldowns, breakers) wake it at the right moment. Thread-safe; one
    per client, shared by its chains.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._waiters = 0
        self._watched: set[int] = set()

    def watch(self, guards: Sequence[Guard]) -> None:
        """Listen to the releases of ``guards`` (each guard once)."""
        for guard in guards:
            if id(guard) not in self._watched:
                self._watched.add(id(guard))
                guard.on_release(self.notify)

    def notify(self) -> None:
        """Something freed room: wake the waiting calls (cheap when nobody waits)."""
        if self._waiters:
            with self._cond:
                self._cond.notify_all()

    def wait_any(
        self,
        guards: Sequence[Guard],
        request: ChatRequest,
        until: float,
        cancel: threading.Event | None,
    ) -> bool:
        """Block until one of ``guards`` could take ``request`` now; False at ``until``."""
        with self._cond:
            self._waiters += 1
            try:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled
                    now = self.clock.monotonic()
                    if now >= until:
                        return False
                    known: list[float] = []
                    unknown = False  # someone needs a release: it may come at any time
                    for guard in guards:
                        wait = guard.time_to_take(request)
                        if wait is None:
                            unknown = True
                        elif wait <= 0.0:
                            return True
                        else:
                            known.append(wait)
                    soonest = min(known, default=math.inf)
                    if not unknown and soonest >= until - now:
                        return False  # nobody can be back in time: do not wait for nothing
                    if unknown:
                        soonest = min(soonest, FLEET_WAKE_CAP)
                    self.clock.wait(self._cond, min(soonest, until - now))
            finally:
                self._waiters -= 1


class Chain:
    """An ordered list of guards and the loop over them. Thread-safe; holds no call state."""

    def __init__(
        self,
        guards: Sequence[Guard],
        *,
        clock: Clock,
        hooks: Hooks,
        fleet: Fleet | None = None,
    ) -> None:
        if not guards:
            raise ValueError("a chain needs at least one provider")
        self.guards = tuple(guards)
        self.clock = clock
        self.hooks = hooks
        self.fleet = fleet if fleet is not None else Fleet(clock)
        self.fleet.watch(self.guards)

    @property
    def names(self) -> list[str]:
        """Provider names in chain order."""
        return [g.name for g in self.guards]

    def run(
        self,
        request: ChatRequest,
        *,
        deadline: float,
        cancel: threading.Event | None = None,
    ) -> tuple[ChatResponse | None, AttemptResult | None, list[Attempt]]:
        """Walk the chain once for ``request``; see the module docstring.

        Returns the response (or, for a stream, the successful ``AttemptResult``)
        with every attempt. Raises ``BadRequestError`` or ``AllProvidersFailed``.
        """
        attempts: list[Attempt] = []
        comeback: dict[int, float] = {}  # guard index -> monotonic time it may take calls
        throttled: dict[int, int] = {}  # guard index -> rate-limit answers in this call
        busy: set[int] = set()  # guard indexes last found busy (no known time to come back)
        for index, guard in enumerate(self.guards):
            result = self._on_provider(
                request, index, deadline, attempts, comeback, throttled, cancel
            )
            if result is not None:
                return self._finish(result, attempts)
            _note_busy(busy, index, guard, attempts)
            if index + 1 < len(self.guards):
                self._fallback(guard, self.guards[index + 1], attempts)
        # Everything was tried or skipped: wait for the first one to come back, if in time.
        # At equal times a provider with a known comeback goes before a busy one.
        while comeback:
            index, at = min(comeback.items(), key=lambda item: (item[1], item[0] in busy, item[0]))
            now = self.clock.monotonic()
            if at >= deadline or now >= deadline:
                break
            del comeback[index]
            if at > now:
                _log.info(
                    "%s: every provider busy; waiting %.2fs for %s",
                    ",".join(self.names),
                    at - now,
                    self.guards[index].name,
                )
                self._sleep(at - now, cancel)
            # Queue here no longer than until another provider is due back (if any is).
            now = self.clock.monotonic()
            due = [t for t in comeback.values() if t > now]
            wait_cap = min(due) - now if due else None
            result = self._on_provider(
                request,
                index,
                deadline,
                attempts,
                comeback,
                throttled,
                cancel,
                last_round=True,
                wait_cap=wait_cap,
            )
            if result is not None:
                return self._finish(result, attempts)
            _note_busy(busy, index, self.guards[index], attempts)
        raise AllProvidersFailed(_failure_message(attempts), attempts=attempts)

    def _on_provider(
        self,
        request: ChatRequest,
        index: int,
        deadline: float,
        attempts: list[Attempt],
        comeback: dict[int, float],
        throttled: dict[int, int],
        cancel: threading.Event | None,
        *,
        last_round: bool = False,
        wait_cap: float | None = None,
    ) -> AttemptResult | None:
        """Try one provider, with its retries. The success, or ``None`` to move on.

        ``last_round``: the chain was walked once already; wait for admission up to
        ``wait_cap`` seconds (``None``: as long as the deadline allows).
        """
        guard = self.guards[index]
        later = self.guards[index + 1 :]
        retries = 0
        fleet_until: float | None = None  # end of this admission's wait for "any provider"
        fleet_since = 0.0
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            now = self.clock.monotonic()
            if now >= deadline:
                return None
            max_wait = guard.config.limits.max_queue_wait
            if (
                not last_round
                and later
                and not guard.can_take_now(request)
                and not any(g.can_take_now(request) for g in later)
            ):
                # Everyone from here on is full: wait for the first to have room, rather
                # than in this provider's queue while a later one frees up first. The
                # whole wait for this admission stays within max_queue_wait.
                if fleet_until is None:
                    fleet_until = deadline if max_wait is None else min(deadline, now + max_wait)
                    fleet_since = now
                if now < fleet_until and self.fleet.wait_any(
                    self.guards[index:], request, fleet_until, cancel
                ):
                    continue
                max_wait = 0.0  # waited its share: one look here, then move on
            elif last_round:
                max_wait = wait_cap  # nothing left to move on to but who comes back
            elif any(g.can_take_now(request) for g in later):
                max_wait = 0.0  # never queue here while a later provider is free
            else:  # ... nor past the moment a later provider comes back
                back = _soonest_back(later)
                if back is not None and (max_wait is None or back < max_wait):
                    max_wait = back
            if fleet_until is not None and max_wait is not None and max_wait > 0:
                max_wait = min(max_wait, max(0.0, fleet_until - self.clock.monotonic()))
            attempt_started = self.clock.monotonic()
            result = guard.attempt(
                request, deadline=deadline, max_wait=max_wait, retry_index=retries, cancel=cancel
            )
            if fleet_until is not None:  # the wait for "any provider" was this admission's wait
                waited = attempt_started - fleet_since
                result = dataclasses.replace(
                    result,
                    attempt=dataclasses.replace(
                        result.attempt, elapsed=result.attempt.elapsed + waited
                    ),
                )
            fleet_until = None  # the next admission (a retry) has a max_queue_wait of its own
            _record(attempts, result.attempt)
            outcome = result.outcome
            if outcome is Outcome.OK:
                return result
            if outcome is Outcome.BAD_REQUEST:
                error = result.attempt.error
                assert isinstance(error, BadRequestError)
                error.attempts = tuple(attempts)  # type: ignore[attr-defined]
                raise error
            if outcome is Outcome.BUSY and last_round and wait_cap is None:
                return None  # it waited as long as the deadline allowed (or it is closed)
            if outcome in (Outcome.CIRCUIT_OPEN, Outcome.COOLING_DOWN, Outcome.BUSY):
                comeback[index] = self.clock.monotonic() + result.wait_hint
                return None
            if outcome is Outcome.QUOTA_EXHAUSTED:
                comeback[index] = self.clock.monotonic() + guard.limiter.cooldown_remaining()
                return None
            verdict = result.verdict
            retry_after = None if verdict is None else verdict.retry_after
            if outcome is Outcome.RATE_LIMITED:
                cooldown = guard.limiter.cooldown_remaining()
                throttled[index] = throttled.get(index, 0) + 1
                retry = guard.config.retry
                # Coming back is a retry here: only within max_retries and max_delay.
                if throttled[index] <= retry.max_retries and cooldown <= retry.max_delay:
                    comeback[index] = self.clock.monotonic() + cooldown
                if any(g.can_take_now(request) for g in later):
                    return None  # move on at once: a later provider can take it now
                retry_after = max(retry_after or 0.0, cooldown)
            elif verdict is not None and not verdict.retry_same:
                return None
            reason, reopens = guard.unavailable_for()
            if reason is Outcome.CIRCUIT_OPEN:  # this failure opened the breaker: move on
                comeback[index] = self.clock.monotonic() + (reopens or PROBE_POLL)
                return None
            wait = guard.backoff.next_wait(retries, retry_after)
            if wait is None or self.clock.monotonic() + wait >= deadline:
                return None
            retries += 1
            guard.count_retry()
            _log.info("%s: %s; retry %d in %.2fs", guard.name, outcome.value, retries, wait)
            if self.hooks:
                self.hooks.emit(
                    Event(
                        "retry", guard.name, outcome=outcome, delay=wait, error=result.attempt.error
                    )
                )
            self._sleep(wait, cancel)
            comeback.pop(index, None)

    def _sleep(self, seconds: float, cancel: threading.Event | None) -> None:
        if cancel is None:
            self.clock.sleep(seconds)
        elif cancel.wait(seconds):
            raise Cancelled

    def _fallback(self, guard: Guard, to: Guard, attempts: list[Attempt]) -> None:
        last = attempts[-1] if attempts else None
        if last is None or last.provider != guard.name:
            return
        guard.count_fallback()
        _log.info("%s: %s; falling back to %s", guard.name, last.outcome.value, to.name)
        if self.hooks:
            self.hooks.emit(
                Event(
                    "fallback",
                    guard.name,
                    outcome=last.outcome,
                    to_provider=to.name,
                    error=last.error,
                )
            )

    def _finish(
        self, result: AttemptResult, attempts: list[Attempt]
    ) -> tuple[ChatResponse | None, AttemptResult | None, list[Attempt]]:
        if result.stream is not None:
            return None, result, attempts
        completion = result.completion
        assert completion is not None
        guard = next(g for g in self.guards if g.name == result.attempt.provider)
        response = ChatResponse(
            content=completion.content,
            provider=guard.name,
            model=completion.model or guard.model,
            attempts=tuple(attempts),
            usage=completion.usage,
            finish_reason=completion.finish_reason,
        )
        return response, result, attempts


def _soonest_back(guards: Sequence[Guard]) -> float | None:
    """Seconds until the first of ``guards`` that is paused (cooldown, open breaker) resumes."""
    waits = [wait for reason, wait in (g.unavailable_for() for g in guards) if reason and wait > 0]
    return min(waits) if waits else None


def _note_busy(busy: set[int], index: int, guard: Guard, attempts: list[Attempt]) -> None:
    """Remember whether ``guard``'s last attempt in this call found it busy."""
    last = attempts[-1] if attempts else None
    if last is not None and last.provider == guard.name and last.outcome is Outcome.BUSY:
        busy.add(index)
    else:
        busy.discard(index)


#: Skips that cost the provider nothing; repeated back to back, only the latest is kept.
_SKIPS = frozenset({Outcome.CIRCUIT_OPEN, Outcome.COOLING_DOWN, Outcome.BUSY})


def _record(attempts: list[Attempt], attempt: Attempt) -> None:
    """Append ``attempt``; a skip that repeats the previous one replaces it.

    A call that keeps finding a provider paused (a long half-open probe, a long
    cooldown) would otherwise collect one identical record per look.
    """
    if attempts and attempt.outcome in _SKIPS:
        last = attempts[-1]
        if last.provider == attempt.provider and last.outcome is attempt.outcome:
            attempts[-1] = attempt
            return
    attempts.append(attempt)


def _failure_message(attempts: list[Attempt]) -> str:
    from ._failure import failure_message  # the leaf that words it (chain.py imports it here)

    return failure_message(attempts)
