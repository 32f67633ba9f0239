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
  No ``redis`` exception type ever leaves this module or its parts.

``redis`` is imported only by this module and its parts, when the first
``RedisLimiter`` is built.

Reading order: this module holds :class:`RedisLimiter` and its public methods;
it is built in layers, each a module of its own, bottom to top:

* :mod:`._redis_scripts`: the Lua scripts, key naming, argument packing, defaults;
* :mod:`._redis_core`: calling a script, the failure policy (fall back to local
  limits, return to Redis) and this process's view of the shared limits;
* :mod:`._redis_wake`: the local line of waiters and the pub/sub wake-ups;
* :mod:`._redis_leases`: permits as leases, the lease renewal thread, release;
* :mod:`._redis_wait`: waiting for admission across processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AcquireTimeout, ConfigError
from ..models import LimiterSnapshot
from ._redis_scripts import (
    _SCRIPTS,
    _SHORT,
    DEFAULT_BACKEND_RETRY,
    DEFAULT_LEASE_TIMEOUT,
    DEFAULT_PREFIX,
    DEFAULT_SOCKET_TIMEOUT,
    _check_options,
    _client_from_url,
    _Down,
    _import_redis,
    _num,
    _script_source,
    _spec,
)
from ._redis_wait import _RedisWaiting
from .base import Permit, check_limits, check_pool_units

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_BACKEND_RETRY",
    "DEFAULT_LEASE_TIMEOUT",
    "DEFAULT_PREFIX",
    "DEFAULT_SOCKET_TIMEOUT",
    "RedisLimiter",
]


class RedisLimiter(_RedisWaiting):
    """Admission control shared by every process and host using the same Redis server and key.

    Same limits and guarantees as the in-memory limiter (DESIGN.md section 3), held
    in Redis: in-flight never exceeds ``max_concurrent`` across all processes,
    starts stay inside the token-bucket envelope, ``min_interval`` spaces them,
    and a cooldown from any process stops all of them. A holder that dies gives
    its permits back after ``lease_timeout`` seconds.

    Arguments beyond the in-memory limiter's:

    * ``key`` (required): the name every process sharing the budget uses
      (typically the provider name).
    * ``backend``: a ``redis://``, ``rediss://`` or ``unix://`` URL, used when no
      ``redis_client`` is given; the client gets ``socket_timeout``-second time-outs.
    * ``prefix``: namespace of the keys (``{prefix}:{<key>}:...``).
    * ``lease_timeout``: seconds after which a crashed holder's permit comes back.
    * ``on_backend_error``: ``"local"`` (fall back to in-process limits while
      Redis is unreachable, with one WARNING; retry every ``backend_retry``
      seconds) or ``"raise"`` (raise :class:`~ratelimit_sdk.errors.BackendError`).
      Releasing and settling never raise: a failed release is logged and its
      lease expires by itself.
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
        margin: float = 0.0,
        prefix: str = DEFAULT_PREFIX,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        on_backend_error: str = "local",
        redis_client: redis.Redis | None = None,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        backend_retry: float = DEFAULT_BACKEND_RETRY,
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
        key = _check_options(
            key, prefix, lease_timeout, socket_timeout, backend_retry, on_backend_error
        )
        if pool is not None:
            if not isinstance(pool, RedisLimiter):
                raise ConfigError("pool: must be a Redis Limiter", field="pool")
            if pool._pool is not None:
                raise ConfigError("pool: a pool cannot itself belong to a pool", field="pool")
        redis_mod = _import_redis()
        self._redis_error = redis_mod.exceptions.RedisError
        self._down_errors = (
            redis_mod.exceptions.ConnectionError,
            redis_mod.exceptions.TimeoutError,
            redis_mod.exceptions.ReadOnlyError,
            redis_mod.exceptions.ClusterDownError,
            redis_mod.exceptions.TryAgainError,
        )
        self._owns_client = redis_client is None
        if redis_client is None:
            redis_client = _client_from_url(redis_mod, backend, float(socket_timeout))
        self._client = redis_client
        self._scripts = {
            name: redis_client.register_script(_script_source(name)) for name in _SCRIPTS
        }

        # The core's state (declared, with what each field means, in _RedisCore); each
        # layer above sets up its own in its _init_*().
        self.key = key
        self.prefix = prefix
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.lease_timeout = float(lease_timeout)
        self.on_backend_error = on_backend_error
        self.backend_retry = float(backend_retry)
        base = f"{prefix}:{{{key}}}"
        self._keys = tuple(f"{base}:{part}" for part in ("cfg", "st", "leases", "q", "qx"))
        self._channel = f"{base}:wake"
        self._limits = {
            "max_concurrent": None if max_concurrent is None else int(max_concurrent),
            "requests_per_minute": requests_per_minute,
            "burst": None if burst is None else int(burst),
            "min_interval": float(min_interval),
            "tokens_per_minute": tokens_per_minute,
            "margin": float(margin),
        }
        self._origin = _spec(self._limits)
        self._version = "1"
        self._spec_text = f"1|{self._origin}"
        self._raw_seen = ()
        self._lock = threading.Lock()
        self._closed = False
        self._local = None
        self._outage = False
        self._degraded = False
        self._initialized = False
        self._probe_at = 0.0
        self._pending = {}
        self._pending_cool_until = None
        self._init_wakeups()
        self._init_leases()
        self._init_waiting()

        self._pool = pool
        self._pool_units = 1
        self.pool_units = pool_units
        self._init_remote()

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
        pool_max = None if pool is None else pool._limits["max_concurrent"]
        self._pool_units = check_pool_units(value, pool_max)

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
        pairs: list[str] = []
        for name, value in limits.items():
            pairs += [_SHORT[name], _num(value)]
        if not self._use_local():
            try:
                raw = self._run(
                    "update", self._keys[:3], [self._channel, self._spec(), self._origin, *pairs]
                )
            except _Down as exc:
                self._on_down(exc, "updating the limits")
            else:
                self._after_success()
                self._absorb(raw)
                return
        merged = dict(self._limits)
        merged.update(limits)
        merged["min_interval"] = float(merged["min_interval"])
        merged["margin"] = float(merged["margin"])
        with self._lock:
            self._set_limits(merged, self._version)
            self._raw_seen = ()
            self._pending.update(limits)
        local = self._local
        if local is not None:
            local.update(**limits)

    def cooldown(self, seconds: float) -> None:
        """Admit nobody, in any process, for ``seconds`` from now (extends, never shortens)."""
        if not isinstance(seconds, (int, float)) or math.isnan(seconds):
            raise ValueError(f"cooldown seconds must be a number, got {seconds!r}")
        if seconds <= 0:
            return
        local = self._local
        if local is not None:
            local.cooldown(seconds)
        if not self._use_local():
            try:
                self._run("cooldown", self._keys[1:2], [repr(float(seconds))])
            except _Down as exc:
                self._on_down(exc, "starting a cooldown")
            else:
                self._after_success()
                return
        until = self.clock.monotonic() + seconds
        self._fallback().cooldown(seconds)
        with self._lock:
            if self._pending_cool_until is None or until > self._pending_cool_until:
                self._pending_cool_until = until

    def wake_all(self) -> None:
        """Wake this process's waiting threads so they re-check their ``cancel`` events."""
        with self._lock:
            for w in self._queue:
                self._notify(w)
        local = self._local
        if local is not None:
            local.wake_all()

    def close(self) -> None:
        """Wake this process's waiters with AcquireTimeout; later acquires fail the same way.

        Held permits stay valid (their leases are renewed until released). The idle
        connections of a client built from the URL are closed; a client passed in
        is left as it is.
        """
        with self._lock:
            self._closed = True
            for w in self._queue:
                self._notify(w)
        local = self._local
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
        """Block until admitted by every process's shared limits; see :meth:`Limiter.acquire`."""
        self._check_request(units, tokens)
        if timeout is not None and not timeout >= 0:  # also rejects NaN
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        return self._admit(units, tokens, timeout, wait=timeout != 0, cancel=cancel)

    def try_acquire(self, *, units: int = 1, tokens: int = 0) -> Permit | None:
        """Admit now if every limit allows it and nobody waits ahead, in any process; else None."""
        self._check_request(units, tokens)
        try:
            return self._admit(units, tokens, 0.0, wait=False)
        except AcquireTimeout:
            return None

    # -- observation -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Concurrency units held now by this process (also while falling back)."""
        local = self._local
        return self._in_flight + self._member_units + (0 if local is None else local.in_flight)

    @property
    def queued(self) -> int:
        """Threads of this process waiting for admission now."""
        local = self._local
        return len(self._queue) + (0 if local is None else local.queued)

    @property
    def redis_client(self) -> Any:
        """The ``redis.Redis`` client this limiter uses (shared with the provider's breaker)."""
        return self._client

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this process uses its own limits."""
        return self._degraded

    def shared_stats(self) -> dict[str, Any]:
        """What every process sees: for ``Client.stats()``.

        Keys: ``backend`` (``"redis"``, or ``"local"`` while falling back),
        ``key``, ``in_flight`` (units held by all processes), ``holders``
        (leases), ``waiting`` (processes in line), ``tokens`` (requests the
        bucket admits now), ``llm_tokens``, ``cooldown_remaining``,
        ``next_start_in`` (seconds), ``limits_version`` and ``limits``.
        """
        stats = self._stats()
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
        del stats["admit_in"]
        return {"backend": "redis", "key": self.key, **stats, "limits": self.limits()}

    def time_to_admit(self, *, units: int = 1, tokens: int = 0) -> float | None:
        """Seconds until an acquire would be admitted at once, by the shared state.

        ``0.0``: now. ``None``: only a release can help (concurrency is full across
        the processes, or waiters of any process hold the line), or the limiter is
        closed. One round trip; takes nothing, and the answer may be stale.
        """
        if self._closed:
            return None
        stats = self._stats(units, tokens)
        if stats is None:
            return self._fallback().time_to_admit(units=units, tokens=tokens)
        if self._queue or stats["waiting"]:
            return None
        admit: float | None = stats["admit_in"]
        return admit

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
        with self._lock:
            self._listeners = (*self._listeners, fn)

    def cooldown_remaining(self) -> float:
        """Seconds until the shared cooldown ends (0.0: none). One round trip."""
        stats = self._stats()
        if stats is None:
            return self._fallback().cooldown_remaining()
        return float(stats["cooldown_remaining"])

    def snapshot(self) -> LimiterSnapshot:
        """The shared limits and state; ``in_flight`` and ``queued`` are this process's."""
        stats = self._stats()
        if stats is None:
            snap = self._fallback().snapshot()
            return dataclasses.replace(snap, in_flight=self.in_flight, queued=self.queued)
        limits = self._limits
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
        )

    def limits(self) -> dict[str, Any]:
        """The limits as last read from Redis (what :meth:`update` takes)."""
        return dict(self._limits)

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._limits.items() if v not in (None, 0.0)]
        state = " degraded" if self._degraded else ""
        return (
            f"<RedisLimiter key={self.key!r} {' '.join(parts) or 'unlimited'} "
            f"in_flight={self.in_flight} queued={self.queued}{state}>"
        )
