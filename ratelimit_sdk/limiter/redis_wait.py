"""Stage 3b (admission control), shared backend: waiting for admission across processes.

Part of :mod:`.redis` (read that first). How an ``acquire`` is decided
(:class:`Admission`):

* :meth:`Admission.admit`: threads of this process queue locally, first come
  first served (:class:`~.redis_wake.WaitLine`); while Redis is unreachable under
  policy ``"local"``, the in-process fall-back limiter decides instead;
* the leader (the first waiter) asks the acquire script until admitted. The
  script answers "admitted", "wait this long" or "wait for a release" (with the
  cooldown left and the breaker fields), and keeps a *ticket* for the waiter in a
  Redis queue ordered by arrival, so processes are served in arrival order too.
  The leader sleeps the time the script said, or until a wake-up naming its
  ticket, never longer than the slice, so a lost message costs a fraction of a
  second, not a hang;
* a try (``timeout=0``, :meth:`Admission.admit` with ``wait=False``) is one call
  and returns the refusal (:class:`Refusal`) instead of waiting;
* if the leader gives up (timeout, cancel, close, an exception) while Redis may
  have admitted it or still holds its ticket, it gives both back (when Redis did
  not answer: through the pending queue of :mod:`.redis_leases`, sent again when
  it answers);
* every call to Redis is bounded by the time left to the caller's deadline
  (at least ``MIN_CALL``), and a connection error is retried only while time is
  left: ``acquire(timeout=t)`` returns within about ``t`` however Redis hangs;
* both paths take their units from the process's gate
  (:class:`~.redis_gate.ProcessGate`) first: Redis leases and local permits of
  this process together never exceed ``max_concurrent``. A thread waiting there
  for local room goes back to the Redis path when Redis answers again.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..errors import AcquireTimeout, BackendError, RequestTooLargeError
from ._args import check_tokens, check_units
from .base import Permit
from .bucket import IDLE_COLD
from .memory import MemoryLimiter
from .redis_gate import GateResult
from .redis_leases import Leases
from .redis_scripts import (
    MAX_SLICE,
    MIN_CALL,
    NBRK,
    NCFG,
    OUTAGE_AFTER,
    SIDE_CALL,
    RedisDown,
    text,
)
from .redis_store import RedisStore
from .redis_wake import Waiter, WaitLine

__all__ = ["Admission", "Refusal"]

#: Where the limit fields start in an acquire reply (after status, wait, now, cooldown,
#: and the breaker fields).
_CFG_AT = 4 + NBRK


@dataclass(frozen=True)
class Refusal:
    """Why a try was not admitted: ``wait`` seconds (None: needs a release), cooldown left.

    ``cooldown`` is ``None`` when Redis was not asked (threads of this process wait
    ahead, or it is unreachable): the caller looks again if it needs to know.
    """

    wait: float | None
    cooldown: float | None
    window: float = 0.0


class Admission:
    """Deciding acquires for one Redis limiter: the local line's leader asking Redis.

    ``pool``: the pool's store, for a pool member; ``pool_units``: a callable giving
    the pool units each request holds now (the limiter's setting may change).
    """

    def __init__(
        self,
        store: RedisStore,
        line: WaitLine,
        leases: Leases,
        *,
        clock: Clock,
        lease_timeout: float,
        pool: RedisStore | None,
        pool_units: Callable[[], int],
        fallback: Callable[[], MemoryLimiter],
    ) -> None:
        self.store = store
        self.line = line
        self.leases = leases
        self.clock = clock
        self.pool = pool
        self.pool_units = pool_units
        self.fallback = fallback
        self.slice = min(MAX_SLICE, max(0.05, lease_timeout / 3.0))
        #: Whether a request came back since this process went idle (its connections
        #: exist); a cold admission gets more jitter allowance (see limiter/bucket.py).
        self.warm = False
        self._last_try = -float("inf")
        self.ticket_us = int((3.0 * self.slice + 1.0) * 1e6)  # outlives 3 missed looks
        self._offset: float | None = None  # server seconds minus local monotonic seconds

    def check_request(self, units: int, tokens: int) -> None:
        """Raise ConfigError / RequestTooLargeError for a request that can never be admitted."""
        check_units(units)
        check_tokens(tokens)
        mc = self.store.limits["max_concurrent"]
        if mc is not None and units > mc:
            raise RequestTooLargeError(
                f"units={units} can never be admitted: max_concurrent is {mc}"
            )
        for st in (self.store, self.pool):
            tpm = None if st is None else st.limits["tokens_per_minute"]
            if tpm is not None and tokens > tpm:
                raise RequestTooLargeError(
                    f"tokens={tokens} can never be admitted: tokens_per_minute is {tpm:g}"
                )
            for spec in () if st is None or not tokens else st.limits.get("windows") or ():
                kind, limit = next(iter(spec.items()))
                if kind != "requests" and tokens > limit:
                    raise RequestTooLargeError(
                        f"tokens={tokens} can never be admitted: a window allows "
                        f"{limit:g} {kind.replace('_', ' ')} per {spec['per']:g}s"
                    )

    def timeout_error(self, start: float, why: str = "") -> AcquireTimeout:
        """The AcquireTimeout of a wait that began at ``start`` (``why``: another reason)."""
        waited = self.clock.monotonic() - start
        key = self.store.key
        if why:
            return AcquireTimeout(why, waited=waited, key=key)
        return AcquireTimeout(
            f"timed out after {waited:.3f}s waiting for admission to {key!r}",
            waited=waited,
            key=key,
        )

    def admit(
        self,
        units: int,
        tokens: int,
        timeout: float | None,
        *,
        wait: bool,
        cancel: threading.Event | None = None,
    ) -> Permit | Refusal:
        """A permit, or (a try only) the refusal. Raises AcquireTimeout for a wait that ends.

        The fall-back limiter's refusal of a try while Redis is down is a Refusal too.
        """
        clock = self.clock
        line = self.line
        start = clock.monotonic()
        deadline = None if timeout is None else start + timeout
        if line.closed:
            raise self.timeout_error(start, "limiter is closed")
        if self.leases.has_orphans:
            self.leases.drain_orphans()
        for _ in range(1000):  # each turn ends by the deadline; Redis flapping is bounded too
            got = self._admit_once(units, tokens, start, deadline, wait=wait, cancel=cancel)
            if got is not None:
                return got
            if line.closed:
                raise self.timeout_error(start, "limiter is closed")
        raise self.timeout_error(start, "Redis kept failing and answering")  # pragma: no cover

    def _admit_once(
        self,
        units: int,
        tokens: int,
        start: float,
        deadline: float | None,
        *,
        wait: bool,
        cancel: threading.Event | None,
    ) -> Permit | Refusal | None:
        """One try by Redis, else by local limits (None: Redis came back meanwhile, again)."""
        clock = self.clock
        line = self.line
        if not self.store.use_local():
            probing = self.store.degraded  # this thread is the one to try Redis again
            w = Waiter(start)
            with line.lock:
                if line.closed:
                    raise self.timeout_error(start, "limiter is closed")
                if not wait and line.queue:
                    return Refusal(None, None)  # threads of this process wait ahead
                line.queue.append(w)
            led = False
            try:
                with line.lock:
                    while line.queue[0] is not w:
                        if line.closed:
                            raise self.timeout_error(start, "limiter is closed")
                        if cancel is not None and cancel.is_set():
                            raise self.timeout_error(start, "cancelled")
                        now = clock.monotonic()
                        if deadline is not None and now >= deadline:
                            raise self.timeout_error(start)
                        clock.wait(line.cond(w), None if deadline is None else deadline - now)
                led = True
                got = self._lead(
                    w, units, tokens, start, deadline, wait=wait, cancel=cancel, probing=probing
                )
            finally:
                with line.lock:
                    line.queue.remove(w)
                    orphan = w.ticketed and not led  # gave up holding a ticket it never used
                    if line.queue:
                        line.notify(line.queue[0])
                if orphan:
                    self._cancel([w.id])
            if got is not None:
                return got
        return self._local(units, tokens, start, deadline, wait=wait, cancel=cancel)

    def _local(
        self,
        units: int,
        tokens: int,
        start: float,
        deadline: float | None,
        *,
        wait: bool,
        cancel: threading.Event | None,
    ) -> Permit | Refusal | None:
        """Redis is unreachable and the policy is "local": the fall-back limiter decides.

        Room is taken from the gate first, so the units still held on Redis count.
        None: Redis answered again while this thread waited for room.
        """
        local = self.fallback()
        gate = self.store.gate
        if not wait:
            if not gate.try_take(units):
                return Refusal(None, None)
            try:
                p = local.try_acquire(units=units, tokens=tokens)
            except BaseException:
                gate.free(units)
                raise
            if p is None:
                gate.free(units)
                return Refusal(local.time_to_admit(units=units, tokens=tokens), None)
            return p
        store = self.store
        got = gate.take(
            units,
            clock=self.clock,
            deadline=deadline,
            cancel=cancel,
            abort=lambda: not store.degraded,
        )
        if got is GateResult.ABORTED:
            return None
        if got is not GateResult.TAKEN:
            raise self._gate_error(got, start)
        try:
            remaining = None if deadline is None else max(0.0, deadline - self.clock.monotonic())
            extra: dict[str, Any] = {} if cancel is None else {"cancel": cancel}
            return local.acquire(remaining, units=units, tokens=tokens, **extra)
        except BaseException:
            gate.free(units)
            raise

    def _gate_wait(
        self,
        w: Waiter,
        units: int,
        start: float,
        deadline: float | None,
        most: float,
        cancel: threading.Event | None,
    ) -> bool:
        """Wait up to ``most`` seconds for room in the gate; True when taken.

        False also when a limits change is announced (the leader asks Redis for
        them). Raises AcquireTimeout at the deadline, on cancel or close.
        """
        now = self.clock.monotonic()
        until = now + max(0.0, most)
        if deadline is not None:
            until = min(until, deadline)
        gen_cfg = w.gen_cfg
        got = self.store.gate.take(
            units,
            clock=self.clock,
            deadline=until,
            cancel=cancel,
            abort=lambda: w.gen_cfg != gen_cfg,
        )
        if got is GateResult.TAKEN:
            return True
        if got is GateResult.ABORTED:
            return False
        if got is GateResult.TIMEOUT and (deadline is None or self.clock.monotonic() < deadline):
            return False
        raise self._gate_error(got, start)

    def _gate_error(self, got: GateResult, start: float) -> AcquireTimeout:
        if got is GateResult.CANCELLED:
            return self.timeout_error(start, "cancelled")
        if got is GateResult.CLOSED:
            return self.timeout_error(start, "limiter is closed")
        return self.timeout_error(start)

    def _call_timeout(self, deadline: float | None, wait: bool) -> float | None:
        """Seconds a call to Redis may take: the time left, at least MIN_CALL (None: none).

        A try is given OUTAGE_AFTER: it does not wait for limits, but a slow reply
        is not an outage.
        """
        if deadline is None:
            return None
        return max(MIN_CALL if wait else OUTAGE_AFTER, deadline - self.clock.monotonic())

    def _server_us(self, arrival: float) -> int:
        """A local monotonic time as server microseconds (0: not known yet)."""
        offset = self._offset
        return 0 if offset is None else int((arrival + offset) * 1e6)

    def _cold(self) -> str:
        """``"c"`` when this process is cold (nothing came back, or idle), else ``""``."""
        now = self.clock.monotonic()
        cold = not self.warm or (self.leases.in_flight == 0 and now - self._last_try > IDLE_COLD)
        self.warm = not cold
        self._last_try = now
        return "c" if cold else ""

    def _args(
        self, w: Waiter, units: int, tokens: int, mode: str, succ: Waiter | None
    ) -> list[Any]:
        mode += self._cold()
        args: list[Any] = [
            w.id,
            units,
            tokens,
            self.leases.lease_us,
            self.ticket_us,
            self._server_us(w.arrival),
            mode,
            "" if succ is None else succ.id,
            0 if succ is None else self._server_us(succ.arrival),
            *self.store.side_args(),
        ]
        if self.pool is not None:
            args += [self.pool_units(), *self.pool.side_args()]
        return args

    def _keys(self) -> list[str]:
        keys = self.store.keys.six
        if self.pool is not None:
            keys += self.pool.keys.six
        return keys

    def _cancel_keys(self) -> list[str]:
        keys = [self.store.keys.q, self.store.keys.qx]
        if self.pool is not None:
            keys += [self.pool.keys.q, self.pool.keys.qx]
        return keys

    def _cancel(self, ids: list[str], *, again: bool = False) -> None:
        """Take the tickets ``ids`` out of the Redis line (never raises).

        While an outage is known, or when Redis does not answer, the cancel joins
        the pending queue (sent again when Redis answers; ``again``: twice).
        """
        keys = self._cancel_keys()
        args = [",".join(ids), *self.line.channels]
        if self.store.in_outage or again:
            self.leases.defer("cancel", keys, args, again=again)
            return
        try:
            self.store.run("cancel", keys, args, SIDE_CALL)
        except RedisDown:
            self.leases.defer("cancel", keys, args)
        except BackendError:
            pass

    def _lead(
        self,
        w: Waiter,
        units: int,
        tokens: int,
        start: float,
        deadline: float | None,
        *,
        wait: bool,
        cancel: threading.Event | None,
        probing: bool = False,
    ) -> Permit | Refusal | None:
        """The first waiter of this process: ask Redis until admitted (None: go local).

        ``probing``: Redis was known down and this thread is the one to try it again.

        Takes its units from the process's gate (given back unless admitted). While
        this process holds its whole limit (no room in the gate), it only holds its
        place in the Redis line (mode ``h``) and waits for one of its own releases.
        """
        clock = self.clock
        line = self.line
        store = self.store
        gate = store.gate
        keys = self._keys()
        queued_in_redis = w.ticketed
        in_call = False
        succ: Waiter | None = None
        reserved = False
        granted = False
        try:
            if store.degraded and not probing:  # Redis failed while this thread waited in line
                if w.ticketed:
                    self._cancel([w.id])
                return None
            reserved = gate.try_take(units)
            if w.ticketed and not reserved:
                reserved = self._gate_wait(w, units, start, deadline, self.slice, cancel)
            if w.ticketed and reserved:
                # Its predecessor took its place in line: no call until a wake-up names
                # its ticket (one may have come already), or a slice passes.
                with line.lock:
                    w.watch_cfg = False
                    sleep = self.slice
                    if deadline is not None:
                        sleep = min(sleep, deadline - clock.monotonic())
                    quiet = not (
                        w.gen_any or line.closed or (cancel is not None and cancel.is_set())
                    )
                    if quiet and line.listening.is_set() and sleep > 0:
                        clock.wait(line.cond(w), sleep)
            while True:
                with line.lock:
                    if line.closed:
                        raise self.timeout_error(start, "limiter is closed")
                    if cancel is not None and cancel.is_set():
                        raise self.timeout_error(start, "cancelled")
                    gen_any, gen_cfg = w.gen_any, w.gen_cfg
                if wait and not reserved:
                    reserved = gate.try_take(units)
                mode = "t" if not wait else "w" if reserved else "h"
                with line.lock:
                    succ = line.queue[1] if mode == "w" and len(line.queue) > 1 else None
                args = self._args(w, units, tokens, mode, succ)
                t0 = clock.monotonic()
                in_call = True
                budget = self._call_timeout(deadline, wait)
                try:
                    reply = store.run("acquire", keys, args, budget)
                except RedisDown as exc:
                    in_call = False
                    # It may still reach Redis (a hang): its lease and tickets must go then.
                    ids = [w.id] if succ is None else [w.id, succ.id]
                    self.leases.send_release(
                        f"{w.id}|{units}", f"{w.id}|{self.pool_units()}", again=True
                    )
                    self._cancel(ids, again=True)
                    queued_in_redis = False
                    short = budget is not None and budget < OUTAGE_AFTER
                    if exc.timed_out and short and not store.in_outage:
                        # The caller's time ran out (Redis may only be slow): no outage.
                        raise self.timeout_error(start) from None
                    store.on_down(exc, "acquiring")
                    return None
                in_call = False
                t1 = clock.monotonic()
                store.after_success()
                status = int(reply[0])
                self._offset = float(text(reply[2])) / 1e6 - (t0 + t1) / 2.0
                store.absorb_breaker(reply[4:_CFG_AT])
                store.absorb(reply[_CFG_AT : _CFG_AT + NCFG])
                if self.pool is not None:
                    self.pool.absorb(reply[_CFG_AT + NCFG : _CFG_AT + 2 * NCFG])
                if status == 1 and not reserved:
                    # A try while this process seemed to hold its whole limit: the reply
                    # brought the limits (another process may have raised them).
                    reserved = gate.try_take(units)
                    if not reserved:
                        self.leases.send_release(f"{w.id}|{units}", f"{w.id}|{self.pool_units()}")
                        return Refusal(None, float(text(reply[3])) / 1e6)
                if status == 1:
                    permit = self.leases.grant(
                        w.id, units, tokens, self.pool_units(), at=int(float(text(reply[2])))
                    )
                    if reply[-1]:  # the allowance applied: mark_sent may correct it
                        permit._at = (t0 + t1) / 2.0
                        permit._allow = float(text(reply[-1])) / 1e6
                    granted = True
                    if succ is not None:
                        with line.lock:
                            if succ in line.queue:
                                succ.ticketed = True  # it cancels the ticket if it gives up
                                succ = None
                        if succ is not None:  # it left meanwhile: its ticket must go
                            self._cancel([succ.id])
                    return permit
                queued_in_redis = wait
                if status == -2:
                    raise RequestTooLargeError(
                        f"units={units} tokens={tokens} can never be admitted by the limits "
                        f"now stored for {store.key!r}"
                    )
                wait_s = float(text(reply[1])) / 1e6
                if not wait:
                    cooldown = float(text(reply[3])) / 1e6
                    window = text(reply[-2])
                    return Refusal(
                        wait_s if status == 0 else None,
                        cooldown,
                        math.inf if window == "inf" else float(window) / 1e6,
                    )
                now = clock.monotonic()
                if deadline is not None and now >= deadline:
                    raise self.timeout_error(start)
                if not line.listening.is_set():
                    line.start_listener()
                    limit = 1.0 if deadline is None else min(1.0, deadline - now)
                    if line.listening.wait(limit):
                        continue  # now subscribed: look again, a wake-up may have been missed
                    now = clock.monotonic()
                # A timed wait is counted from when the request left: the next one then
                # reaches Redis about when the wait ends there (a reply's trip is not
                # slept twice).
                sleep = min(t0 + wait_s - now, self.slice) if status == 0 else self.slice
                if deadline is not None:
                    sleep = min(sleep, deadline - now)
                if not reserved:  # room comes from a release here, or from higher limits
                    reserved = self._gate_wait(w, units, start, deadline, sleep, cancel)
                    if not reserved or status == -3:
                        continue  # -3: first in line there and room: ask at once
                    # Room here now: ask Redis when the line there reaches it, as any waiter.
                    now2 = clock.monotonic()
                    sleep -= now2 - now
                    now = now2
                with line.lock:
                    w.watch_cfg = status == 0
                    # A timer waits for limit changes only; a release wait for anything.
                    missed = (w.gen_cfg != gen_cfg) if status == 0 else (w.gen_any != gen_any)
                    cancelled = cancel is not None and cancel.is_set()
                    if not (missed or cancelled or line.closed) and sleep > 0:
                        clock.wait(line.cond(w), sleep)
        except BaseException:
            if in_call:  # we cannot know whether Redis admitted us: give back what it might hold
                self.leases.send_release(f"{w.id}|{units}", f"{w.id}|{self.pool_units()}")
            if queued_in_redis or in_call:
                ids = [w.id]
                if in_call and succ is not None:  # it may have been given a ticket too
                    ids.append(succ.id)
                self._cancel(ids)
            raise
        finally:
            if reserved and not granted:
                gate.free(units)
