"""Stage 4 (transport), a leaf: tell the admission when its request actually left.

The limiter admits a request at one instant and the request leaves a little
later (the thread has to take the GIL, the body is built, the headers go out).
The limiter allows for a delay up to its jitter allowance; when the request
leaves later than that, :meth:`~ratelimit_sdk.limiter.Permit.mark_sent` lets it
pace the next requests from the real departure. :class:`marking` arms that for
the first request this thread sends; the watched connections
(:mod:`._deadline`) call :func:`request_sent` once its whole request is written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["marking", "request_sent"]

_local = threading.local()


def request_sent() -> None:
    """The request this thread was sending is written: run the armed mark, once."""
    fn: Callable[[], None] | None = getattr(_local, "fn", None)
    if fn is not None:
        _local.fn = None
        fn()


class marking:
    """Arm ``mark`` for the first request this thread sends inside the block.

    ``mark`` ``None``: nothing to arm (a limiter that paces nothing). Whatever
    the exit, what was armed before comes back.
    """

    __slots__ = ("_before", "_mark")

    def __init__(self, mark: Callable[[], None] | None) -> None:
        self._mark = mark
        self._before: Callable[[], None] | None = None

    def __enter__(self) -> None:
        if self._mark is not None:
            self._before = getattr(_local, "fn", None)
            _local.fn = self._mark

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._mark is not None:
            _local.fn = self._before
