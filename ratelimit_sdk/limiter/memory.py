"""Stage 3b (admission control), in-process backend: the limiter every thread shares.

One lock and one FIFO queue per *group*: a standalone limiter is its own group;
a pool and its member limiters share one group, so a member's own limits and the
pool's units are checked and taken in one critical section (nobody holds one
while blocking on the other).

How waiting works (no polling, no barging):

* The fast path (nobody waiting, every limit allows it) takes the lock once.
* Otherwise the caller joins the queue with its own condition on the group
  lock (:class:`_Cond`: however its wait ends, the waiter holds the lock again).
  :func:`_dispatch` walks the queue in order and grants every waiter whose
  limits allow it *and* that no earlier waiter of the same limiter (or of the
  same pool, when the pool is what stops that waiter) is still waiting for.
  A granted waiter is woken directly (hand-off), so a thread arriving later
  can never overtake it.
* The first blocked waiter of each limiter gets an exact wake-up time (next
  token, end of spacing or cooldown) or none at all when only a release can
  help; everybody else sleeps until a dispatch wakes it.
* Dispatch runs on release, update, cooldown, a waiter leaving, and when the
  first blocked waiter's own timer fires.

Interrupt safety (KeyboardInterrupt, asynchronous exceptions at any bytecode):
see the invariant in :class:`MemoryLimiter`'s docstring and ``docs/interrupts.md``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .._windows import WindowCounter, check_windows, describe
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AcquireTimeout, ConfigError, RequestTooLargeError
from ..models import Availability, LimiterSnapshot
from ._args import check_cooldown, check_timeout, check_tokens, check_units
from .base import Limiter, Permit, check_limits, check_pool_units
from .bucket import (
    COLD_FACTOR,
    DEFAULT_MARGIN,
    IDLE_COLD,
    JitterAllowance,
    TokenBucket,
    limit_top,
)

__all__ = ["MemoryLimiter"]

_log = logging.getLogger("ratelimit_sdk")
_T = TypeVar("_T")
_INF = math.inf
_NO_AMOUNTS: list[tuple[dict[int, float], int, float]] = []
#: The undo list of a grant without windows (never appended to).
_NO_UNDO: list[tuple[dict[int, float], int, float | None]] = []
#: Wake-up times closer than this count as unchanged (no needless notify).
_WAKE_SLACK = 1e-6


class _Group:
    """The lock and FIFO queue shared by a pool and its members (or one limiter alone).

    The lock is an ``RLock`` for what its C methods offer, never for re-entry (no
    code path takes it twice): ``_is_owned()`` tells a waiter whether an interrupt
    left it holding the lock, and ``_acquire_restore`` takes it back without being
    interruptible by a signal.
    """

    __slots__ = ("lock", "orphans", "queue", "size")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.queue: deque[_Waiter] = deque()
        self.orphans: deque[Permit] = deque()
        self.size = 1


class _Cond(threading.Condition):
    """The condition one waiting thread sleeps on; its ``wait`` is safe against interrupts.

    ``threading.Condition.wait`` can let an exception out with the lock released
    (one landing just after it releases the lock, before its ``try``), and its
    caller's cleanup would then run unlocked. Here, however ``wait`` ends (normally
    or by an exception raised anywhere in it), the calling thread holds the lock
    again. ``notify`` opens a gate the waiter sleeps on; a notify before the wait
    is kept (the wait then returns at once).
    """

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self._group_lock = lock
        self._gate = threading.Lock()
        self._gate.acquire()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, sleep until notified or ``timeout``, take the lock back."""
        lock = self._group_lock
        state: Any = (1, threading.get_ident())  # what _release_save returns (held once)
        try:
            state = lock._release_save()
            got = self._gate.acquire(True, -1 if timeout is None else timeout)
            lock._acquire_restore(state)
        except BaseException:
            if not lock._is_owned():
                lock._acquire_restore(state)
            raise
        return got

    def notify(self, n: int = 1) -> None:
        """Wake the waiter (called with the lock held)."""
        gate = self._gate
        if gate.locked():
            gate.release()

    def notify_all(self) -> None:
        """Wake the waiter (there is only one)."""
        self.notify()


class _Waiter:
    """One thread waiting for admission, with the (not yet held) permit it will get."""

    __slots__ = ("cond", "limiter", "permit", "pool_units", "tokens", "units", "wake_at")

    def __init__(self, limiter: MemoryLimiter, permit: Permit, cond: _Cond) -> None:
        self.limiter = limiter
        self.permit = permit
        self.units = permit.units
        self.tokens = permit.tokens
        self.pool_units = permit.pool_units if isinstance(permit, _PooledPermit) else 0
        self.cond = cond
        self.wake_at: float | None = None


def _dispatch(group: _Group, now: float, me: _Waiter | None) -> None:
    """Grant, in queue order, every waiter that may go now; arm the first blocked ones.

    Called with ``group.lock`` held. ``me`` is the calling thread's own waiter
    (it needs no notify). An exception part-way (an interrupt) walks the queue once
    more before it propagates: every grant is whole (see ``_grant``), and a granted
    waiter still in line is woken and taken out of it, so nobody is left waiting
    for a wake-up that was cut short.
    """
    if not group.queue:
        return
    try:
        _walk(group, now, me)
    except BaseException:
        _walk(group, now, me)
        raise


def _dispatch_after(group: _Group, clock: Clock, change: Callable[[], _T]) -> _T:
    """Run ``change()`` then dispatch (lock held); an exception anywhere dispatches anyway.

    A change that frees room (a release, a raised limit) must reach the waiters
    even if an interrupt cuts it, or the dispatch, short: else a waiter could
    sleep past the moment it may go, until its timeout.
    """
    try:
        result = change()
        if group.queue:
            _dispatch(group, clock.monotonic(), None)
    except BaseException:
        if group.queue:
            _dispatch(group, clock.monotonic(), None)
        raise
    return result


def _walk(group: _Group, now: float, me: _Waiter | None) -> None:
    queue = group.queue
    blocked: set[MemoryLimiter] = set()
    i = 0
    while i < len(queue):
        w = queue[i]
        if not w.permit._released:
            # Granted by a walk an interrupt cut short: finish the hand-off.
            if w is not me:
                w.cond.notify()
            del queue[i]
            continue
        lim = w.limiter
        pool = lim._pool
        if lim in blocked or (pool is not None and pool in blocked):
            # An earlier waiter holds the line for this limiter: wait to be dispatched.
            w.wake_at = None
            i += 1
            continue
        d_own = lim._delay(w.units, w.tokens, now)
        d_pool = 0.0 if pool is None else pool._delay(w.pool_units, w.tokens, now)
        if d_own == 0.0 and d_pool == 0.0:
            lim._grant(w.permit, now)
            if w is not me:
                w.cond.notify()
            del queue[i]
            continue
        blocked.add(lim)
        if d_pool > 0.0 and pool is not None:
            blocked.add(pool)
        delay = max(d_own, d_pool)
        wake_at = None if delay == _INF else now + delay
        old = w.wake_at
        w.wake_at = wake_at
        if w is not me and not _same_time(old, wake_at):
            w.cond.notify()  # its timer changed: let it re-arm
        if len(blocked) >= group.size:
            break
        i += 1


def _notify_each(group: _Group, closed_only: bool) -> None:
    """Wake every waiter (of a closed limiter only, with ``closed_only``); lock held.

    An exception part-way wakes them all once more before it propagates.
    """
    try:
        for w in group.queue:
            if not closed_only or w.limiter._is_closed():
                w.cond.notify()
    except BaseException:
        for w in group.queue:
            if not closed_only or w.limiter._is_closed():
                w.cond.notify()
        raise


def _same_time(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= _WAKE_SLACK


def _rebuilt(
    old: TokenBucket | None, rate: float | None, capacity: float, now: float
) -> TokenBucket | None:
    """The bucket for ``rate`` (``None``: no limit), carrying over what ``old`` holds.

    ``old`` is left as it is (a copy is reconfigured), so a caller may still put
    it back.
    """
    if rate is None:
        return None
    if old is None:
        return TokenBucket(rate, capacity, now)
    new = old.copy()
    new.reconfigure(rate, capacity, now)
    return new


def _set_levels(
    levels: list[tuple[TokenBucket, float]],
    amounts: list[tuple[dict[int, float], int, float]] = _NO_AMOUNTS,
) -> None:
    """Store each bucket's new level and each window slot's new amount.

    An exception part-way stores them all (again).
    """
    try:
        for bucket, level in levels:
            bucket.level = level
        for slots, i, value in amounts:
            slots[i] = value
    except BaseException:
        for bucket, level in levels:
            bucket.level = level
        for slots, i, value in amounts:
            slots[i] = value
        raise


def _undo_windows(undo: _Undo) -> None:
    """Put window slots back as they were before a charge (an exception part-way: again)."""
    try:
        for slots, i, old in reversed(undo):
            if old is None:
                slots.pop(i, None)
            else:
                slots[i] = old
    except BaseException:
        for slots, i, old in reversed(undo):
            if old is None:
                slots.pop(i, None)
            else:
                slots[i] = old
        raise


def _window_changes(
    permit: _LocalPermit, diff: int | None, kinds: tuple[int, int] | None
) -> list[tuple[dict[int, float], int, float]]:
    """The new amounts of the window slots ``permit`` was charged to (nothing stored yet).

    ``diff`` ``None``: the admission is undone (each charge taken back); else the
    settle's token differences (``kinds``: for the input and output windows).
    Slots already dropped stay dropped; no amount goes below zero.
    """
    out: list[tuple[dict[int, float], int, float]] = []
    for w, idx in getattr(permit, "_win", ()):
        kind = w.spec.kind
        if diff is None:
            change = -(permit.tokens if kind != "requests" else 1)
        elif kind == "requests":
            continue
        elif kinds is None or kind == "tokens":
            change = diff
        else:
            change = kinds[0] if kind == "input_tokens" else kinds[1]
        if not change:
            continue
        slots = w.slots
        for i in idx:
            value = slots.get(i)
            if value is not None:
                out.append((slots, i, max(0.0, value + change)))
    return out


#: The limits ``update`` stores together: max, rpm, burst, interval, tpm, margin, buckets,
#: windows.
_Limits = tuple[
    int | None,
    float | None,
    int | None,
    float,
    float | None,
    float,
    TokenBucket | None,
    TokenBucket | None,
    tuple[WindowCounter, ...],
]

#: A window charge to put back: the slots, the slot index, the amount before (None: none).
_Undo = list[tuple[dict[int, float], int, float | None]]

#: What ``_grant`` saves to put back: in flight, last start, (level, stamp) x 2.
_Saved = tuple[int, float, tuple[float, float] | None, tuple[float, float] | None]


class MemoryLimiter(Limiter):
    """In-process admission control: resizable FIFO concurrency, token bucket, spacing, cooldown.

    Thread-safe; share one instance among all threads that call the same API.
    Holds its lock for microseconds only: never across a wait, a sleep or I/O.

    ``margin`` (seconds, default :data:`~ratelimit_sdk.limiter.bucket.DEFAULT_MARGIN`,
    20 ms, as the ``Client``'s): the jitter allowance. A request admitted here may
    reach the provider up to ``margin`` later; the bucket and the spacing admit so
    that the provider's own limiter holds whatever that delay is (a bucket within
    ``rate * margin`` of full counts as full). It costs ``margin`` once per burst
    where the burst can absorb it; a one-token bucket or a spacing pays at most a
    fifth of its interval per request. A cold start (nothing came back yet, or
    idle for 30 s) adds three times the margin to the first burst; a rate-limit
    refusal of a paced request widens it (:meth:`report_overrun`). See
    :mod:`ratelimit_sdk.limiter.bucket`.

    ``windows=``: window limits (see :class:`~.base.Limiter`), checked and
    charged in the same critical section as the rest; a permit remembers the
    window slots it was charged to (for its settle and its undoing). The jitter
    allowance they use is read through :meth:`_window_allowance` (today ``margin``).

    ``pool=`` makes this limiter a member of a shared pool (another
    ``MemoryLimiter``): each request then also holds ``pool_units`` of the pool's
    concurrency (and counts against the pool's rate and token budget), admitted in
    the same decision as this limiter's own limits.

    Invariant (interrupt safety): no exception raised at any bytecode boundary of
    this limiter's code (KeyboardInterrupt, SystemExit, an asynchronous exception
    from ``PyThreadState_SetAsyncExc``) leaves its state inconsistent:

    * the lock is only ever taken by a ``with`` block (its enter and exit are C
      calls with nothing in between that an interrupt can land on), and a waiter
      holds it again however its wait ends (``_Cond.wait``);
    * counting a request (units, rate and token charge, of the limiter and its
      pool) and marking its permit held are one step, ``_grant``: all of it or, on
      any exception, none of it. The permit is built *before*, not yet held, so
      nothing counted ever lacks a permit;
    * a permit goes from held to released exactly once, whichever path gets there
      first (``release()``, ``with``, the garbage collector, or the undoing of an
      admission whose caller never saw it): a flag tested and set under the lock,
      together with the counters (an exception part-way finishes the release);
    * an admission whose caller never got the permit (an interrupt after the grant
      and before ``acquire`` returned, in the fast path or a woken waiter) is undone
      whole: units back, rate and token charge refunded, once;
    * ``update`` applies all of the new limits or none of them; a cut-short queue
      walk (``_dispatch``) is walked again, so no granted waiter stays unwoken.

    What stays out of reach: an exception that lands while handling another one
    (a second interrupt inside the cleanup of the first), and one that lands in
    the caller's code after ``acquire`` returned or inside ``Permit.__enter__`` /
    ``__exit__`` before the release: that permit is then released by the garbage
    collector once the caller's frame is gone.
    """

    #: A subclass that adds to :meth:`_release_locked` sets this, so that every
    #: release goes through it (a lone permit's release is otherwise inlined).
    _hooked_release = False

    def __init__(
        self,
        max_concurrent: int | None = None,
        requests_per_minute: float | None = None,
        burst: int | None = None,
        min_interval: float = 0.0,
        tokens_per_minute: float | None = None,
        *,
        backend: str = "memory",
        key: str | None = None,
        clock: Clock | None = None,
        pool: MemoryLimiter | None = None,
        pool_units: int = 1,
        margin: float = DEFAULT_MARGIN,
        windows: Iterable[Any] | None = None,
    ) -> None:
        check_limits(
            {
                "max_concurrent": max_concurrent,
                "requests_per_minute": requests_per_minute,
                "burst": burst,
                "min_interval": min_interval,
                "tokens_per_minute": tokens_per_minute,
                "margin": margin,
            }
        )
        specs = check_windows(windows)
        self.key = key
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        now = self.clock.monotonic()
        self._max: int | None = None if max_concurrent is None else int(max_concurrent)
        self._rpm: float | None = requests_per_minute
        self._burst: int | None = None if burst is None else int(burst)
        self._bucket: TokenBucket | None = None
        self._interval = float(min_interval)
        self._last_start = -_INF
        self._tpm: float | None = tokens_per_minute
        self._tbucket: TokenBucket | None = None
        self._cool_until = -_INF
        self._in_flight = 0
        self._closed = False
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._margin = float(margin)
        self._jitter = JitterAllowance()
        self._warm = False  # a request came back since the limiter went idle
        self._last_take = -_INF
        self._taken_allow = _INF  # the allowance of the latest take, for its permit
        self._windows: tuple[WindowCounter, ...] = tuple(WindowCounter(w) for w in specs)
        self._build_buckets(now)
        self._pool: MemoryLimiter | None = None
        self._pool_units = 1
        self._group: _Group
        if pool is not None:
            if not isinstance(pool, MemoryLimiter):
                raise ConfigError("pool: must be an in-memory Limiter", field="pool")
            if pool._pool is not None:
                raise ConfigError("pool: a pool cannot itself belong to a pool", field="pool")
            self._pool = pool
            self._group = pool._group
            with self._group.lock:
                self._group.size += 1
        else:
            self._group = _Group()
        self.pool_units = pool_units

    # -- configuration ---------------------------------------------------------------

    @property
    def pool(self) -> MemoryLimiter | None:
        """The shared pool this limiter draws from, if any."""
        return self._pool

    @property
    def pool_units(self) -> int:
        """Pool units each request holds (1 when there is no pool)."""
        return self._pool_units

    @pool_units.setter
    def pool_units(self, value: int) -> None:
        pool = self._pool
        self._pool_units = check_pool_units(value, None if pool is None else pool._max)

    def _build_buckets(self, now: float) -> None:
        self._bucket, self._tbucket = self._buckets_for(self._rpm, self._burst, self._tpm, now)

    def _buckets_for(
        self,
        rpm: float | None,
        burst: int | None,
        tpm: float | None,
        now: float,
    ) -> tuple[TokenBucket | None, TokenBucket | None]:
        """The request and token buckets for these limits (the current ones untouched)."""
        bucket = _rebuilt(self._bucket, None if rpm is None else rpm / 60.0, float(burst or 1), now)
        tbucket = _rebuilt(self._tbucket, None if tpm is None else tpm / 60.0, float(tpm or 1), now)
        return bucket, tbucket

    def update(self, **limits: Any) -> None:
        """Change limits while running; see :meth:`Limiter.update`.

        All of the new limits or none: they are worked out first, then stored
        together (an exception part-way puts the old ones back).
        """
        check_limits(limits)
        windows = self._windows
        if "windows" in limits:
            windows = self._windows_for(check_windows(limits.pop("windows")))
        group = self._group
        with group.lock:
            now = self.clock.monotonic()
            new = self.limits()
            new.update(limits)
            mx = None if new["max_concurrent"] is None else int(new["max_concurrent"])
            burst = None if new["burst"] is None else int(new["burst"])
            interval = float(new["min_interval"])
            margin = float(new["margin"])
            rpm, tpm = new["requests_per_minute"], new["tokens_per_minute"]
            bucket, tbucket = self._buckets_for(rpm, burst, tpm, now)
            new_limits: _Limits = (
                mx,
                rpm,
                burst,
                interval,
                tpm,
                margin,
                bucket,
                tbucket,
                windows,
            )
            _dispatch_after(group, self.clock, lambda: self._set_limits(new_limits))

    def _set_limits(self, new: _Limits) -> None:
        """Store every limit of ``new`` (lock held); an exception part-way restores the old.

        (A ``try`` of its own, not one inside the caller's ``with``: CPython 3.11
        leaves a ``try:`` line's NOP outside the enclosing ``with``'s handler, where
        a tracer, though no real interrupt, can raise.)
        """
        old: _Limits = (
            self._max,
            self._rpm,
            self._burst,
            self._interval,
            self._tpm,
            self._margin,
            self._bucket,
            self._tbucket,
            self._windows,
        )
        try:
            self._store_limits(new)
        except BaseException:
            self._store_limits(old)
            raise

    def _store_limits(self, values: _Limits) -> None:
        """Every limit from ``values`` in one tuple assignment (no line runs in between)."""
        (
            self._max,
            self._rpm,
            self._burst,
            self._interval,
            self._tpm,
            self._margin,
            self._bucket,
            self._tbucket,
            self._windows,
        ) = values

    def _windows_for(self, specs: Iterable[Any]) -> tuple[WindowCounter, ...]:
        """Counters for these windows (the current ones untouched).

        One like a current window (same kind, length, alignment) takes over what
        was charged to it.
        """
        counters = []
        for spec in specs:
            counter = WindowCounter(spec)
            for old in self._windows:
                if old.spec.same_clock(spec):
                    counter.carry_from(old)
                    break
            counters.append(counter)
        return tuple(counters)

    def _window_allowance(self) -> float:
        """Seconds of jitter between admission and the server's arrival that windows allow for.

        The one place windows read the allowance (today the fixed ``margin``).
        """
        return self._margin

    def cooldown(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now (extends, never shortens, a cooldown)."""
        seconds = check_cooldown(seconds)
        if seconds <= 0:
            return
        group = self._group
        with group.lock:
            now = self.clock.monotonic()
            until = now + seconds
            if until > self._cool_until:
                self._cool_until = until
                _dispatch(group, now, None)

    def report_overrun(self) -> float:
        """The provider refused a request this limiter paced: widen the jitter allowance.

        See :meth:`Limiter.report_overrun`. Returns the seconds until the rate
        limits (bucket, spacing, cooldown) admit the next request, ignoring
        concurrency; ``0.0`` when this limiter paces nothing.
        """
        with self._group.lock:
            if self._bucket is None and not self._interval and self._tbucket is None:
                return 0.0
            now = self.clock.monotonic()
            extra = self._jitter.grow(self._margin, now)
            delay = self._time_delay(0, now)
        _log.info(
            "%s: a paced request was refused; jitter allowance now %.1f ms over the margin",
            self.key or "limiter",
            extra * 1000,
        )
        return delay

    def close(self) -> None:
        """Wake every thread waiting here with AcquireTimeout; later acquires fail the same way.

        Closing a pool closes it for all its members. Held permits stay valid.
        """
        group = self._group
        with group.lock:
            self._closed = True
            _notify_each(group, closed_only=True)

    def wake_all(self) -> None:
        """Wake every thread waiting here so it re-checks its deadline and cancel flag."""
        group = self._group
        with group.lock:
            _notify_each(group, closed_only=False)

    def _is_closed(self) -> bool:
        return self._closed or (self._pool is not None and self._pool._closed)

    # -- admission ---------------------------------------------------------------------

    def _delay(self, units: int, tokens: int, now: float) -> float:
        """Seconds until this limiter alone admits the request (inf: needs a release)."""
        if self._max is not None and self._in_flight + units > self._max:
            return _INF
        return self._time_delay(tokens, now)

    def _time_delay(self, tokens: int, now: float) -> float:
        """Seconds until the time-based limits (cooldown, bucket, spacing, tokens) allow a start."""
        delay = 0.0
        if now < self._cool_until:
            delay = self._cool_until - now
        bucket = self._bucket
        if bucket is not None:
            d = bucket.delay(1.0, now)
            if d > delay:
                delay = d
        if self._interval:
            d = self._last_start + self._interval - now
            if d > delay:
                delay = d
        tbucket = self._tbucket
        if tbucket is not None and tokens:
            d = tbucket.delay(tokens, now)
            if d > delay:
                delay = d
        if self._windows:
            d = self._window_delay(tokens, now)
            if d > delay:
                delay = d
        return delay

    def _window_delay(self, tokens: int, now: float) -> float:
        """Seconds until every window allows the request (``inf``: it never fits one)."""
        allowance = self._window_allowance()
        epoch = self.clock.time()
        delay = 0.0
        for w in self._windows:
            amount = tokens if w.spec.kind != "requests" else 1
            if amount:
                d = w.delay(amount, now, epoch, allowance)
                if d > delay:
                    delay = d
        return delay

    def _charge_windows(self, permit: Permit, now: float, undo: _Undo) -> None:
        """Charge ``permit`` to every window (lock held); ``undo`` gets what to put back.

        Each slot's old amount is appended to ``undo`` before the slot changes, so a
        cut-short charge is put back whole by :func:`_undo_windows`. The permit keeps
        the slots it was charged to (for its settle and its undoing).
        """
        allowance = self._window_allowance()
        epoch = self.clock.time()
        charged: list[tuple[WindowCounter, tuple[int, ...]]] = []
        for w in self._windows:
            # (A token window is charged 0 for a call without an estimate: its settle
            # then has the admission's slot to correct.)
            amount = permit.tokens if w.spec.kind != "requests" else 1
            idx = w.indexes(now, epoch, allowance)
            slots = w.slots
            for i in idx:
                old = slots.get(i)
                undo.append((slots, i, old))
                slots[i] = (old or 0.0) + amount
            charged.append((w, idx))
        if isinstance(permit, _LocalPermit):
            permit._win = (*getattr(permit, "_win", ()), *charged)

    def _window_stats(self, now: float) -> tuple[dict[str, Any], ...]:
        """Each window with what it counts now (``used``) and its ``limit`` (lock held)."""
        allowance = self._window_allowance()
        epoch = self.clock.time()
        return tuple(
            {**w.spec.as_dict(), "used": w.used(now, epoch, allowance), "limit": w.limit}
            for w in self._windows
        )

    def _take(self, units: int, tokens: int, now: float) -> None:
        bucket, interval, tbucket = self._bucket, self._interval, self._tbucket
        if bucket is None and not interval and tbucket is None:
            self._in_flight += units
            return
        # Cold: nothing came back since start-up, or idle for IDLE_COLD seconds.
        cold = not self._warm or (self._in_flight == 0 and now - self._last_take > IDLE_COLD)
        self._in_flight += units
        if cold:
            self._warm = False
        self._last_take = now
        # The allowance of each limit (JitterAllowance.for_limit, inlined: the hot path).
        margin = self._margin * (1.0 + COLD_FACTOR) if cold else self._margin
        jitter = self._jitter
        extra = jitter.extra_at(now) if jitter.extra else 0.0
        least = _INF  # the smallest allowance applied, for mark_sent
        if bucket is not None:
            top = bucket.top
            least = (margin if margin < top else top) + extra
            bucket.take(1.0, now, least)
        if interval:
            # The spacing runs from the latest the request may reach the provider.
            top = limit_top(interval, 0.0)
            allow = (margin if margin < top else top) + extra
            self._last_start = now + allow
            if allow < least:
                least = allow
        if tbucket is not None and tokens:
            top = tbucket.top
            tbucket.take(tokens, now, (margin if margin < top else top) + extra)
        self._taken_allow = least

    def _check_request(self, units: int, tokens: int) -> None:
        check_units(units)
        check_tokens(tokens)
        if self._max is not None and units > self._max:
            raise RequestTooLargeError(
                f"units={units} can never be admitted: max_concurrent is {self._max}"
            )
        pool = self._pool
        for lim in (self, pool):
            if lim is not None and lim._tpm is not None and tokens > lim._tpm:
                raise RequestTooLargeError(
                    f"tokens={tokens} can never be admitted: tokens_per_minute is {lim._tpm:g}"
                )
            if lim is not None and lim._windows:
                for w in lim._windows:
                    if w.spec.kind != "requests" and tokens > w.limit:
                        raise RequestTooLargeError(
                            f"tokens={tokens} can never be admitted: a window allows "
                            f"{describe(w.spec)}"
                        )

    def acquire(
        self,
        timeout: float | None = None,
        *,
        units: int = 1,
        tokens: int = 0,
        cancel: threading.Event | None = None,
    ) -> Permit:
        """Block until admitted; see :meth:`Limiter.acquire`."""
        if type(units) is not int or units != 1 or tokens or self._pool is not None:
            self._check_request(units, tokens)  # (``True == 1``: a bool is checked too)
        if timeout is not None and (timeout.__class__ is not float or not timeout >= 0):
            timeout = check_timeout(timeout)  # (a float >= 0 is fine as it is: the hot path)
        pool = self._pool
        # Built before anything is counted, not yet held: _grant counts it and marks
        # it held in one step, so nothing counted is ever without its permit.
        permit = (
            _LocalPermit(self, units, tokens)
            if pool is None
            else _PooledPermit(self, units, tokens, self._pool_units)
        )
        group = self._group
        try:
            with group.lock:
                if not group.queue and not self._closed:
                    now = self.clock.monotonic()
                    if self._delay(units, tokens, now) == 0.0 and (
                        pool is None or pool._delay(self._pool_units, tokens, now) == 0.0
                    ):
                        if (
                            pool is None
                            and self._bucket is None
                            and self._tbucket is None
                            and not self._windows
                        ):
                            # _grant's short case, inlined: the hot path of every acquire.
                            in_flight, last_start = self._in_flight, self._last_start
                            try:
                                self._take(units, tokens, now)
                                permit._released = False
                            except BaseException:
                                permit._released = True
                                self._in_flight, self._last_start = in_flight, last_start
                                raise
                        else:
                            self._grant(permit, now)
                        return permit
                return self._wait(permit, timeout, cancel)
        except BaseException:
            if not permit._released:  # granted, but the caller will never see it
                self._abandon(permit)
            raise

    def try_acquire(self, *, units: int = 1, tokens: int = 0) -> Permit | None:
        """Admit now if every limit allows it and nobody waits ahead; else ``None``.

        Never waits for a limit; takes the internal lock (held for microseconds by
        anyone) and refuses only when a limit, or an earlier waiter, says no.
        """
        try:
            return self.acquire(0.0, units=units, tokens=tokens)
        except AcquireTimeout:
            return None

    def availability(self, *, units: int = 1, tokens: int = 0) -> Availability:
        """Whether an acquire now would be admitted at once, and if not, from when.

        ``wait`` None: only a release can help (full, or earlier waiters);
        ``math.inf``: the limiter is closed. Takes nothing.
        """
        if self._is_closed():
            return Availability(math.inf)
        seen = super().availability(units=units, tokens=tokens)
        pool = self._pool
        if seen.wait == 0.0 or not (self._windows or (pool is not None and pool._windows)):
            return seen
        with self._group.lock:
            now = self.clock.monotonic()
            window = self._window_delay(tokens, now) if self._windows else 0.0
            if pool is not None and pool._windows:
                window = max(window, pool._window_delay(tokens, now))
        return Availability(seen.wait, cooldown=seen.cooldown, window=window)

    def try_admit(self, *, units: int = 1, tokens: int = 0) -> Permit | Availability:
        """Admit now, or say from when (``Availability(math.inf)`` once closed)."""
        if self._is_closed():
            self._check_request(units, tokens)
            return Availability(math.inf)
        try:
            return self.acquire(0.0, units=units, tokens=tokens)
        except AcquireTimeout:
            return self.availability(units=units, tokens=tokens)

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every release here (outside the lock; keep it quick)."""
        self._listeners = (*self._listeners, fn)

    def time_to_admit(self, *, units: int = 1, tokens: int = 0) -> float | None:
        """Seconds until an acquire would be admitted at once if nothing else changed.

        ``0.0``: now. ``None``: only a release can help (concurrency is full, or
        earlier waiters hold the line), or the limiter is closed.
        """
        group = self._group
        pool = self._pool
        with group.lock:
            if self._is_closed() or any(
                w.limiter is self or w.limiter is pool or pool is None for w in group.queue
            ):
                return None
            now = self.clock.monotonic()
            delay = self._delay(units, tokens, now)
            if pool is not None:
                delay = max(delay, pool._delay(self._pool_units, tokens, now))
            return None if delay == _INF else delay

    def would_admit(self, *, units: int = 1, tokens: int = 0) -> bool:
        """Whether an acquire now would be admitted at once (takes nothing)."""
        group = self._group
        with group.lock:
            if self._closed or any(
                w.limiter is self or w.limiter is self._pool or self._pool is None
                for w in group.queue
            ):
                return False
            now = self.clock.monotonic()
            pool = self._pool
            return self._delay(units, tokens, now) == 0.0 and (
                pool is None or pool._delay(self._pool_units, tokens, now) == 0.0
            )

    def _grant(self, permit: Permit, now: float) -> None:
        """Count ``permit`` here (and in the pool) and mark it held: one step. Lock held.

        All or nothing: an exception anywhere in here (an interrupt) puts every
        counter and bucket back as it was and leaves the permit not held.
        """
        pool = self._pool
        if pool is None and self._bucket is None and self._tbucket is None and not self._windows:
            # Concurrency (and spacing) only: the common case, kept short.
            in_flight, last_start = self._in_flight, self._last_start
            try:
                self._take(permit.units, permit.tokens, now)
                if self._interval:
                    permit._at, permit._allow = now, self._taken_allow
                permit._released = False
            except BaseException:
                permit._released = True
                self._in_flight, self._last_start = in_flight, last_start
                raise
            return
        b, t = self._bucket, self._tbucket  # _save(), inlined
        saved: _Saved = (
            self._in_flight,
            self._last_start,
            None if b is None else (b.level, b.stamp),
            None if t is None else (t.level, t.stamp),
        )
        pool_saved = None if pool is None else pool._save()
        undo = _NO_UNDO  # (a list of its own only with windows: nothing to allocate else)
        try:
            self._take(permit.units, permit.tokens, now)
            permit._at, permit._allow = now, self._taken_allow
            if self._windows:
                undo = []
                self._charge_windows(permit, now, undo)
                allow = self._window_allowance()
                if allow < permit._allow:
                    permit._allow = allow
            if pool is not None and isinstance(permit, _PooledPermit):
                pool._take(permit.pool_units, permit.tokens, now)
                if pool._windows:
                    if undo is _NO_UNDO:
                        undo = []
                    pool._charge_windows(permit, now, undo)
            permit._released = False
        except BaseException:
            permit._released = True
            self._restore(saved)
            if pool is not None and pool_saved is not None:
                pool._restore(pool_saved)
            if undo:
                _undo_windows(undo)
            raise

    def _save(self) -> _Saved:
        """What ``_take`` changes, to put it back."""
        b, t = self._bucket, self._tbucket
        return (
            self._in_flight,
            self._last_start,
            None if b is None else (b.level, b.stamp),
            None if t is None else (t.level, t.stamp),
        )

    def _restore(self, saved: _Saved) -> None:
        in_flight, last_start, b, t = saved
        self._in_flight = in_flight
        self._last_start = last_start
        if b is not None and self._bucket is not None:
            self._bucket.level, self._bucket.stamp = b
        if t is not None and self._tbucket is not None:
            self._tbucket.level, self._tbucket.stamp = t

    def _wait(
        self, permit: Permit, timeout: float | None, cancel: threading.Event | None
    ) -> Permit:
        """The slow path: queue up and sleep until dispatched.

        Called with the lock held; returns or raises with it held. Whatever the
        exit, the waiter is out of the queue; a permit granted to it is returned,
        or (on an exception) left held for :meth:`acquire` to give back.
        """
        group = self._group
        queue = group.queue
        clock = self.clock
        now = start = clock.monotonic()
        deadline = None if timeout is None else now + timeout
        waiter = _Waiter(self, permit, _Cond(group.lock))
        try:
            queue.append(waiter)
            while True:
                if group.orphans:
                    _drain_orphans(group)
                if not permit._released:
                    return permit  # granted by a dispatch while we slept
                if self._is_closed():
                    raise AcquireTimeout("limiter is closed", waited=now - start, key=self.key)
                if cancel is not None and cancel.is_set():
                    raise AcquireTimeout("cancelled", waited=now - start, key=self.key)
                _dispatch(group, now, waiter)
                if not waiter.permit._released:  # (the same permit: granted just now)
                    return permit
                wake_at = waiter.wake_at
                if deadline is not None:
                    if now >= deadline:
                        waited = now - start
                        raise AcquireTimeout(
                            f"timed out after {waited:.3f}s waiting for admission"
                            + (f" to {self.key!r}" if self.key else ""),
                            waited=waited,
                            key=self.key,
                        )
                    if wake_at is None or wake_at > deadline:
                        wake_at = deadline
                clock.wait(waiter.cond, None if wake_at is None else max(0.0, wake_at - now))
                now = clock.monotonic()
        except BaseException:
            if waiter in queue:  # not if granted (dispatch took it out) or never in
                queue.remove(waiter)
            _dispatch(group, clock.monotonic(), None)
            raise

    def _abandon(self, permit: Permit) -> None:
        """Undo an admission whose caller never got the permit (an interrupt in between)."""
        group = self._group
        with group.lock:
            undone = _dispatch_after(group, self.clock, lambda: self._ungrant(permit))
        if undone:
            for fn in self._listeners:
                fn()

    def _ungrant(self, permit: Permit) -> bool:
        """Release ``permit`` and refund its rate and token charge, once (lock held).

        Returns whether this call did it. Every new value is worked out first and
        stored with the released flag; an exception part-way stores them all again.
        """
        if permit._released:
            return False
        pool = self._pool if isinstance(permit, _PooledPermit) else None
        counts: list[tuple[MemoryLimiter, int]] = [(self, self._in_flight - permit.units)]
        levels: list[tuple[TokenBucket, float]] = []
        for lim in (self, pool):
            if lim is None:
                continue
            if lim is pool and isinstance(permit, _PooledPermit):
                counts.append((lim, lim._in_flight - permit.pool_units))
            b = lim._bucket
            if b is not None:
                levels.append((b, min(b.capacity, b.level + 1.0)))
            t = lim._tbucket
            if t is not None and permit.tokens:
                levels.append((t, min(t.capacity, t.level + permit.tokens)))
        amounts = _window_changes(permit, None, None) if isinstance(permit, _LocalPermit) else []

        def store() -> None:
            permit._released = True
            for lim, in_flight in counts:
                lim._in_flight = in_flight
            for bucket, level in levels:
                bucket.level = level
            for slots, i, value in amounts:
                slots[i] = value

        try:
            store()
        except BaseException:
            store()
            raise
        return True

    # -- release -------------------------------------------------------------------------

    def _release_locked(self, permit: Permit) -> bool:
        """Mark ``permit`` released and give its units back, once (lock held).

        Returns whether this call did it. The flag and the counters move together:
        an exception part-way finishes the release.
        """
        if permit._released:
            return False
        in_flight = self._in_flight - permit.units
        pool = self._pool
        if pool is not None and isinstance(permit, _PooledPermit):
            pool_in_flight = pool._in_flight - permit.pool_units
            try:
                permit._released = True
                self._in_flight = in_flight
                pool._in_flight = pool_in_flight
            except BaseException:
                permit._released = True
                self._in_flight = in_flight
                pool._in_flight = pool_in_flight
                raise
            return True
        try:
            permit._released = True
            self._in_flight = in_flight
        except BaseException:
            permit._released = True
            self._in_flight = in_flight
            raise
        return True

    def _release(self, permit: Permit) -> None:
        """Release ``permit`` and dispatch; an exception part-way still dispatches.

        (:func:`_dispatch_after` and, for a lone permit, :meth:`_release_locked`
        inlined: this is the hot path of every release.)
        """
        group = self._group
        with group.lock:
            try:
                self._warm = True  # a request came back: its connection exists
                if group.orphans:
                    _drain_orphans(group)
                if self._pool is not None or self._hooked_release:
                    if self._pool is not None:
                        self._pool._warm = True
                    self._release_locked(permit)  # pooled permits, or a subclass's hook
                elif not permit._released:
                    in_flight = self._in_flight - permit.units
                    try:
                        permit._released = True
                        self._in_flight = in_flight
                    except BaseException:
                        permit._released = True
                        self._in_flight = in_flight
                        raise
                if group.queue:
                    _dispatch(group, self.clock.monotonic(), None)
            except BaseException:
                if group.queue:
                    _dispatch(group, self.clock.monotonic(), None)
                raise
        for fn in self._listeners:
            fn()

    def _mark_sent(self, permit: Permit) -> None:
        """The request left ``late`` seconds after its admission: pace from its departure.

        Half of the allowance its admission assumed is kept for the way from our
        socket to the provider's limiter; when the request left later than the
        other half, the spacing runs from its departure plus that half, and the
        bucket is charged as if the allowance had been the real delay plus it
        (``rate * (late + allowance / 2 - allowance)`` tokens more).
        """
        now = self.clock.monotonic()
        late = now - permit._at
        rest = permit._allow * 0.5
        over = late - rest
        if over <= 0:
            return
        with self._group.lock:
            if permit._allow == _INF:  # marked already (a second request of one permit)
                return
            permit._allow = _INF
            if self._interval and now + rest > self._last_start:
                self._last_start = now + rest
            bucket = self._bucket
            if bucket is not None:
                bucket.level -= bucket.rate * over
            if self._windows and isinstance(permit, _LocalPermit):
                self._move_windows(permit, now)

    def _move_windows(self, permit: _LocalPermit, departed: float) -> None:
        """Count a late request's window charges from its departure (lock held).

        A sliding window's charge moves to the slot of ``departed - allowance``
        (never before the newest slot, so the slots stay in order): it then leaves
        the window as late as the request may have reached the server. A UTC
        window's charge is added to any window the departure reaches. Only ever
        later, never below zero; every new amount is worked out first and stored
        together (an exception part-way stores them all again).
        """
        charged: tuple[tuple[WindowCounter, tuple[int, ...]], ...] = getattr(permit, "_win", ())
        if not charged:
            return
        allowance = self._window_allowance()
        at, epoch = departed - allowance, self.clock.time() - allowance
        stores: list[tuple[dict[int, float], int, float]] = []
        moved: list[tuple[WindowCounter, tuple[int, ...]]] = []
        for w, idx in charged:
            amount = permit.tokens if w.spec.kind != "requests" else 1
            new = w.indexes(at, epoch, allowance)
            slots = w.slots
            if not amount or w not in self._windows:
                moved.append((w, idx))
            elif w.spec.utc:
                added = tuple(i for i in new if i not in idx)
                stores += [(slots, i, slots.get(i, 0.0) + amount) for i in added]
                moved.append((w, idx + added))
            else:
                newest = next(reversed(slots), new[0]) if slots else new[0]
                target = max(new[0], newest)
                if target <= idx[0]:
                    moved.append((w, idx))
                    continue
                if idx[0] in slots:
                    stores.append((slots, idx[0], max(0.0, slots[idx[0]] - amount)))
                stores.append((slots, target, slots.get(target, 0.0) + amount))
                moved.append((w, (target,)))

        def store() -> None:
            for slots, i, value in stores:
                slots[i] = value
            permit._win = tuple(moved)

        try:
            store()
        except BaseException:
            store()
            raise

    def _release_from_gc(self, permit: Permit) -> None:
        group = self._group
        # Parked first (one C call): whatever happens next, the next lock holder
        # releases it. Never wait for the lock if this thread holds it already (the
        # collector may run in the middle of our own critical section).
        group.orphans.append(permit)
        if not group.lock._is_owned():  # type: ignore[attr-defined]
            with group.lock:
                _dispatch_after(group, self.clock, lambda: _drain_orphans(group))

    def _settle(self, permit: Permit, diff: int, kinds: tuple[int, int] | None = None) -> None:
        group = self._group
        with group.lock:
            levels: list[tuple[TokenBucket, float]] = []
            for lim in (self, self._pool):
                if lim is None or lim._tbucket is None or not diff:
                    continue
                t = lim._tbucket
                # debit may go negative; a refund stops at capacity (as give does)
                levels.append((t, t.level - diff if diff > 0 else min(t.capacity, t.level - diff)))
            amounts = (
                _window_changes(permit, diff, kinds)
                if isinstance(permit, _LocalPermit) and getattr(permit, "_win", None)
                else []
            )
            _set_levels(levels, amounts)
            if group.queue and (diff < 0 or (kinds is not None and min(kinds) < 0)):
                _dispatch(group, self.clock.monotonic(), None)

    # -- observation -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Concurrency units held now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Threads waiting for admission to this limiter now."""
        with self._group.lock:
            return self._queued_locked()

    def _queued_locked(self) -> int:
        return sum(1 for w in self._group.queue if w.limiter is self)

    def cooldown_remaining(self) -> float:
        """Seconds until the current cooldown ends (0.0: none)."""
        return max(0.0, self._cool_until - self.clock.monotonic())

    def snapshot(self) -> LimiterSnapshot:
        """A consistent view of limits and state, taken under the lock."""
        with self._group.lock:
            now = self.clock.monotonic()
            next_start = self._time_delay(0, now)
            return LimiterSnapshot(
                in_flight=self._in_flight,
                queued=self._queued_locked(),
                max_concurrent=self._max,
                requests_per_minute=self._rpm,
                burst=self._burst or 1,
                min_interval=self._interval,
                tokens_per_minute=self._tpm,
                tokens=None if self._bucket is None else self._bucket.available(now),
                llm_tokens=(None if self._tbucket is None else self._tbucket.available(now)),
                cooldown_remaining=max(0.0, self._cool_until - now),
                next_start_in=next_start,
                windows=self._window_stats(now) if self._windows else (),
            )

    def limits(self) -> dict[str, Any]:
        """The current limits as keyword arguments (what :meth:`update` takes).

        ``windows`` (a list of window dicts) appears only when there are windows.
        """
        out: dict[str, Any] = {
            "max_concurrent": self._max,
            "requests_per_minute": self._rpm,
            "burst": self._burst,
            "min_interval": self._interval,
            "tokens_per_minute": self._tpm,
            "margin": self._margin,
        }
        if self._windows:
            out["windows"] = [w.spec.as_dict() for w in self._windows]
        return out

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.limits().items() if v is not None and v != 0.0]
        if self.key:
            parts.insert(0, f"key={self.key!r}")
        return (
            f"<MemoryLimiter {' '.join(parts) or 'unlimited'} "
            f"in_flight={self._in_flight} queued={self.queued}>"
        )


class _LocalPermit(Permit):
    """A permit of the in-memory limiter: built not yet held; ``_grant`` marks it held.

    ``_win``: the window slots its admission was charged to (counter, slot indexes),
    for its settle and its undoing; empty without windows.
    """

    __slots__ = ("_win",)

    _win: tuple[tuple[WindowCounter, tuple[int, ...]], ...]

    def __init__(self, owner: MemoryLimiter, units: int, tokens: int) -> None:
        # Not Permit.__init__ with a keyword: this is the hot path of every acquire.
        self._released = True  # first: a permit cut short here is one never held
        self._settled = False
        self._owner = owner
        self.units = units
        self.tokens = tokens  # (``_win`` stays unset until a window charges it: read by getattr)
        self._at = 0.0
        self._allow = _INF


class _PooledPermit(_LocalPermit):
    """A permit that also holds units of the member's pool."""

    __slots__ = ("pool_units",)

    def __init__(self, owner: MemoryLimiter, units: int, tokens: int, pool_units: int) -> None:
        super().__init__(owner, units, tokens)
        self.pool_units = pool_units


def _drain_orphans(group: _Group) -> None:
    """Release permits whose finalizer could not take the lock (lock held).

    Each is released before it leaves the deque: an interrupt in between leaves an
    already released permit there, which the next drain drops (release is once).
    """
    orphans = group.orphans
    while orphans:
        permit = orphans[0]
        owner = permit._owner
        if isinstance(owner, MemoryLimiter):
            owner._release_locked(permit)
        orphans.popleft()
