"""Stage 3b (admission control), shared backend: waiting for admission across processes.

Part of :mod:`.redis` (read that first). How an ``acquire`` is decided:

* ``_admit``: threads of this process queue locally, first come first served
  (:mod:`._redis_wake`); while Redis is unreachable under policy ``"local"``,
  the in-process fall-back limiter decides instead;
* ``_lead``: the first waiter asks the acquire script until admitted. The script
  answers "admitted", "wait this long" or "wait for a release", and keeps a
  *ticket* for the waiter in a Redis queue ordered by arrival, so processes are
  served in arrival order too. The leader sleeps the time the script said, or
  until a wake-up, never longer than ``_slice``, so a lost message costs a
  fraction of a second, not a hang;
* if the leader gives up (timeout, cancel, close, an exception) while Redis may
  have admitted it or still holds its ticket, it gives both back.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from ..errors import AcquireTimeout, BackendError, RequestTooLargeError
from ._redis_leases import _RedisLeases
from ._redis_scripts import _MAX_SLICE, _NCFG, _Down, _text
from ._redis_wake import _Waiter
from .base import Permit


class _RedisWaiting(_RedisLeases):
    """Admission: the local line and its leader asking Redis (a base class of RedisLimiter)."""

    def _init_waiting(self) -> None:
        """Set up this layer's state (once, from ``RedisLimiter.__init__``)."""
        self._slice = min(_MAX_SLICE, max(0.05, self.lease_timeout / 3.0))
        self._ticket_us = int((3.0 * self._slice + 1.0) * 1e6)  # outlives 3 missed looks
        self._offset: float | None = None  # server seconds minus local monotonic seconds

    def _check_request(self, units: int, tokens: int) -> None:
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a whole number >= 1, got {units!r}")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be a whole number >= 0, got {tokens!r}")
        mc = self._limits["max_concurrent"]
        if mc is not None and units > mc:
            raise RequestTooLargeError(
                f"units={units} can never be admitted: max_concurrent is {mc}"
            )
        for lim in (self, self._pool):
            tpm = None if lim is None else lim._limits["tokens_per_minute"]
            if tpm is not None and tokens > tpm:
                raise RequestTooLargeError(
                    f"tokens={tokens} can never be admitted: tokens_per_minute is {tpm:g}"
                )

    def _timeout_error(self, start: float, why: str = "") -> AcquireTimeout:
        waited = self.clock.monotonic() - start
        if why:
            return AcquireTimeout(why, waited=waited, key=self.key)
        return AcquireTimeout(
            f"timed out after {waited:.3f}s waiting for admission to {self.key!r}",
            waited=waited,
            key=self.key,
        )

    def _admit(
        self,
        units: int,
        tokens: int,
        timeout: float | None,
        *,
        wait: bool,
        cancel: threading.Event | None = None,
    ) -> Permit:
        clock = self.clock
        start = clock.monotonic()
        deadline = None if timeout is None else start + timeout
        if self._closed:
            raise self._timeout_error(start, "limiter is closed")
        if self._orphans:
            self._drain_orphans()
        if not self._use_local():
            w = _Waiter(start)
            with self._lock:
                if self._closed:
                    raise self._timeout_error(start, "limiter is closed")
                if not wait and self._queue:
                    raise self._timeout_error(start)  # threads of this process wait ahead
                self._queue.append(w)
            try:
                with self._lock:
                    while self._queue[0] is not w:
                        if self._closed:
                            raise self._timeout_error(start, "limiter is closed")
                        if cancel is not None and cancel.is_set():
                            raise self._timeout_error(start, "cancelled")
                        now = clock.monotonic()
                        if deadline is not None and now >= deadline:
                            raise self._timeout_error(start)
                        clock.wait(self._cond(w), None if deadline is None else deadline - now)
                permit = self._lead(w, units, tokens, start, deadline, wait=wait, cancel=cancel)
            finally:
                with self._lock:
                    self._queue.remove(w)
                    if self._queue:
                        self._notify(self._queue[0])
            if permit is not None:
                return permit
        # Redis is unreachable and the policy is "local".
        local = self._fallback()
        if not wait:
            p = local.try_acquire(units=units, tokens=tokens)
            if p is None:
                raise self._timeout_error(start)
            return p
        remaining = None if deadline is None else max(0.0, deadline - clock.monotonic())
        extra: dict[str, Any] = {} if cancel is None else {"cancel": cancel}
        return local.acquire(remaining, units=units, tokens=tokens, **extra)

    def _acquire_args(self, w: _Waiter, units: int, tokens: int, wait: bool) -> list[Any]:
        offset = self._offset
        arrival = 0 if offset is None else int((w.arrival + offset) * 1e6)
        args: list[Any] = [
            w.id,
            units,
            tokens,
            self._lease_us,
            self._ticket_us,
            arrival,
            "w" if wait else "t",
            *self._side_args(),
        ]
        if self._pool is not None:
            args += [self._pool_units, *self._pool._side_args()]
        return args

    def _all_keys(self, n: int = 5) -> list[str]:
        keys = list(self._keys[:n])
        if self._pool is not None:
            keys += self._pool._keys[:n]
        return keys

    def _lead(
        self,
        w: _Waiter,
        units: int,
        tokens: int,
        start: float,
        deadline: float | None,
        *,
        wait: bool,
        cancel: threading.Event | None,
    ) -> Permit | None:
        """The first waiter of this process: ask Redis until admitted (None: go local)."""
        clock = self.clock
        keys = self._all_keys()
        queued_in_redis = False
        in_call = False
        try:
            while True:
                with self._lock:
                    if self._closed:
                        raise self._timeout_error(start, "limiter is closed")
                    if cancel is not None and cancel.is_set():
                        raise self._timeout_error(start, "cancelled")
                    gen_any, gen_cfg = self._gen_any, self._gen_cfg
                args = self._acquire_args(w, units, tokens, wait)
                t0 = clock.monotonic()
                in_call = True
                try:
                    reply = self._run("acquire", keys, args)
                except _Down as exc:
                    in_call = False
                    self._on_down(exc, "acquiring")
                    return None
                in_call = False
                t1 = clock.monotonic()
                self._after_success()
                status = int(reply[0])
                self._offset = float(_text(reply[2])) / 1e6 - (t0 + t1) / 2.0
                self._absorb(reply[3 : 3 + _NCFG])
                if self._pool is not None:
                    self._pool._absorb(reply[3 + _NCFG : 3 + 2 * _NCFG])
                if status == 1:
                    return self._granted(w.id, units, tokens)
                queued_in_redis = wait
                if status == -2:
                    raise RequestTooLargeError(
                        f"units={units} tokens={tokens} can never be admitted by the limits "
                        f"now stored for {self.key!r}"
                    )
                now = clock.monotonic()
                if not wait or (deadline is not None and now >= deadline):
                    raise self._timeout_error(start)
                if not self._listening.is_set():
                    self._start_listener()
                    limit = 1.0 if deadline is None else min(1.0, deadline - now)
                    if self._listening.wait(limit):
                        continue  # now subscribed: look again, a wake-up may have been missed
                    now = clock.monotonic()
                if status == 0:
                    # Counted from when the request left: the next one then reaches Redis
                    # about when the wait ends there (a reply's trip is not slept twice).
                    wait_s = float(_text(reply[1])) / 1e6
                    sleep = min(t0 + wait_s - now, self._slice)
                else:
                    sleep = self._slice
                if deadline is not None:
                    sleep = min(sleep, deadline - now)
                with self._lock:
                    w.watch_cfg = status == 0
                    # A timer waits for limit changes only; a release wait for anything.
                    missed = (
                        (self._gen_cfg != gen_cfg) if status == 0 else (self._gen_any != gen_any)
                    )
                    cancelled = cancel is not None and cancel.is_set()
                    if not (missed or cancelled or self._closed) and sleep > 0:
                        clock.wait(self._cond(w), sleep)
        except BaseException:
            if in_call:  # we cannot know whether Redis admitted us: give back what it might hold
                self._send_release(f"{w.id}|{units}", f"{w.id}|{self._pool_units}")
            if queued_in_redis or in_call:
                with contextlib.suppress(_Down, BackendError):
                    self._run("cancel", self._cancel_keys(), [w.id, *self._channels()])
            raise

    def _cancel_keys(self) -> list[str]:
        keys = [self._keys[3], self._keys[4]]
        if self._pool is not None:
            keys += [self._pool._keys[3], self._pool._keys[4]]
        return keys
