"""An interrupt at any point of the in-memory limiter leaves nothing inconsistent.

Scope: the in-memory backend (:class:`MemoryLimiter`) and :class:`Permit`. The
Redis limiter's local side (its in-process waiting line) is not covered here.

Two kinds of test:

* A deterministic sweep. A tracer raises KeyboardInterrupt at the n-th injection
  point run in ``limiter/memory.py``, ``limiter/base.py`` or ``limiter/bucket.py``,
  for n = 1, 2, ... until a run ends untouched. An injection point is the first
  run of a line in its frame, or a frame's return (an exception raised just after
  a call returns, which is where CPython delivers a real asynchronous exception
  after a C call such as ``lock.acquire()`` or ``Permit(...)``). Only a line's
  first run counts: CPython reports the implicit ``__exit__`` of a ``with`` as a
  second run of the ``with`` line, and an exception raised there by a tracer skips
  ``__exit__`` (python/cpython#74174), which no real exception can do. After each
  run (and a garbage collection, the safety net for a permit dropped in flight)
  nothing is held, nobody is queued, the lock is free, the limiter admits again
  within its timeout, and never more than its limit.
* A small randomized hammer: ``PyThreadState_SetAsyncExc`` into 16 threads with
  fast thread switching (the longer one is ``benchmarks/hammer_interrupts.py``).
"""

from __future__ import annotations

import dis
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest

import ratelimit_sdk._windows as windows_module
import ratelimit_sdk.limiter.base as base_module
import ratelimit_sdk.limiter.bucket as bucket_module
import ratelimit_sdk.limiter.memory as memory_module
from ratelimit_sdk.errors import AcquireTimeout
from ratelimit_sdk.limiter.base import Permit
from ratelimit_sdk.limiter.memory import MemoryLimiter
from ratelimit_sdk.testing.clock import FakeClock

LIMITER_FILES = frozenset(
    {memory_module.__file__, base_module.__file__, bucket_module.__file__, windows_module.__file__}
)

_QUIET_NOPS: dict[CodeType, frozenset[int]] = {}


def _quiet_nops(code: CodeType) -> frozenset[int]:
    """Offsets of the NOPs in ``code`` not right after a call (ignoring POP_TOPs)."""
    quiet = _QUIET_NOPS.get(code)
    if quiet is None:
        found: set[int] = set()
        previous = "NOP"
        for ins in dis.get_instructions(code):
            if ins.opname == "NOP" and previous not in ("CALL", "CALL_FUNCTION_EX"):
                found.add(ins.offset)
            if ins.opname not in ("POP_TOP", "NOP"):
                previous = ins.opname
        quiet = _QUIET_NOPS[code] = frozenset(found)
    return quiet


#: Bounds each sweep: far more points than one scenario runs through.
MAX_POINTS = 600

#: Generous bounds for threads of the test itself (never reached unless wedged).
JOIN_TIMEOUT = 10.0


class _Interrupt:
    """A tracer that raises KeyboardInterrupt at the n-th injection point.

    Points: a line's first run in its frame, and each frame's return. A line
    that starts with a ``NOP`` (a ``try:``) is a point only right after a call
    (``lock.acquire()`` then ``try:``): CPython delivers an exception just after a
    call returns, never at a NOP reached otherwise, and 3.11 leaves a ``try:``
    inside a ``with`` outside the ``with``'s handler, so a tracer raising there
    would skip ``__exit__`` (the same kind of artefact as python/cpython#74174).
    Finalizers (``__del__``) are not traced: an exception there is only
    reported, never raised.
    """

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen = 0
        self.fired = False
        self.where = ""
        self.lines: dict[int, set[object]] = {}

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self.fired or frame.f_code.co_filename not in LIMITER_FILES:
            return None
        if frame.f_code.co_name == "__del__":
            return None
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self.fired:
            return None
        if event == "line":
            if frame.f_lasti in _quiet_nops(frame.f_code):
                return self._local
            key: object = frame.f_lineno
        elif event == "return":
            key = "return"
        else:
            return self._local
        seen = self.lines.setdefault(id(frame), set())
        if key not in seen:
            seen.add(key)
            self.seen += 1
            if self.seen == self.at:
                self.fired = True
                self.where = f"{frame.f_code.co_name}:{key}"
                raise KeyboardInterrupt
        return self._local


def _sweep(
    setup: Callable[[], None], run: Callable[[], object], check: Callable[[str], None]
) -> int:
    """Interrupt ``run`` at each point in turn; ``check(where)`` after each. Returns points.

    ``setup()`` (not traced) runs before each ``run()``: it builds a fresh limiter.
    What exists before the sweep is frozen (``gc.freeze``), so each collection
    looks at the sweep's own objects only.
    """
    gc.collect()
    gc.freeze()
    try:
        for at in range(1, MAX_POINTS):
            setup()
            tracer = _Interrupt(at)
            sys.settrace(tracer)
            try:
                run()
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
            gc.collect()
            check(tracer.where or "untouched")
            if not tracer.fired:
                return at
    finally:
        gc.unfreeze()
    raise AssertionError("the scenario never ran to its end untouched")


def _in_thread(fn: Callable[[], None], where: str, timeout: float = JOIN_TIMEOUT) -> None:
    """Run ``fn`` in another thread; fail if it does not finish in ``timeout`` (wedged)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)  # daemon: a wedged probe must not hang exit
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"interrupt at {where}: wedged (the lock is held for good)"
    if errors:
        raise errors[0]


def _assert_sound(lim: MemoryLimiter, where: str, *, probe_timeout: float = 2.0) -> None:
    """Nothing held, nobody queued, the lock free, admits up to its limit and not beyond."""
    limiters = [lim] if lim.pool is None else [lim, lim.pool]

    def probe() -> None:
        for each in limiters:
            assert each.in_flight == 0, f"interrupt at {where}: {each.in_flight} units leaked"
            assert each.queued == 0, f"interrupt at {where}: {each.queued} left queued"
        cap = lim.limits()["max_concurrent"] or 1
        held = [lim.acquire(timeout=probe_timeout) for _ in range(cap)]
        try:
            assert lim.try_acquire() is None, f"interrupt at {where}: over-admission"
        finally:
            for p in held:
                p.release()
        assert lim.in_flight == 0, f"interrupt at {where}: release did not give units back"

    _in_thread(probe, where)


# -- the single-threaded paths --------------------------------------------------------------


def _fast_path_runs() -> Iterator[tuple[str, Callable[[], MemoryLimiter], Callable[[Any], None]]]:
    def simple() -> MemoryLimiter:
        return MemoryLimiter(max_concurrent=1)

    def every_limit() -> MemoryLimiter:
        return MemoryLimiter(
            max_concurrent=2, requests_per_minute=60_000, burst=50, tokens_per_minute=1e9
        )

    def pooled() -> MemoryLimiter:
        pool = MemoryLimiter(max_concurrent=2, requests_per_minute=60_000, burst=50)
        return MemoryLimiter(max_concurrent=1, pool=pool, pool_units=2)

    def plain_use(lim: MemoryLimiter) -> None:
        with lim.acquire(timeout=1):
            pass
        p = lim.acquire(timeout=1)
        p.release()
        p2 = lim.try_acquire()
        assert p2 is not None
        p2.release()

    def token_use(lim: MemoryLimiter) -> None:
        with lim.acquire(timeout=1, tokens=100) as p:
            p.settle(tokens=40)
        p2 = lim.acquire(timeout=1, tokens=10)
        p2.settle(tokens=20)
        p2.release()

    def windowed() -> MemoryLimiter:
        pool = MemoryLimiter(windows=[{"tokens": 10**9, "per": 60}])
        return MemoryLimiter(
            max_concurrent=2,
            pool=pool,
            windows=[
                {"requests": 10**6, "per": 60},
                {"input_tokens": 10**9, "per": 60, "align": "utc"},
            ],
        )

    yield "simple", simple, plain_use
    yield "windows", windowed, token_use
    yield "every_limit", every_limit, plain_use
    yield "tokens", every_limit, token_use
    yield "pooled", pooled, plain_use


@pytest.mark.parametrize(
    ("make", "use"),
    [pytest.param(m, u, id=name) for name, m, u in _fast_path_runs()],
)
def test_an_interrupt_anywhere_on_the_fast_path_leaves_the_limiter_sound(
    make: Callable[[], MemoryLimiter], use: Callable[[MemoryLimiter], None]
) -> None:
    box: list[MemoryLimiter] = []

    def setup() -> None:
        box[:] = [make()]

    def run() -> None:
        use(box[0])

    assert _sweep(setup, run, lambda where: _assert_sound(box[0], where)) > 20


def test_an_interrupt_anywhere_leaves_window_charges_matching_the_permits_handed_out() -> None:
    """Window charges come with the permit and are undone exactly once with it."""
    box: list[MemoryLimiter] = []
    got: list[Permit] = []

    def setup() -> None:
        pool = MemoryLimiter(windows=[{"requests": 100, "per": 60}])
        box[:] = [
            MemoryLimiter(
                max_concurrent=2,
                pool=pool,
                windows=[{"requests": 100, "per": 60}, {"tokens": 10**6, "per": 60}],
            )
        ]
        got.clear()

    def run() -> None:
        lim = box[0]
        got.append(lim.acquire(timeout=1, tokens=7))
        got.append(lim.acquire(timeout=1, tokens=5))
        got[0].settle(tokens=3)

    def check(where: str) -> None:
        lim = box[0]
        assert lim.pool is not None
        requests, tokens = (w["used"] for w in lim.snapshot().windows)
        # An interrupt on acquire's return event lands after the permit left the limiter
        # (as one in the caller's code would): that request counts; its permit is collected.
        lost = 1 if where == "acquire:return" else 0
        held = len(got) + lost
        assert requests == held, f"interrupt at {where}: {requests} charged, {held} handed out"
        assert lim.pool.snapshot().windows[0]["used"] == held, where
        charged = sum(p.tokens for p in got) + (0 if not lost else 7 if not got else 5)
        allowed = {charged}
        if got and got[0]._settled:  # a settle cut short counts as made (at most once)
            allowed.add(charged - got[0].tokens + 3)
        assert tokens in allowed, f"interrupt at {where}: {tokens} tokens, not in {allowed}"
        for p in got:
            p.release()
        _assert_sound(lim, where)

    assert _sweep(setup, run, check) > 20


def test_an_interrupt_anywhere_in_a_fake_clock_wait_leaves_the_limiter_sound() -> None:
    """The queued path in one thread: spacing makes the second acquire wait (a fake wait)."""
    clock = FakeClock()
    box: list[MemoryLimiter] = []

    def setup() -> None:
        box[:] = [
            MemoryLimiter(
                max_concurrent=1, requests_per_minute=600, burst=1, min_interval=0.5, clock=clock
            )
        ]

    def run() -> None:
        lim = box[0]
        with lim.acquire(timeout=5):
            pass
        with lim.acquire(timeout=5, tokens=0):  # waits for the next token (fake clock)
            pass

    def check(where: str) -> None:
        clock.advance(60.0)
        lim = box[0]
        snap = lim.snapshot()
        assert snap.tokens == pytest.approx(1.0), f"interrupt at {where}: bucket not full"
        _assert_sound(lim, where)

    assert _sweep(setup, run, check) > 20


def test_an_interrupt_anywhere_in_update_applies_all_of_it_or_none() -> None:
    box: list[MemoryLimiter] = []
    before = {"max_concurrent": 1, "requests_per_minute": None, "burst": None}
    after = {"max_concurrent": 2, "requests_per_minute": 6000.0, "burst": 3}

    def setup() -> None:
        box[:] = [MemoryLimiter(max_concurrent=1)]

    def run() -> None:
        box[0].update(**after)

    def check(where: str) -> None:
        lim = box[0]
        limits = {k: lim.limits()[k] for k in before}
        assert limits in (before, after), f"interrupt at {where}: half an update: {limits}"
        snap = lim.snapshot()
        assert (snap.requests_per_minute is None) == (snap.tokens is None), where
        _assert_sound(lim, where)

    assert _sweep(setup, run, check) > 10


def test_a_half_built_permit_is_finalized_quietly() -> None:
    """An interrupt inside ``Permit.__init__`` leaves an object without its slots."""
    unraisable: list[object] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        p = Permit.__new__(Permit)
        del p
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == []


def test_a_permit_is_released_once_whatever_path_gets_there_first() -> None:
    lim = MemoryLimiter(max_concurrent=2)
    p = lim.acquire()
    other = lim.acquire()
    p.release()
    p.release()
    with p:
        pass
    lim._release(p)  # the owner's own entry point, called again
    lim._release_from_gc(p)
    assert lim.in_flight == 1
    other.release()
    assert lim.in_flight == 0


# -- the queued path, with a second thread --------------------------------------------------


class _Helpers:
    """The test's own threads in one sweep run, joined before each check.

    The traced thread may be interrupted anywhere, in its ``finally`` too, so the
    joining is done by the (untraced) check, not by the run.
    """

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.done = threading.Event()

    def start(self, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, daemon=True)
        self.threads.append(t)
        t.start()

    def join(self, where: str) -> None:
        self.done.set()
        for t in self.threads:
            t.join(JOIN_TIMEOUT)
            assert not t.is_alive(), f"interrupt at {where}: a helper thread is stuck"
        self.threads.clear()
        self.done = threading.Event()


def _wait_for(predicate: Callable[[], bool], stop: threading.Event) -> None:
    """Poll (test side only) until ``predicate()`` or ``stop`` is set; bounded in time."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not predicate() and not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.0005)


def test_an_interrupt_anywhere_while_queued_leaves_the_limiter_sound() -> None:
    """The traced thread waits in line; another thread holds the only unit, then releases."""
    box: list[MemoryLimiter] = []
    helpers = _Helpers()

    def setup() -> None:
        box[:] = [MemoryLimiter(max_concurrent=1)]

    def run() -> None:
        lim = box[0]
        held = lim.acquire()
        done = helpers.done

        def holder() -> None:
            _wait_for(lambda: lim.queued > 0, done)
            held.release()

        helpers.start(holder)
        with lim.acquire(timeout=5):
            assert lim.in_flight == 1

    def check(where: str) -> None:
        helpers.join(where)
        _assert_sound(box[0], where)

    assert _sweep(setup, run, check) > 20


def test_an_interrupt_anywhere_while_handing_over_leaves_the_limiter_sound() -> None:
    """The traced thread releases (and so dispatches) to a waiter in another thread."""
    box: list[MemoryLimiter] = []
    over: list[str] = []
    helpers = _Helpers()

    def setup() -> None:
        box[:] = [MemoryLimiter(max_concurrent=1, requests_per_minute=60_000, burst=10)]

    def run() -> None:
        lim = box[0]
        held = lim.acquire(timeout=1)

        def waiter() -> None:
            try:
                with lim.acquire(timeout=5):
                    if lim.in_flight > 1:
                        over.append("two holders")
            except AcquireTimeout:
                over.append("the waiter was never admitted")

        helpers.start(waiter)
        _wait_for(lambda: lim.queued > 0, helpers.done)
        held.release()

    def check(where: str) -> None:
        helpers.join(where)  # an interrupted release is made by the collector meanwhile
        assert over == [], f"interrupt at {where}: {over}"
        _assert_sound(box[0], where)

    assert _sweep(setup, run, check) > 20


def test_an_interrupt_anywhere_in_update_hands_over_to_the_waiter() -> None:
    """Raising ``max_concurrent`` admits a waiting thread even if update is interrupted."""
    box: list[MemoryLimiter] = []
    outcomes: list[str] = []
    helpers = _Helpers()
    held: list[Permit] = []

    def setup() -> None:
        lim = MemoryLimiter(max_concurrent=1)
        box[:] = [lim]
        held[:] = [lim.acquire(timeout=1)]

    def run() -> None:
        lim = box[0]

        def waiter() -> None:
            try:
                with lim.acquire(timeout=1):
                    outcomes.append("admitted")
            except AcquireTimeout:
                outcomes.append("timeout")

        helpers.start(waiter)
        _wait_for(lambda: lim.queued > 0, helpers.done)
        lim.update(max_concurrent=2)

    def check(where: str) -> None:
        if box[0].limits()["max_concurrent"] == 2:
            helpers.join(where)  # raised: the waiter is admitted (a timeout would fail here)
            assert outcomes == ["admitted"], f"interrupt at {where}: {outcomes}"
        held.pop().release()
        helpers.join(where)
        outcomes.clear()
        _assert_sound(box[0], where)

    assert _sweep(setup, run, check) > 10


# -- the randomized hammer ------------------------------------------------------------------


@pytest.mark.integration
def test_async_exceptions_into_16_threads_leak_nothing_and_never_over_admit() -> None:
    benchmarks = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        from hammer_interrupts import hammer
    finally:
        sys.path.remove(benchmarks)
    result = hammer(rounds=3, seconds=0.5, seed=1)
    assert result.injections > 0
    assert result.leaks == 0, result
    assert result.over_admissions == 0, result
    assert result.admitted > 0, result
