"""An interrupt at every line of the guard's admission path leaks nothing.

A tracer raises KeyboardInterrupt at the n-th line executed in ``guard.py``, for
n = 1, 2, ... until an attempt runs to its end untouched. After each interrupted
attempt (and a garbage collection, which is the safety net for a permit dropped
in flight) the limiter holds nothing and admits again, and the breaker lets a new
half-open probe through: no permit and no probe is ever lost.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from fleet_fixtures import (
    REQUEST,
    StubProvider,
    make_guard,
    ok_reply,
    open_breaker,
    rate_limited_reply,
)

import ratelimit_sdk.guard as guard_module
from ratelimit_sdk.guard import Guard
from ratelimit_sdk.testing import FakeClock

GUARD_FILE = guard_module.__file__

#: Bounds the sweep: far more lines than one attempt runs through guard.py.
MAX_LINES = 400

#: The one release path. Python-level cleanup can itself be interrupted; keeping it
#: to these few lines (a probe given back, a permit released) is what this module
#: can do, and an interrupt landing inside them is not injected here.
RELEASE_PATH = frozenset({"__exit__", "_give_back_all", "_give_back"})


class _Interrupt:
    """A tracer that raises KeyboardInterrupt at the n-th line run in guard.py.

    Only a line's first run in its frame counts. CPython reports the implicit
    ``__exit__`` call at the end of a ``with`` block as a second run of the
    ``with`` line, and an exception raised there by a tracer skips ``__exit__``: an
    artefact of tracing (python/cpython#74174), not a place our code can guard.
    """

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen = 0
        self.fired = False
        self.lines: dict[int, set[int]] = {}

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != GUARD_FILE:
            return None  # do not trace inside other modules (the limiter has its own tests)
        if frame.f_code.co_name in RELEASE_PATH:
            return None  # the release path itself: an interrupt there is deferred (see above)
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "line" or self.fired:
            return self._line
        lines = self.lines.setdefault(id(frame), set())
        if frame.f_lineno not in lines:
            lines.add(frame.f_lineno)
            self.seen += 1
            if self.seen == self.at:
                self.fired = True
                raise KeyboardInterrupt
        return self._line


def _sweep(guard: Guard, run: Callable[[], object], check: Callable[[], None]) -> int:
    """Interrupt ``run`` at each line in turn; ``check`` after each. Returns lines swept."""
    for at in range(1, MAX_LINES):
        tracer = _Interrupt(at)
        sys.settrace(tracer)
        try:
            run()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        gc.collect()
        check()
        if not tracer.fired:
            return at
    raise AssertionError("the attempt never ran to its end untouched")


def _no_permit_lost(guard: Guard) -> None:
    assert guard.limiter.in_flight == 0
    assert guard.limiter.queued == 0
    permit = guard.limiter.try_acquire()  # not wedged: it admits again at once
    assert permit is not None
    permit.release()


@pytest.mark.parametrize(
    "reply", [ok_reply(), rate_limited_reply(retry_after=0)], ids=["ok", "rate_limited"]
)
def test_an_interrupt_at_any_line_of_an_attempt_loses_no_permit(reply: object) -> None:
    clock = FakeClock()
    guard = make_guard(
        "p", StubProvider("p", default=reply), clock=clock, limits={"max_concurrent": 1}
    )

    def run() -> object:
        return guard.attempt(REQUEST, deadline=clock.monotonic() + 30, max_wait=1.0)

    def check() -> None:
        clock.advance(120.0)  # past any cooldown the attempt set
        _no_permit_lost(guard)

    assert _sweep(guard, run, check) > 10


def test_an_interrupt_at_any_line_gives_the_half_open_probe_back() -> None:
    clock = FakeClock()
    guard = make_guard(
        "p",
        StubProvider("p", default=RuntimeError("boom")),
        clock=clock,
        breaker={"fail_max": 1, "reset_timeout": 0.01},
    )
    open_breaker(guard)

    def run() -> object:
        time.sleep(0.02)  # the breaker's own clock: past reset_timeout, a probe may go
        assert guard.breaker.would_allow()  # nobody's probe is out
        try:
            return guard.attempt(REQUEST, deadline=clock.monotonic() + 30, max_wait=1.0)
        except RuntimeError:
            return None

    def check() -> None:
        _no_permit_lost(guard)
        time.sleep(0.02)
        assert guard.breaker.would_allow()  # the probe came back (its outcome or none)

    assert _sweep(guard, run, check) > 10


def test_an_interrupt_at_any_line_of_a_guarded_call_loses_no_permit() -> None:
    clock = FakeClock()
    guard = make_guard("p", clock=clock, limits={"max_concurrent": 1})

    def run() -> object:
        return guard.call(lambda: "value", (), {}, deadline=clock.monotonic() + 30)

    assert _sweep(guard, run, lambda: _no_permit_lost(guard)) > 10
