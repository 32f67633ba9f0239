"""Stage 3b (admission control), shared backend: talking to Redis, and what to do when it is down.

Part of :mod:`.redis` (read that first). ``_RedisCore`` is the bottom layer of
:class:`~.redis.RedisLimiter`; it holds:

* the state every layer above reads (keys, limits, lock, failure state), declared
  here with its meaning and assigned in ``RedisLimiter.__init__``;
* ``_run``: the one call of a script, where redis exceptions become ``_Down``
  (Redis did not answer) or :class:`~ratelimit_sdk.errors.BackendError`;
* the failure policy: with ``on_backend_error="raise"`` raise BackendError; with
  ``"local"`` log one WARNING, fall back to an in-process
  :class:`~.memory.MemoryLimiter` and probe Redis every ``backend_retry``
  seconds; once Redis answers, hand over the limits and the cooldown changed
  meanwhile;
* this process's view of the shared limits (``_absorb``) and one read of the
  shared state (``_stats``).

The layers above: :mod:`._redis_wake` (wake-ups), :mod:`._redis_leases` (permits
as leases), :mod:`._redis_wait` (admission), then :mod:`.redis` (the public class).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..errors import BackendError
from ._redis_scripts import _NCFG, _Down, _log, _parse_limits, _spec, _text
from .base import Limiter
from .memory import MemoryLimiter

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

    from .redis import RedisLimiter


class _RedisCore(Limiter):
    """The state of a Redis limiter, the script call and the failure policy (a base class)."""

    # -- state (assigned in RedisLimiter.__init__) ------------------------------------------

    key: str
    prefix: str
    clock: Clock
    lease_timeout: float
    on_backend_error: str  # "local" or "raise"
    backend_retry: float
    _client: redis.Redis
    _scripts: dict[str, Script]
    _redis_error: type[Exception]  # any other redis error: becomes BackendError
    _down_errors: tuple[type[Exception], ...]  # Redis did not answer: becomes _Down
    _keys: tuple[str, ...]  # cfg, st, leases, q, qx
    _channel: str  # the wake-up channel
    _limits: dict[str, Any]  # as last read from Redis (or set here while falling back)
    _origin: str  # the configured limits, as the scripts store them
    _version: str
    _spec_text: str  # "version|limits": written back if Redis has lost the limits
    _raw_seen: tuple[Any, ...]  # the last limit fields absorbed (skip unchanged replies)
    _lock: threading.Lock
    _closed: bool
    _local: MemoryLimiter | None  # the fall-back limiter, built on first use
    _outage: bool  # Redis failed and has not answered since (one WARNING each)
    _degraded: bool  # ... and this process uses its own limits meanwhile
    _initialized: bool  # init.lua has run (else it runs again on recovery)
    _probe_at: float  # when a caller may try Redis again while degraded
    _pending: dict[str, Any]  # limits changed while degraded: written on recovery
    _pending_cool_until: float | None  # a cooldown started while degraded (local clock)
    _pool: RedisLimiter | None
    _pool_units: int

    # -- the limits as this process knows them -----------------------------------------------

    def _spec(self) -> str:
        """``version|limits`` as known here: written back if Redis has lost the limits."""
        return self._spec_text

    def _set_limits(self, limits: dict[str, Any], version: str) -> bool:
        """Adopt ``limits`` (lock held); True when they changed."""
        changed = limits != self._limits
        self._limits = limits
        self._version = version
        self._spec_text = f"{version}|{_spec(limits)}"
        return changed

    def _side_args(self) -> list[str]:
        """The acquire script's per-limiter arguments: spec, origin, channel."""
        return [self._spec(), self._origin, self._channel]

    def _init_remote(self) -> None:
        """State the configured limits (see ``init.lua``); again on recovery if Redis was down."""
        try:
            raw = self._run("init", self._keys[:2], [f"1|{self._origin}", self._origin])
        except _Down as exc:
            self._on_down(exc, "storing the limits")
            return
        self._initialized = True
        self._after_success()
        self._absorb(raw)

    def _absorb(self, raw: Sequence[Any]) -> None:
        """Take the limits Redis reported (``_NCFG`` fields) as this process's view."""
        seen = tuple(raw)
        if seen == self._raw_seen:
            return  # the usual case: nothing changed since the last reply
        limits, version = _parse_limits(seen)
        with self._lock:
            changed = self._set_limits(limits, version)
            self._raw_seen = seen
        local = self._local
        if changed and local is not None:
            local.update(**limits)

    # -- talking to Redis ---------------------------------------------------------------

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Call one script: the one place where redis errors are caught and translated."""
        try:
            return self._scripts[name](keys=keys, args=args)
        except self._down_errors as exc:
            raise _Down(exc) from exc
        except self._redis_error as exc:
            raise BackendError(
                f"Redis refused the {name} script of limiter {self.key!r}: {exc}"
            ) from exc

    def _on_down(self, exc: _Down, doing: str) -> None:
        """Apply the failure policy: raise BackendError, or switch to local limits."""
        if self.on_backend_error == "raise":
            raise BackendError(
                f"Redis unreachable while {doing} for limiter {self.key!r}: {exc.cause}"
            ) from exc.cause
        self._note_down(exc, doing)

    def _note_down(self, exc: _Down, doing: str) -> None:
        """Remember the outage (one WARNING each); with policy "local", fall back."""
        local = self.on_backend_error == "local"
        now = self.clock.monotonic()
        with self._lock:
            first = not self._outage
            self._outage = True
            if local:
                self._degraded = True
                self._probe_at = now + self.backend_retry
        if not first:
            _log.debug("Redis still unreachable for limiter %r: %s", self.key, exc)
        elif local:
            _log.warning(
                "Redis unreachable while %s for limiter %r (%s): using this process's own "
                "limits until it answers again (next try in %gs)",
                doing,
                self.key,
                exc,
                self.backend_retry,
            )
        else:
            _log.warning("Redis unreachable while %s for limiter %r: %s", doing, self.key, exc)

    def _is_degraded(self) -> bool:
        return self._degraded

    def _in_outage(self) -> bool:
        return self._outage

    def _use_local(self) -> bool:
        """True while Redis is known to be down and it is not yet time to try it again."""
        if not self._degraded:
            return False
        with self._lock:
            if not self._is_degraded():  # recovered meanwhile
                return False
            now = self.clock.monotonic()
            if now < self._probe_at:
                return True
            self._probe_at = now + self.backend_retry  # this caller probes; others stay local
            return False

    def _after_success(self) -> None:
        """Redis answered: if we were falling back, return to it and hand over what changed."""
        if not self._outage:
            return
        with self._lock:
            if not self._in_outage():  # another thread handled the recovery
                return
            self._outage = False
            self._degraded = False
            pending, self._pending = self._pending, {}
            cool_until, self._pending_cool_until = self._pending_cool_until, None
        _log.warning("Redis answers again for limiter %r: shared limits are back", self.key)
        try:
            if not self._initialized:
                self._init_remote()
            if pending:
                self.update(**pending)
            if cool_until is not None:
                remaining = cool_until - self.clock.monotonic()
                if remaining > 0:
                    self.cooldown(remaining)
        except BackendError as exc:
            _log.warning("could not hand local changes to Redis for %r: %s", self.key, exc)

    def _fallback(self) -> MemoryLimiter:
        """The in-process limiter used while Redis is unreachable (built on first use)."""
        local = self._local
        if local is not None:
            return local
        pool_local = None if self._pool is None else self._pool._fallback()
        with self._lock:
            if self._local is None:
                self._local = MemoryLimiter(
                    **self._limits,
                    key=self.key,
                    clock=self.clock,
                    pool=pool_local,
                    pool_units=self._pool_units,
                )
            return self._local

    # -- reading the shared state ---------------------------------------------------------

    def _stats(self, units: int = 1, tokens: int = 0) -> dict[str, Any] | None:
        """The shared state, or None when falling back to local limits.

        ``admit_in``: seconds until a request of ``units`` and ``tokens`` would be
        admitted by the limits alone (``None``: only a release can help).
        """
        if self._use_local():
            return None
        try:
            r = self._run("stats", self._keys, [self._spec(), self._origin, units, tokens])
        except _Down as exc:
            self._on_down(exc, "reading the shared state")
            return None
        self._after_success()
        self._absorb(r[8 : 8 + _NCFG])
        bucket, llm, admit = _text(r[3]), _text(r[4]), _text(r[7])
        return {
            "admit_in": None if admit == "inf" else float(admit) / 1e6,
            "in_flight": int(r[0]),
            "holders": int(r[1]),
            "waiting": int(r[2]),
            "tokens": float(bucket) if bucket else None,
            "llm_tokens": float(llm) if llm else None,
            "cooldown_remaining": float(_text(r[5])) / 1e6,
            "next_start_in": float(_text(r[6])) / 1e6,
            "limits_version": int(self._version),
        }
