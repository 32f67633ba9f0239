"""Leaf: event hooks for monitoring. One frozen event type, no-op by default.

Register with ``client.on("fallback", fn)``; ``fn(event)`` gets an :class:`Event`.
Hooks run in the calling thread, outside every SDK lock, right where the event
happens in the data path:

==================  ======================================================
``attempt``         after every attempt on a provider (in the retry loop)
``retry``           before sleeping for a retry on the same provider
``fallback``        when the chain moves from one provider to the next
``rate_limited``    a provider answered with a rate limit or quota error
``cooldown``        a provider's limiter was put in cooldown
``breaker_open``    a provider's breaker opened (also ``breaker_close``,
                    ``breaker_half_open``)
``learned``         a limit set to ``"auto"`` changed (``state``:
                    ``"max_concurrent=3"``)
==================  ======================================================

A hook that raises is logged (with its traceback) and ignored: it never breaks
a call and never leaks a permit. Keep hooks quick; they run on the call's path.

Hooks never run while the call holds a permit: the events of an attempt (its
``attempt``, ``cooldown``, ``rate_limited`` and breaker events) are held while
the attempt's permit is, and fire right after it is released. So a hook may call
the same client again (even on a provider with ``max_concurrent=1``) without
waiting for its own caller's permit. A streamed answer keeps its permit until the
stream ends or is closed; the events of its successful attempt fire then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._redact import get_logger
from .models import Outcome

__all__ = ["EVENTS", "Event", "Held", "HookFn", "Hooks"]

_log = get_logger("ratelimit_sdk.hooks")

#: Every event name a hook can subscribe to.
EVENTS = frozenset(
    {
        "attempt",
        "retry",
        "fallback",
        "rate_limited",
        "cooldown",
        "breaker_open",
        "breaker_close",
        "breaker_half_open",
        "learned",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """What happened. Fields not relevant to an event are ``None``.

    ``provider``: where it happened; ``to_provider``: the next provider (fallback);
    ``outcome``: the attempt's outcome; ``delay``: seconds of the retry wait or
    cooldown; ``error``: the attempt's error; ``elapsed``: the attempt's duration.
    """

    name: str
    provider: str
    outcome: Outcome | None = None
    to_provider: str | None = None
    delay: float | None = None
    error: BaseException | None = None
    elapsed: float | None = None
    state: str | None = None


HookFn = Callable[[Event], Any]


@dataclass(slots=True)
class Held:
    """Events held by one :meth:`Hooks.hold`, and the hold it is nested in."""

    events: list[Event]
    outer: list[Event] | None


class Hooks:
    """A registry of hook functions by event name. Thread-safe (copy-on-write)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fns: dict[str, tuple[HookFn, ...]] = {}
        self.active = False  # any hook registered (read on every attempt: a plain attribute)
        self._local = threading.local()  # .held: this thread's held events, or absent

    def on(self, name: str, fn: HookFn) -> HookFn:
        """Call ``fn(event)`` on every ``name`` event; returns ``fn`` (usable as decorator)."""
        if name not in EVENTS and name != "*":
            raise ValueError(f"unknown event {name!r} (known: {', '.join(sorted(EVENTS))}, *)")
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {type(fn).__name__}")
        with self._lock:
            self._fns[name] = (*self._fns.get(name, ()), fn)
            self.active = True
        return fn

    def off(self, name: str, fn: HookFn) -> None:
        """Stop calling ``fn`` for ``name`` (no-op if it was not registered)."""
        with self._lock:
            self._fns[name] = tuple(f for f in self._fns.get(name, ()) if f is not fn)
            self.active = any(self._fns.values())

    def __bool__(self) -> bool:
        return self.active

    def hold(self) -> Held | None:
        """Hold this thread's events from now until :meth:`unhold` (``None``: no hooks).

        What a guard does while it holds a permit: hooks must not run under one.
        """
        if not self.active:
            return None
        held = Held([], getattr(self._local, "held", None))
        self._local.held = held.events
        return held

    def unhold(self, held: Held | None) -> list[Event]:
        """Stop holding (back to the enclosing hold, if any); the events held meanwhile."""
        if held is None:
            return []
        self._local.held = held.outer
        return held.events

    def fire(self, events: list[Event]) -> None:
        """Emit ``events`` (held ones, once their permit is back)."""
        for event in events:
            self.emit(event)

    def emit(self, event: Event) -> None:
        """Call every hook for ``event.name`` (and ``*``); a raising hook is logged only.

        While this thread holds its events (:meth:`hold`), the event waits instead.
        """
        held = getattr(self._local, "held", None)
        if held is not None:
            held.append(event)
            return
        fns = self._fns.get(event.name, ()) + self._fns.get("*", ())
        for fn in fns:
            try:
                fn(event)
            except Exception:
                _log.exception("hook %r for %s raised; ignored", fn, event.name)
