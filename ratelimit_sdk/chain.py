"""Stage 2: the chain walks the providers in order: try here, retry here, move on, or wait.

It talks only to :class:`~ratelimit_sdk.guard.Guard` objects (never to a limiter,
a retry config or a socket), records an :class:`~ratelimit_sdk.models.Attempt` per
try or skip, and returns the first success, or raises ``BadRequestError`` /
``AllProvidersFailed``. What to do after each attempt is
:func:`~ratelimit_sdk.retry.decide` (a pure table); the loop that retries is
:func:`~ratelimit_sdk.retry.run_attempts`; the state of one call's walk is one
:class:`_Walk`.

The rules:

* One deadline covers the whole call: admission waits, retries, backoff sleeps
  and fallbacks.
* A provider whose breaker is open or that is cooling down is skipped at once.
* Admission is first one look (admitted at once, or told from when). A provider
  that is full is waited for only when no later provider could take the call
  now; then the call waits for the *first* provider of the rest of its chain to
  have room, within ``max_queue_wait`` (else ``busy``: move on). The last
  provider of a chain is waited for in its own first-come-first-served queue.
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
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from ._failure import failure_message
from ._redact import get_logger
from .clock import Clock
from .errors import AllProvidersFailed, BadRequestError
from .guard import AttemptResult, Cancelled, Guard
from .hooks import Event, Hooks
from .models import Attempt, ChatRequest, ChatResponse, Outcome
from .retry import SKIPS, Decision, Step, decide, run_attempts

__all__ = ["Cancelled", "Chain", "Fleet"]

_log = get_logger("ratelimit_sdk.chain")

#: Longest a call waiting for "any provider" sleeps between looks when no provider
#: names a time (a release normally wakes it first; this bounds a missed one, such as
#: a release from another process or a permit freed by the garbage collector).
FLEET_WAKE_CAP = 0.5

#: Seconds (doubling per repeat, up to ``FLEET_WAKE_CAP``) a call pauses when the
#: fleet said a provider had room but the look that followed was refused again
#: (another caller was faster): a bound on spinning, not a wait anybody plans on.
FLEET_SPIN_PAUSE = 0.001


class Fleet:
    """Where calls wait when every provider of the rest of their chain is full.

    Each guard's limiter tells the fleet when it frees room; a waiting call then
    walks its chain again in priority order. Time-based openings (tokens,
    spacing, cooldowns, breakers) wake it at the right moment. The guards are
    asked outside the fleet's lock (with Redis each look is a round trip), so a
    releasing thread's notify never waits behind them. Thread-safe; one per
    client, shared by its chains.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._waiters = 0
        self._generation = 0  # bumped by every notify: a look older than it is stale
        self._watched: weakref.WeakSet[Guard] = weakref.WeakSet()  # a gone guard leaves it

    def watch(self, guards: Sequence[Guard]) -> None:
        """Listen to the releases of ``guards`` (each guard once)."""
        with self._cond:
            fresh = [g for g in guards if g not in self._watched]
            self._watched.update(fresh)
        for guard in fresh:
            guard.on_release(self.notify)

    def notify(self) -> None:
        """Something freed room: wake the waiting calls (cheap when nobody waits)."""
        if self._waiters:
            with self._cond:
                self._generation += 1
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
                generation = self._generation
                now = self.clock.monotonic()
                if now >= until:
                    return False
                waits = [g.availability(request).wait for g in guards]  # outside the lock
                if any(w == 0.0 for w in waits):
                    return True
                known = [w for w in waits if w is not None]
                soonest = min(known, default=math.inf)
                if len(known) == len(waits) and soonest >= until - now:
                    return False  # nobody can be back in time: do not wait for nothing
                if len(known) < len(waits):  # someone needs a release: it may come any time
                    soonest = min(soonest, FLEET_WAKE_CAP)
                with self._cond:
                    if generation == self._generation:  # nothing freed since the look
                        self.clock.wait(self._cond, min(soonest, until - now))
        finally:
            with self._cond:
                self._waiters -= 1


@dataclass(eq=False)
class _Walk:
    """The state of one call's walk along its chain (one per call, one thread)."""

    request: ChatRequest
    deadline: float
    cancel: threading.Event | None
    attempts: list[Attempt] = field(default_factory=list)
    comeback: dict[int, float] = field(default_factory=dict)  # index -> when it may take it
    throttled: dict[int, int] = field(default_factory=dict)  # index -> 429s in this call
    busy: set[int] = field(default_factory=set)  # indexes last found busy

    def record(self, attempt: Attempt) -> None:
        """Append ``attempt``; a skip that repeats the previous one replaces it.

        A call that keeps finding a provider paused (a long half-open probe, a long
        cooldown) would otherwise collect one identical record per look.
        """
        attempts = self.attempts
        if attempts and attempt.outcome in SKIPS:
            last = attempts[-1]
            if last.provider == attempt.provider and last.outcome is attempt.outcome:
                attempts[-1] = attempt
                return
        attempts.append(attempt)

    def last_of(self, provider: str) -> Attempt | None:
        """The latest attempt, if it was ``provider``'s."""
        last = self.attempts[-1] if self.attempts else None
        return last if last is not None and last.provider == provider else None


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
        self._by_name = {g.name: g for g in self.guards}
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
        walk = _Walk(request, deadline, cancel)
        for index, guard in enumerate(self.guards):
            result = self._on_provider(walk, index)
            if result is not None:
                return self._finish(result, walk)
            self._note_busy(walk, index)
            if index + 1 < len(self.guards):
                self._fallback(walk, guard, self.guards[index + 1])
        result = self._last_round(walk)
        if result is not None:
            return self._finish(result, walk)
        raise AllProvidersFailed(failure_message(walk.attempts), attempts=walk.attempts)

    def _last_round(self, walk: _Walk) -> AttemptResult | None:
        """Everything was tried or skipped: try again whoever comes back first, if in time.

        At equal times a provider with a known comeback goes before a busy one.
        """
        while walk.comeback:
            index, at = min(
                walk.comeback.items(), key=lambda item: (item[1], item[0] in walk.busy, item[0])
            )
            now = self.clock.monotonic()
            if at >= walk.deadline or now >= walk.deadline:
                return None
            del walk.comeback[index]
            if at > now:
                _log.info(
                    "%s: every provider busy; waiting %.2fs for %s",
                    ",".join(self.names),
                    at - now,
                    self.guards[index].name,
                )
                self._sleep(at - now, walk.cancel)
            # Queue here no longer than until another provider is due back (if any is).
            now = self.clock.monotonic()
            due = [t for t in walk.comeback.values() if t > now]
            result = self._on_provider(
                walk, index, last_round=True, wait_cap=min(due) - now if due else None
            )
            if result is not None:
                return result
            self._note_busy(walk, index)
        return None

    def _on_provider(
        self, walk: _Walk, index: int, *, last_round: bool = False, wait_cap: float | None = None
    ) -> AttemptResult | None:
        """Try one provider, with its retries. The success, or ``None`` to move on.

        ``last_round``: the chain was walked once already; wait for admission up to
        ``wait_cap`` seconds (``None``: as long as the deadline allows).
        """
        guard = self.guards[index]

        def attempt(retries: int) -> AttemptResult | None:
            return self._attempt(walk, index, retries, last_round, wait_cap)

        def decision(result: AttemptResult | None, retries: int) -> Decision:
            return self._decide(walk, index, result, retries, last_round and wait_cap is None)

        def on_retry(result: AttemptResult | None, decided: Decision, retries: int) -> None:
            assert result is not None
            walk.comeback.pop(index, None)
            guard.count_retry()
            outcome = result.outcome
            _log.info(
                "%s: %s; retry %d in %.2fs", guard.name, outcome.value, retries, decided.delay
            )
            if self.hooks:
                error = result.attempt.error
                self.hooks.emit(
                    Event("retry", guard.name, outcome=outcome, delay=decided.delay, error=error)
                )

        result, decided = run_attempts(
            attempt, decision, sleep=lambda s: self._sleep(s, walk.cancel), on_retry=on_retry
        )
        if decided.step is Step.DONE:
            return result
        if decided.step is Step.STOP:
            assert result is not None
            error = result.attempt.error
            assert isinstance(error, BadRequestError)
            error.attempts = tuple(walk.attempts)  # type: ignore[attr-defined]
            raise error
        if decided.comeback is not None:
            walk.comeback[index] = self.clock.monotonic() + decided.comeback
        return None

    def _decide(
        self,
        walk: _Walk,
        index: int,
        result: AttemptResult | None,
        retries: int,
        waited_out: bool,
    ) -> Decision:
        """Gather the facts :func:`~ratelimit_sdk.retry.decide` needs for this attempt."""
        if result is None:  # the deadline passed before an attempt
            return Decision(Step.MOVE_ON)
        outcome = result.attempt.outcome
        if outcome is Outcome.BUSY and waited_out:
            return Decision(Step.MOVE_ON)  # it waited as long as the deadline allowed
        later_free = False
        if outcome is Outcome.RATE_LIMITED:
            walk.throttled[index] = walk.throttled.get(index, 0) + 1
            later_free = self._free_later(walk, index)
        verdict = result.verdict
        return decide(
            outcome,
            retries=retries,
            backoff=self.guards[index].backoff,
            time_left=walk.deadline - self.clock.monotonic(),
            retry_same=verdict is None or verdict.retry_same,
            retry_after=None if verdict is None else verdict.retry_after,
            pause=result.pause,
            throttles=walk.throttled.get(index, 0),
            later_free=later_free,
            retry_wait=result.retry_wait,
        )

    def _free_later(self, walk: _Walk, index: int) -> bool:
        """Whether a provider after ``index`` could take the call now (one look each)."""
        return any(g.availability(walk.request).now for g in self.guards[index + 1 :])

    def _attempt(
        self, walk: _Walk, index: int, retries: int, last_round: bool, wait_cap: float | None
    ) -> AttemptResult | None:
        """One attempt here, admitted as the rules say; ``None`` once the deadline passed."""
        guard = self.guards[index]
        fleet_until: float | None = None  # end of this admission's wait for "any provider"
        fleet_since = 0.0
        waited_enough = False
        spins = 0  # looks refused right after the fleet said someone had room
        while True:
            if walk.cancel is not None and walk.cancel.is_set():
                raise Cancelled
            now = self.clock.monotonic()
            if now >= walk.deadline:
                return None
            last = last_round or index + 1 == len(self.guards)
            # One look first: admitted at once (one round trip with Redis), or told why not.
            # The last provider has nowhere to move on to: it queues (first come, first served).
            first_wait = (wait_cap if last_round else guard.max_queue_wait) if last else 0.0
            result = guard.attempt(
                walk.request,
                deadline=walk.deadline,
                max_wait=first_wait,
                retry_index=retries,
                cancel=walk.cancel,
            )
            if result.attempt.outcome not in SKIPS or last or waited_enough:
                break
            if self._free_later(walk, index):
                break  # never queue here while a later provider could take it now
            # Everyone from here on is full or paused: wait for the first to have room,
            # rather than in this provider's queue while a later one frees up first. The
            # whole wait for this admission stays within max_queue_wait; then one more look.
            if fleet_until is None:
                max_wait = guard.max_queue_wait
                fleet_since = now
                fleet_until = (
                    walk.deadline if max_wait is None else min(walk.deadline, now + max_wait)
                )
            elif spins:  # the last "room now" was taken by someone else: do not spin
                self._sleep(min(FLEET_SPIN_PAUSE * 2**spins, FLEET_WAKE_CAP), walk.cancel)
            rest = self.guards[index:]
            waited_enough = not self.fleet.wait_any(rest, walk.request, fleet_until, walk.cancel)
            spins += 1
        if fleet_until is not None:  # the wait for "any provider" was this admission's wait
            result = _add_wait(result, self.clock.monotonic() - fleet_since)
        walk.record(result.attempt)
        return result

    def _sleep(self, seconds: float, cancel: threading.Event | None) -> None:
        if cancel is None:
            self.clock.sleep(seconds)
        elif cancel.wait(seconds):
            raise Cancelled

    def _note_busy(self, walk: _Walk, index: int) -> None:
        """Remember whether this provider's last attempt in this call found it busy."""
        last = walk.last_of(self.guards[index].name)
        if last is not None and last.outcome is Outcome.BUSY:
            walk.busy.add(index)
        else:
            walk.busy.discard(index)

    def _fallback(self, walk: _Walk, guard: Guard, to: Guard) -> None:
        last = walk.last_of(guard.name)
        if last is None:
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
        self, result: AttemptResult, walk: _Walk
    ) -> tuple[ChatResponse | None, AttemptResult | None, list[Attempt]]:
        attempts = walk.attempts
        if result.stream is not None:
            return None, result, attempts
        completion = result.completion
        assert completion is not None
        guard = self._by_name[result.attempt.provider]
        response = ChatResponse(
            content=completion.content,
            provider=guard.name,
            model=completion.model or guard.model,
            attempts=tuple(attempts),
            usage=completion.usage,
            finish_reason=completion.finish_reason,
        )
        return response, result, attempts


def _add_wait(result: AttemptResult, since_start: float) -> AttemptResult:
    """``result`` with the wait for "any provider" counted in its attempt's elapsed time."""
    extra = max(0.0, since_start - result.attempt.elapsed)
    attempt = dataclasses.replace(result.attempt, elapsed=result.attempt.elapsed + extra)
    return dataclasses.replace(result, attempt=attempt)
