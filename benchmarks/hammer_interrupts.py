"""Hammer (admission control): random asynchronous exceptions into threads sharing a limiter.

Run: ``python benchmarks/hammer_interrupts.py --rounds N`` (each round about
``--seconds`` long, 1.0 by default; stops by itself).

Each round builds one in-memory limiter setup (cycling through: ``max_concurrent=2``;
every limit set but never binding, with LLM tokens and ``settle``; two members
of a ``max_concurrent=2`` pool), starts ``--threads`` (16) threads that acquire,
hold briefly and release in a loop, and, with thread switching made as fast as
CPython allows (``sys.setswitchinterval(1e-6)``), raises KeyboardInterrupt in a
random one of them every 0-2 ms with ``PyThreadState_SetAsyncExc``. A thread
counts itself as a holder inside its permit (a slot set after admission and
cleared before release), so ``sum(slots)`` above the limit is an over-admission.

After the round: the threads are stopped and joined, the garbage collector
runs (the safety net for permits dropped in flight), and then nothing may be
held, nobody queued, the lock free and the limiter must admit up to its limit
(and not beyond) within its timeout. Reported: injections, leaks (units still
held, or a wedged limiter: must be 0), over-admissions (must be 0).

The in-memory backend only (the Redis limiter's in-process side is not covered).
Exit status 1 when a leak or an over-admission was seen.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ratelimit_sdk.errors import AcquireTimeout
from ratelimit_sdk.limiter.memory import MemoryLimiter

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
_set_async_exc.restype = ctypes.c_int

#: Per-thread bound on operations in one round (the round also ends by time).
MAX_OPS = 200_000
JOIN_TIMEOUT = 10.0


@dataclass
class Result:
    """What the hammer saw over all rounds."""

    rounds: int = 0
    injections: int = 0
    admitted: int = 0
    interrupted: int = 0
    timeouts: int = 0
    strays: int = 0  # interrupts that landed in the worker's own loop and ended it
    in_finalizers: int = 0  # interrupts that landed in a finalizer (reported, not raised)
    leaks: int = 0
    over_admissions: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Setup:
    name: str
    limiters: list[MemoryLimiter]  # the ones workers acquire from
    roots: list[MemoryLimiter]  # every limiter to check (members and pool)
    cap: int  # most holders at once across all workers
    tokens: int


def _setups() -> list[Callable[[], _Setup]]:
    def simple() -> _Setup:
        lim = MemoryLimiter(max_concurrent=2)
        return _Setup("max_concurrent=2", [lim], [lim], 2, 0)

    def every_limit() -> _Setup:
        lim = MemoryLimiter(
            max_concurrent=3,
            requests_per_minute=6_000_000,
            burst=1000,
            tokens_per_minute=1e12,
        )
        return _Setup("every limit, tokens", [lim], [lim], 3, 50)

    def pooled() -> _Setup:
        pool = MemoryLimiter(max_concurrent=2, requests_per_minute=6_000_000, burst=1000)
        a = MemoryLimiter(max_concurrent=2, pool=pool)
        b = MemoryLimiter(max_concurrent=2, pool=pool)
        return _Setup("pool of 2, two members", [a, b], [a, b, pool], 2, 0)

    return [simple, every_limit, pooled]


def _probe(setup: _Setup) -> str | None:
    """In another thread: the limiter admits up to its cap and not beyond. A problem or None."""
    outcome: list[str] = []

    def run() -> None:
        try:
            lim = setup.limiters[0]
            cap = min(setup.cap, lim.limits()["max_concurrent"] or setup.cap)
            held = [lim.acquire(timeout=2.0) for _ in range(cap)]
            extra = lim.try_acquire()
            for p in held:
                p.release()
            if extra is not None:
                extra.release()
                outcome.append("over-admission in the probe")
            else:
                outcome.append("ok")
        except BaseException as exc:
            outcome.append(f"probe failed: {exc!r}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(JOIN_TIMEOUT)
    if t.is_alive():
        return "wedged: the probe did not finish (lock held for good?)"
    return None if outcome == ["ok"] else outcome[0]


def _round(make: Callable[[], _Setup], seconds: float, threads: int, rng: random.Random) -> Result:
    setup = make()
    res = Result(rounds=1)
    slots = [0] * threads
    over: list[int] = []
    stop = threading.Event()
    counts = [[0, 0, 0] for _ in range(threads)]  # admitted, interrupted, timeouts
    strays: list[int] = []

    def work(i: int) -> None:
        lim = setup.limiters[i % len(setup.limiters)]
        tokens = setup.tokens
        mine = counts[i]
        try:
            for _ in range(MAX_OPS):
                try:
                    if stop.is_set():
                        break
                    with lim.acquire(timeout=0.5, tokens=tokens) as permit:
                        try:
                            slots[i] = 1
                            n = sum(slots)
                            if n > setup.cap:
                                over.append(n)
                            if tokens:
                                permit.settle(tokens=tokens // 2)
                        finally:
                            slots[i] = 0
                    mine[0] += 1
                except KeyboardInterrupt:
                    mine[1] += 1
                except AcquireTimeout:
                    mine[2] += 1
        except BaseException:
            strays.append(i)

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    old_interval = sys.getswitchinterval()
    old_hook = threading.excepthook
    threading.excepthook = lambda args: strays.append(-1)  # a late interrupt, after the loop
    # An interrupt landing in a finalizer (Permit.__del__ runs whenever a permit is
    # freed) is not raised: CPython reports it here. Counted, not printed.
    old_unraisable = sys.unraisablehook
    finalizer_hits: list[object] = []
    sys.unraisablehook = finalizer_hits.append
    sys.setswitchinterval(1e-6)
    try:
        for w in workers:
            w.start()
        idents = [w.ident for w in workers if w.ident is not None]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tid = rng.choice(idents)
            hit = _set_async_exc(tid, KeyboardInterrupt)
            if hit == 1:
                res.injections += 1
            elif hit > 1:  # pragma: no cover - never for one thread id
                _set_async_exc(tid, None)  # type: ignore[arg-type]
            time.sleep(rng.uniform(0.0, 0.002))
    finally:
        stop.set()
        sys.setswitchinterval(old_interval)
        for w in workers:
            w.join(JOIN_TIMEOUT)
        threading.excepthook = old_hook
    gc.collect()
    sys.unraisablehook = old_unraisable
    res.in_finalizers = len(finalizer_hits)
    stuck = [w for w in workers if w.is_alive()]
    if stuck:
        res.leaks += 1
        res.problems.append(f"{setup.name}: {len(stuck)} worker(s) stuck")
    gc.collect()
    for lim in setup.roots:
        if lim.in_flight or lim.queued:
            res.leaks += max(1, lim.in_flight)
            res.problems.append(
                f"{setup.name}: in_flight={lim.in_flight} queued={lim.queued} after the round"
            )
    problem = _probe(setup) if not stuck else None
    if problem is not None:
        if "over-admission" in problem:
            res.over_admissions += 1
        else:
            res.leaks += 1
        res.problems.append(f"{setup.name}: {problem}")
    res.over_admissions += len(over)
    if over:
        res.problems.append(f"{setup.name}: {len(over)} over-admissions (max {max(over)})")
    res.admitted = sum(c[0] for c in counts)
    res.interrupted = sum(c[1] for c in counts)
    res.timeouts = sum(c[2] for c in counts)
    res.strays = len(strays)
    return res


def hammer(rounds: int, seconds: float = 1.0, seed: int = 0, threads: int = 16) -> Result:
    """Run ``rounds`` rounds (cycling through the setups) and add up what they saw."""
    rng = random.Random(seed)
    makers = _setups()
    total = Result()
    for r in range(rounds):
        res = _round(makers[r % len(makers)], seconds, threads, rng)
        total.rounds += res.rounds
        total.injections += res.injections
        total.admitted += res.admitted
        total.interrupted += res.interrupted
        total.timeouts += res.timeouts
        total.strays += res.strays
        total.in_finalizers += res.in_finalizers
        total.leaks += res.leaks
        total.over_admissions += res.over_admissions
        total.problems += res.problems
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds to run (default 6)")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of a round")
    parser.add_argument("--threads", type=int, default=16, help="worker threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random injector")
    args = parser.parse_args(argv)
    start = time.monotonic()
    res = hammer(args.rounds, args.seconds, args.seed, args.threads)
    took = time.monotonic() - start
    print(f"hammer_interrupts  python {sys.version.split()[0]}  {took:.1f} s")
    rows = [
        ("rounds", res.rounds),
        ("threads", args.threads),
        ("injections (async KeyboardInterrupt)", res.injections),
        ("admissions completed", res.admitted),
        ("operations interrupted", res.interrupted),
        ("acquire timeouts", res.timeouts),
        ("interrupts that ended a worker's own loop", res.strays),
        ("interrupts that landed in a finalizer", res.in_finalizers),
        ("leaks (units held / wedged after a round)", res.leaks),
        ("over-admissions", res.over_admissions),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for problem in res.problems:
        print("  problem:", problem)
    ok = res.leaks == 0 and res.over_admissions == 0
    print(f"verdict: {'PASS' if ok else 'FAIL'} (leaks and over-admissions must be 0)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
