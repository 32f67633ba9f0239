"""Benchmarks (shared helpers): timing in interleaved rounds, tables, targets, fakes in a child.

Not part of the package. Each ``bench_*.py`` script in this folder imports it as
``_common`` (the script's folder is first on ``sys.path`` when run as a file).

- :func:`interleave` runs several measurements in rounds (A, B, A, B, ...; the
  order rotates each round) so that the machine's drift and noise fall on all
  of them alike, and stops after a number of rounds or a time budget.
- :func:`print_table` and :class:`Report` print aligned tables and the targets
  next to the measured values with PASS / MISS.
- :class:`RemoteFleet` runs :class:`ratelimit_sdk.testing.FakeProvider` servers
  in a child process (a real provider is not in the caller's process: its CPU
  must not count as the SDK's, nor compete for the caller's GIL) and lets the
  parent script them and read their statistics over the child's stdin/stdout.
- :func:`optimum_makespan`: the shortest possible time to finish ``n`` requests
  over providers with given limits and latencies (a lower bound).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "RemoteFleet",
    "Report",
    "Shape",
    "interleave",
    "json_output",
    "median",
    "no_gc",
    "optimum_makespan",
    "parse_args",
    "print_table",
]


def parse_args(
    description: str, argv: Sequence[str] | None = None, *, with_json: bool = False
) -> argparse.Namespace:
    """The command line every benchmark takes: ``--quick`` (a few hundred ms, for CI).

    ``with_json`` adds ``--json``: the tables go to stderr and stdout gets one
    JSON document (see :func:`json_output`).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts and durations: checks that the benchmark runs, measures nothing",
    )
    if with_json:
        parser.add_argument(
            "--json",
            action="store_true",
            help="print the results as one JSON document on stdout (the tables go to stderr)",
        )
    return parser.parse_args(argv)


@contextmanager
def json_output(enabled: bool, document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """With ``enabled``, send everything printed inside to stderr and dump ``document`` after.

    The block fills ``document`` (yielded) with its results; at the end it is
    written to the real stdout as JSON (non-finite floats as ``null``), even
    when the block stops early. Without ``enabled`` this does nothing.
    """
    if not enabled:
        yield document
        return
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield document
    finally:
        sys.stdout = real_stdout
        json.dump(_finite(document), real_stdout, indent=2, sort_keys=True)
        real_stdout.write("\n")
        real_stdout.flush()


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no inf or nan)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return statistics.median(values) if values else math.nan


@contextmanager
def no_gc() -> Iterator[None]:
    """Switch the cyclic garbage collector off for a timed section (as ``timeit`` does)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def interleave(
    variants: Mapping[str, Callable[[], float]],
    *,
    rounds: int,
    budget: float,
) -> dict[str, list[float]]:
    """Run each measurement once per round, rotating the order; return every sample.

    ``variants`` maps a name to a callable that measures once and returns a
    number (seconds per operation, say). At most ``rounds`` rounds; no new
    round starts once ``budget`` seconds have passed (at least one runs).
    """
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        if r and time.perf_counter() - start > budget:
            break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``headers`` as an aligned text table (first column left-aligned)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [
            row[i].ljust(widths[i]) if i == 0 else row[i].rjust(widths[i]) for i in range(len(row))
        ]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


@dataclass
class Report:
    """The targets of one benchmark: what was measured, the goal, PASS or MISS."""

    title: str
    rows: list[tuple[str, str, str, bool]] = field(default_factory=list)

    def check(self, name: str, measured: str, target: str, ok: bool) -> bool:
        """Record one target and whether the measured value meets it; return ``ok``."""
        self.rows.append((name, measured, target, ok))
        return ok

    def print(self, quick: bool = False) -> None:
        """Print the targets table (in ``--quick`` mode the verdicts mean nothing)."""
        note = " (--quick: counts too small to mean anything)" if quick else ""
        print_table(
            f"{self.title}: targets{note}",
            ["target", "measured", "goal", "verdict"],
            [(n, m, t, "PASS" if ok else "MISS") for n, m, t, ok in self.rows],
        )

    def as_json(self) -> list[dict[str, Any]]:
        """The targets as JSON-ready dicts (``verdict`` is ``PASS`` or ``MISS``)."""
        return [
            {"target": n, "measured": m, "goal": t, "verdict": "PASS" if ok else "MISS"}
            for n, m, t, ok in self.rows
        ]

    @property
    def all_pass(self) -> bool:
        """Whether every target was met."""
        return all(ok for *_, ok in self.rows)


# -- the fastest possible makespan -------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One provider's limits and latency, for :func:`optimum_makespan`.

    ``None`` (or ``0.0`` for ``min_interval``) means no such limit; ``burst``
    is the token bucket's capacity (it starts full).
    """

    latency: float
    max_concurrent: int | None = None
    requests_per_minute: float | None = None
    burst: int = 1
    min_interval: float = 0.0

    def completions_by(self, t: float) -> float:
        """The most requests this provider can have *finished* by time ``t`` (from 0)."""
        last_start = t - self.latency  # a request finishing by t started by t - latency
        if last_start < 0:
            return 0.0
        most = math.inf
        if self.max_concurrent is not None:
            # Each slot finishes at most one request per latency.
            per_slot = math.floor(t / self.latency + 1e-9) if self.latency > 0 else math.inf
            most = min(most, self.max_concurrent * per_slot)
        if self.requests_per_minute is not None:
            most = min(most, math.floor(self.burst + self.requests_per_minute / 60 * last_start))
        if self.min_interval > 0:
            most = min(most, math.floor(last_start / self.min_interval + 1e-9) + 1)
        return most

    @property
    def throughput(self) -> float:
        """Sustained requests per second this provider allows."""
        bounds = [math.inf]
        if self.max_concurrent is not None and self.latency > 0:
            bounds.append(self.max_concurrent / self.latency)
        if self.requests_per_minute is not None:
            bounds.append(self.requests_per_minute / 60)
        if self.min_interval > 0:
            bounds.append(1 / self.min_interval)
        return min(bounds)


def optimum_makespan(shapes: Sequence[Shape], n: int) -> float:
    """The smallest ``t`` by which the providers together can have finished ``n`` requests.

    Each provider's count is bounded by its bucket (``burst + rate * (t - latency)``
    starts), its spacing and its concurrency (``max_concurrent`` per ``latency``);
    the sum over providers must reach ``n``. Found by bisection; a lower bound on
    any real schedule's makespan.
    """
    if n <= 0:
        return 0.0

    def enough(t: float) -> bool:
        return sum(s.completions_by(t) for s in shapes) >= n

    hi = 1.0
    while not enough(hi):
        hi *= 2
        if hi > 1e9:
            raise ValueError("these providers can never finish the batch")
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


# -- fake providers in a child process ----------------------------------------------------------


class RemoteFleet:
    """FakeProvider servers in a child process, scripted over its stdin and stdout.

    ``specs`` maps a provider name to ``FakeProvider`` keyword arguments (JSON
    values only: numbers, not callables). Use as a context manager; the child
    exits when its stdin closes. Not thread-safe: call it from one thread.
    """

    def __init__(self, specs: Mapping[str, Mapping[str, Any]]) -> None:
        self._specs = {name: dict(kwargs) for name, kwargs in specs.items()}
        self._proc: subprocess.Popen[str] | None = None
        self.base_urls: dict[str, str] = {}

    def __enter__(self) -> RemoteFleet:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve", json.dumps(self._specs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = self._read()
        self.base_urls = dict(ready["base_urls"])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def _read(self) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise RuntimeError("the fake fleet is not running")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake fleet's process ended (exit code {proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"fake fleet: {reply['error']}")
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command to the child and return its answer (see :func:`_serve`)."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RuntimeError("the fake fleet is not running")
        proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        proc.stdin.flush()
        return self._read()

    def config(self, name: str, **extra: Any) -> dict[str, Any]:
        """A provider config dict for fake ``name`` (``model`` is ``fake-model``)."""
        return {"name": name, "base_url": self.base_urls[name], "model": "fake-model", **extra}

    def stats(self) -> dict[str, dict[str, Any]]:
        """``{name: {count, statuses: {code: n}, max_in_flight_seen}}`` for every fake."""
        return dict(self.call("stats")["stats"])

    def reset_stats(self) -> None:
        """Forget every fake's counters."""
        self.call("reset_stats")

    def rate_limit_all(self, name: str, retry_after: float) -> None:
        """Fake ``name`` answers every request 429 with ``Retry-After: retry_after``."""
        self.call("rate_limit_all", name=name, retry_after=retry_after)

    def set_shapes(self, name: str, shapes: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Fake ``name`` enforces ``shapes`` (``[(class name, fields)]``), in fresh state."""
        self.call("set_shapes", name=name, shapes=[[n, dict(f)] for n, f in shapes])

    def heal(self, name: str) -> None:
        """Fake ``name`` answers normally again."""
        self.call("heal", name=name)


def _kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """FakeProvider keywords from JSON: ``"shapes": [["LeakyBucket", {"rate": 40}], ...]``.

    Each shape is named by its class in :mod:`ratelimit_sdk.testing.shapes`.
    """
    from ratelimit_sdk.testing import shapes as shape_module

    kwargs = dict(spec)
    if "shapes" in kwargs:
        kwargs["shapes"] = [
            getattr(shape_module, name)(**fields) for name, fields in kwargs["shapes"]
        ]
    return kwargs


def _serve(specs: Mapping[str, Mapping[str, Any]]) -> None:
    """The child: start the fakes, print their URLs, answer commands until stdin closes."""
    from ratelimit_sdk.testing import FakeFleet, FakeProvider, Respond

    def say(reply: Mapping[str, Any]) -> None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    fleet = FakeFleet(*(FakeProvider(name, **_kwargs(kwargs)) for name, kwargs in specs.items()))
    with fleet:
        say({"base_urls": fleet.base_urls})
        for line in sys.stdin:
            command = json.loads(line)
            op = command.get("op")
            if op == "stats":
                say(
                    {
                        "stats": {
                            p.name: {
                                "count": p.count,
                                "statuses": {str(k): v for k, v in p.statuses.items()},
                                "max_in_flight_seen": p.max_in_flight_seen,
                            }
                            for p in fleet
                        }
                    }
                )
            elif op == "reset_stats":
                fleet.reset_stats()
                say({"ok": True})
            elif op == "rate_limit_all":
                fleet[command["name"]].always(Respond.rate_limited(command["retry_after"]))
                say({"ok": True})
            elif op == "set_shapes":
                fleet[command["name"]].set_shapes(_kwargs({"shapes": command["shapes"]})["shapes"])
                say({"ok": True})
            elif op == "heal":
                fleet[command["name"]].heal()
                say({"ok": True})
            else:
                say({"error": f"unknown op {op!r}"})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: _common.py serve '<json specs>' (started by the benchmarks)")


# -- the optimum against a server's shape, for given arrival times -------------------------------


@dataclass(frozen=True)
class ServerShape:
    """A rate-limited server's shape, for :func:`greedy_makespan` (``None``: no such limit).

    ``max_concurrent`` (refused over) and ``queue_concurrent`` (queued over) both
    bound the requests in flight; ``rate`` and ``burst`` are a token bucket
    (``burst`` requests at once, then ``rate`` per second; nginx's ``burst=B`` is
    ``burst=B + 1`` here); ``min_interval`` spaces consecutive starts;
    ``window=(n, t)`` allows at most ``n`` starts in any ``t`` seconds.
    """

    latency: float
    max_concurrent: int | None = None
    queue_concurrent: int | None = None
    rate: float | None = None
    burst: int = 1
    min_interval: float = 0.0
    window: tuple[int, float] | None = None


def greedy_makespan(shape: ServerShape, release: Sequence[float]) -> float:
    """The earliest the server can have answered requests released at ``release`` (from 0).

    Requests start in release order, each as early as its release and every
    limit allow; each limit is a lower bound set by earlier starts alone, so this
    greedy schedule is the optimum (a lower bound on any real run).
    """
    starts: list[float] = []
    tat = -math.inf  # the bucket's theoretical arrival time (GCRA)
    slots = [c for c in (shape.max_concurrent, shape.queue_concurrent) if c is not None]
    for i, released in enumerate(sorted(release)):
        t = released
        for c in slots:
            if i >= c:
                t = max(t, starts[i - c] + shape.latency)
        if shape.rate is not None:
            t = max(t, tat - (shape.burst - 1) / shape.rate)
        if shape.min_interval > 0 and starts:
            t = max(t, starts[-1] + shape.min_interval)
        if shape.window is not None:
            limit, seconds = shape.window
            if i >= limit:
                t = max(t, starts[i - limit] + seconds)
        if shape.rate is not None:
            tat = max(tat, t) + 1 / shape.rate
        starts.append(t)
    return max(starts) + shape.latency if starts else 0.0
