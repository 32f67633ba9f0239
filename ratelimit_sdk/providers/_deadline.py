"""Transport stage (4), the deadline: one watchdog thread that ends an exchange on time.

Connect and read timeouts bound each socket operation, not the exchange: a server that
sends one header byte every 0.3 s, a body one byte every 0.5 s, or an event stream of
keep-alive comments never trips them. A :class:`Watch` bounds the whole exchange. It is
armed before the request goes out; when its time comes, the watchdog shuts the
connection's socket down, which ends a read blocked anywhere in the HTTP stack (urllib3
parsing headers, the body reader, the event-stream reader) with an EOF or an error. The
provider then sees :attr:`Watch.fired` and raises :meth:`Watch.timeout` instead of
whatever the broken read said.

How the watch finds the socket: providers' sessions use :class:`WatchedAdapter`, whose
connection pools attach the connection they hand out to the watch of the exchange
running in this thread (:func:`watching`), and detach it when it goes back to the pool.
So a watch only ever shuts down a connection its own exchange holds, never one that
another request took from the pool in the meantime.

Cost on the fast path: a lock and a heap push to arm, a lock to attach, detach and
finish; the watchdog thread is not woken unless the new watch is due before every other
one. Finished watches stay in the heap until they are due or the heap is compacted.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import socket
import threading
import time
from typing import Any

import requests.adapters
from urllib3 import PoolManager, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..errors import ProviderTimeout
from ._sent import request_sent

__all__ = [
    "PHASE_ANSWER",
    "PHASE_BODY",
    "PHASE_FIRST_CHUNK",
    "PHASE_IDLE",
    "Watch",
    "WatchedAdapter",
    "arm",
    "watching",
]

#: The phases an exchange goes through, as a timeout's message words them.
PHASE_ANSWER = "waiting for the answer"
PHASE_BODY = "reading the body"
PHASE_FIRST_CHUNK = "waiting for the first text chunk"
PHASE_IDLE = "idle"

#: Compact the heap once this many finished watches wait in it (and they are half of it).
_COMPACT_AT = 1024
#: The watchdog looks at least this often (seconds); it ends after one whole look with
#: nothing to watch and nothing armed (the next watch starts it again).
_TICK = 0.5

_lock = threading.Lock()
_current = threading.local()


class Watch:
    """The time limit of one exchange. Thread-safe; made by :func:`arm`.

    ``due`` is on :func:`time.monotonic`'s scale. :meth:`extend` moves it (for a stream's
    idle timeout), :meth:`pause` and :meth:`resume` stop and restart that clock while
    the consumer holds a chunk, :meth:`finish` ends the watch. Once :attr:`fired`, the
    exchange's socket is shut down and the exchange must end with :meth:`timeout`.

    Moving ``due`` later needs no lock and no heap push: the watchdog finds the new
    time when the old one comes up, and looks again then.
    """

    __slots__ = ("_conn", "_finished", "_sock", "budget", "due", "fired", "paused", "phase")

    def __init__(self, due: float, budget: float) -> None:
        self.due = due
        self.budget = budget
        self.phase = PHASE_ANSWER
        self.fired = False
        self.paused = False
        self._finished = False
        self._conn: Any = None
        self._sock: socket.socket | None = None

    @property
    def active(self) -> bool:
        """True until the watch fired or finished."""
        return not (self.fired or self._finished)

    def extend(self, seconds: float, phase: str) -> None:
        """Make the watch due ``seconds`` from now, in ``phase`` (e.g. a stream's idle time)."""
        due = time.monotonic() + seconds
        earlier = due < self.due
        self.due = due
        self.budget = seconds
        self.phase = phase
        if earlier:
            _WATCHDOG.push(self, new=False)

    def pause(self) -> None:
        """Stop the clock (a stream's consumer holds a chunk: its own time is not idle)."""
        self.paused = True

    def resume(self) -> None:
        """Restart the clock: due :attr:`budget` seconds from now."""
        self.due = time.monotonic() + self.budget
        self.paused = False

    def finish(self) -> bool:
        """End the watch (idempotent); return whether it fired first."""
        with _lock:
            if self._finished:
                return self.fired
            self._finished = True
            conn, self._conn = self._conn, None
            self._sock = None
            if conn is not None and getattr(conn, "watch", None) is self:
                conn.watch = None
            if not self.fired:
                _WATCHDOG.finished()
            return self.fired

    def timeout(self, provider: str) -> ProviderTimeout:
        """The error that ends an exchange whose watch fired."""
        if self.phase == PHASE_IDLE:
            reason = f"stream idle for more than {self.budget:.1f} s (no text)"
        else:
            reason = f"deadline passed while {self.phase} after {self.budget:.1f} s"
        return ProviderTimeout(f"{provider}: {reason}", provider=provider, reason=reason)

    # -- called with _lock held ------------------------------------------------------

    def _attach(self, conn: Any) -> None:
        self._conn = conn
        # Kept apart from the connection: http.client drops ``conn.sock`` as soon as the
        # answer says ``Connection: close``, and the response reads on from its file.
        self._sock = getattr(conn, "sock", None)
        conn.watch = self
        if self.fired:
            _shut(self._sock)

    def _connected(self, conn: Any) -> None:
        if self._conn is conn:
            self._sock = getattr(conn, "sock", None)
            if self.fired:
                _shut(self._sock)

    def _fire(self) -> None:
        self.fired = True
        _WATCHDOG._active -= 1
        conn = self._conn
        if conn is not None and getattr(conn, "watch", None) is self:
            _shut(self._sock)

    def __repr__(self) -> str:
        state = "fired" if self.fired else "finished" if self._finished else "active"
        return f"<Watch {self.phase!r} {state}>"


def _shut(sock: socket.socket | None) -> None:
    """Shut the socket down (both ways): a read blocked on it returns at once."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        # socket.socket's own shutdown, also for an SSLSocket: its override would tear
        # down the TLS object under the reading thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread and a heap of watches by due time.

    The thread starts with the first watch and ends once a whole :data:`_TICK` went by
    with no watch active and none armed, so a client at rest leaves no thread behind.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(_lock)
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = itertools.count()
        self._wake_at = math.inf
        self._stale = 0
        self._active = 0
        self._armed = 0
        self._thread: threading.Thread | None = None

    def push(self, watch: Watch, *, new: bool = True) -> None:
        with _lock:  # the condition's own lock, without Condition.__enter__'s extra frame
            heapq.heappush(self._heap, (watch.due, next(self._seq), watch))
            if new:
                self._active += 1
                self._armed += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ratelimit_sdk-deadline", daemon=True
                )
                self._thread.start()
            elif watch.due < self._wake_at:
                self._cond.notify()

    def finished(self) -> None:
        """Count one more finished watch left in the heap (called with ``_lock`` held)."""
        self._active -= 1
        self._stale += 1
        if self._stale >= _COMPACT_AT and self._stale * 2 >= len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].active]
            heapq.heapify(self._heap)
            self._stale = 0

    def _run(self) -> None:
        armed = -1
        with self._cond:
            while True:
                heap = self._heap
                now = time.monotonic()
                while heap and heap[0][0] <= now:
                    _, _, watch = heapq.heappop(heap)
                    if not watch.active:
                        self._stale = max(0, self._stale - 1)
                    elif watch.paused:  # look again once a whole budget could have passed
                        heapq.heappush(heap, (now + watch.budget, next(self._seq), watch))
                    elif watch.due > now:  # extended since it was pushed
                        heapq.heappush(heap, (watch.due, next(self._seq), watch))
                    else:
                        watch._fire()
                if self._active <= 0 and self._armed == armed:
                    self._heap = []  # nothing in it is active
                    self._stale = 0
                    self._wake_at = math.inf
                    self._thread = None
                    return
                armed = self._armed
                self._wake_at = min(heap[0][0] if heap else math.inf, now + _TICK)
                self._cond.wait(max(self._wake_at - now, 0.001))

    def _after_fork(self) -> None:
        """In a forked child: no watchdog thread yet, and nothing to watch."""
        self._cond = threading.Condition(_lock)
        self._heap = []
        self._wake_at = math.inf
        self._stale = 0
        self._active = 0
        self._armed = 0
        self._thread = None


_WATCHDOG = _Watchdog()


def _reset_after_fork() -> None:  # pragma: no cover - runs in a forked child
    global _lock
    _lock = threading.Lock()
    _WATCHDOG._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def arm(time_left: float | None) -> Watch | None:
    """A watch due ``time_left`` seconds from now; ``None`` for no limit (None, inf, NaN)."""
    if time_left is None or not math.isfinite(time_left):
        return None
    watch = Watch(time.monotonic() + max(time_left, 0.0), max(time_left, 0.0))
    _WATCHDOG.push(watch)
    return watch


def watching(watch: Watch | None) -> Watch | None:
    """Attach the connections this thread takes from a pool to ``watch`` from now on.

    Returns the watch it replaces; hand that back to :func:`watching` when the request
    is out: ``before = watching(w)``, then ``try: ... finally: watching(before)``.
    """
    before: Watch | None = getattr(_current, "watch", None)
    _current.watch = watch
    return before


# -- the connection pools that attach their connections --------------------------------


def _attach_current(conn: Any) -> None:
    watch: Watch | None = getattr(_current, "watch", None)
    with _lock:
        if watch is not None and not watch._finished:
            watch._attach(conn)
        else:
            conn.watch = None


def _detach(conn: Any) -> None:
    if conn is not None and getattr(conn, "watch", None) is not None:
        with _lock:
            conn.watch = None


def _after_connect(conn: Any) -> None:
    """A new socket: if its watch fired while connecting, shut it down at once."""
    watch = getattr(conn, "watch", None)
    if watch is not None:
        with _lock:
            if conn.watch is watch:
                watch._connected(conn)


class _WatchedHTTPConnection(HTTPConnection):
    watch: Watch | None = None

    def connect(self) -> None:
        super().connect()
        _after_connect(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        request_sent()


class _WatchedHTTPSConnection(HTTPSConnection):
    watch: Watch | None = None

    def connect(self) -> None:
        super().connect()
        _after_connect(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        request_sent()


class _WatchedPool:
    """Mixin for urllib3 pools: a connection handed out belongs to this thread's watch."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        _attach_current(conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        _detach(conn)
        super()._put_conn(conn)  # type: ignore[misc]


class _WatchedHTTPConnectionPool(_WatchedPool, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(_WatchedPool, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPConnectionPool,
    "https": _WatchedHTTPSConnectionPool,
}


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` whose pools attach their connections to the running watch.

    Plain and HTTP(S)-proxied connections are watched; a SOCKS proxy keeps its own pools
    (there the body reader's own checks still end the exchange, later).
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Build the pool manager, with the watched pool classes."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> PoolManager:
        """The proxy's manager; an HTTP(S) proxy's uses the watched pool classes."""
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is ProxyManager:
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager
