"""Stage 2a (the chain's policy): backoff, the retry decision and the one retry loop.

Pure except :func:`run_attempts`, which sleeps only through the function it is given.

The formula, written once (``RetryConfig`` documents the same)::

    delay(n) = min(max_delay, base_delay * 2**n * (1 + U(0, jitter)))
    wait(n)  = max(delay(n), retry_after)      # retry_after: what the server asked

and the retries on a provider end when ``n`` reaches ``max_retries`` or when the
server asks for longer than ``max_delay`` (the chain moves on instead of sleeping).

"Retry here, move on, or stop" is :func:`decide`: a pure function of the outcome,
the attempt count, the policy, the provider's pause after the attempt, whether a
later provider could take the call now, and the time left; its answer is a
:class:`Decision`. :func:`run_attempts` is the only retry loop of the package: the
chain, ``Client.guarded`` and ``RateLimitAdapter`` each give it their own attempt
and decision functions.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .config import RetryConfig
from .models import Availability, Outcome

__all__ = ["PROBE_POLL", "Backoff", "Decision", "Step", "decide", "run_attempts"]

R = TypeVar("R")

#: Seconds after which a provider skipped because another caller's half-open probe is
#: out is looked at again (the probe's end has no known time; polling beats spinning).
PROBE_POLL = 0.05


@dataclass(frozen=True, slots=True)
class Backoff:
    """The retry policy of one provider. Immutable, safe to share across threads.

    ``rand`` draws the jitter fraction in [0, 1); pass a seeded ``random.Random().random``
    in tests, or a constant (a float used as every draw).
    """

    config: RetryConfig
    rand: Callable[[], float] | float = field(default=random.random, compare=False, repr=False)

    def delay(self, n: int) -> float:
        """The backoff before retry ``n`` (0-based), jitter included, capped at ``max_delay``."""
        cfg = self.config
        if n < 0:
            raise ValueError(f"retry number must be >= 0, got {n!r}")
        draw = self.rand() if callable(self.rand) else self.rand
        exponent = min(n, 64)  # 2**64 s is already past any cap
        raw = cfg.base_delay * math.pow(2.0, exponent) * (1.0 + float(draw) * cfg.jitter)
        return min(cfg.max_delay, raw)

    def next_wait(self, n: int, retry_after: float | None = None) -> float | None:
        """How long to wait before retry ``n``, or ``None`` to stop retrying here.

        ``None`` when ``n`` is past ``max_retries`` or the server's ``retry_after``
        is longer than ``max_delay``.
        """
        cfg = self.config
        if n >= cfg.max_retries:
            return None
        if retry_after is not None and retry_after > cfg.max_delay:
            return None
        wait = self.delay(n)
        if retry_after is not None and retry_after > wait:
            wait = retry_after
        return wait

    def cooldown_for(self, n: int, retry_after: float | None) -> float:
        """The cooldown a rate-limit answer sets: the server's wait, else the backoff delay."""
        if retry_after is not None and retry_after > 0:
            return retry_after
        return self.delay(n)


class Step(str, enum.Enum):
    """What to do after one attempt on one provider."""

    DONE = "done"  # a success: hand it back
    RETRY = "retry"  # try the same provider again after ``Decision.delay``
    MOVE_ON = "move_on"  # go to the next provider (maybe back later: ``Decision.comeback``)
    STOP = "stop"  # the request itself is wrong: no other provider would take it


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`decide`.

    ``delay``: seconds to sleep before a ``RETRY``. ``comeback``: for ``MOVE_ON``,
    seconds from now after which this provider may take the call again in this
    call's last round (``None``: not in this call).
    """

    step: Step
    delay: float = 0.0
    comeback: float | None = None


DONE: Decision = Decision(Step.DONE)
STOP: Decision = Decision(Step.STOP)
MOVE_ON: Decision = Decision(Step.MOVE_ON)

#: Outcomes that skip a provider without sending anything.
SKIPS = frozenset({Outcome.CIRCUIT_OPEN, Outcome.COOLING_DOWN, Outcome.BUSY})


def decide(
    outcome: Outcome,
    *,
    retries: int,
    backoff: Backoff,
    time_left: float,
    retry_same: bool = True,
    retry_after: float | None = None,
    pause: Availability | None = None,
    throttles: int = 0,
    later_free: bool = False,
    retry_wait: float | None = None,
) -> Decision:
    """Retry here, move on, or stop, after one attempt (a pure table; see tests/test_retry.py).

    ``retries``: retries already made on this provider in this call. ``time_left``:
    seconds to the call's deadline. ``retry_same``: the classification allows
    another try here. ``retry_after``: what the server asked. ``pause``: the
    provider's state after the attempt (a skip's refusal, or the cooldown / open
    breaker the attempt caused; ``None``: not paused). ``throttles``: rate-limit
    answers from this provider in this call, this one included. ``later_free``: a
    later provider of the chain could take the call now. ``retry_wait``: for a rate
    limit, the wait a retry here takes instead of the backoff (the provider's next
    slot after our pacing ran ahead of the server, or ``0.0`` when a learned
    concurrency limit was lowered); retries still end at ``max_retries``.
    """
    if outcome is Outcome.OK:
        return DONE
    if outcome is Outcome.BAD_REQUEST:
        return STOP
    paused_for = None if pause is None else pause.wait
    if outcome in SKIPS:
        return Decision(Step.MOVE_ON, comeback=paused_for or 0.0)
    if outcome is Outcome.QUOTA_EXHAUSTED:
        return Decision(Step.MOVE_ON, comeback=paused_for or 0.0)
    comeback: float | None = None
    if outcome is Outcome.RATE_LIMITED:
        cooldown = paused_for or 0.0
        cfg = backoff.config
        # Coming back is a retry here: only within max_retries and max_delay.
        if throttles <= cfg.max_retries and cooldown <= cfg.max_delay:
            comeback = cooldown
        if later_free:
            return Decision(Step.MOVE_ON, comeback=comeback)
        retry_after = max(retry_after or 0.0, cooldown)
    elif not retry_same:
        return MOVE_ON
    if pause is not None and pause.reason is Outcome.CIRCUIT_OPEN:
        # This failure opened the breaker: move on, back when a probe may go through.
        return Decision(Step.MOVE_ON, comeback=paused_for or PROBE_POLL)
    if retry_wait is not None and outcome is Outcome.RATE_LIMITED:
        wait = retry_wait if retries < backoff.config.max_retries else None
    else:
        wait = backoff.next_wait(retries, retry_after)
    if wait is None or wait >= time_left:
        return Decision(Step.MOVE_ON, comeback=comeback)
    return Decision(Step.RETRY, delay=wait)


def run_attempts(
    attempt: Callable[[int], R],
    decide: Callable[[R, int], Decision],
    *,
    sleep: Callable[[float], None],
    on_retry: Callable[[R, Decision, int], None] | None = None,
) -> tuple[R, Decision]:
    """The retry loop: ``attempt(n)``, ``decide(result, n)``, sleep and repeat while it says RETRY.

    ``n`` counts the retries made so far (0 for the first try). ``on_retry(result,
    decision, n)`` runs before each sleep (``n``: the retry about to be made, from 1).
    Returns the last result with the decision that ended the loop.
    """
    retries = 0
    while True:
        result = attempt(retries)
        decision = decide(result, retries)
        if decision.step is not Step.RETRY:
            return result, decision
        retries += 1
        if on_retry is not None:
            on_retry(result, decision, retries)
        sleep(decision.delay)
