"""Stage 3a (per-provider gate): a thin adapter over ``pybreaker.CircuitBreaker``.

The HTTP request is never wrapped in ``CircuitBreaker.call()``: pybreaker holds
its lock for the whole wrapped call (danielfm/pybreaker#3), which would run every
request to a provider one at a time, and it counts KeyboardInterrupt as a
failure. Instead the guard asks :meth:`Breaker.allow` before the request and
feeds the classified outcome in afterwards (:meth:`Breaker.record`), which
replays it through pybreaker in microseconds. In half-open exactly one probe
goes through; everybody else is told "open" until the probe's outcome is in.

With a Redis backend the state is shared by every process through
:class:`SharedBreakerStorage`, a pybreaker storage over the provider limiter's
*breaker cell* (``RedisLimiter.shared_breaker_cell()``): the state, when it
opened and the failure count live in the limiter's own Redis keys, every limiter
script reply refreshes this process's copy, and state changes are published on
the limiter's channel. Reading the state (``allow()``, ``state``) never costs a
round trip, nor does a success on a closed breaker without failures; a failure
or a state change costs one, made after pybreaker's lock is released.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

import pybreaker

from ._redact import get_logger
from .config import BreakerConfig
from .models import BreakerVote

__all__ = ["Breaker", "BreakerCell", "Probe", "SharedBreakerStorage", "shared_storage"]

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


class BreakerCell(Protocol):
    """What :class:`SharedBreakerStorage` needs from a shared backend (a Redis limiter's cell).

    ``get()`` returns ``(state, opened_at epoch seconds or None, failures)`` from a
    local copy, without I/O; ``change(...)`` writes a change (one round trip) and
    returns the state after it, never raising.
    """

    def get(self) -> tuple[str, float | None, int]:
        """The state as last known here (no I/O)."""
        ...

    def change(
        self,
        *,
        add_failures: int = 0,
        reset_failures: bool = False,
        state: str | None = None,
        opened_at: float | None = None,
        refresh: bool = True,
    ) -> tuple[str, float | None, int]:
        """Write a change; the state after it (``refresh=False``: not adopted yet)."""
        ...

    def refresh(self, raw: Sequence[Any]) -> None:
        """Adopt ``(state, opened_at, failures)`` as the copy."""
        ...


class SharedBreakerStorage(pybreaker.CircuitBreakerStorage):
    """Pybreaker state read from a shared :class:`BreakerCell`'s local copy, written through it.

    pybreaker calls the storage while holding its lock, so writes are only noted
    there (and seen at once by this process's reads); :meth:`flush`, called by
    :class:`Breaker` after pybreaker returns, sends them in one round trip. Only
    changes are written: a failure, a state change, a reset of a non-zero count.
    The half-open success counter is this process's own.
    """

    def __init__(self, cell: BreakerCell, name: str) -> None:
        super().__init__(name)
        self._cell = cell
        self._lock = threading.Lock()
        self._ops: list[tuple[str, Any]] = []  # noted, not sent yet
        self._sending: list[list[tuple[str, Any]]] = []  # sent, reply not in yet
        self._successes = 0

    def _view(self) -> tuple[str, float | None, int]:
        with self._lock:  # the copy and the changes not in it yet, as one
            state, opened_at, failures = self._cell.get()
            ops = [op for batch in self._sending for op in batch] + self._ops
        for kind, value in ops:
            if kind == "incr":
                failures += 1
            elif kind == "reset":
                failures = 0
            elif kind == "state":
                state = value
            else:
                opened_at = value
        return state, opened_at, failures

    def _note(self, kind: str, value: Any = None) -> None:
        with self._lock:
            self._ops.append((kind, value))

    @property
    def state(self) -> str:
        """The breaker state (``closed``, ``open``, ``half-open``), as known here."""
        return self._view()[0]

    @state.setter
    def state(self, state: str) -> None:
        if state != self._view()[0]:
            self._note("state", state)

    def increment_counter(self) -> None:
        """Count one more consecutive failure (shared)."""
        self._note("incr")

    def reset_counter(self) -> None:
        """Forget the failures (a write only when there are some)."""
        if self._view()[2]:
            self._note("reset")

    def increment_success_counter(self) -> None:
        """Count one more success in half-open (this process's own)."""
        self._successes += 1

    def reset_success_counter(self) -> None:
        """Forget the half-open successes."""
        self._successes = 0

    @property
    def counter(self) -> int:
        """Consecutive failures, shared by every process."""
        return self._view()[2]

    @property
    def success_counter(self) -> int:
        """Half-open successes of this process."""
        return self._successes

    @property
    def opened_at(self) -> datetime | None:
        """When the breaker last opened (UTC)."""
        stamp = self._view()[1]
        return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._note("opened", value.timestamp())

    def flush(self) -> None:
        """Send the changes noted so far (one round trip; nothing to send: none)."""
        with self._lock:
            if not self._ops:
                return
            batch, self._ops = self._ops, []
            self._sending.append(batch)
        add, reset, state, opened_at = 0, False, None, None
        for kind, value in batch:
            if kind == "incr":
                add += 1
            elif kind == "reset":
                add, reset = 0, True
            elif kind == "state":
                state = value
            else:
                opened_at = value
        fields = None
        try:
            fields = self._cell.change(
                add_failures=add,
                reset_failures=reset,
                state=state,
                opened_at=opened_at,
                refresh=False,
            )
        finally:
            with self._lock:  # adopt the result and drop the batch at once
                self._sending.remove(batch)
                if fields is not None:
                    self._cell.refresh(fields)


def shared_storage(cell: BreakerCell, name: str) -> SharedBreakerStorage:
    """The pybreaker storage sharing breaker ``name`` through ``cell`` (see the module doc)."""
    return SharedBreakerStorage(cell, name)


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
        self._send()
        self._flush()
        return Probe(True)

    def record(self, vote: BreakerVote, probe: Probe, error: BaseException | None = None) -> None:
        """Feed one attempt's outcome in (microseconds; the request is already over).

        A success on a closed breaker with no failures counted changes nothing:
        it is not replayed at all (no lock, no storage write).
        """
        if (
            vote is BreakerVote.SUCCESS
            and not probe.is_probe
            and self._cb.fail_counter == 0
            and self._cb.current_state == pybreaker.STATE_CLOSED
        ):
            return
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
            self._send()
            self._flush()

    def reconfigure(self, config: BreakerConfig) -> None:
        """Apply new ``fail_max`` / ``reset_timeout`` (hot)."""
        self._cb.fail_max = config.fail_max
        self._cb.reset_timeout = config.reset_timeout

    def _send(self) -> None:
        """Write the state changes noted by a shared storage (outside pybreaker's lock)."""
        storage = self._cb._state_storage
        if isinstance(storage, SharedBreakerStorage):
            storage.flush()

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
