"""Testing (fake provider side): RecordedRequest, what a FakeProvider saw of one request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "RecordedRequest"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received: a frozen snapshot, safe to keep and share.

    Times are ``time.monotonic()`` seconds: ``arrived`` when its head was read,
    ``started`` when it was admitted (``None``: rejected before, e.g. by a limit),
    ``ended`` when its answer was sent or the connection dropped (``None``: still
    in progress when the snapshot was taken). ``status`` is ``None`` when no
    HTTP answer was sent (``reset``, ``hang``). ``kind`` says what happened:
    ``"ok"``, ``"stream"``, ``"concurrency_limit"``, ``"rate_limit"``, a
    scripted action's kind (``"status"``, ``"hang"``, ``"reset"``,
    ``"garbage"``), ``"unauthorized"``, ``"bad_request"``, ``"not_found"``,
    ``"reply_error"``, ``"aborted"`` or ``"pending"``. ``connection`` numbers
    the TCP connection (equal numbers: the same kept-alive connection).

    ``headers`` keeps the names and values as sent (the Authorization header
    too, so a test can check where a key went); the repr never shows headers
    or body.
    """

    method: str
    path: str
    headers: Mapping[str, str] = field(repr=False)
    body: Any = field(repr=False)
    arrived: float
    started: float | None
    ended: float | None
    status: int | None
    kind: str
    connection: int

    def header(self, name: str) -> str | None:
        """Return the value of header ``name`` (any letter case), or ``None``."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def duration(self) -> float | None:
        """Seconds from arrival to the end of the answer (``None`` while in progress)."""
        return None if self.ended is None else self.ended - self.arrived


class Entry:
    """Internal: the mutable record behind a RecordedRequest. FakeProvider's lock guards it."""

    __slots__ = (
        "admitted",
        "arrived",
        "body",
        "connection",
        "ended",
        "headers",
        "kind",
        "method",
        "path",
        "started",
        "status",
    )

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any,
        arrived: float,
        connection: int,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.arrived = arrived
        self.connection = connection
        self.admitted = False
        self.started: float | None = None
        self.ended: float | None = None
        self.status: int | None = None
        self.kind = "pending"

    def snapshot(self) -> RecordedRequest:
        """Copy this record into a frozen RecordedRequest (call it with the lock held)."""
        return RecordedRequest(
            method=self.method,
            path=self.path,
            headers=dict(self.headers),
            body=self.body,
            arrived=self.arrived,
            started=self.started,
            ended=self.ended,
            status=self.status,
            kind=self.kind,
            connection=self.connection,
        )
