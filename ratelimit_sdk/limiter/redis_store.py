"""Stage 3b (admission control), shared backend: one limiter's keys in Redis and the outage policy.

Part of :mod:`.redis` (read that first). A :class:`RedisStore` is what one
:class:`~.redis.RedisLimiter` knows about Redis:

* its keys and its wake-up channel (:class:`LimiterKeys`);
* :meth:`RedisStore.run`: one script call, through :class:`~.redis_scripts.Scripts`;
* the failure policy: with ``on_backend_error="raise"`` raise BackendError; with
  ``"local"`` log one WARNING, fall back to an in-process
  :class:`~.memory.MemoryLimiter` and probe Redis every ``backend_retry``
  seconds; once Redis answers, hand over (through the ``handover`` callback) the
  limits and the cooldown changed meanwhile, and run the ``on_recover``
  callbacks (the lease thread resends the releases that failed; waiters for
  local room move back to Redis);
* :attr:`RedisStore.gate` (:class:`~.redis_gate.ProcessGate`): the units this
  process holds on either path, which the fall-back limiter (a
  :class:`FallbackLimiter`) counts as in flight too;
* this process's view of the shared limits (:meth:`RedisStore.absorb`) and one
  read of the shared state (:meth:`RedisStore.stats`).

It holds its own lock, never across a call to Redis.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..errors import BackendError
from .base import Permit
from .memory import MemoryLimiter
from .redis_gate import ProcessGate
from .redis_scripts import LOG, NBRK, NCFG, RedisDown, Scripts, parse_limits, spec_of, text

__all__ = ["FallbackLimiter", "LimiterKeys", "RedisStore"]

#: What a store calls when Redis answers again after changes made while it was down:
#: ``handover(pending limits, cooldown seconds left or None)``.
Handover = Callable[[dict[str, Any], "float | None"], None]


@dataclass(frozen=True)
class LimiterKeys:
    """The Redis keys of one limiter (``{prefix}:{<key>}:...``) and its channel."""

    cfg: str
    st: str
    leases: str
    q: str
    qx: str
    win: str
    channel: str

    @classmethod
    def of(cls, prefix: str, key: str) -> LimiterKeys:
        """The keys of limiter ``key`` under ``prefix`` (one hash tag: one cluster slot)."""
        base = f"{prefix}:{{{key}}}"
        return cls(
            cfg=f"{base}:cfg",
            st=f"{base}:st",
            leases=f"{base}:leases",
            q=f"{base}:q",
            qx=f"{base}:qx",
            win=f"{base}:win",
            channel=f"{base}:wake",
        )

    @property
    def six(self) -> list[str]:
        """``cfg st leases q qx win``, as the acquire and stats scripts take them."""
        return [self.cfg, self.st, self.leases, self.q, self.qx, self.win]


class FallbackLimiter(MemoryLimiter):
    """The in-process limiter used while Redis is unreachable.

    A MemoryLimiter whose permits also count in the process's
    :class:`~.redis_gate.ProcessGate`.

    Admissions take their units from the gate first (:mod:`.redis_wait`); a
    release gives them back here, whichever way it comes (release, finalizer,
    collected permit).
    """

    def __init__(self, *, gate: ProcessGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate = gate

    _hooked_release = True

    def _release_locked(self, permit: Permit) -> bool:
        if not super()._release_locked(permit):
            return False
        self._gate.free(permit.units)
        return True


class RedisStore:
    """One limiter's state in Redis as this process sees it, and the failure policy."""

    def __init__(
        self,
        scripts: Scripts,
        keys: LimiterKeys,
        *,
        key: str,
        limits: dict[str, Any],
        clock: Clock,
        on_backend_error: str,
        backend_retry: float,
    ) -> None:
        self.scripts = scripts
        self.keys = keys
        self.key = key
        self.clock = clock
        self.on_backend_error = on_backend_error  # "local" or "raise"
        self.backend_retry = backend_retry
        self.limits: dict[str, Any] = limits  # as last read from Redis (or set while down)
        self.origin = spec_of(limits)  # the configured limits, as the scripts store them
        self.version = "1"
        self._spec_text = f"1|{self.origin}"  # written back if Redis has lost the limits
        self._raw_seen: tuple[Any, ...] = ()  # the last limit fields absorbed
        self.lock = threading.Lock()
        self.local: MemoryLimiter | None = None  # the fall-back limiter, built on first use
        self._outage = False  # Redis failed and has not answered since (one WARNING each)
        self._degraded = False  # ... and this process uses its own limits meanwhile
        self.initialized = False  # init.lua has run (else it runs again on recovery)
        self._probe_at = 0.0  # when a caller may try Redis again while degraded
        self._pending: dict[str, Any] = {}  # limits changed while degraded
        self._pending_cool_until: float | None = None  # a cooldown started while degraded
        self.handover: Handover | None = None
        #: Called (outside the lock) when Redis answers again after failing.
        self.on_recover: list[Callable[[], None]] = []
        #: Units this process holds on either path (Redis leases, local permits).
        self.gate = ProcessGate(lambda: self.limits["max_concurrent"])
        self.on_recover.append(self.gate.wake_all)  # local waiters go back to Redis
        #: Called with the 3 breaker fields of every reply that carries them.
        self.on_breaker_fields: Callable[[Sequence[Any]], None] | None = None

    # -- the limits as this process knows them ------------------------------------------

    def spec(self) -> str:
        """``version|limits`` as known here: written back if Redis has lost the limits."""
        return self._spec_text

    def side_args(self) -> list[str]:
        """The acquire script's per-limiter arguments: spec, origin, channel."""
        return [self._spec_text, self.origin, self.keys.channel]

    def set_limits(self, limits: dict[str, Any], version: str) -> bool:
        """Adopt ``limits``; True when they changed."""
        with self.lock:
            changed = limits != self.limits
            self.limits = limits
            self.version = version
            self._spec_text = f"{version}|{spec_of(limits)}"
            self._raw_seen = ()
        if changed:
            self.gate.wake_all()  # a higher max_concurrent may let a waiter in
        return changed

    def absorb(self, raw: Sequence[Any]) -> None:
        """Take the limits Redis reported (``NCFG`` fields) as this process's view."""
        seen = tuple(raw)
        if seen == self._raw_seen:
            return  # the usual case: nothing changed since the last reply
        limits, version = parse_limits(seen)
        changed = self.set_limits(limits, version)
        self._raw_seen = seen
        local = self.local
        if changed and local is not None:
            local.update(**limits)

    def absorb_breaker(self, raw: Sequence[Any]) -> None:
        """Hand the breaker fields of a reply to the shared breaker cell, if any."""
        fn = self.on_breaker_fields
        if fn is not None:
            fn(raw)

    def init_remote(self) -> None:
        """State the configured limits (``init.lua``); again on recovery if Redis was down."""
        try:
            raw = self.run("init", [self.keys.cfg, self.keys.st], [f"1|{self.origin}", self.origin])
        except RedisDown as exc:
            self.on_down(exc, "storing the limits")
            return
        self.initialized = True
        self.after_success()
        self.absorb(raw)

    # -- talking to Redis, and the failure policy ----------------------------------------

    def run(
        self, name: str, keys: Sequence[str], args: Sequence[Any], timeout: float | None = None
    ) -> Any:
        """Call one script (raises RedisDown or BackendError, never a redis error).

        ``timeout``: seconds it may take at most (None: the client's time-outs).
        """
        return self.scripts.call(name, keys, args, timeout)

    def on_down(self, exc: RedisDown, doing: str) -> None:
        """Apply the failure policy: raise BackendError, or switch to local limits."""
        if self.on_backend_error == "raise":
            raise BackendError(
                f"Redis unreachable while {doing} for limiter {self.key!r}: {exc.cause}"
            ) from exc.cause
        self.note_down(exc, doing)

    def note_down(self, exc: RedisDown, doing: str) -> None:
        """Remember the outage (one WARNING each); with policy "local", fall back."""
        local = self.on_backend_error == "local"
        now = self.clock.monotonic()
        with self.lock:
            first = not self._outage
            self._outage = True
            if local:
                self._degraded = True
                self._probe_at = now + self.backend_retry
        if not first:
            LOG.debug("Redis still unreachable for limiter %r: %s", self.key, exc)
        elif local:
            LOG.warning(
                "Redis unreachable while %s for limiter %r (%s): using this process's own "
                "limits until it answers again (next try in %gs)",
                doing,
                self.key,
                exc,
                self.backend_retry,
            )
        else:
            LOG.warning("Redis unreachable while %s for limiter %r: %s", doing, self.key, exc)

    def _is_degraded(self) -> bool:
        return self._degraded

    def _in_outage(self) -> bool:
        return self._outage

    @property
    def in_outage(self) -> bool:
        """True from a failed call to Redis until one succeeds (either policy)."""
        return self._outage

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this process uses its own limits."""
        return self._degraded

    def use_local(self) -> bool:
        """True while Redis is known to be down and it is not yet time to try it again."""
        if not self._degraded:
            return False
        with self.lock:
            if not self._is_degraded():  # recovered meanwhile
                return False
            now = self.clock.monotonic()
            if now < self._probe_at:
                return True
            self._probe_at = now + self.backend_retry  # this caller probes; others stay local
            return False

    def after_success(self) -> None:
        """Redis answered: if we were falling back, return to it and hand over what changed."""
        if not self._outage:
            return
        with self.lock:
            if not self._in_outage():  # another thread handled the recovery
                return
            self._outage = False
            self._degraded = False
            pending, self._pending = self._pending, {}
            cool_until, self._pending_cool_until = self._pending_cool_until, None
        LOG.warning("Redis answers again for limiter %r: shared limits are back", self.key)
        for fn in self.on_recover:
            try:
                fn()
            except Exception:  # a callback must not break the call that succeeded
                LOG.exception("recovery callback of limiter %r failed", self.key)
        try:
            if not self.initialized:
                self.init_remote()
            remaining = None if cool_until is None else cool_until - self.clock.monotonic()
            if self.handover is not None and (pending or (remaining or 0) > 0):
                self.handover(pending, remaining if remaining and remaining > 0 else None)
        except BackendError as exc:
            LOG.warning("could not hand local changes to Redis for %r: %s", self.key, exc)

    def remember_update(self, limits: dict[str, Any]) -> None:
        """A limits change made while Redis was down: written there on recovery."""
        with self.lock:
            self._pending.update(limits)

    def remember_cooldown(self, until: float) -> None:
        """A cooldown (until ``until``, local clock) started while Redis was down."""
        with self.lock:
            if self._pending_cool_until is None or until > self._pending_cool_until:
                self._pending_cool_until = until

    def fallback(self, pool: RedisStore | None, pool_units: int) -> MemoryLimiter:
        """The in-process limiter used while Redis is unreachable (built on first use)."""
        local = self.local
        if local is not None:
            return local
        pool_local = None if pool is None else pool.fallback(None, 1)
        with self.lock:
            if self.local is None:
                self.local = FallbackLimiter(
                    gate=self.gate,
                    **self.limits,
                    key=self.key,
                    clock=self.clock,
                    pool=pool_local,
                    pool_units=pool_units,
                )
            return self.local

    # -- reading the shared state -----------------------------------------------------------

    def stats(self, units: int = 1, tokens: int = 0) -> dict[str, Any] | None:
        """The shared state (one script call), or None when falling back to local limits.

        ``admit_in``: seconds until a request of ``units`` and ``tokens`` would be
        admitted by the limits alone (``None``: only a release can help).
        """
        if self.use_local():
            return None
        try:
            r = self.run("stats", self.keys.six, [self._spec_text, self.origin, units, tokens])
        except RedisDown as exc:
            self.on_down(exc, "reading the shared state")
            return None
        self.after_success()
        self.absorb(r[8 : 8 + NCFG])
        self.absorb_breaker(r[8 + NCFG : 8 + NCFG + NBRK])
        bucket, llm, admit = text(r[3]), text(r[4]), text(r[7])
        at = 8 + NCFG + NBRK
        window = text(r[at]) if len(r) > at else "0"
        windows = tuple(
            {**spec, "used": float(text(used)), "limit": next(iter(spec.values()))}
            for spec, used in zip(self.limits.get("windows") or (), r[at + 1 :], strict=False)
        )
        return {
            "window": math.inf if window == "inf" else float(window) / 1e6,
            "windows": windows,
            "admit_in": None if admit == "inf" else float(admit) / 1e6,
            "in_flight": int(r[0]),
            "holders": int(r[1]),
            "waiting": int(r[2]),
            "tokens": float(bucket) if bucket else None,
            "llm_tokens": float(llm) if llm else None,
            "cooldown_remaining": float(text(r[5])) / 1e6,
            "next_start_in": float(text(r[6])) / 1e6,
            "limits_version": int(self.version),
        }
