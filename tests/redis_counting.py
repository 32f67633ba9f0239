"""Test helper: count the round trips a ``redis.Redis`` client makes.

Use it around the code whose cost you want to pin down::

    from redis_counting import count_round_trips

    lim = Limiter(max_concurrent=2, backend=redis_url, key=redis_key)
    lim.acquire().release()                     # warm up: scripts loaded, connected
    with count_round_trips(lim.redis_client) as trips:
        lim.acquire().release()
    assert trips.count == 2, trips.commands

For a ``Client``, count on the provider's limiter client:
``count_round_trips(client.guard("p").limiter.redis_client)``.

What is counted: every command the client sends through ``execute_command``
(scripts' ``EVALSHA``, and a ``SCRIPT LOAD`` after ``NOSCRIPT``); the SDK sends
no pipelines, so each is one round trip. By default only the commands sent from
the thread that entered the ``with`` block count, so the limiter's own daemon
threads (the lease renewer, the pub/sub wake-up listener, which has its own
connection and is never counted) cannot make a test flaky; pass
``all_threads=True`` to count every thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RoundTrips", "count_round_trips"]


@dataclass
class RoundTrips:
    """What :func:`count_round_trips` saw: the command names, in order."""

    commands: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Round trips made so far."""
        return len(self.commands)


@contextmanager
def count_round_trips(client: Any, *, all_threads: bool = False) -> Iterator[RoundTrips]:
    """Count the round trips ``client`` makes inside the ``with`` block (see the module doc)."""
    seen = RoundTrips()
    original = client.execute_command
    me = threading.get_ident()
    lock = threading.Lock()

    def counting(*args: Any, **options: Any) -> Any:
        if all_threads or threading.get_ident() == me:
            with lock:
                seen.commands.append(str(args[0]) if args else "?")
        return original(*args, **options)

    client.execute_command = counting
    try:
        yield seen
    finally:
        del client.execute_command  # the class's method again
