"""Leaf: window limits ("at most N per T"): their definition and their arithmetic.

A window is ``{"requests": N, "per": T}`` or ``{"tokens": N, "per": T}`` (also
``"input_tokens"``, ``"output_tokens"``), ``per`` in seconds or a string such as
``"500ms"``, ``"10s"``, ``"1m"``, ``"2h"``, ``"1d"``, with ``"align"``:

* ``"sliding"`` (the default): at most N starts (or N tokens) in *any* interval
  of length T;
* ``"utc"``: a fixed window reset at UTC multiples of T (epoch time), e.g. a daily
  quota that resets at midnight UTC.

Jitter allowance ``J`` (the limiter's margin): a request admitted at ``t`` reaches
the server somewhere in ``[t, t + J]``. A sliding window therefore holds N in any
interval of length ``T + J``; a UTC window counts an admission made in the last
``J`` before a boundary toward the next window too.

Bounded memory: each charge goes into one of ``SLOTS`` slots per window (slot
length ``T / SLOTS``); its time is rounded *up* to its slot's end, so it expires
late, never early: never more than N are admitted, and a waiter waits at most
``T / SLOTS`` longer than an exact log would make it. At most ``SLOTS + 1`` slots
of a sliding window are live at once (older ones are dropped); a UTC window keeps
only the current window and the ones an allowance reaches into.

No threads, no I/O, no clock calls here: every method takes the time as an
argument (the limiter holds these under its lock; the Redis scripts run the same
rules in Lua).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "ALIGNS",
    "KINDS",
    "SLOTS",
    "WindowCounter",
    "WindowSpec",
    "check_window",
    "check_windows",
    "describe",
    "parse_per",
]

#: What a window may count, one of these keys per window.
KINDS = ("requests", "tokens", "input_tokens", "output_tokens")
#: How a window lines up in time.
ALIGNS = ("sliding", "utc")
#: Slots per window (the error bound is ``per / SLOTS`` of extra wait).
SLOTS = 100
#: The shortest window, seconds.
MIN_PER = 0.001
_EPS = 1e-9
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PER = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)\s*$")


def parse_per(value: object, field: str = "per") -> float:
    """``value`` (seconds, or ``"500ms"``, ``"10s"``, ``"1m"``, ``"2h"``, ``"1d"``) as seconds.

    Raises :class:`ConfigError` naming ``field`` for a boolean, an unknown unit, a
    non-finite number or a window shorter than 1 ms.
    """
    if isinstance(value, str):
        match = _PER.match(value)
        if match is None:
            raise ConfigError(
                f"{field}: must be seconds or a number with a unit ms, s, m, h or d "
                f"(got {value!r})",
                field=field,
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field}: must be a number of seconds (got {value!r})", field=field)
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < MIN_PER - 1e-12:
        raise ConfigError(
            f"{field}: must be a finite number of seconds >= 0.001 (got {value!r})", field=field
        )
    return seconds


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One checked window: ``kind`` (:data:`KINDS`), ``limit`` N, ``per`` T seconds, ``align``."""

    kind: str
    limit: float
    per: float
    align: str = "sliding"

    @property
    def utc(self) -> bool:
        """True for a fixed window reset at UTC multiples of ``per``."""
        return self.align == "utc"

    @property
    def counts_tokens(self) -> bool:
        """True for a window of tokens (any kind), charged with a request's token estimate."""
        return self.kind != "requests"

    def as_dict(self) -> dict[str, Any]:
        """The window as the dict that defines it (what ``limits()`` shows)."""
        return {self.kind: self.limit, "per": self.per, "align": self.align}

    def same_clock(self, other: WindowSpec) -> bool:
        """Whether ``other`` counts the same thing over the same time (its slots carry over)."""
        return (self.kind, self.per, self.align) == (other.kind, other.per, other.align)


def check_window(value: object, field: str = "windows[0]") -> WindowSpec:
    """``value`` (a dict, a ``WindowConfig`` or a :class:`WindowSpec`) as a checked window.

    Raises :class:`ConfigError` naming the field (``windows[0].per``...) for an
    unknown key, zero or two amount keys, a bad amount, ``per`` or ``align``.
    """
    if isinstance(value, WindowSpec):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        value = dump(exclude_none=True)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f'{field}: a window is a dict such as {{"requests": 10, "per": "1m"}} (got {value!r})',
            field=field,
        )
    known = (*KINDS, "per", "align")
    for name in value:
        if name not in known:
            raise ConfigError(
                f"{field}.{name}: unknown window key (known: {', '.join(known)})",
                field=f"{field}.{name}",
            )
    kinds = [k for k in KINDS if k in value]
    if len(kinds) != 1:
        raise ConfigError(
            f"{field}: a window needs exactly one of {', '.join(KINDS)} (got {len(kinds)})",
            field=field,
        )
    kind = kinds[0]
    amount = value[kind]
    name = f"{field}.{kind}"
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise ConfigError(f"{name}: must be a number (got {amount!r})", field=name)
    if not math.isfinite(amount) or amount <= 0:
        raise ConfigError(
            f"{name}: must be a finite number greater than 0 (got {amount!r})", field=name
        )
    if "per" not in value:
        raise ConfigError(f"{field}.per: a window needs its length", field=f"{field}.per")
    per = parse_per(value["per"], f"{field}.per")
    align = value.get("align", "sliding")
    if align not in ALIGNS:
        raise ConfigError(
            f"{field}.align: must be one of {', '.join(ALIGNS)} (got {align!r})",
            field=f"{field}.align",
        )
    return WindowSpec(kind, amount, per, str(align))


def check_windows(value: object, field: str = "windows") -> tuple[WindowSpec, ...]:
    """A list of windows (``None``: none) as checked windows; see :func:`check_window`."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ConfigError(f"{field}: must be a list of windows (got {value!r})", field=field)
    return tuple(check_window(w, f"{field}[{i}]") for i, w in enumerate(value))


class WindowCounter:
    """The charges of one window, quantized into slots. Not thread-safe: the owner locks.

    ``slots`` maps a slot index to the amount charged there, oldest first. For a
    sliding window, index ``i`` covers charges made in ``((i - 1) * s, i * s]``
    (``s = per / SLOTS``) and expires at ``i * s + per + allowance``. For a UTC
    window, index ``i`` is the fixed window ``[i * per, (i + 1) * per)`` of epoch time.
    Amounts may be corrected afterwards (:meth:`adjust`), never below zero.
    """

    __slots__ = ("limit", "slot", "slots", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.limit = spec.limit
        self.slot = spec.per / SLOTS
        self.slots: dict[int, float] = {}

    def indexes(self, now: float, epoch: float, allowance: float) -> tuple[int, ...]:
        """The slots a charge made now goes to (monotonic ``now``, wall-clock ``epoch``)."""
        if self.spec.utc:
            per = self.spec.per
            first = math.floor(epoch / per)
            last = math.floor((epoch + allowance) / per)
            return tuple(range(first, last + 1))
        return (math.ceil(now / self.slot),)

    def prune(self, now: float, epoch: float, allowance: float) -> None:
        """Drop the slots that no longer count (expired, or windows past)."""
        slots = self.slots
        if not slots:
            return
        if self.spec.utc:
            current = math.floor(epoch / self.spec.per)
            stale = [i for i in slots if i < current]
        else:
            ends = self.spec.per + allowance
            stale = []
            for i in slots:
                if i * self.slot + ends > now:
                    break
                stale.append(i)
        for i in stale:
            slots.pop(i, None)

    def used(self, now: float, epoch: float, allowance: float) -> float:
        """What counts now: the live charges of a sliding window, the current fixed window's."""
        self.prune(now, epoch, allowance)
        if self.spec.utc:
            return self.slots.get(math.floor(epoch / self.spec.per), 0.0)
        return sum(self.slots.values())

    def delay(self, amount: float, now: float, epoch: float, allowance: float) -> float:
        """Seconds until a charge of ``amount`` fits (0.0: now; ``inf``: never fits)."""
        if amount > self.limit + _EPS:
            return math.inf
        self.prune(now, epoch, allowance)
        slots = self.slots
        if self.spec.utc:
            per = self.spec.per
            start = epoch
            for _ in range(3 + math.ceil(allowance / per)):
                first = math.floor(start / per)
                last = math.floor((start + allowance) / per)
                if all(
                    slots.get(i, 0.0) + amount <= self.limit + _EPS for i in range(first, last + 1)
                ):
                    return max(0.0, start - epoch)
                start = (first + 1) * per  # never better later in this window
            return max(0.0, start - epoch)
        need = sum(slots.values()) + amount - self.limit
        if need <= _EPS:
            return 0.0
        ends = self.spec.per + allowance
        for i, value in slots.items():
            need -= value
            if need <= _EPS:
                return max(0.0, i * self.slot + ends - now)
        return 0.0  # (unreachable: amount <= limit)

    def carry_from(self, old: WindowCounter) -> None:
        """Take over ``old``'s slots (same kind, length and alignment; a new limit)."""
        self.slots = dict(old.slots)

    def __repr__(self) -> str:
        return f"WindowCounter({self.spec.as_dict()!r}, live_slots={len(self.slots)})"


def describe(spec: WindowSpec) -> str:
    """``"10 requests per 60s (sliding)"``: for messages."""
    return f"{spec.limit:g} {spec.kind.replace('_', ' ')} per {spec.per:g}s ({spec.align})"
