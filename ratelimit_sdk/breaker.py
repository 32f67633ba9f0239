"""Stage 3a (per-provider gate): a thin adapter over ``pybreaker.CircuitBreaker``.

The HTTP request is never wrapped in ``CircuitBreaker.call()``: pybreaker holds
its lock for the whole wrapped call (danielfm/pybreaker#3), which would run every
request to a provider one at a time, and it counts KeyboardInterrupt as a
failure. Instead the guard asks :meth:`Breaker.allow` before the request and
feeds the classified outcome in afterwards (:meth:`Breaker.record`), which
replays it through pybreaker in microseconds. In half-open exactly one probe
goes through; everybody else is told "open" until the probe's outcome is in.

With a Redis backend the state lives in pybreaker's ``CircuitRedisStorage`` so
every process sees one breaker per provider.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pybreaker

from ._redact import get_logger
from .config import BreakerConfig
from .models import BreakerVote

__all__ = ["Breaker", "Probe", "shared_storage"]

_log = get_logger("ratelimit_sdk.breaker")

StateListener = Callable[[str, str, str], None]


class _Failure(Exception):
    """Stands for a failed attempt when the outcome is replayed into pybreaker."""


def _noop() -> None:
    return None


def _fail(exc: BaseException) -> None:
    raise _Failure(str(exc)) from None


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", None) or "closed"
        new = getattr(new_state, "name", None) or "closed"
        if old != new:
            self._owner._pending.append((old, new))


class _QuietLogger:
    """Stands in for pybreaker's storage logger: Redis trouble at DEBUG, not a traceback.

    The limiter already warns once per outage; a traceback per call helps nobody.
    """

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        _log.debug("breaker storage: " + msg, *args, exc_info=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(_log, name)


def shared_storage(redis_client: Any, namespace: str) -> Any:
    """Build pybreaker's ``CircuitRedisStorage``: one breaker state for every process.

    ``None`` (in-process state) when Redis cannot be reached right now.
    """
    try:
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, redis_client, namespace=namespace
        )
    except Exception as exc:  # redis errors: the breaker works locally instead
        _log.warning("breaker %s: Redis unreachable (%s); using in-process state", namespace, exc)
        return None
    storage.logger = _QuietLogger()  # type: ignore[assignment]
    return storage


class Probe:
    """Permission to make one attempt; says whether it is the half-open probe."""

    __slots__ = ("is_probe",)

    def __init__(self, is_probe: bool) -> None:
        self.is_probe = is_probe


_OPEN_PROBE = Probe(False)


class Breaker:
    """One provider's circuit breaker. Thread-safe; never held across a request.

    ``on_change(provider, old, new)`` is called outside every lock after a
    state change (``closed`` / ``open`` / ``half-open``).
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        storage: Any = None,
        on_change: StateListener | None = None,
    ) -> None:
        self.name = name
        self._pending: deque[tuple[str, str]] = deque()
        self._on_change = on_change
        self._lock = threading.Lock()
        self._probe_out = False
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.fail_max,
            reset_timeout=config.reset_timeout,
            listeners=[_Listener(self)],
            state_storage=storage,
            name=name,
        )

    # -- the gate -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._cb.current_state)

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0.0 if not open)."""
        if self._cb.current_state != pybreaker.STATE_OPEN:
            return 0.0
        opened_at = self._cb._state_storage.opened_at
        if opened_at is None:
            return 0.0
        left = (opened_at - datetime.now(timezone.utc)).total_seconds() + self._cb.reset_timeout
        return max(0.0, left)

    def would_allow(self) -> bool:
        """Whether :meth:`allow` would say yes now (takes nothing)."""
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return True
        if state == pybreaker.STATE_OPEN and self.retry_after() > 0:
            return False
        return not self._probe_out

    def allow(self) -> Probe | None:
        """Permission for one attempt, or ``None`` while the breaker is open.

        In half-open (or open past ``reset_timeout``) only one caller gets a probe.
        """
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return _OPEN_PROBE
        if state == pybreaker.STATE_OPEN and self.retry_after() > 0:
            return None
        with self._lock:
            if self._probe_out:
                return None
            self._probe_out = True
        if self._cb.current_state == pybreaker.STATE_OPEN:
            self._cb.half_open()
        self._flush()
        return Probe(True)

    def record(self, vote: BreakerVote, probe: Probe, error: BaseException | None = None) -> None:
        """Feed one attempt's outcome in (microseconds; the request is already over)."""
        try:
            if vote is BreakerVote.SUCCESS:
                self._cb.call(_noop)
            elif vote is BreakerVote.FAILURE:
                self._cb.call(_fail, error or RuntimeError("failed"))
        except (_Failure, pybreaker.CircuitBreakerError):
            pass
        finally:
            if probe.is_probe:
                with self._lock:
                    self._probe_out = False
            self._flush()

    def reconfigure(self, config: BreakerConfig) -> None:
        """Apply new ``fail_max`` / ``reset_timeout`` (hot)."""
        self._cb.fail_max = config.fail_max
        self._cb.reset_timeout = config.reset_timeout

    def _flush(self) -> None:
        while self._pending:
            try:
                old, new = self._pending.popleft()
            except IndexError:  # another thread took it
                return
            level = _log.warning if new == "open" else _log.info
            level("breaker %s: %s -> %s", self.name, old, new)
            if self._on_change is not None:
                self._on_change(self.name, old, new)

    def __repr__(self) -> str:
        return f"<Breaker {self.name} {self.state}>"
