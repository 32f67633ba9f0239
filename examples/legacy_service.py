"""A legacy threaded WSGI service sharing ONE Client across all its request threads.

The service is plain standard library: ``wsgiref`` with a ``ThreadingMixIn``
server, one thread per HTTP request, no event loop. The ``Client`` is built
once at start-up and used by every request thread; it keeps each provider's
limits across all of them, so however many requests arrive at once the
providers never see more than they allow (and never answer 429).

Runs offline: the providers are FakeProviders on 127.0.0.1 that enforce their
concurrency limits server-side; the example starts the service on a free port,
fires concurrent HTTP requests at it from a thread pool, prints a summary and
the providers' stats, and shuts everything down.

    python examples/legacy_service.py          # 60 requests
    python examples/legacy_service.py 200      # or SERVICE_REQUESTS=200
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ratelimit_sdk import AllProvidersFailed, BadRequestError, Client
from ratelimit_sdk.testing import FakeFleet, FakeProvider

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request (what many legacy services run)."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """No access log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app(client: Client) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application: ``GET /ask?q=...`` answers through the shared client."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/stats":
            body: dict[str, Any] = {n: s.counters for n, s in client.stats().items()}
            status = "200 OK"
        elif path == "/ask":
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            question = query.get("q", [""])[0]
            try:
                resp = client.chat(question, max_tokens=100, timeout=20)
                body, status = {"answer": resp.content, "provider": resp.provider}, "200 OK"
            except BadRequestError as exc:
                body, status = {"error": str(exc)}, "400 Bad Request"
            except AllProvidersFailed as exc:
                body, status = {"error": str(exc)}, "503 Service Unavailable"
        else:
            body, status = {"error": "not found"}, "404 Not Found"
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json")])
        return [data]

    return app


def ask(base: str, i: int) -> tuple[int, dict[str, Any]]:
    """One HTTP request to the service, as any of its users would make it."""
    url = f"{base}/ask?" + urllib.parse.urlencode({"q": f"question {i}"})
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def main(n: int) -> None:
    kimi = FakeProvider("kimi", max_concurrency=2, latency=0.05)
    glm = FakeProvider("glm", max_concurrency=4, latency=0.05)
    with FakeFleet(kimi, glm):
        config = {
            "providers": [
                kimi.provider_config(priority=1, limits={"max_concurrent": 2}),
                glm.provider_config(priority=2, limits={"max_concurrent": 4}),
            ],
        }
        client = Client(config)  # one for the whole process, shared by every request thread
        server = make_server(
            "127.0.0.1", 0, make_app(client), ThreadingWSGIServer, handler_class=QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        print(f"service on {base}, {n} concurrent requests from 16 threads")
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=16) as pool:
                results = list(pool.map(lambda i: ask(base, i), range(n)))
            elapsed = time.monotonic() - started
        finally:
            server.shutdown()
            thread.join()
            server.server_close()
            client.close()

        statuses = collections.Counter(status for status, _ in results)
        by_provider = collections.Counter(body.get("provider") for _, body in results)
        print(f"{len(results)} answers in {elapsed:.1f}s, service statuses: {dict(statuses)}")
        print(f"answered by: {dict(by_provider)}")
        print(f"first answer: {results[0][1]}")
        for name, s in client.stats().items():
            counters = " ".join(f"{k}={v}" for k, v in s.counters.items())
            print(f"  {name}: {counters}")
        for fake in (kimi, glm):
            print(
                f"  {fake.name} server: {fake.count} requests, 429s={fake.statuses[429]}, "
                f"most in flight {fake.max_in_flight_seen} (limit {fake.limits['max_concurrency']})"
            )
        print(f"server-side 429s: {kimi.statuses[429] + glm.statuses[429]}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("SERVICE_REQUESTS", "60")))
