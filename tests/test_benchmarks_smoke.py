"""Smoke tests of benchmarks/: each script runs with --quick and prints its targets.

Nothing here asserts a speed (the CI machine may be slow and noisy); only that
the benchmarks still run against the current API, stop by themselves, and that
the optimum they compare against is computed right.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _common  # noqa: E402


def _servers_installed() -> bool:
    return any(
        shutil.which(name) or os.access(f"/usr/sbin/{name}", os.X_OK)
        for name in ("nginx", "haproxy")
    )


@pytest.mark.parametrize(
    "script",
    [
        "bench_limiter.py",
        "bench_client.py",
        "bench_fallback.py",
        pytest.param(
            "bench_real_servers.py",
            marks=pytest.mark.skipif(
                not _servers_installed(),
                reason="nginx and haproxy not installed (apt-get install -y nginx haproxy)",
            ),
        ),
        "bench_shapes.py",
        "bench_uncoordinated.py",
        "bench_openai_guarded.py",
    ],
)
def test_benchmark_runs_quick(script: str) -> None:
    """The script exits 0 within the time limit and prints a targets table with verdicts.

    The issue 11 scripts also take ``--json``: one JSON document on stdout, the
    tables on stderr (checked on one of them, to keep the smoke run short).
    """
    as_json = script == "bench_openai_guarded.py"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *(["--json"] if as_json else [])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    tables = done.stderr if as_json else done.stdout
    assert "stopped early" not in tables, tables
    assert ": targets" in tables
    assert "PASS" in tables or "MISS" in tables
    if as_json:
        document = json.loads(done.stdout)
        assert document["benchmark"] == script.removesuffix(".py")
        assert document["targets"], document
        assert all(t["verdict"] in ("PASS", "MISS") for t in document["targets"])


def test_greedy_optimum_of_the_new_shapes() -> None:
    """The optima bench_shapes and bench_openai_guarded compare against."""
    window = _common.ServerShape(latency=0.05, window=(10, 1.0))
    assert math.isclose(_common.greedy_makespan(window, [0.0] * 400), 39.05)
    hidden = _common.ServerShape(latency=0.05, max_concurrent=3)
    assert math.isclose(_common.greedy_makespan(hidden, [0.0] * 100), 34 * 0.05)
    drained = _common.ServerShape(latency=0.05, rate=10, burst=1)
    assert math.isclose(_common.greedy_makespan(drained, [0.0] * 60), 5.9 + 0.05)
    bucket = _common.ServerShape(latency=0.05, rate=10, burst=3)
    assert math.isclose(_common.greedy_makespan(bucket, [0.0] * 400), 39.7 + 0.05)


def test_optimum_of_the_strict_server_is_the_issues_formula() -> None:
    """400 requests at 4 in flight, 40/s, burst 5, 50 ms: 395/40 + 0.05 s."""
    shape = _common.Shape(latency=0.05, max_concurrent=4, requests_per_minute=2400, burst=5)
    assert math.isclose(_common.optimum_makespan([shape], 400), 395 / 40 + 0.05, rel_tol=1e-6)


def test_greedy_optimum_of_each_real_server_shape() -> None:
    """400 at once: nginx burst 4 + limit_conn 4, nginx no burst, haproxy 40 per 1 s + 4 conns."""
    nginx = _common.ServerShape(latency=0.05, max_concurrent=4, rate=40, burst=5)
    assert math.isclose(_common.greedy_makespan(nginx, [0.0] * 400), 395 / 40 + 0.05)
    spaced = _common.ServerShape(latency=0.05, rate=40, min_interval=0.025)
    assert math.isclose(_common.greedy_makespan(spaced, [0.0] * 400), 399 * 0.025 + 0.05)
    window = _common.ServerShape(latency=0.05, queue_concurrent=4, window=(40, 1.0))
    # Ten windows; in the last one 40 requests take 10 rounds of 4 at 50 ms.
    assert math.isclose(_common.greedy_makespan(window, [0.0] * 400), 9.0 + 0.5)
    # Arrivals slower than the server: the optimum is the last arrival plus the latency.
    assert math.isclose(_common.greedy_makespan(nginx, [i * 0.1 for i in range(10)]), 0.95)


def test_optimum_is_bound_by_concurrency_when_that_is_tighter() -> None:
    """One slot, 1 s per request, no rate limit: n requests take n seconds."""
    shape = _common.Shape(latency=1.0, max_concurrent=1)
    assert math.isclose(_common.optimum_makespan([shape], 7), 7.0, rel_tol=1e-6)


def test_optimum_adds_providers_up() -> None:
    """Two equal providers finish a batch in half the time of one (spacing-bound)."""
    one = _common.Shape(latency=0.0, min_interval=0.5)
    alone = _common.optimum_makespan([one], 21)
    both = _common.optimum_makespan([one, one], 42)
    assert math.isclose(alone, 10.0, rel_tol=1e-6)
    assert math.isclose(both, alone, rel_tol=1e-6)


def test_interleave_rotates_the_order_and_respects_rounds() -> None:
    """Each variant runs once per round; the first to run changes from round to round."""
    order: list[str] = []

    def make(name: str) -> Callable[[], float]:
        def measure() -> float:
            order.append(name)
            return 1.0

        return measure

    samples = _common.interleave({"a": make("a"), "b": make("b")}, rounds=3, budget=60.0)
    assert samples == {"a": [1.0, 1.0, 1.0], "b": [1.0, 1.0, 1.0]}
    assert order == ["a", "b", "b", "a", "a", "b"]
