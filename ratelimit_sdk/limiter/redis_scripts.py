"""Stage 3b (admission control), shared backend: the Lua scripts and calling them.

Part of :mod:`.redis` (read that first). This module holds no limiter state:

* the defaults and tunables of the Redis limiter (``DEFAULT_*``, the wait slice);
* loading the scripts in ``limiter/lua/`` (each with ``common.lua`` in front);
* :class:`Scripts`: the scripts registered on one client and the one place where
  redis exceptions become :class:`RedisDown` (Redis did not answer: the outage
  policy decides) or :class:`~ratelimit_sdk.errors.BackendError`;
* importing ``redis`` lazily and building a client from a URL whose connections
  bound each read by the calling script call's time left (:func:`call_deadline`),
  and whose one retry (a stale pooled connection) never outlives it;
* packing limits into the scripts' text form and reading them back from a reply;
* the checks of the ``RedisLimiter`` options (key, prefix, seconds, failure policy).

Every ``redis_*`` module logs to the ``ratelimit_sdk.limiter.redis`` logger.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .._windows import check_windows
from ..errors import BackendError, ConfigError

#: The one logger of the Redis backend (all its modules share it).
LOG = logging.getLogger("ratelimit_sdk.limiter.redis")

#: Namespace of every key: ``{prefix}:{<key>}:cfg`` and so on.
DEFAULT_PREFIX = "ratelimit_sdk"
#: Seconds after which the permits of a crashed (non-renewing) holder come back.
DEFAULT_LEASE_TIMEOUT = 30.0
#: Connect and read time-out, in seconds, of a client built from the URL: a hung
#: Redis costs a caller at most about this long before the failure policy applies.
DEFAULT_SOCKET_TIMEOUT = 1.0
#: Seconds between two attempts to reach Redis again while falling back to local limits.
DEFAULT_BACKEND_RETRY = 5.0
#: Fewest seconds a script call is given, however little of its caller's time is left
#: (a try, ``timeout=0``, is one call: it is not refused for want of time to make it).
MIN_CALL = 0.1
#: A call cut shorter than this by its caller's deadline that times out is the caller's
#: time running out (AcquireTimeout), not Redis failing: no outage is declared for it.
#: A try (``timeout=0``) is given this long.
OUTAGE_AFTER = 0.5
#: Longest a release, a settlement or a breaker write waits for Redis in the caller's
#: thread: a release that fails is sent again later (see :mod:`.redis_leases`).
SIDE_CALL = 0.5
#: Seconds between two tries of the releases and ticket cancels that failed in an outage.
PENDING_RETRY = 0.5
#: Longest single sleep, in seconds, of a waiter between two looks at Redis (the cap on
#: what a lost wake-up can cost); also bounded by ``lease_timeout / 3``.
MAX_SLICE = 2.0
#: Seconds a wake-up listener thread stays subscribed with nobody waiting here.
LISTENER_IDLE = 10.0
#: The scripts in ``lua/``; each is sent with ``common.lua`` in front of it.
SCRIPT_NAMES = (
    "acquire",
    "release",
    "renew",
    "cancel",
    "settle",
    "cooldown",
    "update",
    "init",
    "stats",
    "breaker",
    "overrun",
    "sent",
)
LIMIT_FIELDS = (
    "max_concurrent",
    "requests_per_minute",
    "burst",
    "min_interval",
    "tokens_per_minute",
    "margin",
    "windows",
)
SHORT_NAMES = {
    "max_concurrent": "mc",
    "requests_per_minute": "rpm",
    "burst": "burst",
    "min_interval": "mi",
    "tokens_per_minute": "tpm",
    "margin": "mg",
    "windows": "wn",
}
#: Limit fields in a script reply: the seven limits (windows included) and the version.
NCFG = 8
#: A window's kind and alignment as the scripts store them (one letter each).
_KIND_CODES = {"requests": "r", "tokens": "t", "input_tokens": "i", "output_tokens": "o"}
_KIND_NAMES = {v: k for k, v in _KIND_CODES.items()}
#: Breaker fields in a script reply: state, opened at (epoch seconds), failures.
NBRK = 3


@functools.cache
def script_source(name: str) -> str:
    """The text of script ``name``: the allowance constants, ``common.lua``, ``<name>.lua``."""
    lua = importlib.resources.files(__name__.rpartition(".")[0]).joinpath("lua")
    common = lua.joinpath("common.lua").read_text(encoding="utf-8")
    return (
        _allowance_constants()
        + common
        + "\n"
        + lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    )


def _allowance_constants() -> str:
    """The jitter allowance's constants as Lua locals, from :mod:`.bucket` (one source)."""
    from . import bucket

    factor, floor, share = bucket.GROWTH
    values = {
        "COLD_FACTOR": bucket.COLD_FACTOR,
        "STEADY_COST": bucket.STEADY_COST,
        "IDLE_COLD": bucket.IDLE_COLD,
        "HALF_LIFE_US": bucket.HALF_LIFE * 1e6,
        "GROWTH_FACTOR": factor,
        "GROWTH_FLOOR_US": floor * 1e6,
        "GROWTH_SHARE": share,
        "MAX_ALLOWANCE_US": bucket.MAX_ALLOWANCE * 1e6,
    }
    return "".join(f"local {name} = {value!r}\n" for name, value in values.items())


def import_redis() -> Any:
    """The ``redis`` module, or ConfigError naming the extra to install."""
    try:
        return importlib.import_module("redis")
    except ImportError as exc:
        raise ConfigError(
            "backend: the Redis backend needs the redis package: "
            'pip install "ratelimit_sdk[redis]"',
            field="backend",
        ) from exc


def num(value: float | None) -> str:
    """A limit as the scripts store it ("" for no limit)."""
    if value is None:
        return ""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def windows_text(windows: Any) -> str:
    """Windows as the scripts store them: ``kind:N:T:align`` joined by ``;`` ("" for none).

    ``kind`` is ``r``/``t``/``i``/``o`` (requests, tokens, input, output tokens),
    ``T`` in seconds, ``align`` ``s`` (sliding) or ``u`` (UTC).
    """
    return ";".join(
        f"{_KIND_CODES[w.kind]}:{num(w.limit)}:{num(w.per)}:{w.align[0]}"
        for w in check_windows(windows)
    )


def parse_windows(raw: str) -> list[dict[str, Any]]:
    """The windows of :func:`windows_text` back as window dicts."""
    out: list[dict[str, Any]] = []
    for item in raw.split(";") if raw else ():
        kind, limit, per, align = item.split(":")
        n = float(limit)
        out.append(
            {
                _KIND_NAMES[kind]: int(n) if n.is_integer() else n,
                "per": float(per),
                "align": "utc" if align == "u" else "sliding",
            }
        )
    return out


def field_text(name: str, value: Any) -> str:
    """One limit as the scripts store it (windows encoded, see :func:`windows_text`)."""
    return windows_text(value) if name == "windows" else num(value)


def spec_of(limits: dict[str, Any]) -> str:
    """The limits as the scripts store them: ``mc|rpm|burst|mi|tpm|mg|wn``."""
    return "|".join(field_text(name, limits.get(name)) for name in LIMIT_FIELDS)


def text(value: Any) -> str:
    """A reply element as ``str`` (redis-py returns bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_limits(raw: Sequence[Any]) -> tuple[dict[str, Any], str]:
    """The limit fields of a script reply (``NCFG`` of them) -> (limits, version)."""
    mc, rpm, burst, mi, tpm, mg, wn, version = (text(x) for x in raw)
    limits = {
        "max_concurrent": int(float(mc)) if mc else None,
        "requests_per_minute": float(rpm) if rpm else None,
        "burst": int(float(burst)) if burst else None,
        "min_interval": float(mi) if mi else 0.0,
        "tokens_per_minute": float(tpm) if tpm else None,
        "margin": float(mg) if mg else 0.0,
        "windows": parse_windows(wn),
    }
    return limits, version


def check_seconds(name: str, value: Any, *, positive: bool) -> None:
    """Raise ConfigError unless ``value`` is a finite number of seconds (> 0 or >= 0)."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name}: must be a number {bound} (got {value!r})", field=name)


def check_options(
    key: object,
    prefix: object,
    lease_timeout: object,
    socket_timeout: object,
    backend_retry: object,
    on_backend_error: object,
) -> str:
    """Raise ConfigError naming the first bad ``RedisLimiter`` option; return ``key``."""
    if not isinstance(key, str) or not key:
        raise ConfigError(
            "key: the Redis backend needs key= (the name every process sharing "
            f"the budget uses, e.g. the provider name); got {key!r}",
            field="key",
        )
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(f"prefix: must be a non-empty string (got {prefix!r})", field="prefix")
    check_seconds("lease_timeout", lease_timeout, positive=True)
    check_seconds("socket_timeout", socket_timeout, positive=True)
    check_seconds("backend_retry", backend_retry, positive=False)
    if on_backend_error not in ("local", "raise"):
        raise ConfigError(
            f'on_backend_error: must be "local" or "raise" (got {on_backend_error!r})',
            field="on_backend_error",
        )
    return key


_CALL = threading.local()  # .deadline: time.monotonic() by which this thread's call ends


def time_left() -> float | None:
    """Seconds left to the current thread's script call (None: no deadline of its own)."""
    deadline: float | None = getattr(_CALL, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def call_deadline(seconds: float | None) -> Iterator[None]:
    """Within the block, this thread's Redis reads end ``seconds`` from now (None: no change).

    Read by the connections of a client built by :func:`client_from_url`: each
    read waits ``min(socket_timeout, time left)``, and the retry is skipped once
    the time is up.
    """
    if seconds is None:
        yield
        return
    before = getattr(_CALL, "deadline", None)
    _CALL.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _CALL.deadline = before


def _bounded(seconds: float | None) -> float | None:
    """``seconds`` (a socket time-out) cut to the current call's time left."""
    left = time_left()
    if left is None:
        return seconds
    left = max(0.001, left)
    return left if seconds is None else min(seconds, left)


@functools.cache
def _deadline_connection(base: Any) -> Any:
    """``base`` (a redis-py connection class) whose reads and connects honour :func:`time_left`."""

    class DeadlineConnection(base):  # type: ignore[misc]
        socket_connect_timeout: Any
        socket_timeout: Any

        def connect(self) -> None:
            if time_left() is None:
                super().connect()
                return
            configured = self.socket_connect_timeout
            self.socket_connect_timeout = _bounded(configured)
            try:
                super().connect()
            finally:
                self.socket_connect_timeout = configured

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            if "timeout" not in kwargs and time_left() is not None:
                kwargs["timeout"] = _bounded(self.socket_timeout)
            return super().read_response(*args, **kwargs)

    DeadlineConnection.__name__ = DeadlineConnection.__qualname__ = f"Deadline{base.__name__}"
    return DeadlineConnection


def _deadline_retry(redis_mod: Any) -> Any:
    """A retry policy: once after a connection error (a stale pooled connection).

    Never past the call's deadline, and never after a time-out (the command may
    still run in a Redis that hangs).
    """
    retry_cls: Any = importlib.import_module("redis.retry").Retry
    no_backoff = importlib.import_module("redis.backoff").NoBackoff

    class DeadlineRetry(retry_cls):  # type: ignore[misc]
        def call_with_retry(
            self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
        ) -> Any:
            def retryable(error: Exception) -> bool:
                if is_retryable is not None and not is_retryable(error):
                    return False
                left = time_left()
                return left is None or left > MIN_CALL / 2

            return super().call_with_retry(do, fail, retryable, with_failure_count)

    return DeadlineRetry(no_backoff(), 1, supported_errors=(redis_mod.exceptions.ConnectionError,))


def client_from_url(redis_mod: Any, url: str, timeout: float) -> Any:
    """A ``redis.Redis`` for ``url`` with ``timeout``-second time-outs and one quick retry.

    Its connections bound every read and connect by the time left to the calling
    script call (:func:`call_deadline`); the retry follows a connection error only
    (never a time-out) and only while time is left.
    """
    try:
        pool = redis_mod.ConnectionPool.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=_deadline_retry(redis_mod),
        )
    except ValueError as exc:
        # redis-py's message names the scheme, never the password.
        raise ConfigError(f"backend: not a usable Redis URL ({exc})", field="backend") from exc
    pool.connection_class = _deadline_connection(pool.connection_class)
    client = redis_mod.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


class RedisDown(Exception):
    """Redis did not answer (connection, time-out, read-only replica): the policy decides."""

    def __init__(self, cause: BaseException, *, timed_out: bool = False) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.timed_out = timed_out  # no answer in time (else: refused, reset, read-only)


class Scripts:
    """The limiter scripts registered on one client; :meth:`call` runs one of them.

    Thread-safe (redis-py's client is). ``key`` only names the limiter in errors.
    """

    def __init__(self, client: Any, redis_mod: Any, key: str) -> None:
        self.client = client
        self.key = key
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}
        self._redis_error: type[Exception] = redis_mod.exceptions.RedisError
        self._timeout_error: type[Exception] = redis_mod.exceptions.TimeoutError
        self._down_errors: tuple[type[Exception], ...] = (
            redis_mod.exceptions.ConnectionError,
            redis_mod.exceptions.TimeoutError,
            redis_mod.exceptions.ReadOnlyError,
            redis_mod.exceptions.ClusterDownError,
            redis_mod.exceptions.TryAgainError,
        )

    def call(
        self, name: str, keys: Sequence[str], args: Sequence[Any], timeout: float | None = None
    ) -> Any:
        """Run script ``name`` (one EVALSHA; loaded again after NOSCRIPT).

        ``timeout``: seconds the call may take at most (with a client built from
        the URL; None: the client's socket time-outs). Raises :class:`RedisDown`
        when Redis did not answer, BackendError when it refused the script; never
        a ``redis`` exception.
        """
        try:
            with call_deadline(timeout):
                return self._scripts[name](keys=keys, args=args)
        except self._down_errors as exc:
            raise RedisDown(exc, timed_out=isinstance(exc, self._timeout_error)) from exc
        except self._redis_error as exc:
            raise BackendError(
                f"Redis refused the {name} script of limiter {self.key!r}: {exc}"
            ) from exc
