"""Stage 3b (admission control), in-process backend: the limiter every thread shares.

One lock and one FIFO queue per *group*: a standalone limiter is its own group;
a pool and its member limiters share one group, so a member's own limits and the
pool's units are checked and taken in one critical section (nobody holds one
while blocking on the other).

How waiting works (no polling, no barging):

* The fast path (nobody waiting, every limit allows it) takes the lock once.
* Otherwise the caller joins the queue with its own ``Condition`` on the group
  lock. :func:`_dispatch` walks the queue in order and grants every waiter whose
  limits allow it *and* that no earlier waiter of the same limiter (or of the
  same pool, when the pool is what stops that waiter) is still waiting for.
  A granted waiter is woken directly (hand-off), so a thread arriving later
  can never overtake it.
* The first blocked waiter of each limiter gets an exact wake-up time (next
  token, end of spacing or cooldown) or none at all when only a release can
  help; everybody else sleeps until a dispatch wakes it.
* Dispatch runs on release, update, cooldown, a waiter leaving, and when the
  first blocked waiter's own timer fires.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AcquireTimeout, ConfigError, RequestTooLargeError
from ..models import Availability, LimiterSnapshot
from .base import Limiter, Permit, check_limits, check_pool_units
from .bucket import TokenBucket

__all__ = ["MemoryLimiter"]

_INF = math.inf
#: Wake-up times closer than this count as unchanged (no needless notify).
_WAKE_SLACK = 1e-6


class _Group:
    """The lock and FIFO queue shared by a pool and its members (or one limiter alone)."""

    __slots__ = ("lock", "orphans", "queue", "size")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: deque[_Waiter] = deque()
        self.orphans: deque[Permit] = deque()
        self.size = 1


class _Waiter:
    """One thread waiting for admission."""

    __slots__ = ("cond", "granted", "limiter", "pool_units", "tokens", "units", "wake_at")

    def __init__(
        self,
        limiter: MemoryLimiter,
        units: int,
        tokens: int,
        pool_units: int,
        cond: threading.Condition,
    ) -> None:
        self.limiter = limiter
        self.units = units
        self.tokens = tokens
        self.pool_units = pool_units
        self.cond = cond
        self.granted = False
        self.wake_at: float | None = None


def _dispatch(group: _Group, now: float, me: _Waiter | None) -> None:
    """Grant, in queue order, every waiter that may go now; arm the first blocked ones.

    Called with ``group.lock`` held. ``me`` is the calling thread's own waiter
    (it needs no notify).
    """
    queue = group.queue
    if not queue:
        return
    blocked: set[MemoryLimiter] = set()
    i = 0
    while i < len(queue):
        w = queue[i]
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
            lim._take(w.units, w.tokens, now)
            if pool is not None:
                pool._take(w.pool_units, w.tokens, now)
            w.granted = True
            lim._queued -= 1
            del queue[i]
            if w is not me:
                w.cond.notify()
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


def _same_time(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= _WAKE_SLACK


class MemoryLimiter(Limiter):
    """In-process admission control: resizable FIFO concurrency, token bucket, spacing, cooldown.

    Thread-safe; share one instance among all threads that call the same API.
    Holds its lock for microseconds only: never across a wait, a sleep or I/O.

    ``margin`` (seconds, default 0): a full token bucket starts refilling ``margin``
    after the request that takes it out of full, as a provider's bucket starts when
    that request *arrives*. Network jitter up to ``margin`` then never lands a
    request before the provider's token; it costs ``margin`` once per burst, not
    per request.

    ``pool=`` makes this limiter a member of a shared pool (another
    ``MemoryLimiter``): each request then also holds ``pool_units`` of the pool's
    concurrency (and counts against the pool's rate and token budget), admitted in
    the same decision as this limiter's own limits.
    """

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
        margin: float = 0.0,
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
        self._queued = 0
        self._closed = False
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._margin = float(margin)
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
        if self._rpm is None:
            self._bucket = None
        else:
            rate = self._rpm / 60.0
            capacity = float(self._burst or 1)
            if self._bucket is None:
                self._bucket = TokenBucket(rate, capacity, now, margin=self._margin)
            else:
                self._bucket.reconfigure(rate, capacity, now)
                self._bucket.margin = self._margin
        if self._tpm is None:
            self._tbucket = None
        elif self._tbucket is None:
            self._tbucket = TokenBucket(self._tpm / 60.0, self._tpm, now, margin=self._margin)
        else:
            self._tbucket.reconfigure(self._tpm / 60.0, self._tpm, now)
            self._tbucket.margin = self._margin

    def update(self, **limits: Any) -> None:
        """Change limits while running; see :meth:`Limiter.update`."""
        check_limits(limits)
        group = self._group
        with group.lock:
            now = self.clock.monotonic()
            if "max_concurrent" in limits:
                value = limits["max_concurrent"]
                self._max = None if value is None else int(value)
            if "requests_per_minute" in limits:
                self._rpm = limits["requests_per_minute"]
            if "burst" in limits:
                value = limits["burst"]
                self._burst = None if value is None else int(value)
            if "min_interval" in limits:
                self._interval = float(limits["min_interval"])
            if "tokens_per_minute" in limits:
                self._tpm = limits["tokens_per_minute"]
            if "margin" in limits:
                self._margin = float(limits["margin"])
            self._build_buckets(now)
            _dispatch(group, now, None)

    def cooldown(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now (extends, never shortens, a cooldown)."""
        if not isinstance(seconds, (int, float)) or math.isnan(seconds):
            raise ValueError(f"cooldown seconds must be a number, got {seconds!r}")
        if seconds <= 0:
            return
        group = self._group
        with group.lock:
            now = self.clock.monotonic()
            until = now + seconds
            if until > self._cool_until:
                self._cool_until = until
                _dispatch(group, now, None)

    def close(self) -> None:
        """Wake every thread waiting here with AcquireTimeout; later acquires fail the same way.

        Closing a pool closes it for all its members. Held permits stay valid.
        """
        group = self._group
        with group.lock:
            self._closed = True
            for w in group.queue:
                if w.limiter._is_closed():
                    w.cond.notify()

    def wake_all(self) -> None:
        """Wake every thread waiting here so it re-checks its deadline and cancel flag."""
        group = self._group
        with group.lock:
            for w in group.queue:
                w.cond.notify()

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
        return delay

    def _take(self, units: int, tokens: int, now: float) -> None:
        self._in_flight += units
        if self._bucket is not None:
            self._bucket.take(1.0, now)
        if self._interval:
            self._last_start = now
        if self._tbucket is not None and tokens:
            self._tbucket.take(tokens, now)

    def _check_request(self, units: int, tokens: int) -> None:
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a whole number >= 1, got {units!r}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a whole number >= 0, got {tokens!r}")
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

    def acquire(
        self,
        timeout: float | None = None,
        *,
        units: int = 1,
        tokens: int = 0,
        cancel: threading.Event | None = None,
    ) -> Permit:
        """Block until admitted; see :meth:`Limiter.acquire`."""
        if units != 1 or tokens or self._pool is not None:
            self._check_request(units, tokens)
        if timeout is not None and not timeout >= 0:  # also rejects NaN
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        group = self._group
        lock = group.lock
        lock.acquire()
        try:
            if not group.queue and not self._closed:
                now = self.clock.monotonic()
                pool = self._pool
                if self._delay(units, tokens, now) == 0.0 and (
                    pool is None or pool._delay(self._pool_units, tokens, now) == 0.0
                ):
                    self._take(units, tokens, now)
                    if pool is not None:
                        pool._take(self._pool_units, tokens, now)
                        return _PooledPermit(self, units, tokens, self._pool_units)
                    return Permit(self, units, tokens)
            return self._wait(units, tokens, timeout, cancel)
        finally:
            lock.release()

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
        return super().availability(units=units, tokens=tokens)

    def try_admit(self, *, units: int = 1, tokens: int = 0) -> Permit | Availability:
        """Admit now, or say from when (``Availability(math.inf)`` once closed)."""
        if self._is_closed():
            self._check_request(units, tokens)
            return Availability(math.inf)
        return super().try_admit(units=units, tokens=tokens)

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

    def _wait(
        self, units: int, tokens: int, timeout: float | None, cancel: threading.Event | None
    ) -> Permit:
        """The slow path: queue up and sleep until dispatched. Called with the lock held."""
        group = self._group
        clock = self.clock
        now = start = clock.monotonic()
        deadline = None if timeout is None else now + timeout
        waiter = _Waiter(self, units, tokens, self._pool_units, threading.Condition(group.lock))
        group.queue.append(waiter)
        self._queued += 1
        try:
            while True:
                if group.orphans:
                    _drain_orphans(group)
                if self._is_closed():
                    raise AcquireTimeout("limiter is closed", waited=now - start, key=self.key)
                if cancel is not None and cancel.is_set():
                    raise AcquireTimeout("cancelled", waited=now - start, key=self.key)
                _dispatch(group, now, waiter)
                if waiter.granted:
                    if waiter.limiter._pool is not None:
                        return _PooledPermit(self, units, tokens, waiter.pool_units)
                    return Permit(self, units, tokens)
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
            if waiter.granted:
                # Admitted, but the caller will never see the permit: give it all back.
                self._undo(waiter)
            else:
                try:
                    group.queue.remove(waiter)
                    self._queued -= 1
                except ValueError:  # pragma: no cover - defensive
                    pass
            _dispatch(group, clock.monotonic(), None)
            raise

    def _undo(self, waiter: _Waiter) -> None:
        self._in_flight -= waiter.units
        if self._bucket is not None:
            self._bucket.give(1.0)
        if self._tbucket is not None and waiter.tokens:
            self._tbucket.give(waiter.tokens)
        pool = self._pool
        if pool is not None:
            pool._in_flight -= waiter.pool_units
            if pool._bucket is not None:
                pool._bucket.give(1.0)
            if pool._tbucket is not None and waiter.tokens:
                pool._tbucket.give(waiter.tokens)

    # -- release -------------------------------------------------------------------------

    def _release_locked(self, permit: Permit) -> None:
        if permit._released:
            return
        permit._released = True
        self._in_flight -= permit.units
        if isinstance(permit, _PooledPermit) and self._pool is not None:
            self._pool._in_flight -= permit.pool_units

    def _release(self, permit: Permit) -> None:
        group = self._group
        with group.lock:
            self._release_locked(permit)
            if group.orphans:
                _drain_orphans(group)
            if group.queue:
                _dispatch(group, self.clock.monotonic(), None)
        for fn in self._listeners:
            fn()

    def _release_from_gc(self, permit: Permit) -> None:
        group = self._group
        # Never block in a finalizer: the collector may run while this very thread
        # holds the lock. Hand the permit to the next lock holder instead.
        if group.lock.acquire(blocking=False):
            try:
                self._release_locked(permit)
                if group.queue:
                    _dispatch(group, self.clock.monotonic(), None)
            finally:
                group.lock.release()
        else:
            group.orphans.append(permit)

    def _settle(self, permit: Permit, diff: int) -> None:
        group = self._group
        with group.lock:
            for lim in (self, self._pool):
                if lim is None or lim._tbucket is None:
                    continue
                if diff > 0:
                    lim._tbucket.debit(diff)
                else:
                    lim._tbucket.give(-diff)
            if diff < 0 and group.queue:
                _dispatch(group, self.clock.monotonic(), None)

    # -- observation -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Concurrency units held now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Threads waiting for admission to this limiter now."""
        return self._queued

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
                queued=self._queued,
                max_concurrent=self._max,
                requests_per_minute=self._rpm,
                burst=self._burst or 1,
                min_interval=self._interval,
                tokens_per_minute=self._tpm,
                tokens=None if self._bucket is None else self._bucket.available(now),
                llm_tokens=(None if self._tbucket is None else self._tbucket.available(now)),
                cooldown_remaining=max(0.0, self._cool_until - now),
                next_start_in=next_start,
            )

    def limits(self) -> dict[str, Any]:
        """The current limits as keyword arguments (what :meth:`update` takes)."""
        return {
            "max_concurrent": self._max,
            "requests_per_minute": self._rpm,
            "burst": self._burst,
            "min_interval": self._interval,
            "tokens_per_minute": self._tpm,
            "margin": self._margin,
        }

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.limits().items() if v not in (None, 0.0)]
        if self.key:
            parts.insert(0, f"key={self.key!r}")
        return (
            f"<MemoryLimiter {' '.join(parts) or 'unlimited'} "
            f"in_flight={self._in_flight} queued={self._queued}>"
        )


class _PooledPermit(Permit):
    """A permit that also holds units of the member's pool."""

    __slots__ = ("pool_units",)

    def __init__(self, owner: MemoryLimiter, units: int, tokens: int, pool_units: int) -> None:
        super().__init__(owner, units, tokens)
        self.pool_units = pool_units


def _drain_orphans(group: _Group) -> None:
    """Release permits whose finalizer could not take the lock (lock held)."""
    while group.orphans:
        permit = group.orphans.popleft()
        owner = permit._owner
        if isinstance(owner, MemoryLimiter):
            owner._release_locked(permit)
