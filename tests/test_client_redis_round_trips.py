"""Redis round trips of one uncontended ``Client.chat``, counted at redis-py's connections.

Every command any redis-py connection sends from the calling thread is one round
trip (``Connection.send_packed_command``: a pipeline would be one too). Admission
is one script call (permit, cooldown and breaker state together), release and the
outcome one more; the breaker is read from the limiter's replies, and a success on
a closed breaker writes nothing. Whatever the chain's length, a call whose first
provider admits it at once costs at most 2.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ratelimit_sdk import Client
from ratelimit_sdk.testing import FakeProvider

pytestmark = pytest.mark.redis

redis_connection = pytest.importorskip("redis.connection")


@contextmanager
def socket_round_trips() -> Iterator[list[str]]:
    """The commands this thread sends through any redis-py connection inside the block."""
    sent: list[str] = []
    cls = redis_connection.AbstractConnection
    original = cls.send_packed_command
    me = threading.get_ident()

    def counting(self: Any, command: Any, check_health: bool = True) -> Any:
        if threading.get_ident() == me:
            first = command[0] if isinstance(command, list) and command else command
            sent.append(_describe(bytes(first)))
        return original(self, command, check_health)

    cls.send_packed_command = counting
    try:
        yield sent
    finally:
        cls.send_packed_command = original


def _describe(packed: bytes) -> str:
    """``EVALSHA 8a9bffeb``, ``GET``... from a packed RESP command (for failure messages)."""
    parts = [p for p in packed.split(b"\r\n") if p and p[:1] not in (b"*", b"$")]
    return " ".join(p.decode("latin-1", "replace")[:8] for p in parts[:3])


def _client(url: str, prefix: str, fakes: list[FakeProvider]) -> Client:
    providers = [
        {
            "name": f"p{i}",
            "base_url": fake.base_url,
            "model": "m",
            "priority": i,
            "limits": {"max_concurrent": 2, "requests_per_minute": 6000, "burst": 10},
            "timeout": {"connect": 2, "read": 5},
        }
        for i, fake in enumerate(fakes)
    ]
    return Client({"backend": url, "key_prefix": prefix, "providers": providers})


@pytest.mark.parametrize("chain_length", [1, 4])
def test_an_uncontended_chat_costs_at_most_two_round_trips(
    redis_url: str, redis_key: str, chain_length: int
) -> None:
    fakes = [FakeProvider(f"p{i}").start() for i in range(chain_length)]
    client = _client(redis_url, redis_key, fakes)
    try:
        for _ in range(3):  # warm up: scripts loaded, connections open, breaker state read
            client.chat("warm up", timeout=10)
        for _ in range(5):
            with socket_round_trips() as sent:
                response = client.chat("hello", timeout=10)
            assert response.provider == "p0"
            assert len(sent) <= 2, sent
    finally:
        client.close()
        for fake in fakes:
            fake.stop()
