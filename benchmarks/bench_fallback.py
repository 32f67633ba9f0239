"""Benchmark (the chain): how fast a throttled call falls back, and a fleet batch's makespan.

Run: ``python benchmarks/bench_fallback.py`` (about 20 s) or ``--quick`` (a second or two).

The fake providers run in a child process (see ``_common.RemoteFleet``).

1. Time to a successful answer when the primary answers 429 with
   ``Retry-After: 30``, against the secondary's own latency measured alone in
   the same run (``preferred_model="secondary"``), alternating which goes first.
   Each repetition uses a fresh ``Client`` (no cooldown left over) whose
   connections are warmed first. Target: the median extra under 50 ms (the
   seed's backoff-then-fallback loop took about 3 s, LiteLLM's router with 2
   retries about 90 s). Also timed: the next call, while the primary cools down.
2. Makespan of a batch over four fakes shaped like the seed's
   presets (Kimi: 1 in flight, 1 s apart, 4/min; GLM: 10 in flight, 0.1 s
   apart; Llama and Dolphin: 5 in flight, 0.2 s apart, 20/min), time scaled
   down 10x (rates x10, intervals and latencies /10), server limits equal to the
   client's, sent through one ``Client`` by ``map``. Against the optimum
   computed from the limits (each provider's bucket, spacing and
   concurrency bound the requests it can have finished by a time t; the sum
   must reach the batch size). Target: within 10 %.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Generator
from typing import Any

from _common import RemoteFleet, Report, Shape, median, optimum_makespan, parse_args, print_table

from ratelimit_sdk import Client, Outcome

FALLBACK_TARGET = 0.050  # seconds over the secondary's own latency
MAKESPAN_TARGET = 0.10  # within 10 % of the optimum
MESSAGES = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
SECONDARY_LATENCY = 0.02

SCALE = 10.0  # time runs this many times faster than in the presets
#: name -> (priority, max_concurrent, min_interval s, requests_per_minute, latency s,
#:          retries, base delay s), real-time figures of the seed presets (latency: ours).
PRESETS: dict[str, tuple[int, int, float, float | None, float, int, float]] = {
    "kimi": (1, 1, 1.0, 4.0, 4.0, 2, 5.0),
    "glm": (2, 10, 0.1, None, 3.0, 3, 2.0),
    "llama": (3, 5, 0.2, 20.0, 3.0, 3, 1.0),
    "dolphin": (4, 5, 0.2, 20.0, 1.5, 3, 1.0),
}


def fleet_specs() -> dict[str, dict[str, Any]]:
    """Server-side behaviour of the four fakes (limits equal to the client's, scaled)."""
    specs: dict[str, dict[str, Any]] = {}
    for name, (_, conc, _, rpm, latency, _, _) in PRESETS.items():
        spec: dict[str, Any] = {"max_concurrency": conc, "latency": latency / SCALE}
        if rpm is not None:
            spec["requests_per_minute"] = rpm * SCALE
        specs[name] = spec
    return specs


def fleet_config(fleet: RemoteFleet) -> dict[str, Any]:
    """The client's config for the four fakes: the presets' limits and retries, scaled."""
    providers = []
    for name, (priority, conc, interval, rpm, _, retries, base) in PRESETS.items():
        limits: dict[str, Any] = {"max_concurrent": conc, "min_interval": interval / SCALE}
        if rpm is not None:
            limits["requests_per_minute"] = rpm * SCALE
        providers.append(
            fleet.config(
                name,
                priority=priority,
                limits=limits,
                retry={"max_retries": retries, "base_delay": base / SCALE},
            )
        )
    return {"providers": providers}


def fleet_shapes() -> dict[str, Shape]:
    """Each fake's limits and latency, scaled, for the optimum."""
    return {
        name: Shape(
            latency=latency / SCALE,
            max_concurrent=conc,
            requests_per_minute=None if rpm is None else rpm * SCALE,
            burst=1,
            min_interval=interval / SCALE,
        )
        for name, (_, conc, interval, rpm, latency, _, _) in PRESETS.items()
    }


def time_call(client: Client, preferred_model: str | None = None) -> tuple[float, Any]:
    """Seconds ``client.chat(MESSAGES, preferred_model=...)`` took, and its response."""
    start = time.perf_counter()
    response = client.chat(MESSAGES, preferred_model=preferred_model)
    return time.perf_counter() - start, response


def fallback_latency(fleet: RemoteFleet, reps: int) -> dict[str, list[float]]:
    """Part 1: per repetition, the fallback call, the secondary alone, the call after."""
    times: dict[str, list[float]] = {"fallback": [], "alone": [], "cooling": []}
    config = {
        "providers": [
            fleet.config("primary", priority=1),
            fleet.config("secondary", priority=2),
        ]
    }
    for i in range(reps):
        with Client(config) as client:
            time_call(client, preferred_model="primary")  # warm both connections
            time_call(client, preferred_model="secondary")
            fleet.rate_limit_all("primary", 30)
            try:
                if i % 2:
                    times["alone"].append(time_call(client, preferred_model="secondary")[0])
                took, response = time_call(client)
                first = response.attempts[0]
                if response.provider != "secondary" or first.outcome is not Outcome.RATE_LIMITED:
                    raise RuntimeError(f"expected a fallback after a 429, got {response.attempts}")
                times["fallback"].append(took)
                if not i % 2:
                    times["alone"].append(time_call(client, preferred_model="secondary")[0])
                took, response = time_call(client)
                if response.attempts[0].outcome is not Outcome.COOLING_DOWN:
                    raise RuntimeError(f"expected the primary skipped, got {response.attempts}")
                times["cooling"].append(took)
            finally:
                fleet.heal("primary")
    return times


def fleet_batch(fleet: RemoteFleet, n: int, workers: int, budget: float) -> dict[str, Any]:
    """Part 2: ``n`` calls over the four fakes; makespan and per-provider figures.

    Bounded: calls still unfinished after ``budget`` seconds are cancelled.
    """
    fleet.reset_stats()
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(n)]
    done = failed = 0
    answered: dict[str, int] = dict.fromkeys(PRESETS, 0)
    with Client(fleet_config(fleet)) as client:
        start = time.perf_counter()
        # client.map(prompts, max_workers=workers, progress=False), with a time bound.
        results: Generator[Any, None, None] = client.imap(
            prompts, max_workers=workers, ordered=False, return_exceptions=True, timeout=budget
        )
        try:
            for _, result in results:
                if isinstance(result, Exception):
                    failed += 1
                else:
                    done += 1
                    answered[result.provider] += 1
                if time.perf_counter() - start > budget:
                    break
        finally:
            results.close()
        elapsed = time.perf_counter() - start
        stats = client.stats()
    server = fleet.stats()
    per_provider = {
        name: {
            "answered": answered[name],
            "requests": stats[name].requests,
            "ok": stats[name].ok,
            "server_429": int(server[name]["statuses"].get("429", 0)),
            "fallbacks": stats[name].fallbacks,
            "retries": stats[name].retries,
            "max_in_flight": int(server[name]["max_in_flight_seen"]),
            "breaker": stats[name].breaker_state,
            "wait_p95": stats[name].wait_p95,
        }
        for name in PRESETS
    }
    return {
        "makespan": elapsed if done == n else math.inf,
        "elapsed": elapsed,
        "done": done,
        "failed": failed,
        "providers": per_provider,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns the exit status (0)."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "", argv)
    quick: bool = args.quick
    reps = 3 if quick else 20
    n, workers = (12, 32) if quick else (400, 32)
    print(
        f"bench_fallback  python {sys.version.split()[0]}  {'--quick' if quick else 'full'}: "
        f"{reps} fallback repetitions, a batch of {n} over 4 fakes (time / {SCALE:g})"
    )
    shapes = fleet_shapes()
    optimum = optimum_makespan(list(shapes.values()), n)
    throughput = sum(s.throughput for s in shapes.values())
    budget = 1.5 * optimum + (0.3 if quick else 2.0)  # then the batch is cut short

    specs: dict[str, dict[str, Any]] = {
        "primary": {},
        "secondary": {"latency": SECONDARY_LATENCY},
        **fleet_specs(),
    }
    with RemoteFleet(specs) as fleet:
        times = fallback_latency(fleet, reps)
        batch = fleet_batch(fleet, n, workers, budget)

    alone, fallback, cooling = (median(times[k]) for k in ("alone", "fallback", "cooling"))
    extras = sorted(f - a for f, a in zip(times["fallback"], times["alone"], strict=True))
    print_table(
        "1. Primary answers 429 + Retry-After: 30; secondary latency "
        f"{SECONDARY_LATENCY * 1e3:g} ms ({reps} repetitions, fresh client each)",
        ["call", "median ms", "min ms", "max ms"],
        [
            (
                "secondary alone (preferred_model)",
                alone * 1e3,
                min(times["alone"]) * 1e3,
                max(times["alone"]) * 1e3,
            ),
            (
                "primary 429 -> secondary",
                fallback * 1e3,
                min(times["fallback"]) * 1e3,
                max(times["fallback"]) * 1e3,
            ),
            (
                "next call (primary cooling down)",
                cooling * 1e3,
                min(times["cooling"]) * 1e3,
                max(times["cooling"]) * 1e3,
            ),
            (
                "extra of the fallback (paired)",
                median(extras) * 1e3,
                extras[0] * 1e3,
                extras[-1] * 1e3,
            ),
        ],
    )

    rows = []
    for name, p in batch["providers"].items():
        shape = shapes[name]
        rows.append(
            (
                name,
                f"{shape.throughput:.2f}",
                p["answered"],
                p["requests"],
                p["server_429"],
                p["fallbacks"],
                p["retries"],
                p["max_in_flight"],
                p["wait_p95"],
                p["breaker"],
            )
        )
    print_table(
        f"2. Batch of {n} over the preset-shaped fleet, map(max_workers={workers}); "
        f"bound {throughput:.2f}/s",
        [
            "provider",
            "max/s",
            "answered",
            "requests",
            "429s at server",
            "fallbacks",
            "retries",
            "max in flight",
            "admission wait p95 s",
            "breaker",
        ],
        rows,
    )
    span = batch["makespan"]
    finished = batch["done"] == n
    print(
        f"   makespan {batch['elapsed']:.3f} s"
        + ("" if finished else f" (unfinished: {batch['done']}/{n} answered)")
        + f"; optimum {optimum:.3f} s (n / combined throughput: {n / throughput:.3f} s)"
        + f"; failed calls {batch['failed']}"
    )

    report = Report("bench_fallback")
    report.check(
        "fallback on 429 (Retry-After 30): extra over the secondary",
        f"{(fallback - alone) * 1e3:.1f} ms (paired {median(extras) * 1e3:.1f} ms)",
        f"< {FALLBACK_TARGET * 1e3:.0f} ms",
        fallback - alone < FALLBACK_TARGET,
    )
    report.check(
        "fleet batch makespan / optimum",
        f"{span / optimum:.3f}"
        if finished
        else f"> {batch['elapsed'] / optimum:.2f} ({batch['done']}/{n} done when cut short)",
        f"<= {1 + MAKESPAN_TARGET:.2f}",
        span / optimum <= 1 + MAKESPAN_TARGET,
    )
    report.print(quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
