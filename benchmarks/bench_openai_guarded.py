"""Benchmark (openai under ``Client.guarded``): a cold process's calls, 429s and makespan.

Run: ``python benchmarks/bench_openai_guarded.py`` (about 1.5 minutes) or
``--quick`` (about 10 s); ``--json`` prints the results as one JSON document on
stdout (the tables go to stderr). Needs the ``openai`` package (``pip install
openai``; it is not a dependency of the SDK): without it the script says so and
exits 0.

One FakeProvider (in a child process, on 127.0.0.1, 50 ms latency) allows 600
requests per minute with a burst of 3 (``FakeProvider(requests_per_minute=600,
burst=3)``: a bucket of 3 refilled at 10/s; refusals are 429 with
``Retry-After`` and ``x-ratelimit-*`` headers). A **cold process** (a fresh
Python: nothing imported, no connection open) builds an ``openai.OpenAI``
client with ``max_retries=0`` and a ``ratelimit_sdk.Client`` told the server's
limits (``requests_per_minute 600, burst 3``), wraps
``chat.completions.create`` in ``client.guarded(...)`` and sends 400 calls (20
with ``--quick``) from 16 threads. Side by side, in another cold process: the
openai client alone with its own retries (``max_retries=5``, its exponential
backoff honouring ``Retry-After``). The 429s are counted by the server.

Goal (guarded): 0 429s; its makespan / optimum is reported (no goal). The
optimum: the bucket lets 3 start at once, then one per 100 ms, and nothing else
binds, so the last of n starts at (n - 3) / 10 s and ends one latency later
(39.75 s for 400). Every run is bounded in count and time; the script always
exits 0.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

from _common import (
    RemoteFleet,
    Report,
    ServerShape,
    greedy_makespan,
    json_output,
    parse_args,
    print_table,
)

WORKERS, LATENCY, RPM, BURST = 16, 0.05, 600, 3
LIMITS = {"requests_per_minute": RPM, "burst": BURST}


def child(variant: str, url: str, n: int, budget: float) -> None:
    """The cold process: import openai (and the SDK), make ``n`` calls, print one JSON line."""
    started = time.perf_counter()
    import openai

    retries = 0 if variant == "guarded" else 5
    oa = openai.OpenAI(base_url=url, api_key="sk-fake", max_retries=retries, timeout=10.0)
    create: Any = oa.chat.completions.create
    client: Any = None
    if variant == "guarded":
        from ratelimit_sdk import Client

        provider = {"name": "openai", "base_url": url, "model": "fake-model", "limits": LIMITS}
        client = Client({"providers": [provider]})
        create = client.guarded("openai", timeout=budget)(create)
    imported = time.perf_counter() - started

    deadline = time.perf_counter() + budget
    failures: list[str] = []

    def call(i: int) -> None:
        if time.perf_counter() > deadline:
            failures.append("not started: out of time")
            return
        try:
            create(model="fake-model", messages=[{"role": "user", "content": f"request {i}"}])
        except Exception as exc:  # counted and reported, the run goes on
            failures.append(type(exc).__name__)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(call, range(n)))
    makespan = time.perf_counter() - start
    if client is not None:
        client.close()
    oa.close()
    print(
        json.dumps(
            {
                "makespan": makespan,
                "ok": n - len(failures),
                "failures": sorted(set(failures)),
                "startup": imported,
            }
        ),
        flush=True,
    )


def cold_run(variant: str, url: str, n: int, budget: float) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter (bounded by ``budget`` + 60 s)."""
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "child", variant, url, str(n), str(budget)],
        capture_output=True,
        text=True,
        timeout=budget + 60,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} process failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    """Run both variants and print the tables; returns the exit status (always 0)."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "", argv, with_json=True)
    quick: bool = args.quick
    n = 20 if quick else 400
    with json_output(args.json, {"benchmark": "bench_openai_guarded"}) as document:
        print(
            f"bench_openai_guarded  python {sys.version.split()[0]}  "
            f"{'--quick' if quick else 'full'}  n={n}  threads={WORKERS}  "
            f"server {RPM}/min burst {BURST}, {LATENCY * 1000:.0f} ms"
        )
        document.update(quick=quick, n=n, threads=WORKERS, rows=[], targets=[])
        report = Report("bench_openai_guarded")
        rows: list[tuple[object, ...]] = []
        goal = ("openai under client.guarded, cold process: 429s", "0")
        if importlib.util.find_spec("openai") is None:
            print("   openai is not installed (pip install openai): skipped")
            report.check(goal[0], "not run (openai not installed)", goal[1], False)
            report.print(quick)
            document["targets"] = report.as_json()
            return 0
        # The optimum (see the docstring): 3 at once, then one per 100 ms, 50 ms each.
        shape = ServerShape(latency=LATENCY, rate=RPM / 60, burst=BURST)
        optimum = greedy_makespan(shape, [0.0] * n)
        budget = 3 * optimum + 10.0
        spec = {"latency": LATENCY, "requests_per_minute": RPM, "burst": BURST}
        with RemoteFleet({"openai": spec}) as fleet:
            url = fleet.base_urls["openai"]
            try:
                for variant in ("guarded", "openai retries alone"):
                    time.sleep(0.5)  # the bucket fills again (3 at 10/s)
                    fleet.reset_stats()
                    result = cold_run(variant, url, n, budget)
                    refused = int(fleet.stats()["openai"]["statuses"].get("429", 0))
                    ok = int(result["ok"])
                    makespan = result["makespan"] if ok == n else float("inf")
                    ratio = makespan / optimum
                    rows.append(
                        (
                            variant,
                            makespan if ok == n else f"> {result['makespan']:.1f} ({ok}/{n} ok)",
                            optimum,
                            ratio,
                            refused,
                            result["startup"],
                        )
                    )
                    document["rows"].append(
                        {**result, "variant": variant, "n": n, "optimum": optimum, "429s": refused}
                    )
                    print(f"   {variant:22} {ratio:6.3f}x  429s {refused}", flush=True)
                    if variant == "guarded":
                        report.check(goal[0], f"{refused} ({ratio:.3f}x)", goal[1], refused == 0)
            finally:
                print_table(
                    f"{n} openai calls from {WORKERS} threads in a cold process",
                    ["client", "makespan s", "optimum s", "ratio", "429s", "imports s"],
                    rows,
                )
                report.print(quick)
                document["targets"] = report.as_json()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        sys.exit(0)
    try:
        sys.exit(main())
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        out = sys.stderr if "--json" in sys.argv else sys.stdout  # stdout holds the JSON
        print(f"bench_openai_guarded: stopped early: {type(exc).__name__}: {exc}", file=out)
        sys.exit(0)
