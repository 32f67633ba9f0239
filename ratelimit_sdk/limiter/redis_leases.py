"""Stage 3b (admission control), shared backend: permits as leases, renewed while held.

Part of :mod:`.redis` (read that first). A concurrency permit admitted by Redis
is a *lease*: a member ``"<id>|<units>"`` of a sorted set scored by its expiry
(and one in the pool's set, for a pool member). :class:`Leases` holds:

* :meth:`Leases.grant`: turn an admission into a :class:`RedisPermit` and start
  the lease thread;
* the lease thread, renewing this process's leases every ``lease_timeout / 3``
  while any is held; a process that dies stops renewing and its permits come
  back after ``lease_timeout``;
* :meth:`Leases.release` / :meth:`Leases.settle`: give a permit back, correct
  its token charge; both never raise and never wait long for Redis
  (``SIDE_CALL``; not at all while an outage is known);
* the *pending* queue: releases (and ticket cancels) that could not reach Redis,
  sent again by the lease thread every ``PENDING_RETRY`` seconds and at once when
  Redis answers again, so a hang costs seconds, not ``lease_timeout``. One that
  followed an acquire whose answer was lost is sent a second time a moment
  later, in case the acquire itself reached Redis late (it was queued there);
* permits dropped without release (orphans), released by the next acquire or by
  the lease thread, never from a finalizer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import SYSTEM_CLOCK
from ..errors import BackendError
from .base import Limiter, Permit
from .redis_scripts import LOG, PENDING_RETRY, SIDE_CALL, RedisDown, text
from .redis_store import RedisStore

__all__ = ["Leases", "RedisPermit"]


class RedisPermit(Permit):
    """A permit backed by a lease in Redis (and one in the pool's, for a pool member)."""

    __slots__ = ("at", "lease", "pool_units")

    def __init__(
        self, owner: Limiter, units: int, tokens: int, lease: str, pool_units: int, at: int = 0
    ) -> None:
        super().__init__(owner, units, tokens)
        self.lease = lease
        self.pool_units = pool_units
        #: When Redis admitted it (server microseconds): the window slots it was charged to.
        self.at = at


@dataclass
class Pending:
    """A script call that failed in an outage and is sent again (release, cancel: idempotent)."""

    name: str
    keys: list[str]
    args: list[Any]
    again: bool = False  # send once more after it succeeds (the acquire may land late)
    not_before: float = 0.0  # SYSTEM_CLOCK.monotonic() seconds
    created: float = 0.0  # dropped lease_timeout after this: the lease has expired anyway


#: Seconds after a successful resend when an ``again`` one is sent the second time.
AGAIN_AFTER = 1.0


class Leases:
    """The leases this process holds for one limiter: granting, renewing, releasing.

    ``owner``: the limiter whose permits these are (a permit calls back into it).
    ``pool``: the pool's leases, for a pool member. ``on_release(head)`` runs after
    each release (``head``: the ticket now first in line, ``None`` if unknown).
    """

    def __init__(
        self,
        owner: Limiter,
        store: RedisStore,
        lease_timeout: float,
        *,
        pool: Leases | None = None,
        on_release: Callable[[str | None], None] | None = None,
    ) -> None:
        self.owner = owner
        self.store = store
        self.pool = pool
        self.lease_timeout = lease_timeout
        self.lease_us = int(lease_timeout * 1e6)
        self.on_release = on_release
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, int]] = {}  # lease id -> (units, pool units)
        self.in_flight = 0  # units held by this process's permits
        self.member_units = 0  # pool units held here by members' permits (for a pool)
        self._orphans: deque[Permit] = deque()  # collected while held: released later
        self._renewer: threading.Thread | None = None  # the lease thread, while it runs
        self._renew_cond = threading.Condition(self._lock)  # the lease thread sleeps on it
        self.paused = False  # tests: simulate a holder that stopped renewing
        self._pending: deque[Pending] = deque()  # failed releases and cancels, to resend
        self._kick = False  # recovery: resend and renew now, not at the next tick
        store.on_recover.append(self.kick)

    def grant(self, lease: str, units: int, tokens: int, pool_units: int, at: int = 0) -> Permit:
        """The permit for a lease Redis just recorded; starts the lease thread if needed.

        ``at``: the server's time of the admission (microseconds), for its settle.
        """
        pool = self.pool
        pool_units = 0 if pool is None else pool_units
        permit = RedisPermit(self.owner, units, tokens, lease, pool_units, at)
        with self._lock:
            self._held[lease] = (units, pool_units)
            self.in_flight += units
            self._start_thread()
        if pool is not None:
            pool.add_member_units(pool_units)
        return permit

    def add_member_units(self, n: int) -> None:
        """Count ``n`` more pool units held here by a member's permit (negative: fewer)."""
        with self._lock:
            self.member_units += n

    def _start_thread(self) -> None:
        """Start the lease thread unless it runs (lock held)."""
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_loop,
                name=f"ratelimit_sdk-lease-{self.store.key}",
                daemon=True,
            )
            self._renewer.start()

    def kick(self) -> None:
        """Redis answers again: resend the pending calls and renew now (in the lease thread)."""
        with self._lock:
            self._kick = True
            if self._held or self._pending or self._orphans:
                self._start_thread()
            self._renew_cond.notify_all()

    # -- renewal --------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        """Lease thread: renew this process's leases every lease_timeout / 3 while any is held.

        While calls wait in the pending queue it also resends them every
        ``PENDING_RETRY`` seconds.
        """
        interval = self.lease_timeout / 3.0
        next_renew = SYSTEM_CLOCK.monotonic() + interval
        for _ in range(1 << 62):  # bounded: ends when nothing is held or pending
            with self._lock:
                if not self._held and not self._orphans and not self._pending:
                    self._renewer = None
                    return
                now = SYSTEM_CLOCK.monotonic()
                sleep = next_renew - now
                if self._pending:
                    sleep = min(sleep, PENDING_RETRY)
                if not self._kick and sleep > 0:
                    SYSTEM_CLOCK.wait(self._renew_cond, sleep)
                kicked, self._kick = self._kick, False
                now = SYSTEM_CLOCK.monotonic()
                due = kicked or now >= next_renew
                held = {} if self.paused or not due else dict(self._held)
            if due:
                next_renew = now + interval
            if self._orphans:
                self.drain_orphans()
            if self._pending:
                self.drain_pending()
            if held:
                self._renew(held)

    def _renew(self, held: dict[str, tuple[int, int]]) -> None:
        store = self.store
        members = [f"{lease}|{units}" for lease, (units, _) in held.items()]
        keys = [store.keys.leases]
        if self.pool is not None:
            keys.append(self.pool.store.keys.leases)
            members += [f"{lease}|{pu}" for lease, (_, pu) in held.items()]
        args = [self.lease_us, len(held), *members]
        try:
            rewritten = int(store.run("renew", keys, args))
        except RedisDown as exc:
            store.note_down(exc, "renewing leases")
            return
        except BackendError as exc:
            LOG.warning("could not renew the leases of %r: %s", store.key, exc)
            return
        store.after_success()
        if rewritten:
            LOG.debug("limiter %r: %d lease(s) written again", store.key, rewritten)
        with self._lock:
            raced = [lease for lease in held if lease not in self._held]
        for lease in raced:  # released while we renewed: make sure they are gone
            units, pool_units = held[lease]
            self.send_release(f"{lease}|{units}", f"{lease}|{pool_units}")

    # -- release ----------------------------------------------------------------------------

    def release(self, permit: Permit) -> None:
        """Give ``permit`` back (exactly once, whichever thread asks first). Never raises.

        The process's gate counts it out at once; the lease in Redis goes now, or
        (Redis unreachable) when the pending queue is sent again.
        """
        assert isinstance(permit, RedisPermit)
        with self._lock:
            if permit._released:
                return
            permit._released = True
            self._held.pop(permit.lease, None)
            self.in_flight -= permit.units
        self.store.gate.free(permit.units)
        if self.pool is not None:
            self.pool.add_member_units(-permit.pool_units)
        head = self.send_release(
            f"{permit.lease}|{permit.units}", f"{permit.lease}|{permit.pool_units}"
        )
        if self.on_release is not None:
            self.on_release(head)

    def release_call(self, member: str, pool_member: str) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the release script for a lease member."""
        store = self.store
        keys = [store.keys.leases, store.keys.q]
        args: list[Any] = [member, store.keys.channel]
        if self.pool is not None:
            keys += [self.pool.store.keys.leases, self.pool.store.keys.q]
            args += [pool_member, self.pool.store.keys.channel]
        return keys, args

    def send_release(self, member: str, pool_member: str, *, again: bool = False) -> str | None:
        """Run the release script; the ticket now first in line ('' none, None unknown).

        While an outage is known, or when Redis does not answer within
        ``SIDE_CALL`` seconds, the release joins the pending queue instead.
        ``again``: the lease may be written late by an acquire still queued in
        Redis; the release is sent a second time a moment after the first.
        """
        store = self.store
        keys, args = self.release_call(member, pool_member)
        if store.in_outage or again:
            self.defer("release", keys, args, again=again)
            return None
        try:
            reply: Any = store.run("release", keys, args, SIDE_CALL)
        except RedisDown as exc:
            store.note_down(exc, "releasing a permit (sent again when Redis answers)")
            self.defer("release", keys, args)
            return None
        except BackendError as exc:
            LOG.warning(
                "could not release a permit of %r (its lease will expire): %s", store.key, exc
            )
            return None
        store.after_success()
        return text(reply[1])

    # -- calls sent again after an outage -----------------------------------------------------

    def defer(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, again: bool = False
    ) -> None:
        """Queue an idempotent script call (release, cancel) for the lease thread to send."""
        with self._lock:
            now = SYSTEM_CLOCK.monotonic()
            self._pending.append(Pending(name, list(keys), list(args), again, created=now))
            self._start_thread()
            if not self.store.in_outage:
                self._kick = True
                self._renew_cond.notify_all()

    @property
    def pending(self) -> int:
        """Calls waiting to be sent again."""
        return len(self._pending)

    def drain_pending(self) -> None:
        """Send the pending calls that are due; stop at the first that fails."""
        store = self.store
        for _ in range(len(self._pending)):
            with self._lock:
                if not self._pending:
                    return
                item = self._pending.popleft()
            now = SYSTEM_CLOCK.monotonic()
            if now - item.created > self.lease_timeout:
                continue  # what it gives back has expired in Redis by now
            if item.not_before > now:
                with self._lock:
                    self._pending.append(item)
                continue
            try:
                reply: Any = store.run(item.name, item.keys, item.args, SIDE_CALL)
            except RedisDown as exc:
                with self._lock:
                    self._pending.appendleft(item)
                store.note_down(exc, "sending releases again")
                return
            except BackendError as exc:
                LOG.warning("could not send a %s of %r again: %s", item.name, store.key, exc)
                continue
            store.after_success()
            if item.again:
                item.again = False
                item.not_before = SYSTEM_CLOCK.monotonic() + AGAIN_AFTER
                with self._lock:
                    self._pending.append(item)
            if item.name == "release" and self.on_release is not None:
                removed = int(reply[0])
                if removed:
                    self.on_release(text(reply[1]))

    def release_from_gc(self, permit: Permit) -> None:
        """A permit collected while held: released later (no I/O, no lock in a finalizer)."""
        self._orphans.append(permit)

    @property
    def has_orphans(self) -> bool:
        """True when collected permits wait to be released."""
        return bool(self._orphans)

    def drain_orphans(self) -> None:
        """Release the permits collected while held."""
        while True:
            try:
                permit = self._orphans.popleft()
            except IndexError:
                return
            self.release(permit)

    def settle(self, permit: Permit, diff: int, kinds: tuple[int, int] | None = None) -> None:
        """Charge ``diff`` more LLM tokens for ``permit`` (refund if negative). Never raises.

        ``kinds``: the differences for the input and output token windows (``None``:
        both ``diff``); the windows are corrected in the slots of the admission.
        Skipped (logged) while an outage is known; waits at most ``SIDE_CALL`` seconds.
        """
        store = self.store
        if store.in_outage:
            LOG.debug("Redis unreachable: token settlement of %r skipped", store.key)
            return
        at = permit.at if isinstance(permit, RedisPermit) else 0
        in_diff, out_diff = (diff, diff) if kinds is None else kinds
        keys = [store.keys.cfg, store.keys.st, store.keys.q, store.keys.win]
        args: list[Any] = [diff, at, in_diff, out_diff, store.keys.channel]
        if self.pool is not None:
            pk = self.pool.store.keys
            keys += [pk.cfg, pk.st, pk.q, pk.win]
            args.append(pk.channel)
        try:
            store.run("settle", keys, args, SIDE_CALL)
        except RedisDown as exc:
            store.note_down(exc, "settling tokens")
        except BackendError as exc:
            LOG.warning("could not settle tokens of %r: %s", store.key, exc)
        else:
            store.after_success()
