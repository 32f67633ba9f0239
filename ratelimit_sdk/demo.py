"""Application (on top of the package, not a data-path stage): the offline demo of the seed's fleet.

``ratelimit-sdk demo`` starts four fake providers on 127.0.0.1 shaped like the
seed's (:mod:`ratelimit_sdk.presets`): a Kimi with one request in flight and a
tight rate, a GLM with ten, and a Llama-70B and a Dolphin-8B sharing one
Featherless pool of 4 concurrency units. Time runs :data:`SPEED` times faster
than in real life (rates multiplied, intervals and delays divided), so a batch
that would take a minute takes about twelve seconds.

Each fake enforces, server-side, the same limits the client is given (in
flight, requests per minute, the latter with :data:`JITTER_ALLOWANCE` of leeway
for network jitter) and answers 429 to anything over them, so an overrun would
show. The fakes send OpenAI-style ``x-ratelimit-*`` headers, as real providers
do. A little trouble is injected (unless ``faults=False``): GLM answers about
one request in twenty with a 500 or 502, and Llama starts with an outage (its
first answers are 502s) so its breaker opens and its calls fall back.

One :class:`~ratelimit_sdk.Client`, built from the presets with the base URLs
pointed at the fakes, sends the batch from a thread pool
(``client.map(..., progress=True)``). The report lists, per provider, what
the client and the server saw, and compares the makespan with the best one the
limits allow (:func:`optimal_makespan`, which ignores the injected faults).

It uses no API key and no network beyond 127.0.0.1. Like
:mod:`ratelimit_sdk.testing`, which it uses, nothing in the data path imports it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import Client
from .config import ClientConfig, LimitsConfig, ProviderConfig
from .errors import RateLimitSDKError
from .hooks import Event
from .models import ChatResponse
from .presets import seed_config
from .testing import FakeFleet, FakeProvider, Respond

__all__ = [
    "LATENCY",
    "SPEED",
    "DemoReport",
    "ProviderReport",
    "demo_config",
    "optimal_makespan",
    "run_demo",
    "scale_config",
]

#: How many times faster than real life the demo runs.
SPEED = 5.0

#: Seconds (real life) each fake takes to answer: reasoning models are slow.
LATENCY: Mapping[str, float] = {"kimi": 5.0, "glm": 5.0, "llama": 4.0, "dolphin": 1.5}

#: The fraction of GLM answers that are a 500 or 502 when faults are on.
GLM_FAULT_RATE = 0.05

#: How many 502s Llama answers at the start (its outage) when faults are on.
LLAMA_OUTAGE = 5

#: Seconds of leeway the fakes' rate limits allow per request interval. The client
#: spaces request *starts*; the server sees *arrivals*, a little later and not always
#: by the same amount, so a server bucket exactly equal to the client's would answer
#: 429 to a request started right on time whenever it overtook its predecessor.
JITTER_ALLOWANCE = 0.05


# -- configuration ----------------------------------------------------------------------------


def scale_config(config: ClientConfig, speed: float) -> ClientConfig:
    """A copy of ``config`` with time running ``speed`` times faster.

    Rates (requests and tokens per minute) are multiplied by ``speed``; intervals,
    queue waits, cooldowns, retry delays and breaker timeouts are divided by it.
    Concurrency and counts are unchanged. HTTP timeouts are left alone.
    """
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, got {speed!r}")
    providers = []
    for pc in config.providers:
        providers.append(
            pc.model_copy(
                update={
                    "limits": _scale_limits(pc.limits, speed),
                    "retry": pc.retry.model_copy(
                        update={
                            "base_delay": pc.retry.base_delay / speed,
                            "max_delay": pc.retry.max_delay / speed,
                        }
                    ),
                    "breaker": pc.breaker.model_copy(
                        update={"reset_timeout": pc.breaker.reset_timeout / speed}
                    ),
                }
            )
        )
    pools = {name: _scale_limits(limits, speed) for name, limits in config.pools.items()}
    return ClientConfig.load(
        {**config.model_dump(), "providers": [p.model_dump() for p in providers], "pools": pools}
    )


def _num(value: float | str | None) -> float | None:
    """A limit as a number (``"auto"``, learned while running, counts as none here)."""
    return None if isinstance(value, str) else value


def _whole(value: int | str | None) -> int | None:
    """A whole-number limit (``"auto"``, learned while running, counts as none here)."""
    return None if isinstance(value, str) else value


def _scale_limits(limits: LimitsConfig, speed: float) -> LimitsConfig:
    def times(value: float | None) -> float | None:
        return None if value is None else value * speed

    def over(value: float | None) -> float | None:
        return None if value is None else value / speed

    return limits.model_copy(
        update={
            "requests_per_minute": times(_num(limits.requests_per_minute)),
            "tokens_per_minute": times(_num(limits.tokens_per_minute)),
            "min_interval": limits.min_interval / speed,
            "max_queue_wait": over(limits.max_queue_wait),
            "quota_cooldown": limits.quota_cooldown / speed,
        }
    )


def demo_config(base_urls: Mapping[str, str], *, speed: float = SPEED) -> ClientConfig:
    """The seed's configuration, time-scaled, with each provider pointed at ``base_urls[name]``.

    No API key: the fakes need none.
    """
    overrides: dict[str, Any] = {
        name: {"base_url": url, "api_key_env": None, "timeout": {"connect": 2.0, "read": 30.0}}
        for name, url in base_urls.items()
    }
    return scale_config(seed_config(only=list(base_urls), **overrides), speed)


def _fake_for(pc: ProviderConfig, latency: float, *, faults: bool, seed: int) -> FakeProvider:
    """A fake enforcing the same concurrency and rate as ``pc`` gives the client."""
    limits = pc.limits
    options: dict[str, Any] = {}
    if faults and pc.name == "glm":
        options = {
            "fault_rate": GLM_FAULT_RATE,
            "faults": [Respond.status(500), Respond.status(502)],
        }
    fake = FakeProvider(
        pc.name,
        model=pc.model,
        max_concurrency=_whole(limits.max_concurrent),
        requests_per_minute=_server_rate(_num(limits.requests_per_minute)),
        burst=limits.burst,
        latency=latency,
        seed=seed,
        **options,
    )
    if faults and pc.name == "llama":
        fake.script([Respond.status(502)] * LLAMA_OUTAGE)
    return fake


def _server_rate(requests_per_minute: float | None) -> float | None:
    """The server's rate: the client's, each interval shortened by :data:`JITTER_ALLOWANCE`."""
    if requests_per_minute is None:
        return None
    interval = 60.0 / requests_per_minute
    return 60.0 / max(interval - JITTER_ALLOWANCE, interval / 2)


# -- the best possible makespan -------------------------------------------------------------------


def _starts_by(limits: LimitsConfig, latency: float, t: float) -> float:
    """Most requests a provider's own limits let start in ``[0, t]`` (each lasts ``latency``)."""
    if t < 0:
        return 0.0
    eps = 1e-9
    bounds = [math.inf]
    rpm, most = _num(limits.requests_per_minute), _whole(limits.max_concurrent)
    if rpm is not None:
        bounds.append(math.floor((limits.burst or 1) + rpm / 60.0 * t + eps))
    if limits.min_interval > 0:
        bounds.append(math.floor(t / limits.min_interval + eps) + 1)
    if most is not None and latency > 0:
        bounds.append(most * (math.floor(t / latency + eps) + 1))
    return min(bounds)


def _capacity(config: ClientConfig, latencies: Mapping[str, float], horizon: float) -> float:
    """An upper bound on the requests the fleet can complete within ``horizon`` seconds."""
    total = 0.0
    members: dict[str, list[tuple[float, float]]] = {}  # pool -> [(unit-seconds, count)]
    for pc in config.providers:
        latency = latencies[pc.name]
        count = _starts_by(pc.limits, latency, horizon - latency)
        if pc.pool is None:
            total += count
        else:
            members.setdefault(pc.pool, []).append((pc.pool_units * latency, count))
    for pool_name, entries in members.items():
        pool = config.pools[pool_name]
        shortest = min(latencies[p.name] for p in config.providers if p.pool == pool_name)
        allowed = _starts_by(pool, 0.0, horizon - shortest)  # the pool's own rate, if any
        pool_max = _whole(pool.max_concurrent)
        budget = math.inf if pool_max is None else pool_max * horizon
        taken = 0.0
        for cost, count in sorted(entries):  # cheapest first maximises the count
            fits = count if cost <= 0 or math.isinf(budget) else min(count, budget // cost)
            taken += fits
            budget -= fits * cost
        total += min(taken, allowed)
    return total


def optimal_makespan(requests: int, config: ClientConfig, latencies: Mapping[str, float]) -> float:
    """A lower bound on the time ``requests`` calls take through these limits (no faults).

    Each provider's completions by time ``T`` are bounded by its bucket
    (``burst + rate * (T - latency)``), its spacing and its concurrency (slots of
    ``latency``); a pool bounds the unit-seconds its members use (``units *
    latency`` per request, at most ``max_concurrent * T``). The result is the
    smallest ``T`` whose bound reaches ``requests`` (to a millisecond).
    """
    if requests <= 0:
        return 0.0
    hi = max(latencies[p.name] for p in config.providers)
    while _capacity(config, latencies, hi) < requests:
        hi *= 2
        if hi > 1e9:
            raise ValueError("these limits never complete the batch")
    lo = 0.0
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if _capacity(config, latencies, mid) >= requests:
            hi = mid
        else:
            lo = mid
    return hi


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderReport:
    """What the client and the provider's fake server saw of one provider."""

    name: str
    model: str
    sent: int  # attempts that reached the server (client side)
    ok: int
    retries: int
    fallbacks: int
    server_requests: int
    server_429: int
    max_in_flight: int  # most requests in flight at once, seen by the server
    max_concurrent: int | None
    breaker_state: str
    breaker_opened: int


@dataclass(frozen=True)
class DemoReport:
    """The outcome of one demo run. ``ok`` when :attr:`problems` is empty."""

    requests: int
    workers: int
    answered: int
    makespan: float
    optimum: float
    speed: float
    faults: bool
    providers: tuple[ProviderReport, ...]
    pool_units_max: int
    pool_units_limit: int | None
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Every request answered, no 429 and no limit exceeded on any server."""
        return not self.problems

    @property
    def ratio(self) -> float:
        """Makespan over the best possible one (1.0 is perfect)."""
        return self.makespan / self.optimum if self.optimum > 0 else math.inf

    @property
    def server_429s(self) -> int:
        """429s the fake servers answered, all providers together."""
        return sum(p.server_429 for p in self.providers)

    def render(self) -> str:
        """The report as text for a terminal."""
        head = (
            f"{'provider':<9} {'model':<44} {'sent':>5} {'ok':>5} {'retry':>5} "
            f"{'fallbk':>6} {'429s':>5} {'in flight':>9}  breaker"
        )
        lines = [
            f"{self.requests} requests, {self.workers} worker threads, one Client; "
            f"time runs {self.speed:g}x faster than real life"
            + ("" if self.faults else "; no injected faults"),
            "",
            head,
            "-" * len(head),
        ]
        for p in self.providers:
            limit = "-" if p.max_concurrent is None else str(p.max_concurrent)
            opened = f" (opened {p.breaker_opened}x)" if p.breaker_opened else ""
            lines.append(
                f"{p.name:<9} {p.model[:44]:<44} {p.sent:>5} {p.ok:>5} {p.retries:>5} "
                f"{p.fallbacks:>6} {p.server_429:>5} {p.max_in_flight:>4} / {limit:<3}  "
                f"{p.breaker_state}{opened}"
            )
        lines.append("")
        if self.pool_units_limit is not None:
            lines.append(
                f"featherless pool: at most {self.pool_units_max} of "
                f"{self.pool_units_limit} units in use at once (server side)"
            )
        lines.append(
            f"answered {self.answered}/{self.requests}; 429s seen by the servers: "
            f"{self.server_429s}"
        )
        lines.append(
            f"makespan {self.makespan:.2f} s; best possible for these limits "
            f"{self.optimum:.2f} s; ratio {self.ratio:.2f}"
            + (" (the optimum ignores the injected faults)" if self.faults else "")
        )
        if self.ok:
            lines.append("PASS: every request answered, no 429, no server limit exceeded")
        else:
            lines.append("FAIL: " + "; ".join(self.problems))
        return "\n".join(lines)


# -- running it -----------------------------------------------------------------------------------


def _pool_units_max(fakes: Sequence[FakeProvider], units: Mapping[str, int]) -> int:
    """Most pool units in flight at once, from the fakes' own records of start and end."""
    events: list[tuple[float, int]] = []
    for fake in fakes:
        for record in fake.requests:
            if record.started is None:
                continue
            end = record.ended if record.ended is not None else math.inf
            events.append((record.started, units[fake.name]))
            events.append((end, -units[fake.name]))
    events.sort(key=lambda e: (e[0], e[1]))  # at equal times, ends first
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def run_demo(
    *,
    requests: int = 150,
    workers: int = 32,
    seed: int = 0,
    progress: bool = True,
    faults: bool = True,
    speed: float = SPEED,
) -> DemoReport:
    """Run the demo once and return its report (print ``report.render()`` to show it).

    ``seed`` drives the injected faults (the fakes' random choices); thread
    timing still varies from run to run, so counts may differ a little, but the
    outcome (every request answered, no 429) does not.
    """
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    names = list(LATENCY)
    shape = scale_config(seed_config(only=names), speed)
    latencies = {name: LATENCY[name] / speed for name in names}
    fakes = [
        _fake_for(shape.provider(name), latencies[name], faults=faults, seed=seed + i)
        for i, name in enumerate(names)
    ]
    prompts = [f"Summarise document #{i} in one line." for i in range(requests)]
    opened: dict[str, int] = dict.fromkeys(names, 0)
    opened_lock = threading.Lock()

    def on_open(event: Event) -> None:
        with opened_lock:
            opened[event.provider] = opened.get(event.provider, 0) + 1

    with FakeFleet(*fakes) as fleet:
        config = demo_config(fleet.base_urls, speed=speed)
        with Client(config) as client:
            client.on("breaker_open", on_open)
            started = time.monotonic()
            results = client.map(
                prompts, max_workers=workers, progress=progress, return_exceptions=True
            )
            makespan = time.monotonic() - started
            stats = client.stats()
        report = _report(
            config,
            fleet,
            stats,
            results,
            prompts,
            makespan,
            latencies,
            opened,
            workers,
            faults,
            speed,
        )
    return report


def _report(
    config: ClientConfig,
    fleet: FakeFleet,
    stats: Mapping[str, Any],
    results: Sequence[Any],
    prompts: Sequence[str],
    makespan: float,
    latencies: Mapping[str, float],
    opened: Mapping[str, int],
    workers: int,
    faults: bool,
    speed: float,
) -> DemoReport:
    problems: list[str] = []
    answered = 0
    for i, result in enumerate(results):
        if isinstance(result, ChatResponse) and f"#{i} " in result.content:
            answered += 1
    if answered < len(prompts):
        failed = [r for r in results if isinstance(r, RateLimitSDKError)]
        problems.append(
            f"{len(prompts) - answered} requests without their answer"
            + (f" (first error: {failed[0]})" if failed else "")
        )
    providers = []
    for pc in config.providers:
        fake = fleet[pc.name]
        st = stats[pc.name]
        server_429 = fake.statuses[429]
        limit = _whole(pc.limits.max_concurrent)
        if server_429:
            problems.append(f"{pc.name} answered {server_429} 429s")
        if limit is not None and fake.max_in_flight_seen > limit:
            problems.append(f"{pc.name} saw {fake.max_in_flight_seen} in flight (limit {limit})")
        providers.append(
            ProviderReport(
                name=pc.name,
                model=pc.model,
                sent=st.requests,
                ok=st.ok,
                retries=st.retries,
                fallbacks=st.fallbacks,
                server_requests=fake.count,
                server_429=server_429,
                max_in_flight=fake.max_in_flight_seen,
                max_concurrent=limit,
                breaker_state=st.breaker_state,
                breaker_opened=opened.get(pc.name, 0),
            )
        )
    pool_limit = None
    pool_peak = 0
    for pool_name, pool in config.pools.items():
        members = [p for p in config.providers if p.pool == pool_name]
        pool_peak = _pool_units_max(
            [fleet[p.name] for p in members], {p.name: p.pool_units for p in members}
        )
        pool_limit = _whole(pool.max_concurrent)
        if pool_limit is not None and pool_peak > pool_limit:
            problems.append(f"pool {pool_name!r} saw {pool_peak} units in use (limit {pool_limit})")
    return DemoReport(
        requests=len(prompts),
        workers=workers,
        answered=answered,
        makespan=makespan,
        optimum=optimal_makespan(len(prompts), config, latencies),
        speed=speed,
        faults=faults,
        providers=tuple(providers),
        pool_units_max=pool_peak,
        pool_units_limit=pool_limit,
        problems=tuple(problems),
    )
