"""Benchmark (server shapes): the SDK against FakeProvider limit shapes, 429s and makespan.

Run: ``python benchmarks/bench_shapes.py`` (about 6 minutes) or ``--quick`` (about
20 s); ``--json`` prints the results as one JSON document on stdout (the tables
go to stderr). No external server is needed: each shape is enforced by a
:class:`ratelimit_sdk.testing.FakeProvider` (real HTTP on 127.0.0.1, 50 ms
latency) in a child process, and the 429s are counted by the fake itself.

Cases (16 threads, steady arrivals unless said):

- **(a) sliding window**: ``SlidingWindow(limit=10, seconds=1.0)``; the SDK is
  told ``windows=[{"requests": 10, "per": 1}]``. 400 requests (30 with
  ``--quick``). Goal: makespan <= 1.15x the optimum, 0 429s.
- **(b) hidden concurrency**: ``HiddenConcurrency(3)``; the SDK is told
  ``max_concurrent="auto"``. 100 calls, then 100 more on the same client.
  Goals: <= 10 429s during the first 100, <= 2 during the next 100, and the
  second 100's makespan <= 1.3x the optimum.
- **(c) OpenAI headers**: ``OpenAIHeaders(requests_per_minute=600)`` (announced
  in ``x-ratelimit-*``); the SDK is told ``requests_per_minute="auto"``. The
  bucket holds a whole minute and starts full, so it is first drained by bare
  requests (until the first 429); then 60 calls from a fresh client. Goals:
  <= 2 429s, makespan <= 1.25x the optimum.
- **(d) leaky buckets**: ``LeakyBucket`` shapes mirroring the nginx cases of
  ``bench_real_servers.py`` (for machines without nginx): ``LeakyBucket(40,
  burst=4)`` + ``HiddenConcurrency(4)``, and ``LeakyBucket(40)`` with no burst
  (SDK told burst 1, and separately ``min_interval=0.025``), with steady,
  batched and poisson arrivals. Goals as there: <= 1.03x and <= 1.25x, 0 429s.

A case whose limits this build of the SDK does not accept (``windows``,
``"auto"``: the config's validation refuses them) prints "not supported by this
build" and is a MISS; it does not stop the script. Rows marked "today" give the
SDK the closest limits it accepts now, for comparison; they have no goal and
``--quick`` leaves them out.
Every run is bounded in count and time; the script always exits 0.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from _common import RemoteFleet, Report, ServerShape, greedy_makespan, json_output, parse_args
from _common import print_table as print_rows
from bench_real_servers import SERVERS, Outcome, arrivals, body, drive

from ratelimit_sdk import Client
from ratelimit_sdk.config import LimitsConfig

WORKERS, LATENCY = 16, 0.05
NOT_SUPPORTED = "not supported by this build"

# The fakes, each with its shape (re-set, in fresh state, before every run).
SHAPES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sliding": [("SlidingWindow", {"limit": 10, "seconds": 1.0})],
    "concurrency": [("HiddenConcurrency", {"limit": 3})],
    "openai": [("OpenAIHeaders", {"requests_per_minute": 600})],
    "leaky_burst": [("LeakyBucket", {"rate": 40, "burst": 4}), ("HiddenConcurrency", {"limit": 4})],
    "leaky_noburst": [("LeakyBucket", {"rate": 40, "burst": 0})],
}


def unsupported(limits: Mapping[str, Any]) -> str | None:
    """Why this build refuses ``limits`` (its first line), or ``None`` when it accepts them."""
    try:
        LimitsConfig.model_validate(dict(limits))
        provider = {"name": "probe", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
        Client({"providers": [{**provider, "limits": dict(limits)}]}).close()
    except (ValueError, TypeError) as exc:
        return "; ".join(line.strip() for line in str(exc).strip().splitlines()[:3])[:200]
    return None


def todays(
    variants: list[tuple[str, dict[str, Any], bool]], quick: bool
) -> list[tuple[str, dict[str, Any], bool]]:
    """The variants to run: with ``quick``, only the judged ones (the "today" rows cost time)."""
    return [v for v in variants if v[2]] if quick else variants


@dataclass
class Run:
    """One measured run: the outcome, the fake's 429s, and the optimum it is compared to."""

    outcome: Outcome
    refused: int
    optimum: float

    @property
    def ratio(self) -> float:
        return self.outcome.makespan / self.optimum


class Bench:
    """The fakes, the report, and the rows printed and dumped as JSON."""

    def __init__(self, fleet: RemoteFleet, report: Report, document: dict[str, Any]) -> None:
        self.fleet = fleet
        self.report = report
        self.document = document
        self.rows: list[tuple[object, ...]] = []

    def fresh(self, name: str) -> None:
        """Fake ``name``'s shapes in fresh state (buckets full, windows empty), counters zero."""
        self.fleet.set_shapes(name, SHAPES[name])
        self.fleet.reset_stats()

    def refused(self, name: str) -> int:
        """429s fake ``name`` answered since the last :meth:`fresh` or reset."""
        return int(self.fleet.stats()[name]["statuses"].get("429", 0))

    def sdk(
        self,
        name: str,
        limits: Mapping[str, Any],
        release: Sequence[float],
        budget: float,
        client: Client | None = None,
    ) -> Outcome:
        """``Client.chat`` calls to fake ``name`` (a new client with ``limits`` unless given)."""
        timeout = min(30.0, budget)

        def with_client(c: Client) -> Outcome:
            def call(i: int) -> None:
                c.chat(body(i)["messages"], timeout=timeout)

            return drive(call, release, budget, WORKERS)

        if client is not None:
            return with_client(client)
        with Client(self.config(name, limits)) as own:
            return with_client(own)

    def config(self, name: str, limits: Mapping[str, Any]) -> dict[str, Any]:
        return {"providers": [self.fleet.config(name, limits=dict(limits))]}

    def record(self, case: str, variant: str, n: int, run: Run, **extra: Any) -> None:
        done = run.outcome.done
        self.rows.append(
            (
                case,
                variant,
                run.outcome.makespan
                if done == n
                else f"> {run.outcome.elapsed:.1f} ({done}/{n} ok)",
                run.optimum,
                run.ratio,
                run.refused,
            )
        )
        self.document["rows"].append(
            {
                "case": case,
                "variant": variant,
                "n": n,
                "ok": done,
                "makespan": run.outcome.makespan,
                "elapsed": run.outcome.elapsed,
                "optimum": run.optimum,
                "ratio": run.ratio,
                "429s": run.refused,
                **extra,
            }
        )
        print(f"   {case:28} {variant:40} {run.ratio:7.3f}x  429s {run.refused}", flush=True)

    def skip(self, case: str, variant: str, why: str, goals: Sequence[tuple[str, str]]) -> None:
        print(f"   {case:28} {variant:40} {NOT_SUPPORTED} ({why})", flush=True)
        self.rows.append((case, variant, NOT_SUPPORTED, "-", "-", "-"))
        self.document["rows"].append(
            {"case": case, "variant": variant, "supported": False, "why": why}
        )
        for target, goal in goals:
            self.report.check(target, NOT_SUPPORTED, goal, False)


# -- (a) a sliding window ---------------------------------------------------------------------


def case_sliding(bench: Bench, quick: bool) -> None:
    """SlidingWindow(10 per 1 s); the SDK told the window (and, today, a bucket of 1 at 10/s)."""
    n = 30 if quick else 400
    release = [0.0] * n
    # The optimum: at most 10 starts in any 1 s, 50 ms each, nothing else binding: 10 at
    # t = 0, 1, 2, ... so the last of n starts at ceil(n / 10) - 1 s (39.05 s for 400).
    optimum = greedy_makespan(ServerShape(latency=LATENCY, window=(10, 1.0)), release)
    budget = 2 * optimum + 10.0
    case = "(a) SlidingWindow 10/1 s"
    variants: list[tuple[str, dict[str, Any], bool]] = [
        ('windows=[{"requests": 10, "per": 1}]', {"windows": [{"requests": 10, "per": 1}]}, True),
        (
            "today: requests_per_minute 600, burst 1",
            {"requests_per_minute": 600, "burst": 1},
            False,
        ),
    ]
    for variant, limits, judged in todays(variants, quick):
        goals = [(f"{case}: makespan / optimum, 429s", "<= 1.15x, 0 429s")]
        why = unsupported(limits)
        if why is not None:
            bench.skip(case, variant, why, goals if judged else [])
            continue
        time.sleep(1.1)  # the fake's window empties
        bench.fresh("sliding")
        outcome = bench.sdk("sliding", limits, release, budget)
        run = Run(outcome, bench.refused("sliding"), optimum)
        bench.record(case, variant, n, run, limits=limits)
        if judged:
            bench.report.check(
                goals[0][0],
                f"{run.ratio:.3f}x, {run.refused} 429s",
                goals[0][1],
                run.ratio <= 1.15 and run.refused == 0,
            )


# -- (b) hidden concurrency -------------------------------------------------------------------


def case_concurrency(bench: Bench, quick: bool) -> None:
    """HiddenConcurrency(3); the SDK told max_concurrent="auto" (today: none, and the truth)."""
    n = 30 if quick else 100
    release = [0.0] * n
    # The optimum of each batch: 3 in flight, 50 ms each, nothing else: ceil(n / 3) rounds
    # of 50 ms (1.70 s for 100).
    optimum = greedy_makespan(ServerShape(latency=LATENCY, max_concurrent=3), release)
    budget = 5 * optimum + 10.0
    case = "(b) HiddenConcurrency(3)"
    variants: list[tuple[str, dict[str, Any], bool]] = [
        ('max_concurrent="auto"', {"max_concurrent": "auto"}, True),
        ("today: no limit", {}, False),
        ("today: max_concurrent 3 (told the truth)", {"max_concurrent": 3}, False),
    ]
    for variant, limits, judged in todays(variants, quick):
        first_goal = (f"{case}: 429s during the first {n} calls", "<= 10")
        next_goal = (f"{case}: 429s during the next {n} calls", "<= 2")
        span_goal = (f"{case}: the next {n} calls' makespan / optimum", "<= 1.30x")
        why = unsupported(limits)
        if why is not None:
            bench.skip(case, variant, why, [first_goal, next_goal, span_goal] if judged else [])
            continue
        bench.fresh("concurrency")
        try:
            client = Client(bench.config("concurrency", limits))
        except ValueError as exc:
            why = "; ".join(line.strip() for line in str(exc).strip().splitlines()[:3])[:200]
            bench.skip(case, variant, why, [first_goal, next_goal, span_goal] if judged else [])
            continue
        with client:
            first = bench.sdk("concurrency", limits, release, budget, client)
            first_run = Run(first, bench.refused("concurrency"), optimum)
            bench.fleet.reset_stats()
            second = bench.sdk("concurrency", limits, release, budget, client)
            second_run = Run(second, bench.refused("concurrency"), optimum)
        bench.record(case, f"{variant}: first {n}", n, first_run, limits=limits)
        bench.record(case, f"{variant}: next {n}", n, second_run, limits=limits)
        if judged:
            bench.report.check(
                first_goal[0], str(first_run.refused), first_goal[1], first_run.refused <= 10
            )
            bench.report.check(
                next_goal[0], str(second_run.refused), next_goal[1], second_run.refused <= 2
            )
            bench.report.check(
                span_goal[0], f"{second_run.ratio:.3f}x", span_goal[1], second_run.ratio <= 1.3
            )


# -- (c) OpenAI's announced limits ------------------------------------------------------------


def drain(url: str, limit: int = 1000, seconds: float = 20.0) -> int:
    """Bare POSTs from 16 threads until the first 429 (at most ``limit`` or ``seconds``)."""
    stop = threading.Event()
    deadline = time.monotonic() + seconds
    sent = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal sent
        with requests.Session() as session:
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:
                    if sent >= limit:
                        return
                    sent += 1
                reply = session.post(url + "/chat/completions", json=body(0), timeout=10)
                if reply.status_code == 429:
                    stop.set()

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        for future in [pool.submit(worker) for _ in range(WORKERS)]:
            future.result()
    return sent


def case_openai(bench: Bench, quick: bool) -> None:
    """OpenAIHeaders(600/min), drained first; the SDK told requests_per_minute="auto"."""
    n = 20 if quick else 60
    rate = 600 / 60
    release = [0.0] * n
    # The optimum: the drained bucket holds less than one request when the calls start
    # (they start right after the drain's first 429; the few ms between refill a fraction),
    # then refills 10 per second: n requests need (n - 1) / 10 s more, plus one latency
    # (5.95 s for 60). A lower bound: any client that found the bucket drained waits as long.
    optimum = greedy_makespan(ServerShape(latency=LATENCY, rate=rate, burst=1), release)
    budget = 3 * optimum + 10.0
    case = "(c) OpenAIHeaders 600/min"
    variants: list[tuple[str, dict[str, Any], bool]] = [
        ('requests_per_minute="auto"', {"requests_per_minute": "auto"}, True),
        ("today: no limit", {}, False),
        ("today: requests_per_minute 600 (told)", {"requests_per_minute": 600}, False),
    ]
    url = bench.fleet.base_urls["openai"]
    for variant, limits, judged in todays(variants, quick):
        goals = [(f"{case}: 429s in {n} calls, makespan / optimum", "<= 2 429s, <= 1.25x")]
        why = unsupported(limits)
        if why is not None:
            bench.skip(case, variant, why, goals if judged else [])
            continue
        bench.fresh("openai")
        drained = drain(url)
        bench.fleet.reset_stats()
        outcome = bench.sdk("openai", limits, release, budget)
        run = Run(outcome, bench.refused("openai"), optimum)
        bench.record(case, variant, n, run, limits=limits, drained_with=drained)
        if judged:
            bench.report.check(
                goals[0][0],
                f"{run.refused} 429s, {run.ratio:.3f}x",
                goals[0][1],
                run.refused <= 2 and run.ratio <= 1.25,
            )


# -- (d) nginx's leaky bucket, in the fake -----------------------------------------------------


def case_leaky(bench: Bench, quick: bool) -> None:
    """The nginx cases of bench_real_servers.py against LeakyBucket shapes."""
    n = 20 if quick else 400
    patterns = ["steady"] if quick else ["steady", "batched", "poisson"]
    fakes = {"burst": "leaky_burst", "noburst": "leaky_noburst"}
    for server in SERVERS:
        if server.endpoint not in fakes:
            continue
        fake = fakes[server.endpoint]
        case = "(d) Leaky" + server.name.removeprefix("nginx")
        for pattern in patterns:
            release = arrivals(pattern, n, server.mean_rate)
            # The optimum from the server's shape, as in bench_real_servers.py.
            optimum = greedy_makespan(server.shape, release)
            budget = 3 * optimum + 5.0
            time.sleep(0.3)
            bench.fresh(fake)
            outcome = bench.sdk(fake, server.sdk_limits, release, budget)
            run = Run(outcome, bench.refused(fake), optimum)
            bench.record(case, pattern, n, run, limits=server.sdk_limits)
            bench.report.check(
                f"{case}, {pattern}: makespan / optimum, 429s",
                f"{run.ratio:.3f}x, {run.refused} 429s",
                f"<= {server.target:.2f}x, 0 429s",
                run.ratio <= server.target and run.refused == 0,
            )


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run every case and print the tables; returns the exit status (always 0)."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "", argv, with_json=True)
    quick: bool = args.quick
    with json_output(args.json, {"benchmark": "bench_shapes"}) as document:
        print(
            f"bench_shapes  python {sys.version.split()[0]}  "
            f"{'--quick' if quick else 'full'}  threads={WORKERS}  latency={LATENCY * 1000:.0f} ms"
        )
        document.update(quick=quick, threads=WORKERS, latency=LATENCY, rows=[], targets=[])
        report = Report("bench_shapes")
        specs = {name: {"latency": LATENCY} for name in SHAPES}
        with RemoteFleet(specs) as fleet:
            bench = Bench(fleet, report, document)
            try:
                for case in (case_sliding, case_concurrency, case_openai, case_leaky):
                    case(bench, quick)
            finally:
                print_rows(
                    "Makespan and 429s against FakeProvider shapes",
                    ["case", "SDK limits", "makespan s", "optimum s", "ratio", "429s"],
                    bench.rows,
                )
                report.print(quick)
                document["targets"] = report.as_json()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        out = sys.stderr if "--json" in sys.argv else sys.stdout  # stdout holds the JSON
        print(f"bench_shapes: stopped early: {type(exc).__name__}: {exc}", file=out)
        sys.exit(0)
