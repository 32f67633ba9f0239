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
  No ``redis`` exception type ever leaves this module.

``redis`` is imported here only, when the first ``RedisLimiter`` is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.resources
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import AcquireTimeout, BackendError, ConfigError, RequestTooLargeError
from ..models import LimiterSnapshot
from .base import Limiter, Permit, check_limits, check_pool_units
from .memory import MemoryLimiter

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_BACKEND_RETRY",
    "DEFAULT_LEASE_TIMEOUT",
    "DEFAULT_PREFIX",
    "DEFAULT_SOCKET_TIMEOUT",
    "RedisLimiter",
]

_log = logging.getLogger(__name__)

#: Namespace of every key: ``{prefix}:{<key>}:cfg`` and so on.
DEFAULT_PREFIX = "ratelimit_sdk"
#: Seconds after which the permits of a crashed (non-renewing) holder come back.
DEFAULT_LEASE_TIMEOUT = 30.0
#: Connect and read time-out, in seconds, of a client built from the URL: a hung
#: Redis costs a caller at most about this long before the failure policy applies.
DEFAULT_SOCKET_TIMEOUT = 1.0
#: Seconds between two attempts to reach Redis again while falling back to local limits.
DEFAULT_BACKEND_RETRY = 5.0
#: Longest single sleep, in seconds, of a waiter between two looks at Redis (the cap on
#: what a lost wake-up can cost); also bounded by ``lease_timeout / 3``.
_MAX_SLICE = 2.0
#: Seconds a wake-up listener thread stays subscribed with nobody waiting here.
_LISTENER_IDLE = 10.0
#: The scripts in ``lua/``; each is sent with ``common.lua`` in front of it.
_SCRIPTS = (
    "acquire",
    "release",
    "renew",
    "cancel",
    "settle",
    "cooldown",
    "update",
    "init",
    "stats",
)
_FIELDS = (
    "max_concurrent",
    "requests_per_minute",
    "burst",
    "min_interval",
    "tokens_per_minute",
    "margin",
)
_SHORT = {
    "max_concurrent": "mc",
    "requests_per_minute": "rpm",
    "burst": "burst",
    "min_interval": "mi",
    "tokens_per_minute": "tpm",
    "margin": "mg",
}
#: Limit fields in a script reply: the six limits and the version.
_NCFG = 7


@functools.cache
def _script_source(name: str) -> str:
    lua = importlib.resources.files(__name__.rpartition(".")[0]).joinpath("lua")
    common = lua.joinpath("common.lua").read_text(encoding="utf-8")
    return common + "\n" + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _import_redis() -> Any:
    try:
        return importlib.import_module("redis")
    except ImportError as exc:
        raise ConfigError(
            "backend: the Redis backend needs the redis package: "
            'pip install "ratelimit_sdk[redis]"',
            field="backend",
        ) from exc


def _num(value: float | None) -> str:
    """A limit as the scripts store it ("" for no limit)."""
    if value is None:
        return ""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _spec(limits: dict[str, Any]) -> str:
    return "|".join(_num(limits[name]) for name in _FIELDS)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_limits(raw: Sequence[Any]) -> tuple[dict[str, Any], str]:
    """The limit fields of a script reply (``_NCFG`` of them) -> (limits, version)."""
    mc, rpm, burst, mi, tpm, mg, version = (_text(x) for x in raw)
    limits = {
        "max_concurrent": int(float(mc)) if mc else None,
        "requests_per_minute": float(rpm) if rpm else None,
        "burst": int(float(burst)) if burst else None,
        "min_interval": float(mi) if mi else 0.0,
        "tokens_per_minute": float(tpm) if tpm else None,
        "margin": float(mg) if mg else 0.0,
    }
    return limits, version


class _Down(Exception):
    """Redis did not answer (connection, time-out, read-only replica): the policy decides."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Waiter:
    """One thread of this process waiting for admission."""

    __slots__ = ("arrival", "cond", "id", "watch_cfg")

    def __init__(self, arrival: float) -> None:
        self.cond: threading.Condition | None = None  # made when it first has to wait
        self.arrival = arrival
        self.id = os.urandom(10).hex()
        self.watch_cfg = False  # sleeping on a timer: only a limits change should wake it


class _RedisPermit(Permit):
    """A permit backed by a lease in Redis (and one in the pool's, for a pool member)."""

    __slots__ = ("lease", "pool_units")

    def __init__(
        self, owner: RedisLimiter, units: int, tokens: int, lease: str, pool_units: int
    ) -> None:
        super().__init__(owner, units, tokens)
        self.lease = lease
        self.pool_units = pool_units


class RedisLimiter(Limiter):
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
        if not isinstance(key, str) or not key:
            raise ConfigError(
                "key: the Redis backend needs key= (the name every process sharing "
                f"the budget uses, e.g. the provider name); got {key!r}",
                field="key",
            )
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(
                f"prefix: must be a non-empty string (got {prefix!r})", field="prefix"
            )
        _check_seconds("lease_timeout", lease_timeout, positive=True)
        _check_seconds("socket_timeout", socket_timeout, positive=True)
        _check_seconds("backend_retry", backend_retry, positive=False)
        if on_backend_error not in ("local", "raise"):
            raise ConfigError(
                f'on_backend_error: must be "local" or "raise" (got {on_backend_error!r})',
                field="on_backend_error",
            )
        if pool is not None:
            if not isinstance(pool, RedisLimiter):
                raise ConfigError("pool: must be a Redis Limiter", field="pool")
            if pool._pool is not None:
                raise ConfigError("pool: a pool cannot itself belong to a pool", field="pool")
        redis_mod = _import_redis()
        self._redis_error: type[Exception] = redis_mod.exceptions.RedisError
        self._down_errors: tuple[type[Exception], ...] = (
            redis_mod.exceptions.ConnectionError,
            redis_mod.exceptions.TimeoutError,
            redis_mod.exceptions.ReadOnlyError,
            redis_mod.exceptions.ClusterDownError,
            redis_mod.exceptions.TryAgainError,
        )
        self._owns_client = redis_client is None
        if redis_client is None:
            redis_client = _client_from_url(redis_mod, backend, float(socket_timeout))
        self._client: redis.Redis = redis_client
        self._scripts = {
            name: redis_client.register_script(_script_source(name)) for name in _SCRIPTS
        }

        self.key = key
        self.prefix = prefix
        self.clock = clock if clock is not None else SYSTEM_CLOCK
        self.lease_timeout = float(lease_timeout)
        self.on_backend_error = on_backend_error
        self.backend_retry = float(backend_retry)
        base = f"{prefix}:{{{key}}}"
        self._keys = tuple(f"{base}:{part}" for part in ("cfg", "st", "leases", "q", "qx"))
        self._channel = f"{base}:wake"
        self._limits: dict[str, Any] = {
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
        self._raw_seen: tuple[Any, ...] = ()
        self._slice = min(_MAX_SLICE, max(0.05, self.lease_timeout / 3.0))
        self._lease_us = int(self.lease_timeout * 1e6)
        self._ticket_us = int((3.0 * self._slice + 1.0) * 1e6)  # outlives 3 missed looks

        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()
        self._held: dict[str, tuple[int, int]] = {}  # lease id -> (units, pool units)
        self._in_flight = 0
        self._member_units = 0  # pool units held here by members' permits (for a pool)
        self._gen_any = 0
        self._gen_cfg = 0
        self._closed = False
        self._orphans: deque[Permit] = deque()
        self._listeners: tuple[Callable[[], None], ...] = ()
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()
        self._renewer: threading.Thread | None = None
        self._renew_cond = threading.Condition(self._lock)
        self._renew_paused = False  # tests: simulate a holder that stopped renewing
        self._offset: float | None = None  # server seconds minus local monotonic seconds
        self._local: MemoryLimiter | None = None
        self._outage = False  # Redis failed and has not answered since (one WARNING each)
        self._degraded = False  # ... and this process uses its own limits meanwhile
        self._initialized = False
        self._probe_at = 0.0
        self._pending: dict[str, Any] = {}
        self._pending_cool_until: float | None = None

        self._pool: RedisLimiter | None = pool
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

    # -- admission ---------------------------------------------------------------------

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

    def _channels(self) -> list[str]:
        if self._pool is None:
            return [self._channel]
        return [self._channel, self._pool._channel]

    def _cancel_keys(self) -> list[str]:
        keys = [self._keys[3], self._keys[4]]
        if self._pool is not None:
            keys += [self._pool._keys[3], self._pool._keys[4]]
        return keys

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

    # -- wake-ups -------------------------------------------------------------------------

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

    def _tell_listeners(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:  # a listener must not break a release
                _log.exception("release listener of limiter %r failed", self.key)

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


def _check_seconds(name: str, value: Any, *, positive: bool) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name}: must be a number {bound} (got {value!r})", field=name)


def _client_from_url(redis_mod: Any, url: str, timeout: float) -> Any:
    retry = importlib.import_module("redis.retry").Retry
    no_backoff = importlib.import_module("redis.backoff").NoBackoff
    try:
        return redis_mod.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=retry(no_backoff(), 1),  # one quick retry: a stale pooled connection
        )
    except ValueError as exc:
        # redis-py's message names the scheme, never the password.
        raise ConfigError(f"backend: not a usable Redis URL ({exc})", field="backend") from exc
