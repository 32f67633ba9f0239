"""Stage 3b (admission control), shared backend: one budget for every process using one Redis.

``Limiter(..., backend="redis://host:port/db", key="kimi")`` builds a
:class:`RedisLimiter`. Every process (and host) that uses the same Redis server,
``prefix`` and ``key`` shares one set of limits and one state: the concurrency
permits, the token bucket, the spacing, the cooldown and the LLM token budget.

How it works:

* The decisions run in Lua scripts inside Redis (``limiter/lua/*.lua``), so each
  is atomic and uses the server's clock (``TIME``), not the clients'. The scripts
  are sent once (``SCRIPT LOAD``) and called by hash (``EVALSHA``); redis-py's
  ``register_script`` loads them again after ``NOSCRIPT`` (a restart or a flush).
  Admission is one round trip in the common case; a release is one round trip.
* Concurrency permits are *leases*: members of a sorted set scored by their
  expiry. A background thread renews the leases this process holds every
  ``lease_timeout / 3``; a process that dies (even by SIGKILL) stops renewing
  and its permits come back after ``lease_timeout``.
* Waiting: the acquire script answers "admitted", "wait this long" or "wait for
  a release". Threads of one process queue locally, first come first served, and
  only the first of them talks to Redis. It holds a *ticket* in a Redis queue
  ordered by arrival, so processes are served in arrival order too. It sleeps the
  time the script said, or until a wake-up published on the limiter's channel
  (release, limits changed, line moved), never longer than a short slice, so a
  lost message costs a fraction of a second, not a hang.
* Limits live in Redis with a version. ``update()`` on any process changes them
  for all. A new limiter writes its configured limits when none are stored, or
  when the stored ones came from a different configuration (a deploy); a restart
  with the same configuration keeps hot updates made elsewhere. If Redis loses
  everything, the next call writes this process's current limits back.
* When Redis fails, ``on_backend_error="local"`` (the default) logs one WARNING
  and falls back to an in-process :class:`~.memory.MemoryLimiter` with the same
  limits, trying Redis again every ``backend_retry`` seconds;
  ``on_backend_error="raise"`` raises :class:`~ratelimit_sdk.errors.BackendError`.
  Either way this process never holds more than ``max_concurrent`` units on both
  paths together (:mod:`.redis_gate`), every call to Redis is bounded by the
  caller's time left, and releases that failed are sent again once Redis
  answers (:mod:`.redis_leases`).
  No ``redis`` exception type ever leaves this module or its parts.

``redis`` is imported only by this module and its parts, when the first
``RedisLimiter`` is built.

Reading order: this module holds :class:`RedisLimiter` and its public methods.
It is composed of separate objects, each in a module of its own, with small
interfaces:

* :mod:`.redis_scripts`: the Lua scripts and :class:`~.redis_scripts.Scripts`
  (calling them, translating redis errors), defaults, argument packing;
* :mod:`.redis_store`: :class:`~.redis_store.RedisStore`, one limiter's keys,
  this process's view of its limits, and the outage policy (fall back to local
  limits, return to Redis);
* :mod:`.redis_gate`: :class:`~.redis_gate.ProcessGate`, the units this process
  holds on Redis and locally together, never above ``max_concurrent``;
* :mod:`.redis_wake`: :class:`~.redis_wake.WaitLine`, the local line of waiters
  and the pub/sub wake-ups;
* :mod:`.redis_leases`: :class:`~.redis_leases.Leases`, permits as leases, the
  lease renewal thread, release;
* :mod:`.redis_wait`: :class:`~.redis_wait.Admission`, waiting for admission
  across processes;
* :mod:`.redis_breaker`: :class:`~.redis_breaker.SharedBreakerCell`, the
  provider's breaker state kept in the limiter's keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._windows import check_windows
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigError
from ..models import AVAILABLE_NOW, Availability, LimiterSnapshot
from ._args import check_cooldown, check_timeout
from .base import Limiter, Permit, check_limits, check_pool_units
from .bucket import DEFAULT_MARGIN
from .memory import MemoryLimiter
from .redis_breaker import SharedBreakerCell
from .redis_leases import Leases, RedisPermit
from .redis_scripts import (
    DEFAULT_BACKEND_RETRY,
    DEFAULT_LEASE_TIMEOUT,
    DEFAULT_PREFIX,
    DEFAULT_SOCKET_TIMEOUT,
    LOG,
    SHORT_NAMES,
    RedisDown,
    Scripts,
    check_options,
    client_from_url,
    field_text,
    import_redis,
    text,
)
from .redis_store import LimiterKeys, RedisStore
from .redis_wait import Admission, Refusal
from .redis_wake import WaitLine

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_BACKEND_RETRY",
    "DEFAULT_LEASE_TIMEOUT",
    "DEFAULT_PREFIX",
    "DEFAULT_SOCKET_TIMEOUT",
    "RedisLimiter",
]


class RedisLimiter(Limiter):
    """Admission control shared by every process and host using the same Redis server and key.

    Same limits and guarantees as the in-memory limiter (the Limiter contract), held
    in Redis: in-flight never exceeds ``max_concurrent`` across all processes,
    starts stay inside the token-bucket envelope, ``min_interval`` spaces them,
    and a cooldown from any process stops all of them. A holder that dies gives
    its permits back after ``lease_timeout`` seconds.

    Arguments beyond the in-memory limiter's:

    * ``key`` (required): the name every process sharing the budget uses
      (typically the provider name).
    * ``backend``: a ``redis://``, ``rediss://`` or ``unix://`` URL, used when no
      ``redis_client`` is given; the client gets ``socket_timeout``-second time-outs,
      each call also cut to its caller's time left (an ``acquire(timeout=t)``
      returns in about ``t`` however long Redis hangs).
    * ``prefix``: namespace of the keys (``{prefix}:{<key>}:...``).
    * ``lease_timeout``: seconds after which a crashed holder's permit comes back.
    * ``on_backend_error``: ``"local"`` (fall back to in-process limits while
      Redis is unreachable, with one WARNING; retry every ``backend_retry``
      seconds) or ``"raise"`` (raise :class:`~ratelimit_sdk.errors.BackendError`).
      Releasing and settling never raise: a failed release is sent again when
      Redis answers (within seconds, not ``lease_timeout``). Under either
      policy this process never holds more than ``max_concurrent`` units on
      Redis and locally together.
    * ``pool``: another ``RedisLimiter`` on the same Redis server whose
      concurrency (``pool_units`` per request), rate and token budget this one
      also draws from, in the same atomic decision.
    * ``clock``: used for deadlines and sleeps; the limits themselves run on the
      Redis server's clock.

    ``in_flight`` and ``queued`` count this process; :meth:`shared_stats` and
    :meth:`snapshot` read the shared state.

    Thread-safe: share one instance among the threads of a process. Threads of a
    process are admitted first come, first served; across processes, in order of
    arrival (see ``docs/redis.md`` for how exact that is). No lock is held across
    a call to Redis.

    Composed of: ``store`` (:class:`~.redis_store.RedisStore`: keys, limits, script
    calls, outage policy), ``line`` (:class:`~.redis_wake.WaitLine`: local waiters,
    wake-ups), ``leases`` (:class:`~.redis_leases.Leases`) and ``admission``
    (:class:`~.redis_wait.Admission`).
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        requests_per_minute: float | None = None,
        burst: int | None = None,
        min_interval: float = 0.0,
        tokens_per_minute: float | None = None,
        *,
        backend: str = "redis://localhost:6379/0",
        key: str | None = None,
        clock: Clock | None = None,
        pool: RedisLimiter | None = None,
        pool_units: int = 1,
        margin: float = DEFAULT_MARGIN,
        prefix: str = DEFAULT_PREFIX,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        on_backend_error: str = "local",
        redis_client: redis.Redis | None = None,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        backend_retry: float = DEFAULT_BACKEND_RETRY,
        windows: Iterable[Any] | None = None,
    ) -> None:
        limits: dict[str, Any] = {
            "max_concurrent": max_concurrent,
            "requests_per_minute": requests_per_minute,
            "burst": burst,
            "min_interval": min_interval,
            "tokens_per_minute": tokens_per_minute,
            "margin": margin,
        }
        check_limits(limits)
        specs = check_windows(windows)
        key = check_options(
            key, prefix, lease_timeout, socket_timeout, backend_retry, on_backend_error
        )
        if pool is not None:
            if not isinstance(pool, RedisLimiter):
                raise ConfigError("pool: must be a Redis Limiter", field="pool")
            if pool.pool is not None:
                raise ConfigError("pool: a pool cannot itself belong to a pool", field="pool")
        redis_mod = import_redis()
        self._owns_client = redis_client is None
        if redis_client is None:
            redis_client = client_from_url(redis_mod, backend, float(socket_timeout))
        self._client = redis_client
        self.key = key
        self.prefix = prefix
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.lease_timeout = float(lease_timeout)
        self._pool = pool
        self._pool_units = 1
        self._breaker_cell: SharedBreakerCell | None = None
        keys = LimiterKeys.of(prefix, key)
        self.store: RedisStore = RedisStore(
            Scripts(redis_client, redis_mod, key),
            keys,
            key=key,
            limits={
                "max_concurrent": None if max_concurrent is None else int(max_concurrent),
                "requests_per_minute": requests_per_minute,
                "burst": None if burst is None else int(burst),
                "min_interval": float(min_interval),
                "tokens_per_minute": tokens_per_minute,
                "margin": float(margin),
                "windows": [w.as_dict() for w in specs],
            },
            clock=self.clock,
            on_backend_error=on_backend_error,
            backend_retry=float(backend_retry),
        )
        self.store.handover = self._handover
        channels = [keys.channel] if pool is None else [keys.channel, pool.store.keys.channel]
        self.line = WaitLine(redis_client, channels, key)
        self.line.on_cfg = self.store.gate.wake_all
        self.leases: Leases = Leases(
            self,
            self.store,
            self.lease_timeout,
            pool=None if pool is None else pool.leases,
            on_release=self._after_release,
        )
        self.admission = Admission(
            self.store,
            self.line,
            self.leases,
            clock=self.clock,
            lease_timeout=self.lease_timeout,
            pool=None if pool is None else pool.store,
            pool_units=lambda: self._pool_units,
            fallback=self._fallback,
        )
        self.pool_units = pool_units
        self.store.init_remote()

    # -- configuration ---------------------------------------------------------------

    @property
    def pool(self) -> RedisLimiter | None:
        """The shared pool this limiter draws from, if any."""
        return self._pool

    @property
    def pool_units(self) -> int:
        """Pool units each request holds (1 when there is no pool)."""
        return self._pool_units

    @pool_units.setter
    def pool_units(self, value: int) -> None:
        pool = self._pool
        pool_max = None if pool is None else pool.store.limits["max_concurrent"]
        self._pool_units = check_pool_units(value, pool_max)

    @property
    def on_backend_error(self) -> str:
        """``"local"`` or ``"raise"``: what happens when Redis fails."""
        return self.store.on_backend_error

    @property
    def backend_retry(self) -> float:
        """Seconds between two tries of Redis while falling back to local limits."""
        return self.store.backend_retry

    def update(self, **limits: Any) -> None:
        """Change limits for every process sharing this key; see :meth:`Limiter.update`.

        Stored in Redis with a new version; every process reads the limits from
        Redis at each admission, and waiting processes are woken. While Redis is
        unreachable (policy ``"local"``), the change applies to this process and
        is written to Redis when it answers again.
        """
        check_limits(limits)
        if not limits:
            return
        if "windows" in limits:
            limits["windows"] = [w.as_dict() for w in check_windows(limits["windows"])]
        store = self.store
        pairs: list[str] = []
        for name, value in limits.items():
            pairs += [SHORT_NAMES[name], field_text(name, value)]
        if not store.use_local():
            k = store.keys
            try:
                raw = store.run(
                    "update",
                    [k.cfg, k.st, k.leases],
                    [k.channel, store.spec(), store.origin, *pairs],
                )
            except RedisDown as exc:
                store.on_down(exc, "updating the limits")
            else:
                store.after_success()
                store.absorb(raw)
                return
        merged = dict(store.limits)
        merged.update(limits)
        merged["min_interval"] = float(merged["min_interval"])
        merged["margin"] = float(merged["margin"])
        store.set_limits(merged, store.version)
        store.remember_update(limits)
        local = store.local
        if local is not None:
            local.update(**limits)

    def cooldown(self, seconds: float) -> None:
        """Admit nobody, in any process, for ``seconds`` from now (extends, never shortens)."""
        seconds = check_cooldown(seconds)
        if seconds <= 0:
            return
        store = self.store
        local = store.local
        if local is not None:
            local.cooldown(seconds)
        if not store.use_local():
            try:
                store.run("cooldown", [store.keys.st], [repr(float(seconds))])
            except RedisDown as exc:
                store.on_down(exc, "starting a cooldown")
            else:
                store.after_success()
                return
        until = self.clock.monotonic() + seconds
        self._fallback().cooldown(seconds)
        store.remember_cooldown(until)

    def report_overrun(self) -> float:
        """Widen the shared jitter allowance (every process uses it).

        See :meth:`Limiter.report_overrun`.

        One round trip; while Redis is unreachable, the local fallback's allowance
        widens instead.
        """
        store = self.store
        if not store.use_local():
            try:
                reply = store.run("overrun", [store.keys.cfg, store.keys.st], store.side_args()[:2])
            except RedisDown as exc:
                store.on_down(exc, "widening the jitter allowance")
            else:
                store.after_success()
                wait, extra = float(text(reply[0])), float(text(reply[1]))
                if extra:
                    LOG.info(
                        "%s: a paced request was refused; jitter allowance now %.1f ms over "
                        "the margin, for every process",
                        self.key,
                        extra * 1000,
                    )
                return wait
        return self._fallback().report_overrun()

    def _handover(self, pending: dict[str, Any], cooldown: float | None) -> None:
        """Redis is back: write the changes made while it was down."""
        if pending:
            self.update(**pending)
        if cooldown is not None:
            self.cooldown(cooldown)

    def _fallback(self) -> MemoryLimiter:
        pool = self._pool
        if pool is not None:
            pool._fallback()
        return self.store.fallback(None if pool is None else pool.store, self._pool_units)

    def wake_all(self) -> None:
        """Wake this process's waiting threads so they re-check their ``cancel`` events."""
        self.line.wake_all()
        self.store.gate.wake_all()
        local = self.store.local
        if local is not None:
            local.wake_all()

    def close(self) -> None:
        """Wake this process's waiters with AcquireTimeout; later acquires fail the same way.

        Held permits stay valid (their leases are renewed until released). The idle
        connections of a client built from the URL are closed; a client passed in
        is left as it is.
        """
        self.line.close()
        self.store.gate.close()
        local = self.store.local
        if local is not None:
            local.close()
        if self._owns_client:
            # Idle connections only: a thread may still be in a call (a release, a
            # renewal); its connection goes when the client is collected.
            with contextlib.suppress(Exception):
                self._client.connection_pool.disconnect(inuse_connections=False)

    # -- admission ---------------------------------------------------------------------

    def acquire(
        self,
        timeout: float | None = None,
        *,
        units: int = 1,
        tokens: int = 0,
        cancel: threading.Event | None = None,
    ) -> Permit:
        """Block until admitted by every process's shared limits; see :meth:`Limiter.acquire`.

        Uncontended: one script call.
        """
        self.admission.check_request(units, tokens)
        timeout = check_timeout(timeout)
        got = self.admission.admit(units, tokens, timeout, wait=timeout != 0, cancel=cancel)
        if isinstance(got, Refusal):
            raise self.admission.timeout_error(self.clock.monotonic())
        return got

    def try_acquire(self, *, units: int = 1, tokens: int = 0) -> Permit | None:
        """Admit now if every limit allows it and nobody waits ahead, in any process; else None."""
        self.admission.check_request(units, tokens)
        got = self.admission.admit(units, tokens, 0.0, wait=False)
        return None if isinstance(got, Refusal) else got

    def try_admit(self, *, units: int = 1, tokens: int = 0) -> Permit | Availability:
        """Admit now, or say from when: one script call (see :meth:`Limiter.try_admit`).

        The refusal carries the wait the script computed (``None``: needs a release,
        e.g. full or others in line) and the cooldown left. A closed limiter
        answers ``Availability(math.inf)``.
        """
        self.admission.check_request(units, tokens)
        if self.line.closed:
            return Availability(math.inf)
        got = self.admission.admit(units, tokens, 0.0, wait=False)
        if not isinstance(got, Refusal):
            return got
        if got.cooldown is None:  # threads of this process wait ahead, or Redis is down: look
            return self.availability(units=units, tokens=tokens)
        if got.wait == 0.0:  # could not happen for a try; never report "now" for a refusal
            return Availability(None, cooldown=got.cooldown, window=got.window)
        return Availability(got.wait, cooldown=got.cooldown, window=got.window)

    # -- observation -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Concurrency units held now by this process (also while falling back)."""
        local = self.store.local
        held = self.leases.in_flight + self.leases.member_units
        return held + (0 if local is None else local.in_flight)

    @property
    def queued(self) -> int:
        """Threads of this process waiting for admission now."""
        local = self.store.local
        return len(self.line.queue) + (0 if local is None else local.queued)

    @property
    def redis_client(self) -> Any:
        """The ``redis.Redis`` client this limiter uses."""
        return self._client

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this process uses its own limits."""
        return self.store.degraded

    def shared_breaker_cell(self) -> SharedBreakerCell:
        """The provider's breaker state kept in this limiter's keys (one cell per limiter).

        Every script reply of this limiter refreshes it, and state changes are
        published on the limiter's channel (this process listens from now on),
        so reading it costs no round trip. See :mod:`.redis_breaker`.
        """
        cell = self._breaker_cell
        if cell is None:
            cell = SharedBreakerCell(self.store)
            self._breaker_cell = cell
            self.store.on_breaker_fields = cell.refresh
            self.line.on_breaker = cell.refresh_text
            self.line.keep_listening()
            cell.load()
        return cell

    def shared_stats(self) -> dict[str, Any]:
        """What every process sees: for ``Client.stats()``.

        Keys: ``backend`` (``"redis"``, or ``"local"`` while falling back),
        ``key``, ``in_flight`` (units held by all processes), ``holders``
        (leases), ``waiting`` (processes in line), ``tokens`` (requests the
        bucket admits now), ``llm_tokens``, ``cooldown_remaining``,
        ``next_start_in`` (seconds), ``limits_version`` and ``limits``.
        """
        stats = self.store.stats()
        if stats is None:
            snap = self._fallback().snapshot()
            return {
                "backend": "local",
                "key": self.key,
                "in_flight": snap.in_flight,
                "holders": None,
                "waiting": None,
                "tokens": snap.tokens,
                "llm_tokens": snap.llm_tokens,
                "cooldown_remaining": snap.cooldown_remaining,
                "next_start_in": snap.next_start_in,
                "limits_version": None,
                "limits": self.limits(),
            }
        del stats["admit_in"], stats["window"]
        return {"backend": "redis", "key": self.key, **stats, "limits": self.limits()}

    def time_to_admit(self, *, units: int = 1, tokens: int = 0) -> float | None:
        """Seconds until an acquire would be admitted at once, by the shared state.

        ``0.0``: now. ``None``: only a release can help (concurrency is full across
        the processes, or waiters of any process hold the line), or the limiter is
        closed. One round trip; takes nothing, and the answer may be stale.
        """
        if self.line.closed:
            return None
        return self.availability(units=units, tokens=tokens).wait

    def availability(self, *, units: int = 1, tokens: int = 0) -> Availability:
        """Whether an acquire now would be admitted at once, and if not, from when.

        One script call; takes nothing. ``wait`` None: only a release can help
        (full, or waiters of any process hold the line); ``math.inf``: closed.
        """
        if self.line.closed:
            return Availability(math.inf)
        stats = self.store.stats(units, tokens)
        if stats is None:
            return self._fallback().availability(units=units, tokens=tokens)
        cooldown = float(stats["cooldown_remaining"])
        window = float(stats["window"])
        admit: float | None = stats["admit_in"]
        pool = self._pool
        if pool is not None and pool.store.limits.get("windows"):
            # The pool's windows bound this member too (a second look, only with them).
            pool_stats = pool.store.stats(self._pool_units, tokens)
            if pool_stats is not None and pool_stats["window"] > window:
                window = float(pool_stats["window"])
                if admit is not None and window > admit:
                    admit = window
        if self.line.queue or stats["waiting"]:
            return Availability(None, cooldown=cooldown, window=window)
        if admit == 0.0:
            return AVAILABLE_NOW
        return Availability(admit, cooldown=cooldown, window=window)

    def would_admit(self, *, units: int = 1, tokens: int = 0) -> bool:
        """Whether an acquire now would be admitted at once, by the shared state. One round trip.

        Takes nothing; the answer can be stale by the time the caller acts on it.
        """
        return self.time_to_admit(units=units, tokens=tokens) == 0.0

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when room may have been freed here or elsewhere.

        After each release in this process, and when a release by another process
        is heard (releases are announced while someone waits in line, and heard
        while a thread of this process waits). Runs outside the lock; keep it quick.
        """
        self.line.add_listener(fn)

    def cooldown_remaining(self) -> float:
        """Seconds until the shared cooldown ends (0.0: none). One round trip."""
        stats = self.store.stats()
        if stats is None:
            return self._fallback().cooldown_remaining()
        return float(stats["cooldown_remaining"])

    def snapshot(self) -> LimiterSnapshot:
        """The shared limits and state; ``in_flight`` and ``queued`` are this process's."""
        stats = self.store.stats()
        if stats is None:
            snap = self._fallback().snapshot()
            return dataclasses.replace(snap, in_flight=self.in_flight, queued=self.queued)
        limits = self.store.limits
        return LimiterSnapshot(
            in_flight=self.in_flight,
            queued=self.queued,
            max_concurrent=limits["max_concurrent"],
            requests_per_minute=limits["requests_per_minute"],
            burst=limits["burst"] or 1,
            min_interval=limits["min_interval"],
            tokens_per_minute=limits["tokens_per_minute"],
            tokens=stats["tokens"],
            llm_tokens=stats["llm_tokens"],
            cooldown_remaining=stats["cooldown_remaining"],
            next_start_in=stats["next_start_in"],
            windows=stats["windows"],
        )

    def limits(self) -> dict[str, Any]:
        """The limits as last read from Redis (what :meth:`update` takes).

        ``windows`` (a list of window dicts) appears only when there are windows.
        """
        out = dict(self.store.limits)
        if not out.get("windows"):
            out.pop("windows", None)
        return out

    # -- used by Permit ------------------------------------------------------------------

    def _release(self, permit: Permit) -> None:
        self.leases.release(permit)

    def _settle(self, permit: Permit, diff: int, kinds: tuple[int, int] | None = None) -> None:
        self.leases.settle(permit, diff, kinds)

    def _mark_sent(self, permit: Permit) -> None:
        """A request left later than its allowance: pace every process from its departure.

        One round trip, only for a late request (best effort: an unreachable Redis
        skips it; the allowance then grows on the next refusal instead).
        """
        rest = permit._allow * 0.5  # kept for the way from our socket to the server
        over = self.clock.monotonic() - permit._at - rest
        if over <= 0:
            return
        permit._allow = math.inf  # once
        store = self.store
        if store.use_local():
            return
        at = getattr(permit, "at", 0)
        try:
            spec = store.side_args()[:2]
            keys = [store.keys.cfg, store.keys.st, store.keys.win]
            args = [int(over * 1e6), at, permit.tokens, *spec, int(rest * 1e6)]
            reply = store.run("sent", keys, args)
        except RedisDown as exc:
            store.on_down(exc, "pacing after a late request")
        else:
            store.after_success()
            moved = text(reply)
            if moved and isinstance(permit, RedisPermit):
                permit.at = int(float(moved))  # its settle corrects the slots it is in now

    def _release_from_gc(self, permit: Permit) -> None:
        self.leases.release_from_gc(permit)

    def _after_release(self, head: str | None) -> None:
        self.admission.warm = True  # a request came back: its connection exists
        if head != "":  # '' nobody waits in Redis; None: unknown, wake the leader anyway
            self.line.wake("r", head)
        if self.line.release_listeners:
            self.line.tell_listeners()

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.limits().items() if v is not None and v != 0.0]
        state = " degraded" if self.store.degraded else ""
        return (
            f"<RedisLimiter key={self.key!r} {' '.join(parts) or 'unlimited'} "
            f"in_flight={self.in_flight} queued={self.queued}{state}>"
        )
