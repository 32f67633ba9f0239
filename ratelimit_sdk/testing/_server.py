"""Testing (fake provider side): the loopback HTTP server under FakeProvider, and its handler.

A ``ThreadingHTTPServer`` bound to 127.0.0.1 on a free port: one daemon thread
per connection, HTTP/1.1 keep-alive, TCP_NODELAY on every accepted socket, a
listen backlog of 128, and a ``close_connections`` that wakes and joins every
connection thread so that stopping leaves nothing behind. What to answer is
not decided here: each parsed request goes to the ``serve`` callable.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["HOST", "LoopbackServer", "RequestHandler"]

_log = logging.getLogger("ratelimit_sdk.testing")

HOST = "127.0.0.1"
"""The only address a fake server ever binds to."""


class LoopbackServer(ThreadingHTTPServer):
    """The stdlib threading server on 127.0.0.1:0, with tracked, named connection threads.

    ``serve(handler)`` answers one request; it runs on the connection's thread.
    ``stop_event`` is set when the server stops: waits inside ``serve`` should
    use it so that stopping cuts them short.
    """

    daemon_threads = True
    block_on_close = False  # stop() joins the connection threads itself, with a time limit
    request_queue_size = 128

    def __init__(self, serve: Callable[[RequestHandler], None], name: str) -> None:
        self.serve = serve
        self.name = name
        self.stop_event = threading.Event()
        self._conn_lock = threading.Lock()
        self._conns: dict[int, tuple[socket.socket, threading.Thread]] = {}
        self._conn_ids = itertools.count(1)
        super().__init__((HOST, 0), RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host name up (getfqdn): skip that.
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = int(self.socket.getsockname()[1])

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        assert isinstance(request, socket.socket)
        conn_id = next(self._conn_ids)
        thread = threading.Thread(
            target=self._run_connection,
            args=(conn_id, request, client_address),
            name=f"{self.name}-conn-{conn_id}",
            daemon=True,
        )
        with self._conn_lock:
            self._conns[conn_id] = (request, thread)
        thread.start()

    def _run_connection(self, conn_id: int, request: socket.socket, client_address: Any) -> None:
        try:
            RequestHandler(request, client_address, self, conn_id)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._conn_lock:
                self._conns.pop(conn_id, None)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # A client that went away is normal in fault tests: no traceback on stderr.
        _log.debug("%s: connection ended with an error", self.name)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection down and join its thread, within ``timeout`` in all."""
        with self._conn_lock:
            conns = list(self._conns.values())
        for sock, _ in conns:
            with contextlib.suppress(OSError):  # already closed (reset, or finished)
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))


class RequestHandler(BaseHTTPRequestHandler):
    """One connection: parses each request and hands it to the server's ``serve`` callable."""

    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # TCP_NODELAY on the accepted socket
    wbufsize = 0  # wfile writes go straight to sendall
    server: LoopbackServer

    def __init__(
        self, request: socket.socket, client_address: Any, server: LoopbackServer, conn_id: int = 0
    ) -> None:
        self.conn_id = conn_id
        super().__init__(request, client_address, server)

    def do_POST(self) -> None:
        self.server.serve(self)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def read_body(self) -> bytes:
        """Read the request body (Content-Length, or chunked transfer encoding)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_all(self, data: bytes) -> None:
        """Write ``data`` in one send."""
        self.wfile.write(data)

    def abort(self) -> None:
        """Drop the connection with a TCP reset (SO_LINGER on, timeout 0, then close)."""
        self.close_connection = True
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.request.close()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's per-request stderr line (it would also print paths)."""
