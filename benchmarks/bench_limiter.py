"""Benchmark (admission control): what the in-memory Limiter costs, alone and under contention.

Run: ``python benchmarks/bench_limiter.py`` (about 25 s) or ``--quick`` (well under a second).

1. Uncontended acquire+release, in interleaved rounds, per operation:
   a bare ``threading.BoundedSemaphore`` pair (the reference),
   ``lim.acquire().release()`` and ``with lim.acquire():`` on
   ``Limiter(max_concurrent=4)``, and the same on a limiter with every limit
   set but never binding. Reported as the median over rounds of each round's
   ratio to the semaphore (target: within 3x).
2. Throughput: 8 and 64 threads each doing ``with lim.acquire(): pass`` for a
   fixed time on ``Limiter(max_concurrent=4)`` (no rate limit), ops/s, with a
   ``BoundedSemaphore(4)`` measured the same way for reference; target: 64
   threads reach at least half the 8-thread throughput.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from _common import Report, interleave, median, no_gc, parse_args, print_table

from ratelimit_sdk import Limiter

UNCONTENDED_TARGET = 3.0  # limiter pair within 3x of the semaphore pair
CONTENTION_TARGET = 0.5  # 64-thread throughput at least half the 8-thread one


def per_op(body: Callable[[int], None], n: int) -> Callable[[], float]:
    """A measurement: run ``body(n)`` with the collector off; seconds per operation."""

    def measure() -> float:
        with no_gc():
            start = time.perf_counter()
            body(n)
            return (time.perf_counter() - start) / n

    return measure


def semaphore_pairs(sem: threading.BoundedSemaphore) -> Callable[[int], None]:
    """``n`` times ``sem.acquire(); sem.release()``."""
    acquire, release = sem.acquire, sem.release

    def run(n: int) -> None:
        for _ in range(n):
            acquire()
            release()

    return run


def limiter_release(lim: Limiter, tokens: int = 0) -> Callable[[int], None]:
    """``n`` times ``lim.acquire().release()`` (``acquire(tokens=...)`` when tokens > 0)."""
    acquire = lim.acquire
    if tokens:

        def run_tokens(n: int) -> None:
            for _ in range(n):
                acquire(tokens=tokens).release()

        return run_tokens

    def run(n: int) -> None:
        for _ in range(n):
            acquire().release()

    return run


def limiter_with(lim: Limiter) -> Callable[[int], None]:
    """``n`` times ``with lim.acquire(): pass``."""
    acquire = lim.acquire

    def run(n: int) -> None:
        for _ in range(n):
            with acquire():
                pass

    return run


def contended(
    enter: Callable[[], object], leave: Callable[[object], None], threads: int, seconds: float
) -> tuple[float, float]:
    """``threads`` threads each looping ``leave(enter())`` for ``seconds``.

    Returns ``(ops per second, fairness)`` where fairness is the fewest
    operations any thread got divided by the most (1.0: perfectly even).
    """
    counts = [0] * threads
    stop = threading.Event()
    gate = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        gate.wait()
        done = 0
        is_set = stop.is_set
        while not is_set():
            leave(enter())
            done += 1
        counts[i] = done

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    gate.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    for t in workers:
        t.join(timeout=30)
    if any(t.is_alive() for t in workers):
        raise RuntimeError("a worker thread did not stop: the lock under test is stuck")
    return sum(counts) / elapsed, (min(counts) / max(counts) if max(counts) else 0.0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns the exit status (0)."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "", argv)
    quick: bool = args.quick
    n_ops = 200 if quick else 5000
    rounds, budget = (2, 0.1) if quick else (40, 8.0)
    duration = 0.02 if quick else 2.0
    contention_rounds = 1 if quick else 2

    print(
        f"bench_limiter  python {sys.version.split()[0]}  "
        f"{'--quick' if quick else 'full'}: {n_ops} ops per sample, up to {rounds} rounds"
    )

    # -- 1. uncontended --------------------------------------------------------------------
    sem = threading.BoundedSemaphore(4)
    lim = Limiter(max_concurrent=4)
    never_binding = Limiter(
        max_concurrent=1_000_000,
        requests_per_minute=1e12,
        burst=1_000_000_000,
        min_interval=1e-12,
        tokens_per_minute=1e15,
    )
    variants = {
        "BoundedSemaphore acquire(); release()": per_op(semaphore_pairs(sem), n_ops),
        "Limiter(max_concurrent=4) acquire().release()": per_op(limiter_release(lim), n_ops),
        "Limiter(max_concurrent=4) with acquire():": per_op(limiter_with(lim), n_ops),
        "Limiter(every limit, none binding) acquire().release()": per_op(
            limiter_release(never_binding), n_ops
        ),
        "  same, acquire(tokens=100).release()": per_op(
            limiter_release(never_binding, tokens=100), n_ops
        ),
    }
    for measure in variants.values():  # warm up
        measure()
    samples = interleave(variants, rounds=rounds, budget=budget)
    base_name = next(iter(variants))
    base = samples[base_name]
    ratios = {
        name: median([s / b for s, b in zip(values, base, strict=True)])
        for name, values in samples.items()
    }
    print_table(
        f"1. Uncontended acquire+release ({len(base)} interleaved rounds x {n_ops} ops)",
        ["variant", "median ns/op", "min ns/op", "x semaphore (median of rounds)"],
        [
            (name, median(values) * 1e9, min(values) * 1e9, ratios[name])
            for name, values in samples.items()
        ],
    )

    # -- 2. contention ---------------------------------------------------------------------
    def lim_enter() -> object:
        return lim.acquire()

    def lim_leave(permit: object) -> None:
        permit.release()  # type: ignore[attr-defined]

    def sem_enter() -> object:
        return sem.acquire()

    def sem_leave(_: object) -> None:
        sem.release()

    configs: list[tuple[str, Callable[[], object], Callable[[object], None], int]] = [
        ("Limiter(max_concurrent=4)", lim_enter, lim_leave, 8),
        ("Limiter(max_concurrent=4)", lim_enter, lim_leave, 64),
        ("BoundedSemaphore(4)", sem_enter, sem_leave, 8),
        ("BoundedSemaphore(4)", sem_enter, sem_leave, 64),
    ]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {
        (name, n): [] for name, _, _, n in configs
    }
    for r in range(contention_rounds):
        order = configs if r % 2 == 0 else configs[::-1]  # A B C D, then D C B A
        for name, enter, leave, n in order:
            results[(name, n)].append(contended(enter, leave, n, duration))
    if lim.in_flight != 0:
        raise RuntimeError(f"permits leaked: in_flight={lim.in_flight}")
    rows = []
    for (name, n), runs in results.items():
        rows.append(
            (
                name,
                n,
                median([ops for ops, _ in runs]),
                min(fair for _, fair in runs),
                " ".join(f"{ops:.0f}" for ops, _ in runs),
            )
        )
    print_table(
        f"2. Throughput under contention ({contention_rounds} rounds x {duration:g} s each, "
        "acquire+release, nothing held)",
        ["lock", "threads", "median ops/s", "fairness min/max", "ops/s per round"],
        rows,
    )

    def throughput(name: str, n: int) -> float:
        return median([ops for ops, _ in results[(name, n)]])

    lim_ratio = throughput("Limiter(max_concurrent=4)", 64) / throughput(
        "Limiter(max_concurrent=4)", 8
    )
    sem_ratio = throughput("BoundedSemaphore(4)", 64) / throughput("BoundedSemaphore(4)", 8)

    report = Report("bench_limiter")
    for name in list(variants)[1:]:
        report.check(
            f"uncontended: {name.strip()}",
            f"{ratios[name]:.2f}x semaphore",
            f"<= {UNCONTENDED_TARGET:g}x",
            ratios[name] <= UNCONTENDED_TARGET,
        )
    report.check(
        "contention: Limiter 64 / 8 threads",
        f"{lim_ratio:.2f} (semaphore: {sem_ratio:.2f})",
        f">= {CONTENTION_TARGET:g}",
        lim_ratio >= CONTENTION_TARGET,
    )
    report.print(quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
