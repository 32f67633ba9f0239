"""Stage 3b (admission control), shared backend: the local line of waiters and their wake-ups.

Part of :mod:`.redis` (read that first). Threads of one process wait for
admission in a local first-come-first-served line (:class:`WaitLine`, of
:class:`Waiter`); only the first of them, the leader, talks to Redis
(:mod:`.redis_wait`). This module holds that line and how its leader is woken:

* :meth:`WaitLine.wake`: a wake-up arrived ("r" a permit was freed, "q" the line
  in Redis moved, "c" the limits changed). The scripts name the ticket at the
  head of the Redis line (``"r <id>"``), so only the process whose leader holds
  that ticket looks again; a leader sleeping on a timer only cares about "c";
* a daemon listener thread subscribed to the limiter's channel (and its pool's)
  that relays wake-ups published by any process, started when a leader first
  has to wait (or for good, with :meth:`WaitLine.keep_listening`, which the
  shared breaker uses), gone after ``LISTENER_IDLE`` seconds with nobody waiting;
  it reconnects with a growing pause when Redis drops it;
* "b" messages (a shared breaker changed state) are handed to ``on_breaker``;
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
from .redis_scripts import LISTENER_IDLE, LOG, text

__all__ = ["WaitLine", "Waiter"]


class Waiter:
    """One thread of this process waiting for admission."""

    __slots__ = ("arrival", "cond", "gen_any", "gen_cfg", "id", "ticketed", "watch_cfg")

    def __init__(self, arrival: float) -> None:
        self.cond: threading.Condition | None = None  # made when it first has to wait
        self.arrival = arrival
        self.id = os.urandom(10).hex()
        self.watch_cfg = False  # sleeping on a timer: only a limits change should wake it
        self.gen_any = 0  # wake-ups meant for it so far (it compares before it sleeps)
        self.gen_cfg = 0  # ... of them, limit changes
        self.ticketed = False  # its predecessor took its ticket in Redis for it (lock held)


class WaitLine:
    """One process's waiters for one limiter, and the listener that wakes their leader.

    ``lock`` guards the line; the admission loop waits on conditions made on it.
    Never held across a call to Redis.
    """

    def __init__(self, client: Any, channels: list[str], key: str) -> None:
        self.client = client
        self.channels = channels
        self.key = key
        self.lock = threading.Lock()
        self.queue: deque[Waiter] = deque()  # this process's waiters; the first one leads
        self.closed = False
        self.listening = threading.Event()  # set while subscribed
        self.release_listeners: tuple[Callable[[], None], ...] = ()  # add_listener()
        self.on_breaker: Callable[[str], None] | None = None  # "b" messages
        self.on_cfg: Callable[[], None] | None = None  # after a "c" wake-up (outside the lock)
        self._listener: threading.Thread | None = None  # the listener thread, while it runs
        self._keep = False  # stay subscribed with nobody waiting (a shared breaker listens)

    # -- the line -----------------------------------------------------------------------

    def cond(self, w: Waiter) -> threading.Condition:
        """The waiter's condition (on :attr:`lock`), made on first use. Lock held."""
        if w.cond is None:
            w.cond = threading.Condition(self.lock)
        return w.cond

    @staticmethod
    def notify(w: Waiter) -> None:
        """Wake ``w`` if it sleeps (one that never slept re-checks before it does). Lock held."""
        if w.cond is not None:
            w.cond.notify()

    def wake(self, kind: str, target: str | None = None) -> None:
        """A wake-up arrived ('r' freed, 'q' line moved, 'c' limits changed): tell the leader.

        ``target``: the ticket the message names (the head of the Redis line);
        only that waiter of this process counts it. ``None``: every waiter does.
        A "c" also calls ``on_cfg`` (the process gate wakes its waiters).
        """
        self._wake(kind, target)
        fn = self.on_cfg
        if kind == "c" and fn is not None:
            fn()

    def _wake(self, kind: str, target: str | None) -> None:
        with self.lock:
            for i, w in enumerate(self.queue):
                if target is not None and w.id != target:
                    continue
                w.gen_any += 1
                if kind == "c":
                    w.gen_cfg += 1
                if i == 0 and (kind == "c" or not w.watch_cfg):
                    self.notify(w)
                if target is not None:
                    return

    def wake_all(self) -> None:
        """Wake every waiter so it re-checks its cancel event and deadline."""
        with self.lock:
            for w in self.queue:
                self.notify(w)

    def close(self) -> None:
        """Mark the line closed and wake every waiter (they raise AcquireTimeout)."""
        with self.lock:
            self.closed = True
            for w in self.queue:
                self.notify(w)

    # -- the listener thread -----------------------------------------------------------------

    def keep_listening(self) -> None:
        """Stay subscribed even with nobody waiting (until closed), and start now."""
        self._keep = True
        self.start_listener()

    def start_listener(self) -> None:
        """Start the listener thread unless it runs (or the line is closed)."""
        with self.lock:
            if self._listener is not None or self.closed:
                return
            self._listener = threading.Thread(
                target=self._listen, name=f"ratelimit_sdk-wake-{self.key}", daemon=True
            )
            self._listener.start()

    def _message(self, data: Any) -> None:
        kind, _, rest = text(data).partition(" ")
        if kind == "b":
            fn = self.on_breaker
            if fn is not None:
                fn(rest)
            return
        self.wake(kind, rest or None)
        if kind == "r" and self.release_listeners:
            self.tell_listeners()

    def _listen(self) -> None:
        """Listener thread: relay the limiter's wake-up channel(s) to the waiting leader."""
        channels = self.channels
        idle_since: float | None = None
        pause = 0.05
        try:
            while True:
                pubsub = self.client.pubsub()
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
                                    self.listening.set()
                                    self.wake("c")  # anything sent before now was missed
                            elif msg["type"] == "message":
                                self._message(msg["data"])
                        now = SYSTEM_CLOCK.monotonic()
                        with self.lock:
                            if self.closed:
                                return
                            if self.queue or self._keep:
                                idle_since = None
                            elif idle_since is None:
                                idle_since = now
                            elif now - idle_since > LISTENER_IDLE:
                                return
                except Exception as exc:  # redis errors, or a connection closed under us
                    self.listening.clear()
                    LOG.debug("wake-up listener for %r lost Redis: %s", self.key, exc)
                finally:
                    with contextlib.suppress(Exception):
                        pubsub.close()
                with self.lock:
                    if self.closed:
                        return
                SYSTEM_CLOCK.sleep(pause)
                pause = min(2.0, pause * 2)
        finally:
            with self.lock:
                self._listener = None
                self.listening.clear()

    # -- release listeners ---------------------------------------------------------------------

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after releases (this process's, and others' that are heard)."""
        with self.lock:
            self.release_listeners = (*self.release_listeners, fn)

    def tell_listeners(self) -> None:
        """Call the release listeners (outside the lock); one that fails is logged."""
        for fn in self.release_listeners:
            try:
                fn()
            except Exception:  # a listener must not break a release
                LOG.exception("release listener of limiter %r failed", self.key)
