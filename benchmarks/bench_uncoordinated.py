"""Benchmark (uncoordinated clients): 8 processes, no shared backend, one unannounced limit.

Run: ``python benchmarks/bench_uncoordinated.py`` (about 2-3 minutes) or ``--quick``
(about 15 s); ``--json`` prints the results as one JSON document on stdout (the
tables go to stderr).

One FakeProvider (in a child process, on 127.0.0.1, 50 ms latency) allows 40
requests per second and never says so: ``HiddenRate(requests_per_minute=2400,
burst=4)`` answers 429 with no ``Retry-After`` and no ``x-ratelimit-*`` header.
Eight separate processes (``multiprocessing``, spawn), 4 threads each, share
nothing but that server, and send requests in a loop for 40 s (5 s with
``--quick``). Side by side, one after the other:

- **SDK auto**: each process a ``Client`` with ``requests_per_minute="auto"``
  (skipped with "not supported by this build" when the config refuses it);
- **backoff**: bare ``requests`` retried on 429 with tenacity-style exponential
  backoff and full jitter (50 ms doubling to at most 2 s, reset on success; no
  tenacity needed);
- **SDK today** (full runs only): each process a ``Client`` with no limits, so
  only its own handling of 429s paces it.

Counted by the server after the first 10 s (2 s with ``--quick``), when the
clients have had time to learn: 429s as a share of all answers (goal <= 3 %)
and successful answers per second as a share of the 40/s limit (goal >= 85 %).
Every loop is bounded in time; every process is stopped at the end, Ctrl-C
included. The script always exits 0.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from _common import RemoteFleet, Report, json_output, parse_args, print_table

PROCESSES, THREADS, LATENCY, RATE, BURST = 8, 4, 0.05, 40.0, 4
AUTO = {"requests_per_minute": "auto"}
TARGETS = [("SDK auto: 429s / answers", "<= 3 %"), ("SDK auto: throughput / limit", ">= 85 %")]


def unsupported(limits: dict[str, Any]) -> str | None:
    """Why this build refuses ``limits`` (its first line), or ``None`` when it accepts them."""
    from ratelimit_sdk import Client

    provider = {"name": "probe", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    try:
        Client({"providers": [{**provider, "limits": limits}]}).close()
    except (ValueError, TypeError) as exc:
        return "; ".join(line.strip() for line in str(exc).strip().splitlines()[:3])[:200]
    return None


# -- the worker processes -----------------------------------------------------------------------


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"request {i}"}]


def worker(
    variant: str,
    url: str,
    ready: Any,
    go: multiprocessing.synchronize.Event,
    end_at: Any,
) -> None:
    """One process: ``THREADS`` threads calling until ``end_at`` (epoch seconds)."""
    import requests

    client: Any = None
    if variant != "backoff":
        from ratelimit_sdk import Client

        limits = AUTO if variant == "sdk auto" else {}
        provider = {"name": "shared", "base_url": url, "model": "fake-model", "limits": limits}
        try:
            client = Client({"providers": [provider]})
        except Exception as exc:  # the parent reports it and stops the run
            ready.put(f"{type(exc).__name__}: {exc}"[:300])
            return
    ready.put("")
    if not go.wait(120):
        return
    end = float(end_at.value)

    def sdk_loop() -> None:
        i = 0
        while time.time() < end:
            i += 1
            with contextlib.suppress(Exception):  # a call that runs out of time ends the loop
                client.chat(_messages(i), timeout=max(0.1, end - time.time()) + 2.0)

    def backoff_loop() -> None:
        rng = random.Random()
        wait = 0.05
        with requests.Session() as session:
            i = 0
            while time.time() < end:
                i += 1
                body = {"model": "fake-model", "messages": _messages(i)}
                try:
                    reply = session.post(url + "/chat/completions", json=body, timeout=10)
                except requests.RequestException:
                    reply = None
                if reply is not None and reply.status_code != 429:
                    wait = 0.05
                    continue
                time.sleep(min(rng.uniform(0, wait), max(0.0, end - time.time())))
                wait = min(wait * 2, 2.0)

    loop = backoff_loop if variant == "backoff" else sdk_loop
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, end - time.time()) + 15.0)
    if client is not None:
        client.close()


@contextlib.contextmanager
def processes(variant: str, url: str, duration: float) -> Iterator[float]:
    """Start the workers, release them together; yield the start (epoch); always stop them."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    go = ctx.Event()
    end_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=worker, args=(variant, url, ready, go, end_at), daemon=True)
        for _ in range(PROCESSES)
    ]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            failed = ready.get(timeout=120)  # each has imported everything and built its client
            if failed:
                raise RuntimeError(f"a worker could not build its client: {failed}")
        start = time.time()
        end_at.value = start + duration
        go.set()
        yield start
        for p in procs:
            p.join(timeout=max(0.0, start + duration - time.time()) + 20.0)
    except queue.Empty:
        raise RuntimeError("a worker process did not start within 120 s") from None
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


# -- main ---------------------------------------------------------------------------------------


def measure(fleet: RemoteFleet, variant: str, duration: float, warmup: float) -> dict[str, Any]:
    """One variant: 429 share and throughput counted by the server after ``warmup`` s."""
    url = fleet.base_urls["shared"]
    fleet.set_shapes("shared", [("HiddenRate", {"requests_per_minute": RATE * 60, "burst": BURST})])
    with processes(variant, url, duration) as start:
        time.sleep(max(0.0, start + warmup - time.time()))
        fleet.reset_stats()
        counted_from = time.time()
        time.sleep(max(0.0, start + duration - time.time()))
        statuses = fleet.stats()["shared"]["statuses"]
        counted = time.time() - counted_from
    ok = int(statuses.get("200", 0))
    refused = int(statuses.get("429", 0))
    answers = sum(int(v) for v in statuses.values())
    return {
        "variant": variant,
        "seconds_counted": counted,
        "answers": answers,
        "ok": ok,
        "429s": refused,
        "429_share": refused / answers if answers else float("nan"),
        "throughput": ok / counted,
        "throughput_share": ok / counted / RATE,
    }


def main(argv: list[str] | None = None) -> int:
    """Run each variant and print the tables; returns the exit status (always 0)."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "", argv, with_json=True)
    quick: bool = args.quick
    duration, warmup = (5.0, 2.0) if quick else (40.0, 10.0)
    with json_output(args.json, {"benchmark": "bench_uncoordinated"}) as document:
        print(
            f"bench_uncoordinated  python {sys.version.split()[0]}  "
            f"{'--quick' if quick else 'full'}  {PROCESSES} processes x {THREADS} threads  "
            f"{duration:g} s (counted after {warmup:g} s)  limit {RATE:g}/s burst {BURST}"
        )
        document.update(
            quick=quick,
            processes=PROCESSES,
            threads=THREADS,
            duration=duration,
            warmup=warmup,
            limit_per_second=RATE,
            rows=[],
        )
        report = Report("bench_uncoordinated")
        rows: list[tuple[object, ...]] = []
        variants = ["sdk auto", "backoff"] + ([] if quick else ["sdk today (no limit)"])
        why = unsupported(dict(AUTO))
        with RemoteFleet({"shared": {"latency": LATENCY}}) as fleet:
            try:
                for variant in variants:
                    if variant == "sdk auto" and why is not None:
                        print(f"   {variant}: not supported by this build ({why})", flush=True)
                        rows.append((variant, "not supported by this build", "-", "-", "-"))
                        document["rows"].append({"variant": variant, "supported": False})
                        for target, goal in TARGETS:
                            report.check(target, "not supported by this build", goal, False)
                        continue
                    result = measure(fleet, variant, duration, warmup)
                    document["rows"].append(result)
                    share, through = 100 * result["429_share"], 100 * result["throughput_share"]
                    rows.append((variant, result["answers"], result["429s"], share, through))
                    print(f"   {variant:22} 429s {share:5.1f} %  throughput {through:5.1f} %")
                    if variant == "sdk auto":
                        report.check(
                            "SDK auto: 429s / answers", f"{share:.1f} %", "<= 3 %", share <= 3
                        )
                        report.check(
                            "SDK auto: throughput / limit",
                            f"{through:.1f} %",
                            ">= 85 %",
                            through >= 85,
                        )
            finally:
                print_table(
                    f"{PROCESSES} uncoordinated processes against one hidden {RATE:g}/s limit "
                    f"(counted after the first {warmup:g} s)",
                    ["client", "answers", "429s", "429s %", "throughput % of limit"],
                    rows,
                )
                report.print(quick)
                document["targets"] = report.as_json()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # a benchmark reports, it does not fail the caller
        out = sys.stderr if "--json" in sys.argv else sys.stdout  # stdout holds the JSON
        print(f"bench_uncoordinated: stopped early: {type(exc).__name__}: {exc}", file=out)
        sys.exit(0)
