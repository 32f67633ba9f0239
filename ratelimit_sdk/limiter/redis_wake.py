"""Stage 3b (admission control), shared backend: the local line of waiters and their wake-ups.

Part of :mod:`.redis` (read that first). Threads of one process wait for
admission in a local first-come-first-served line (``_queue`` of ``_Waiter``);
only the first of them, the leader, talks to Redis (:mod:`._redis_wait`). This
layer holds that line and how its leader is woken:

* ``_wake``: a wake-up arrived ("r" a permit was freed, "q" the line in Redis
  moved, "c" the limits changed); a leader sleeping on a timer only cares about "c";
* ``_listen``: a daemon thread subscribed to the limiter's channel (and its
  pool's) that relays wake-ups published by any process, started when a leader
  first has to wait, gone after ``_LISTENER_IDLE`` seconds with nobody waiting;
  it reconnects with a growing pause when Redis drops it;
* the release listeners of :meth:`~.redis.RedisLimiter.add_listener`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..clock import SYSTEM_CLOCK
from ._redis_core import _RedisCore
from ._redis_scripts import _LISTENER_IDLE, _log, _text


class _Waiter:
    """One thread of this process waiting for admission."""

    __slots__ = ("arrival", "cond", "id", "watch_cfg")

    def __init__(self, arrival: float) -> None:
        self.cond: threading.Condition | None = None  # made when it first has to wait
        self.arrival = arrival
        self.id = os.urandom(10).hex()
        self.watch_cfg = False  # sleeping on a timer: only a limits change should wake it


class _RedisWakeups(_RedisCore):
    """The local line of waiters and the wake-up listener (a base class of RedisLimiter)."""

    def _init_wakeups(self) -> None:
        """Set up this layer's state (once, from ``RedisLimiter.__init__``, after ``_lock``)."""
        self._queue: deque[_Waiter] = deque()  # this process's waiters; the first one leads
        self._gen_any = 0  # wake-ups heard so far (a leader compares before it sleeps)
        self._gen_cfg = 0  # ... of them, limit changes
        self._listeners: tuple[Callable[[], None], ...] = ()  # add_listener() callbacks
        self._listener: threading.Thread | None = None  # the listener thread, while it runs
        self._listening = threading.Event()  # set while subscribed

    def _cond(self, w: _Waiter) -> threading.Condition:
        """The waiter's condition (on the limiter's lock), made on first use. Lock held."""
        if w.cond is None:
            w.cond = threading.Condition(self._lock)
        return w.cond

    @staticmethod
    def _notify(w: _Waiter) -> None:
        """Wake ``w`` if it sleeps (one that never slept re-checks before it does). Lock held."""
        if w.cond is not None:
            w.cond.notify()

    def _channels(self) -> list[str]:
        if self._pool is None:
            return [self._channel]
        return [self._channel, self._pool._channel]

    def _start_listener(self) -> None:
        with self._lock:
            if self._listener is not None or self._closed:
                return
            self._listener = threading.Thread(
                target=self._listen, name=f"ratelimit_sdk-wake-{self.key}", daemon=True
            )
            self._listener.start()

    def _wake(self, kind: str) -> None:
        """A wake-up arrived ('r' freed, 'q' line moved, 'c' limits changed): tell the leader."""
        with self._lock:
            self._gen_any += 1
            if kind == "c":
                self._gen_cfg += 1
            if self._queue:
                lead = self._queue[0]
                if kind == "c" or not lead.watch_cfg:
                    self._notify(lead)

    def _listen(self) -> None:
        """Listener thread: relay the limiter's wake-up channel(s) to the waiting leader."""
        channels = self._channels()
        idle_since: float | None = None
        pause = 0.05
        try:
            while True:
                client: Any = self._client  # redis-py leaves pubsub() untyped
                pubsub = client.pubsub()
                try:
                    pubsub.subscribe(*channels)
                    confirmed = 0
                    while True:
                        msg = pubsub.get_message(timeout=0.5)
                        if msg is not None:
                            if msg["type"] == "subscribe":
                                confirmed += 1
                                if confirmed == len(channels):
                                    pause = 0.05
                                    self._listening.set()
                                    self._wake("c")  # anything sent before now was missed
                            elif msg["type"] == "message":
                                kind = _text(msg["data"])
                                self._wake(kind)
                                if kind == "r" and self._listeners:
                                    self._tell_listeners()
                        now = SYSTEM_CLOCK.monotonic()
                        with self._lock:
                            if self._closed:
                                return
                            if self._queue:
                                idle_since = None
                            elif idle_since is None:
                                idle_since = now
                            elif now - idle_since > _LISTENER_IDLE:
                                return
                except Exception as exc:  # redis errors, or a connection closed under us
                    self._listening.clear()
                    _log.debug("wake-up listener for %r lost Redis: %s", self.key, exc)
                finally:
                    with contextlib.suppress(Exception):
                        pubsub.close()
                with self._lock:
                    if self._closed:
                        return
                SYSTEM_CLOCK.sleep(pause)
                pause = min(2.0, pause * 2)
        finally:
            with self._lock:
                self._listener = None
                self._listening.clear()

    def _tell_listeners(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:  # a listener must not break a release
                _log.exception("release listener of limiter %r failed", self.key)
