"""Stage 3b (admission control), shared backend: permits as leases, renewed while held.

Part of :mod:`.redis` (read that first). A concurrency permit admitted by Redis
is a *lease*: a member ``"<id>|<units>"`` of a sorted set scored by its expiry
(and one in the pool's set, for a pool member). This layer holds:

* ``_granted``: turn an admission into a ``_RedisPermit`` and start the lease thread;
* ``_renew_loop``: the lease thread, renewing this process's leases every
  ``lease_timeout / 3`` while any is held; a process that dies stops renewing
  and its permits come back after ``lease_timeout``;
* ``_release`` / ``_settle``: give a permit back, correct its token charge; both
  log a failure and never raise (an unreleased lease expires by itself);
* permits dropped without release (``_orphans``), released by the next acquire
  or by the lease thread, never from a finalizer.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from ..clock import SYSTEM_CLOCK
from ..errors import BackendError
from ._redis_scripts import _Down, _log
from ._redis_wake import _RedisWakeups
from .base import Limiter, Permit


class _RedisPermit(Permit):
    """A permit backed by a lease in Redis (and one in the pool's, for a pool member)."""

    __slots__ = ("lease", "pool_units")

    def __init__(
        self, owner: Limiter, units: int, tokens: int, lease: str, pool_units: int
    ) -> None:
        super().__init__(owner, units, tokens)
        self.lease = lease
        self.pool_units = pool_units


class _RedisLeases(_RedisWakeups):
    """Granting, renewing and releasing leases (a base class of RedisLimiter)."""

    def _init_leases(self) -> None:
        """Set up this layer's state (once, from ``RedisLimiter.__init__``, after ``_lock``)."""
        self._lease_us = int(self.lease_timeout * 1e6)
        self._held: dict[str, tuple[int, int]] = {}  # lease id -> (units, pool units)
        self._in_flight = 0  # units held by this process's permits
        self._member_units = 0  # pool units held here by members' permits (for a pool)
        self._orphans: deque[Permit] = deque()  # collected while held: released later
        self._renewer: threading.Thread | None = None  # the lease thread, while it runs
        self._renew_cond = threading.Condition(self._lock)  # the lease thread sleeps on it
        self._renew_paused = False  # tests: simulate a holder that stopped renewing

    def _granted(self, lease: str, units: int, tokens: int) -> Permit:
        pool = self._pool
        pool_units = 0 if pool is None else self._pool_units
        permit = _RedisPermit(self, units, tokens, lease, pool_units)
        with self._lock:
            self._held[lease] = (units, pool_units)
            self._in_flight += units
            start_renewer = self._renewer is None
            if start_renewer:
                self._renewer = threading.Thread(
                    target=self._renew_loop,
                    name=f"ratelimit_sdk-lease-{self.key}",
                    daemon=True,
                )
                self._renewer.start()
        if pool is not None:
            pool._add_member_units(pool_units)
        return permit

    def _add_member_units(self, n: int) -> None:
        with self._lock:
            self._member_units += n

    # -- leases -------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        """Lease thread: renew this process's leases every lease_timeout / 3 while any is held."""
        interval = self.lease_timeout / 3.0
        while True:
            with self._lock:
                if not self._held and not self._orphans:
                    self._renewer = None
                    return
                SYSTEM_CLOCK.wait(self._renew_cond, interval)
                held = {} if self._renew_paused else dict(self._held)
            if self._orphans:
                self._drain_orphans()
            if held:
                self._renew(held)

    def _renew(self, held: dict[str, tuple[int, int]]) -> None:
        members = [f"{lease}|{units}" for lease, (units, _) in held.items()]
        keys = [self._keys[2]]
        if self._pool is not None:
            keys.append(self._pool._keys[2])
            members += [f"{lease}|{pu}" for lease, (_, pu) in held.items()]
        args = [self._lease_us, len(held), *members]
        try:
            rewritten = int(self._run("renew", keys, args))
        except _Down as exc:
            self._note_down(exc, "renewing leases")
            return
        except BackendError as exc:
            _log.warning("could not renew the leases of %r: %s", self.key, exc)
            return
        self._after_success()
        if rewritten:
            _log.debug("limiter %r: %d lease(s) written again", self.key, rewritten)
        with self._lock:
            raced = [lease for lease in held if lease not in self._held]
        for lease in raced:  # released while we renewed: make sure they are gone
            units, pool_units = held[lease]
            self._send_release(f"{lease}|{units}", f"{lease}|{pool_units}")

    # -- release ---------------------------------------------------------------------------

    def _release(self, permit: Permit) -> None:
        assert isinstance(permit, _RedisPermit)
        with self._lock:
            if permit._released:
                return
            permit._released = True
            self._held.pop(permit.lease, None)
            self._in_flight -= permit.units
        if self._pool is not None:
            self._pool._add_member_units(-permit.pool_units)
        self._send_release(f"{permit.lease}|{permit.units}", f"{permit.lease}|{permit.pool_units}")
        self._wake("r")
        if self._listeners:
            self._tell_listeners()

    def _send_release(self, member: str, pool_member: str) -> None:
        keys = [self._keys[2], self._keys[3]]
        args = [member, self._channel]
        if self._pool is not None:
            keys += [self._pool._keys[2], self._pool._keys[3]]
            args += [pool_member, self._pool._channel]
        try:
            self._run("release", keys, args)
        except _Down as exc:
            self._note_down(exc, "releasing a permit (its lease will expire)")
            return
        except BackendError as exc:
            _log.warning(
                "could not release a permit of %r (its lease will expire): %s", self.key, exc
            )
            return
        self._after_success()

    def _release_from_gc(self, permit: Permit) -> None:
        # No I/O and no locks in a finalizer: the next acquire (or the lease thread)
        # releases it.
        self._orphans.append(permit)

    def _drain_orphans(self) -> None:
        while True:
            try:
                permit = self._orphans.popleft()
            except IndexError:
                return
            self._release(permit)

    def _settle(self, permit: Permit, diff: int) -> None:
        keys = list(self._keys[:3])
        args: list[Any] = [diff, self._channel]
        if self._pool is not None:
            keys += self._pool._keys[:3]
            args.append(self._pool._channel)
        try:
            self._run("settle", keys, args)
        except _Down as exc:
            self._note_down(exc, "settling tokens")
        except BackendError as exc:
            _log.warning("could not settle tokens of %r: %s", self.key, exc)
        else:
            self._after_success()
