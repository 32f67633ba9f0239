"""Stage 3b, shared backend: the provider's circuit-breaker state, kept in the limiter's keys.

Part of :mod:`.redis` (read that first). A :class:`SharedBreakerCell` is one
process's copy of the breaker state of one provider (state, when it opened,
consecutive failures), stored in Redis as fields ``bs``, ``bo``, ``bf`` of the
limiter's ``:cfg`` hash, so every process sharing the limiter shares one breaker.

Reading costs nothing: every acquire / try_admit / availability / stats reply of
the limiter carries the three fields and refreshes the copy, and a state change
is published on the limiter's channel (``"b state|opened_at|failures"``), which
this process listens to once a cell exists. Writing (:meth:`SharedBreakerCell.change`)
is one script call, made only when something changes: a failure, a state change,
or resetting a non-zero failure count. When Redis is unreachable the change
applies to the local copy only (and the limiter's outage policy logs it).

The ``pybreaker`` adapter over this interface lives in :mod:`ratelimit_sdk.breaker`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..errors import BackendError
from .redis_scripts import LOG, SIDE_CALL, RedisDown, text
from .redis_store import RedisStore

__all__ = ["BreakerFields", "SharedBreakerCell"]


class BreakerFields(NamedTuple):
    """One breaker state: ``state`` (closed/open/half-open), ``opened_at`` (epoch s), failures."""

    state: str
    opened_at: float | None
    failures: int


CLOSED = BreakerFields("closed", None, 0)


def _parse(raw: Sequence[Any]) -> BreakerFields:
    state, opened, failures = (text(x) for x in raw)
    return BreakerFields(state or "closed", float(opened) if opened else None, int(failures or 0))


class SharedBreakerCell:
    """One process's copy of one shared breaker state, and the way to change it.

    Thread-safe; its lock is never held across a call to Redis.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._fields = CLOSED
        #: Script calls made to change the state (tests and benchmarks read it).
        self.writes = 0

    @property
    def name(self) -> str:
        """The limiter's key (the provider's name in a Client)."""
        return self._store.key

    def get(self) -> BreakerFields:
        """The state as last heard from Redis (or changed here). No round trip."""
        return self._fields

    def refresh(self, raw: Sequence[Any]) -> None:
        """Adopt the three breaker fields of a script reply (or a :class:`BreakerFields`)."""
        fields = raw if isinstance(raw, BreakerFields) else _parse(raw)
        if fields != self._fields:
            with self._lock:
                self._fields = fields

    def refresh_text(self, message: str) -> None:
        """Adopt a published ``"state|opened_at|failures"``."""
        parts = message.split("|")
        if len(parts) == 3:
            self.refresh(parts)

    def load(self) -> None:
        """Read the stored state once (when the cell is made)."""
        self.change()

    def change(
        self,
        *,
        add_failures: int = 0,
        reset_failures: bool = False,
        state: str | None = None,
        opened_at: float | None = None,
        refresh: bool = True,
    ) -> BreakerFields:
        """Write a change (one script call) and return the state after it.

        ``add_failures``: failures to add; ``reset_failures``: set the count to 0
        first; ``state`` / ``opened_at``: the new values (``None``: keep). A state
        change is published to the other processes. ``refresh=False``: leave the
        copy as it is (the caller adopts the result with :meth:`refresh` when it
        is ready to). Never raises: when Redis does not answer (within
        ``SIDE_CALL`` seconds; not tried while an outage is known), the change
        applies to this process's copy only.
        """
        store = self._store
        args = [
            store.keys.channel,
            max(0, add_failures),
            state or "",
            "" if opened_at is None else repr(float(opened_at)),
            "1" if reset_failures else "0",
        ]
        self.writes += 1
        raw: Any = None
        try:
            if store.in_outage:  # known down: do not make the caller wait for it
                raise RedisDown(ConnectionError("Redis unreachable (outage known)"))
            raw = store.run("breaker", [store.keys.cfg], args, SIDE_CALL)
        except (RedisDown, BackendError) as exc:
            if isinstance(exc, RedisDown):
                store.note_down(exc, "sharing the breaker state")
            else:
                LOG.warning("could not share the breaker state of %r: %s", store.key, exc)
            old = self._fields
            failures = 0 if reset_failures else old.failures
            fields = BreakerFields(
                state or old.state,
                old.opened_at if opened_at is None else opened_at,
                failures + max(0, add_failures),
            )
        else:
            store.after_success()
            fields = _parse(raw)
        if refresh:
            self.refresh(fields)
        return fields
