"""Stage 2a (the chain's policy): backoff as a value. Pure: no clock, no sleeping.

The formula, written once (``RetryConfig`` documents the same)::

    delay(n) = min(max_delay, base_delay * 2**n * (1 + U(0, jitter)))
    wait(n)  = max(delay(n), retry_after)      # retry_after: what the server asked

and the retries on a provider end when ``n`` reaches ``max_retries`` or when the
server asks for longer than ``max_delay`` (the chain moves on instead of sleeping).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import RetryConfig

__all__ = ["Backoff"]


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
