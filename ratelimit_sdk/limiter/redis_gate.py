"""Stage 3b (admission control), shared backend: this process's own count of units held.

Part of :mod:`.redis` (read that first). A :class:`ProcessGate` counts the
concurrency units this process holds for one limiter, whichever path admitted
them: leases in Redis and permits of the local fall-back limiter together. No
admission in this process, on either path, takes it past ``max_concurrent``:

* while Redis hangs or is down (policy ``"local"``), the fall-back limiter starts
  with the permits still held on Redis counted as in flight;
* when Redis answers again, permits taken locally stay counted until released,
  so local holders + Redis holders of this process never exceed the limit, and
  threads waiting here for room move back to the Redis path;
* after a Redis restart that lost the leases (until the lease thread writes
  them back), Redis alone would let this process take too many.

Waiters are served first come, first served. In normal operation only the
leader of the Redis line (:mod:`.redis_wait`) ever takes from the gate, and it
blocks only when this process alone holds the whole limit (when Redis would say
"wait for a release" anyway). Costs no round trip.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from enum import Enum

from ..clock import Clock

__all__ = ["GateResult", "ProcessGate"]

#: Longest single sleep of a waiter (a release by a finalizer cannot always notify).
_SLICE = 0.5


class GateResult(Enum):
    """How :meth:`ProcessGate.take` ended."""

    TAKEN = "taken"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    CLOSED = "closed"
    ABORTED = "aborted"  # the caller's ``abort()`` became true (e.g. Redis is back)


class ProcessGate:
    """Units this process holds for one limiter, on Redis and locally; never above the limit.

    ``limit()``: the current ``max_concurrent`` (None: no concurrency limit).
    Thread-safe. Its lock is reentrant (a permit collected while this thread is
    inside the gate can still be released) and is never held across a call to Redis.
    """

    def __init__(self, limit: Callable[[], int | None]) -> None:
        self._limit = limit
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[object] = deque()
        self.held = 0
        self.closed = False

    def _fits(self, units: int) -> bool:
        limit = self._limit()
        return limit is None or self.held + units <= limit

    def try_take(self, units: int) -> bool:
        """Take ``units`` now if they fit and nobody waits ahead; else False."""
        with self._cond:
            if self.closed or self._queue or not self._fits(units):
                return False
            self.held += units
            return True

    def take(
        self,
        units: int,
        *,
        clock: Clock,
        deadline: float | None,
        cancel: threading.Event | None = None,
        abort: Callable[[], bool] | None = None,
    ) -> GateResult:
        """Wait (first come, first served) until ``units`` fit, then take them.

        ``deadline``: on ``clock``'s monotonic time (None: no limit). ``abort``
        is checked at each wake-up (:meth:`wake_all` wakes everyone).
        """
        with self._cond:
            if not self.closed and not self._queue and self._fits(units):
                self.held += units
                return GateResult.TAKEN
            me = object()
            self._queue.append(me)
            try:
                for _ in range(1_000_000):
                    if self.closed:
                        return GateResult.CLOSED
                    if cancel is not None and cancel.is_set():
                        return GateResult.CANCELLED
                    if abort is not None and abort():
                        return GateResult.ABORTED
                    if self._queue[0] is me and self._fits(units):
                        self.held += units
                        return GateResult.TAKEN
                    now = clock.monotonic()
                    if deadline is not None and now >= deadline:
                        return GateResult.TIMEOUT
                    wait = _SLICE if deadline is None else min(_SLICE, deadline - now)
                    clock.wait(self._cond, wait)
                return GateResult.TIMEOUT  # pragma: no cover - bounded loop
            finally:
                self._queue.remove(me)
                self._cond.notify_all()

    def free(self, units: int) -> None:
        """Give back ``units`` (a permit of either path was released)."""
        with self._cond:
            self.held -= units
            self._cond.notify_all()

    def wake_all(self) -> None:
        """Wake every waiter (cancel events, ``abort``, changed limits are looked at again)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Later takes fail; waiters return CLOSED."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
