"""Benchmark (real servers): the SDK behind Debian's nginx and haproxy, 429s and makespan.

Run: ``python benchmarks/bench_real_servers.py`` (about 9 minutes) or ``--quick``
(about 25 s: 20 requests, steady arrivals); ``--json`` prints the results as one
JSON document on stdout (the tables go to stderr). Needs the ``nginx`` and
``haproxy`` binaries; without them it says how to install them and exits 0
(never install them from CI)::

    apt-get update && apt-get install -y nginx haproxy

The comparison columns need ``pip install pyrate-limiter tenacity`` (only for
this benchmark: they are not dependencies of the SDK); without them those rows
are left out.

The servers run as unprivileged processes (``nobody`` when started as root) on
free 127.0.0.1 ports, from config files in a temporary directory:

- **nginx burst 4**: ``limit_req_zone ... rate=40r/s``, ``limit_req burst=4
  nodelay``, ``limit_conn 4``, ``limit_req_status 429``, ``limit_conn_status 429``.
  SDK limits: ``requests_per_minute 2400, burst 5, max_concurrent 4``.
- **nginx no burst**: ``limit_req`` at 40r/s with no burst (starts 25 ms apart,
  counted in whole milliseconds). Measured twice: SDK limits
  ``requests_per_minute 2400, burst 1``, and separately ``min_interval 0.025``
  alone (the comparison clients run once).
- **haproxy**: a stick table ``http_req_rate(1s)``, ``deny_status 429`` over 40,
  and ``maxconn 4`` on the upstream server (queued, never refused). SDK limits:
  ``requests_per_minute 2340, burst 1``. (Told as a window, 40 per 1 s, the SDK
  sent 40 at once each second and haproxy refused most of the next second:
  ``http_req_rate`` is a frequency counter that weighs the previous period in,
  and it counts refused requests too, so a bursty client cascades. Burst 1 at
  its rate is the right description of it.)

Upstream of each is one FakeProvider (50 ms latency) in a child process.
400 requests from 16 threads, in three arrival patterns: **steady** (all 400
queued at once), **batched** (groups of 10 released at the server's mean rate)
and **poisson** (seeded exponential gaps at the server's mean rate). Each is
sent by the SDK ``Client`` with the matching limits, by pyrate-limiter
(``Limiter`` with the matching ``Rate``, plus a semaphore where the server limits
concurrency) and by bare ``requests`` retried with tenacity's
``wait_random_exponential`` on 429. The 429s are counted from the servers' own
access logs. The optimum is computed from the server's shape: each request
starts as early as its arrival and the server's limits allow (a lower bound).

Targets (for the SDK, every arrival pattern): nginx burst 4 + limit_conn 4 makespan
<= 1.03x the optimum, nginx no burst (both SDK configs) <= 1.25x, haproxy <= 1.25x,
each with 0 429s.
Every run is bounded in count and time; the script always exits 0.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from _common import (
    RemoteFleet,
    Report,
    ServerShape,
    greedy_makespan,
    json_output,
    parse_args,
    print_table,
)

from ratelimit_sdk import Client

N, WORKERS, LATENCY, RATE = 400, 16, 0.05, 40.0
INSTALL = "apt-get update && apt-get install -y nginx haproxy"
BODY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Server:
    """One rate-limited server under test, and the limits each client is given for it."""

    name: str
    endpoint: str  # which listening server: "burst", "noburst" (nginx) or "haproxy"
    shape: ServerShape
    sdk_limits: dict[str, Any]
    target: float
    mean_rate: float
    pyrate: Sequence[tuple[int, int]]  # (limit, interval ms) for pyrate-limiter
    concurrency: int | None  # a semaphore for the clients that have no concurrency limit
    baselines: bool = True  # also run pyrate-limiter and tenacity (once per endpoint)


# The optimum of each server (``_common.greedy_makespan``) is computed from the *server's*
# limits, never from what the SDK is told: each request starts, in release order, as early
# as its release and every limit of the server allow (nginx burst=4 lets 5 pass at once,
# then one per 25 ms, and limit_conn 4 holds each slot 50 ms; nginx without burst spaces
# starts 25 ms apart; haproxy admits 40 starts in any 1 s window and queues over 4 in
# flight). Each limit is a lower bound set by the earlier starts alone, so no client can
# finish sooner: for 400 steady arrivals 395/40 + 0.05 = 9.925 s, 399 * 0.025 + 0.05 =
# 10.025 s and 9 + 10 * 0.05 = 9.5 s.
SERVERS = [
    Server(
        "nginx burst 4 + limit_conn 4",
        "burst",
        ServerShape(latency=LATENCY, max_concurrent=4, rate=RATE, burst=5),
        {"requests_per_minute": 2400, "burst": 5, "max_concurrent": 4},
        1.03,
        RATE,
        [(5, 125)],
        4,
    ),
    Server(
        "nginx no burst (SDK burst 1)",
        "noburst",
        ServerShape(latency=LATENCY, rate=RATE, burst=1, min_interval=1 / RATE),
        {"requests_per_minute": 2400, "burst": 1},
        1.25,
        RATE,
        [(1, 25)],
        None,
    ),
    Server(
        "nginx no burst (SDK min_interval)",
        "noburst",
        ServerShape(latency=LATENCY, rate=RATE, burst=1, min_interval=1 / RATE),
        {"min_interval": 0.025},
        1.25,
        RATE,
        [(1, 25)],
        None,
        baselines=False,
    ),
    Server(
        "haproxy 40 per 1 s + maxconn 4",
        "haproxy",
        ServerShape(latency=LATENCY, queue_concurrent=4, window=(40, 1.0)),
        {"requests_per_minute": 2340, "burst": 1},
        1.25,
        39.0,
        [(40, 1000)],
        None,
    ),
]


# -- the servers ------------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _drop_privileges() -> dict[str, Any]:
    """Popen keywords that run the child as ``nobody`` when this process is root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup"}


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Wait until 127.0.0.1:port accepts connections (raise if the process died or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


NGINX_CONF = """\
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    log_format status '$status';
    access_log {prefix}/access.log status;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    limit_req_zone $binary_remote_addr zone=burst:1m rate=40r/s;
    limit_req_zone $binary_remote_addr zone=noburst:1m rate=40r/s;
    limit_conn_zone $binary_remote_addr zone=conn:1m;
    limit_req_status 429;
    limit_conn_status 429;
    upstream fake {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port_burst};
        location / {{
            limit_req zone=burst burst=4 nodelay;
            limit_conn conn 4;
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{port_noburst};
        location / {{
            limit_req zone=noburst;
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    maxconn 256
defaults
    mode http
    log global
    log stdout format raw local0
    log-format "%ST"
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout queue 30s
    option http-keep-alive
frontend limited
    bind 127.0.0.1:{port}
    stick-table type ip size 1k expire 10s store http_req_rate(1s)
    http-request track-sc0 src
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 40 }}
    default_backend fake
backend fake
    http-reuse always
    server fake 127.0.0.1:{upstream} maxconn 4
"""


class StatusLog:
    """A server's access log with one HTTP status a line: counts 429s since a mark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mark = 0

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(errors="replace").split()
        except FileNotFoundError:
            return []

    def mark(self) -> None:
        """Start counting from now."""
        self._mark = len(self._lines())

    def since_mark(self) -> tuple[int, int]:
        """``(answers, 429s)`` logged since :meth:`mark` (after a moment for the log to land)."""
        time.sleep(0.3)
        lines = self._lines()[self._mark :]
        return len(lines), sum(1 for line in lines if line.strip() == "429")


@contextlib.contextmanager
def run_nginx(binary: str, upstream: int) -> Iterator[dict[str, tuple[str, StatusLog]]]:
    """nginx in the foreground, unprivileged, with two limited servers; yields their URLs."""
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as prefix:
        os.makedirs(os.path.join(prefix, "tmp"))
        os.makedirs(os.path.join(prefix, "logs"))  # nginx checks its default log dir
        ports = {"burst": free_port(), "noburst": free_port()}
        conf = Path(prefix, "nginx.conf")
        conf.write_text(
            NGINX_CONF.format(
                prefix=prefix,
                upstream=upstream,
                port_burst=ports["burst"],
                port_noburst=ports["noburst"],
            )
        )
        _hand_over(prefix)
        proc = subprocess.Popen(
            [
                binary,
                "-p",
                prefix,
                "-e",
                f"{prefix}/error.log",
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **_drop_privileges(),
        )
        try:
            for port in ports.values():
                wait_listening(port, proc)
            log = StatusLog(Path(prefix, "access.log"))
            yield {
                "burst": (f"http://127.0.0.1:{ports['burst']}/v1", log),
                "noburst": (f"http://127.0.0.1:{ports['noburst']}/v1", log),
            }
        finally:
            _stop(proc)


@contextlib.contextmanager
def run_haproxy(binary: str, upstream: int) -> Iterator[dict[str, tuple[str, StatusLog]]]:
    """haproxy in the foreground (``-db``), unprivileged; yields its URL and status log."""
    with tempfile.TemporaryDirectory(prefix="bench-haproxy-") as prefix:
        port = free_port()
        conf = Path(prefix, "haproxy.cfg")
        conf.write_text(HAPROXY_CONF.format(port=port, upstream=upstream))
        log_path = Path(prefix, "status.log")
        _hand_over(prefix)
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [binary, "-db", "-f", str(conf)],
                stdout=log_file,
                stderr=subprocess.PIPE,
                **_drop_privileges(),
            )
            try:
                wait_listening(port, proc)
                yield {"haproxy": (f"http://127.0.0.1:{port}/v1", StatusLog(log_path))}
            finally:
                _stop(proc)


def _hand_over(prefix: str) -> None:
    """Let ``nobody`` write the temp dir when we are root (the servers run as nobody)."""
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(prefix):
            for name in [root, *(os.path.join(root, d) for d in dirs)]:
                os.chmod(name, 0o777)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stderr is not None:
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        if proc.returncode not in (0, -15) and err:
            print(f"   server stderr: {err[:500]}")


# -- arrivals and clients -------------------------------------------------------------------------


def arrivals(pattern: str, n: int, mean_rate: float, seed: int = 7) -> list[float]:
    """Release times (seconds from the start) of ``n`` requests in ``pattern``."""
    if pattern == "steady":
        return [0.0] * n
    if pattern == "batched":
        return [(i // 10) * 10 / mean_rate for i in range(n)]
    if pattern == "poisson":
        rng = random.Random(seed)
        t, out = 0.0, []
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(mean_rate)
        return out
    raise ValueError(pattern)


@dataclass
class Outcome:
    """What one run did: makespan (``inf`` when cut short), done and failed calls."""

    makespan: float
    done: int
    failed: int
    elapsed: float


def drive(
    call: Callable[[int], None], release: Sequence[float], budget: float, workers: int = WORKERS
) -> Outcome:
    """Run ``call(i)`` for each request from ``workers`` threads, each no earlier than its release.

    Requests not started within ``budget`` seconds are skipped (the run is then a
    miss); each call is bounded by its own HTTP timeouts.
    """
    start = time.perf_counter()
    deadline = start + budget
    done = failed = 0
    lock = threading.Lock()

    def task(i: int) -> None:
        nonlocal done, failed
        wait = start + release[i] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        if time.perf_counter() > deadline:
            with lock:
                failed += 1
            return
        try:
            call(i)
        except Exception:
            with lock:
                failed += 1
        else:
            with lock:
                done += 1

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(task, range(len(release))))
    elapsed = time.perf_counter() - start
    return Outcome(elapsed if done == len(release) else math.inf, done, failed, elapsed)


def body(i: int) -> dict[str, Any]:
    """The JSON body of request ``i``."""
    return {"model": "fake-model", "messages": [{"role": "user", "content": f"request {i}"}]}


def sdk_run(url: str, server: Server, release: Sequence[float], budget: float) -> Outcome:
    """The SDK Client with the server's matching limits."""
    config = {
        "providers": [
            {"name": "real", "base_url": url, "model": "fake-model", "limits": server.sdk_limits}
        ]
    }
    timeout = min(BODY_TIMEOUT * 3, budget)  # a call waiting out cooldowns ends with the run
    with Client(config) as client:

        def call(i: int) -> None:
            client.chat(body(i)["messages"], timeout=timeout)

        return drive(call, release, budget)


def pyrate_run(url: str, server: Server, release: Sequence[float], budget: float) -> Outcome:
    """pyrate-limiter's blocking ``try_acquire`` with the matching rates; no retry on 429."""
    from pyrate_limiter import Limiter, Rate

    limiter = Limiter([Rate(limit, ms) for limit, ms in server.pyrate])
    gate = threading.BoundedSemaphore(server.concurrency or WORKERS)
    local = threading.local()

    def call(i: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        limiter.try_acquire("real", blocking=True)
        with gate:
            response = session.post(url + "/chat/completions", json=body(i), timeout=BODY_TIMEOUT)
        response.raise_for_status()

    return drive(call, release, budget)


def tenacity_run(url: str, server: Server, release: Sequence[float], budget: float) -> Outcome:
    """Bare ``requests`` retried on 429 with tenacity's ``wait_random_exponential``."""
    import tenacity

    local = threading.local()

    @tenacity.retry(
        retry=tenacity.retry_if_exception_type(requests.HTTPError),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0),
        stop=tenacity.stop_after_attempt(12),
        reraise=True,
    )
    def call(i: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        response = session.post(url + "/chat/completions", json=body(i), timeout=BODY_TIMEOUT)
        response.raise_for_status()

    return drive(call, release, budget)


def available_clients() -> dict[str, Callable[[str, Server, Sequence[float], float], Outcome]]:
    """The clients to compare: the SDK, and pyrate-limiter and tenacity when installed."""
    clients: dict[str, Callable[[str, Server, Sequence[float], float], Outcome]] = {
        "ratelimit_sdk": sdk_run
    }
    try:
        import pyrate_limiter  # noqa: F401

        clients["pyrate-limiter"] = pyrate_run
    except ImportError:
        print("   (pyrate-limiter not installed: pip install pyrate-limiter)")
    try:
        import tenacity  # noqa: F401

        clients["tenacity backoff"] = tenacity_run
    except ImportError:
        print("   (tenacity not installed: pip install tenacity)")
    return clients


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns the exit status (always 0)."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "", argv, with_json=True)
    with json_output(args.json, {"benchmark": "bench_real_servers"}) as document:
        run(args.quick, document)
    return 0


def find_binaries() -> dict[str, str | None]:
    """The nginx and haproxy executables (on PATH or in /usr/sbin), ``None`` when absent."""
    binaries = {"nginx": shutil.which("nginx"), "haproxy": shutil.which("haproxy")}
    for path in ("/usr/sbin/nginx", "/usr/sbin/haproxy"):
        name = os.path.basename(path)
        if binaries[name] is None and os.access(path, os.X_OK):
            binaries[name] = path
    return binaries


def run(quick: bool, document: dict[str, Any]) -> None:
    """Every server, arrival pattern and client; fills ``document`` with rows and targets."""
    n = 20 if quick else N
    patterns = ["steady"] if quick else ["steady", "batched", "poisson"]
    binaries = find_binaries()
    print(
        f"bench_real_servers  python {sys.version.split()[0]}  "
        f"{'--quick' if quick else 'full'}  n={n}  threads={WORKERS}"
    )
    document.update(quick=quick, n=n, threads=WORKERS, latency=LATENCY, rows=[], targets=[])
    report = Report("bench_real_servers")
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        print(f"   {' and '.join(missing)} not found; to install: {INSTALL}")
    if len(missing) == 2:
        for server in SERVERS:
            report.check(server.name, "not run (server not installed)", "-", False)
        report.print(quick)
        document["targets"] = report.as_json()
        return
    versions = {name: _version(path) for name, path in binaries.items() if path is not None}
    for name, version in versions.items():
        print(f"   {name}: {version}")
    document["servers"] = versions
    clients = available_clients()

    rows: list[tuple[object, ...]] = []
    with RemoteFleet({"upstream": {"latency": LATENCY}}) as fleet:
        upstream = int(fleet.base_urls["upstream"].rsplit(":", 1)[1].split("/")[0])
        with contextlib.ExitStack() as stack:
            urls: dict[str, tuple[str, StatusLog]] = {}
            if binaries["nginx"]:
                urls.update(stack.enter_context(run_nginx(str(binaries["nginx"]), upstream)))
            if binaries["haproxy"]:
                urls.update(stack.enter_context(run_haproxy(str(binaries["haproxy"]), upstream)))
            for server in SERVERS:
                if server.endpoint not in urls:
                    report.check(server.name, "not run (server not installed)", "-", False)
                    continue
                url, log = urls[server.endpoint]
                chosen = clients if server.baselines else {"ratelimit_sdk": sdk_run}
                for pattern in patterns:
                    release = arrivals(pattern, n, server.mean_rate)
                    optimum = greedy_makespan(server.shape, release)
                    budget = 3 * optimum + 5.0
                    for client_name, run_client in chosen.items():
                        time.sleep(1.2)  # the server's bucket or window drains between runs
                        log.mark()
                        outcome = run_client(url, server, release, budget)
                        _, refused = log.since_mark()
                        ratio = outcome.makespan / optimum
                        rows.append(
                            (
                                server.name,
                                pattern,
                                client_name,
                                outcome.makespan
                                if outcome.done == n
                                else f"> {outcome.elapsed:.1f} ({outcome.done}/{n} ok)",
                                optimum,
                                ratio,
                                refused,
                            )
                        )
                        document["rows"].append(
                            {
                                "server": server.name,
                                "sdk_limits": server.sdk_limits,
                                "arrivals": pattern,
                                "client": client_name,
                                "makespan": outcome.makespan,
                                "elapsed": outcome.elapsed,
                                "ok": outcome.done,
                                "n": n,
                                "optimum": optimum,
                                "ratio": ratio,
                                "429s": refused,
                            }
                        )
                        print(
                            f"   {server.name:34} {pattern:8} {client_name:17} "
                            f"{ratio:6.3f}x  429s {refused}",
                            flush=True,
                        )
                        if client_name == "ratelimit_sdk":
                            report.check(
                                f"{server.name}, {pattern}: SDK makespan / optimum, 429s",
                                f"{ratio:.3f}x, {refused} 429s",
                                f"<= {server.target:.2f}x, 0 429s",
                                ratio <= server.target and refused == 0,
                            )
    print_table(
        f"Makespan of {n} requests from {WORKERS} threads through real servers "
        f"(upstream: FakeProvider, {LATENCY * 1000:.0f} ms)",
        ["server", "arrivals", "client", "makespan s", "optimum s", "ratio", "429s"],
        rows,
    )
    report.print(quick)
    document["targets"] = report.as_json()


def _version(path: str) -> str:
    flag = "-v" if path.endswith("nginx") else "-vv"
    done = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
    text = (done.stderr or done.stdout).strip().splitlines()
    return text[0] if text else "?"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        out = sys.stderr if "--json" in sys.argv else sys.stdout  # stdout holds the JSON
        print(f"bench_real_servers: stopped early: {type(exc).__name__}: {exc}", file=out)
        sys.exit(0)
