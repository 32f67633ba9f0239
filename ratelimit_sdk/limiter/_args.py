"""Stage 3b (admission control): the checks every backend runs on its call arguments.

A bad argument is a :class:`~ratelimit_sdk.errors.ConfigError` (a ``ValueError``)
naming it; a boolean is never taken for a number. Nothing is taken before these run.
"""

from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["check_cooldown", "check_timeout", "check_tokens", "check_units"]


def check_units(units: object) -> int:
    """``units`` as a whole number >= 1."""
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        raise ConfigError(f"units: must be a whole number >= 1 (got {units!r})", field="units")
    return units


def check_tokens(tokens: object) -> int:
    """``tokens`` (LLM tokens) as a whole number >= 0."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ConfigError(f"tokens: must be a whole number >= 0 (got {tokens!r})", field="tokens")
    return tokens


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds >= 0 (``inf`` allowed), or ``None`` for no bound."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout >= 0:
        raise ConfigError(  # ``not >= 0`` also refuses NaN
            f"timeout: must be a number of seconds >= 0, or None (got {timeout!r})",
            field="timeout",
        )
    return float(timeout)


def check_cooldown(seconds: object) -> float:
    """A cooldown's length: a finite number of seconds (``<= 0``: no cooldown)."""
    if (
        not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
        or not math.isfinite(seconds)
    ):
        raise ConfigError(
            f"seconds: a cooldown must be a finite number of seconds (got {seconds!r})",
            field="seconds",
        )
    return float(seconds)
