"""Test helper: a real ``redis-server`` on a free 127.0.0.1 port, in a temporary directory.

Never touches the machine's own Redis (6379): every server here is started by the
tests, with persistence off (``--save "" --appendonly no``), and killed at the end.
Tests that need one are marked ``@pytest.mark.redis`` and are skipped, with the
reason, when no ``redis-server`` binary (or no ``redis`` package) is installed.

Fixtures (imported into ``tests/conftest.py``):

- ``redis_server``: one server for the whole session.
- ``redis_url``: its URL.
- ``redis_key``: a fresh key per test, so tests never see each other's state.
- ``own_redis_server``: a server of its own for one test, which may kill and
  restart it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "REDIS_BINARY",
    "RedisServer",
    "own_redis_server",
    "redis_key",
    "redis_server",
    "redis_url",
    "skip_reason",
]

REDIS_BINARY = shutil.which("redis-server")


def skip_reason() -> str | None:
    """Why the Redis tests cannot run here, or None when they can."""
    if REDIS_BINARY is None:
        return "no redis-server binary on PATH (install redis-server to run the Redis tests)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return 'the redis package is missing (pip install "ratelimit_sdk[redis]")'
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process we own: ``start()``, ``kill()`` (SIGKILL), ``stop()``.

    The port stays the same across restarts, so clients configured with ``url``
    find the server again. Not thread-safe; drive it from the test's thread.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        assert REDIS_BINARY is not None
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [
                REDIS_BINARY,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None:
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited at start on port {self.port}:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL the server (a crash: nothing is saved) and wait for it to be gone."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by the session's Redis tests (each test uses its own key)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    for attempt in range(3):  # the free port may be taken between probe and bind
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
            server = RedisServer(server.directory)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def redis_key() -> str:
    """A key nobody else uses (limiter state never leaks between tests)."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone: it may kill and restart it."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = RedisServer(tmp_path)
    for attempt in range(3):
        try:
            server.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
            server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
