"""Window limits ("at most N per T"): exact tests on the injectable clock, config, guard/chain.

The backend contract suite (``test_limiter_contract.py``) runs the window tests that
both backends share, in real time; here: the exact arithmetic on ``FakeClock`` (memory),
the config model, the chain moving on past a spent quota, Redis keys, and one real-HTTP
run against a sliding-window server.
"""

from __future__ import annotations

import calendar
import itertools
import math
import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError

from ratelimit_sdk import Client, ClientConfig, ConfigError, LimitsConfig, WindowConfig
from ratelimit_sdk._windows import SLOTS, WindowCounter, WindowSpec, check_window, parse_per
from ratelimit_sdk.errors import AcquireTimeout, AllProvidersFailed, RequestTooLargeError
from ratelimit_sdk.limiter import Limiter
from ratelimit_sdk.limiter.memory import MemoryLimiter
from ratelimit_sdk.models import Availability, Outcome
from ratelimit_sdk.testing import FakeClock, FakeProvider, SlidingWindow

MIDNIGHT = calendar.timegm((2026, 12, 2, 0, 0, 0))


def clock_at(epoch: float, start: float = 1000.0) -> FakeClock:
    """A fake clock whose wall time is ``epoch`` when its monotonic time is ``start``."""
    return FakeClock(start=start, epoch=epoch)


def used(lim: Limiter, i: int = 0) -> float:
    return float(lim.snapshot().windows[i]["used"])


# -- definitions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (1, 1.0),
        (2.5, 2.5),
        ("1s", 1.0),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1ms", 0.001),
        (" 3 m ", 180.0),
    ],
)
def test_per_takes_seconds_or_a_unit(given: object, seconds: float) -> None:
    assert parse_per(given) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("window", "field"),
    [
        ({"requests": 0, "per": 1}, "windows[0].requests"),
        ({"requests": -1, "per": 1}, "windows[0].requests"),
        ({"requests": math.inf, "per": 1}, "windows[0].requests"),
        ({"requests": math.nan, "per": 1}, "windows[0].requests"),
        ({"requests": True, "per": 1}, "windows[0].requests"),
        ({"tokens": 10, "per": 0}, "windows[0].per"),
        ({"tokens": 10, "per": 0.0005}, "windows[0].per"),
        ({"tokens": 10, "per": "1y"}, "windows[0].per"),
        ({"tokens": 10, "per": "ms"}, "windows[0].per"),
        ({"tokens": 10, "per": True}, "windows[0].per"),
        ({"tokens": 10, "per": math.inf}, "windows[0].per"),
        ({"tokens": 10}, "windows[0].per"),
        ({"requests": 1, "tokens": 2, "per": 1}, "windows[0]"),
        ({"per": 1}, "windows[0]"),
        ({"requests": 1, "per": 1, "align": "local"}, "windows[0].align"),
        ({"requests": 1, "per": 1, "reset": "utc"}, "windows[0].reset"),
    ],
)
def test_bad_windows_are_config_errors_naming_the_field(window: Any, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MemoryLimiter(windows=[window])
    assert caught.value.field == field
    with pytest.raises(ConfigError):
        MemoryLimiter().update(windows=[window])
    provider = {"name": "a", "base_url": "http://x", "model": "m", "limits": {"windows": [window]}}
    data = {"providers": [provider]}

    with pytest.raises(ConfigError) as cfg:
        ClientConfig.load(data)
    assert cfg.value.field is not None and cfg.value.field.startswith("providers[a].limits.windows")


def test_windows_must_be_a_list() -> None:
    with pytest.raises(ConfigError) as caught:
        MemoryLimiter(windows={"requests": 1, "per": 1})
    assert caught.value.field == "windows"


def test_window_config_is_frozen_and_takes_a_dict() -> None:
    limits = LimitsConfig(windows=[{"requests": 10, "per": "1m"}, WindowConfig(tokens=5, per=1)])
    w = limits.windows[0]
    assert isinstance(w, WindowConfig)
    assert (w.kind, w.limit, w.per, w.align) == ("requests", 10.0, 60.0, "sliding")
    assert limits.windows[1].kind == "tokens"
    with pytest.raises(ValidationError):
        w.per = 2  # type: ignore[misc]
    assert limits.limiter_kwargs()["windows"] == [
        {"requests": 10.0, "per": 60.0, "align": "sliding"},
        {"tokens": 5.0, "per": 1.0, "align": "sliding"},
    ]
    lim = MemoryLimiter(**limits.limiter_kwargs())
    assert [w["per"] for w in lim.limits()["windows"]] == [60.0, 1.0]


def test_window_config_refuses_two_amounts() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        WindowConfig(requests=1, tokens=1, per=1)


def test_a_limiter_without_windows_shows_none() -> None:
    lim = MemoryLimiter(max_concurrent=1)
    assert "windows" not in lim.limits()
    assert lim.snapshot().windows == ()
    assert lim.availability().window == 0.0


# -- the arithmetic -----------------------------------------------------------------------------


def test_counter_rounds_a_charge_up_to_its_slot_end() -> None:
    w = WindowCounter(check_window({"requests": 1, "per": 10}))
    assert w.slot == pytest.approx(10 / SLOTS)
    (i,) = w.indexes(1000.05, 0.0, 0.0)
    w.slots[i] = 1.0
    # Charged at 1000.05, counted as made at the slot's end 1000.1: expires at 1010.1.
    assert w.delay(1, 1000.05, 0.0, 0.0) == pytest.approx(10.05)
    assert w.delay(1, 1010.0999, 0.0, 0.0) > 0
    assert w.delay(1, 1010.1, 0.0, 0.0) == 0.0
    assert w.delay(2, 1000.0, 0.0, 0.0) == math.inf


def test_counter_keeps_at_most_slots_plus_one_live() -> None:
    w = WindowCounter(check_window({"requests": 10**6, "per": 1}))
    now = 500.0
    for _ in range(5 * SLOTS):
        w.slots[w.indexes(now, 0.0, 0.0)[0]] = 1.0
        w.prune(now, 0.0, 0.0)
        assert len(w.slots) <= SLOTS + 1
        now += 0.5 / SLOTS


def test_window_spec_round_trips() -> None:
    spec = check_window({"input_tokens": 7, "per": "2h", "align": "utc"})
    assert spec == WindowSpec("input_tokens", 7, 7200.0, "utc")
    assert check_window(spec.as_dict()) == spec


# -- sliding windows (memory, exact) ------------------------------------------------------------


def test_sliding_requests_admit_n_then_wait_for_the_oldest_slot() -> None:
    clock = FakeClock(start=1000.0)
    lim = MemoryLimiter(windows=[{"requests": 3, "per": 10}], clock=clock, margin=0)
    for _ in range(3):
        assert lim.try_acquire() is not None
        clock.advance(1.0)
    seen = lim.availability()
    assert seen.wait == pytest.approx(7.0)  # the first (at 1000) leaves at 1010
    assert seen.window == pytest.approx(7.0)
    assert lim.try_acquire() is None
    assert used(lim) == 3
    clock.advance(7.0)
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is None


def test_sliding_window_never_admits_more_than_n_in_any_interval_of_t_plus_j() -> None:
    """Blocking acquires on the fake clock: the starts fit N in any T + J (J = margin)."""
    clock = FakeClock(start=77.0)
    n, per, margin = 4, 2.0, 0.05
    lim = MemoryLimiter(windows=[{"requests": n, "per": per}], clock=clock, margin=margin)
    starts = []
    for step in itertools.islice(itertools.cycle([0.0, 0.013, 0.3, 0.0, 0.7]), 60):
        clock.advance(step)
        lim.acquire(timeout=60).release()
        starts.append(clock.monotonic())
    for i in range(len(starts) - n):
        assert starts[i + n] - starts[i] >= per + margin - 1e-9
        # ... and waits no longer than one slot past the exact rule.
    gaps = [starts[i + n] - starts[i] for i in range(len(starts) - n)]
    assert min(gaps) <= per + margin + per / SLOTS + 0.7 + 1e-9


def test_sliding_tokens_and_settle_into_the_admission_slot() -> None:
    clock = FakeClock(start=2000.0)
    lim = MemoryLimiter(windows=[{"tokens": 100, "per": 100}], clock=clock, margin=0)  # 1 s slots
    first = lim.acquire(0, tokens=80)
    assert lim.try_acquire(tokens=30) is None
    clock.advance(5.0)  # another slot now: the settle still corrects the first one
    first.settle(tokens=50)
    assert used(lim) == 50
    second = lim.try_acquire(tokens=50)
    assert second is not None
    second.settle(tokens=70)  # charged 20 more, in its own slot
    assert used(lim) == 120
    clock.advance(95.0)  # the first one's slot has left; the second's has not
    assert used(lim) == pytest.approx(70)
    assert lim.availability(tokens=40).window == pytest.approx(5.0)
    clock.advance(5.0)
    assert lim.try_acquire(tokens=100) is not None


def test_input_and_output_windows_settle_with_their_own_counts() -> None:
    clock = FakeClock()
    windows = [
        {"tokens": 1000, "per": 60},
        {"input_tokens": 1000, "per": 60},
        {"output_tokens": 1000, "per": 60},
    ]
    lim = MemoryLimiter(windows=windows, clock=clock, margin=0)
    p = lim.acquire(0, tokens=300)  # the total estimate goes to every token window
    assert [w["used"] for w in lim.snapshot().windows] == [300, 300, 300]
    p.settle(tokens=250, input_tokens=200, output_tokens=50)
    assert [w["used"] for w in lim.snapshot().windows] == [250, 200, 50]
    q = lim.acquire(0, tokens=100)
    q.settle(tokens=40, output_tokens=10)  # no input count: the input window takes the total
    assert [w["used"] for w in lim.snapshot().windows] == [290, 240, 60]
    q.settle(tokens=1000)  # once only
    assert [w["used"] for w in lim.snapshot().windows] == [290, 240, 60]


def test_requests_window_ignores_tokens_and_token_window_ignores_tokenless_calls() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(
        windows=[{"requests": 2, "per": 10}, {"tokens": 10, "per": 10}], clock=clock
    )
    a = lim.acquire(0)
    b = lim.acquire(0, tokens=10)
    assert [w["used"] for w in lim.snapshot().windows] == [2, 10]
    assert lim.try_acquire() is None
    a.settle(tokens=5)  # no estimate charged: settles 5 more tokens, never requests
    assert [w["used"] for w in lim.snapshot().windows] == [2, 15]
    b.release()


def test_a_token_request_larger_than_a_window_can_never_be_admitted() -> None:
    lim = MemoryLimiter(windows=[{"output_tokens": 100, "per": 60}])
    with pytest.raises(RequestTooLargeError, match="window"):
        lim.acquire(0, tokens=101)
    with pytest.raises(RequestTooLargeError):
        lim.try_admit(tokens=101)
    pool = MemoryLimiter(windows=[{"tokens": 50, "per": 60}])
    member = MemoryLimiter(pool=pool)
    with pytest.raises(RequestTooLargeError):
        member.acquire(0, tokens=51)
    assert member.try_acquire(tokens=50) is not None


# -- UTC windows (memory, exact) ----------------------------------------------------------------


def test_utc_daily_quota_resets_at_midnight() -> None:
    clock = clock_at(MIDNIGHT - 2.5)
    lim = MemoryLimiter(
        windows=[{"requests": 2, "per": "1d", "align": "utc"}], clock=clock, margin=0
    )
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is not None
    seen = lim.availability()
    assert seen.window == pytest.approx(2.5)
    assert lim.try_acquire() is None
    clock.advance(2.5)
    assert [lim.try_acquire() is not None for _ in range(3)] == [True, True, False]
    assert lim.availability().window == pytest.approx(86400.0)
    clock.advance(86399.9)
    assert lim.try_acquire() is None
    clock.advance(0.1)
    assert lim.try_acquire() is not None


def test_utc_admission_near_a_boundary_counts_toward_the_next_window_too() -> None:
    """J = 1 s: an admission 0.5 s before the boundary may arrive after it."""
    clock = clock_at(MIDNIGHT - 0.5)
    lim = MemoryLimiter(
        windows=[{"requests": 1, "per": 60, "align": "utc"}], clock=clock, margin=1.0
    )
    assert lim.try_acquire() is not None
    clock.advance(0.5)  # the new window: the last one already counts there
    assert lim.try_acquire() is None
    assert lim.availability().window == pytest.approx(60.0)  # this window is spent
    clock.advance(59.0)
    assert lim.try_acquire() is None
    assert lim.try_acquire() is None
    clock.advance(1.0)
    assert lim.try_acquire() is not None


def test_utc_window_blocking_acquire_waits_to_the_boundary() -> None:
    clock = clock_at(MIDNIGHT - 10.0)
    lim = MemoryLimiter(windows=[{"requests": 1, "per": 60, "align": "utc"}], clock=clock, margin=0)
    lim.acquire(0).release()
    lim.acquire(timeout=20).release()
    assert clock.time() == pytest.approx(MIDNIGHT)
    with pytest.raises(AcquireTimeout):
        lim.acquire(timeout=30)


def test_utc_token_window_settles_the_window_it_was_charged_to() -> None:
    clock = clock_at(MIDNIGHT - 1.0)
    lim = MemoryLimiter(windows=[{"tokens": 100, "per": 60, "align": "utc"}], clock=clock, margin=0)
    p = lim.acquire(0, tokens=90)
    clock.advance(1.5)  # the next window: the settle goes to the old one, not this one
    p.settle(tokens=10)
    assert used(lim) == 0
    assert lim.try_acquire(tokens=100) is not None


# -- reconfigure, pools, interrupts -------------------------------------------------------------


def test_update_windows_hot_keeps_what_a_same_window_was_charged() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(windows=[{"requests": 3, "per": 10}], clock=clock, margin=0)
    for _ in range(3):
        lim.acquire(0)
    lim.update(windows=[{"requests": 5, "per": 10}, {"tokens": 50, "per": "1m"}])
    assert lim.limits()["windows"] == [
        {"requests": 5, "per": 10.0, "align": "sliding"},
        {"tokens": 50, "per": 60.0, "align": "sliding"},
    ]
    assert [w["used"] for w in lim.snapshot().windows] == [3, 0]
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is not None
    assert lim.try_acquire() is None
    lim.update(windows=[{"requests": 5, "per": 20}])  # another length: a fresh count
    assert used(lim) == 0
    lim.update(windows=[])
    assert "windows" not in lim.limits()
    assert lim.try_acquire() is not None


def test_update_windows_wakes_a_waiter() -> None:
    lim = MemoryLimiter(windows=[{"requests": 1, "per": 3600}])
    lim.acquire(0)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(lim.acquire(timeout=30)))
    t.start()
    deadline = time.monotonic() + 10
    while lim.queued == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    lim.update(windows=None)
    t.join(10)
    assert got and not t.is_alive()


def test_pool_windows_bound_every_member_together() -> None:
    clock = FakeClock()
    pool = MemoryLimiter(windows=[{"requests": 3, "per": 10}], clock=clock, margin=0)
    a = MemoryLimiter(pool=pool, clock=clock, windows=[{"requests": 2, "per": 10}])
    b = MemoryLimiter(pool=pool, clock=clock, margin=0)
    assert a.try_acquire() is not None
    assert a.try_acquire() is not None
    assert a.try_acquire() is None  # its own window
    assert b.try_acquire() is not None
    assert b.try_acquire() is None  # the pool's window
    assert b.availability().window == pytest.approx(10.0)
    assert used(pool) == 3
    clock.advance(10.0)
    assert b.try_acquire() is not None


def test_an_abandoned_admission_gives_its_window_charge_back_once() -> None:
    clock = FakeClock()
    pool = MemoryLimiter(windows=[{"tokens": 100, "per": 10}], clock=clock, margin=0)
    lim = MemoryLimiter(windows=[{"requests": 1, "per": 10}], pool=pool, clock=clock, margin=0)
    permit = lim.acquire(0, tokens=60)
    lim._abandon(permit)  # the caller never saw it (an interrupt after the grant)
    lim._abandon(permit)
    assert used(lim) == 0 and used(pool) == 0
    assert lim.in_flight == 0
    assert lim.try_acquire(tokens=100) is not None


def test_an_interrupted_charge_is_put_back_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    lim = MemoryLimiter(
        windows=[{"requests": 2, "per": 10}, {"tokens": 100, "per": 10}], clock=clock
    )
    held = lim.acquire(0, tokens=10)
    real = MemoryLimiter._charge_windows

    def cut(self: MemoryLimiter, permit: Any, now: float, undo: Any) -> None:
        real(self, permit, now, undo)
        raise KeyboardInterrupt

    monkeypatch.setattr(MemoryLimiter, "_charge_windows", cut)
    with pytest.raises(KeyboardInterrupt):
        lim.acquire(0, tokens=20)
    monkeypatch.undo()
    assert [w["used"] for w in lim.snapshot().windows] == [1, 10]
    assert lim.in_flight == 1
    held.release()


# -- the guard and the chain --------------------------------------------------------------------


def test_a_spent_daily_quota_moves_the_chain_on_at_once() -> None:
    with FakeProvider(name="first") as first, FakeProvider(name="second") as second:
        quota = {"windows": [{"requests": 1, "per": "1d", "align": "utc"}], "max_queue_wait": 60}
        config = {
            "providers": [first.provider_config(limits=quota), second.provider_config()],
        }
        with Client(config) as client:
            assert client.chat("one").provider == "first"
            started = time.monotonic()
            answer = client.chat("two", timeout=30)
            assert answer.provider == "second"
            assert time.monotonic() - started < 10  # never queued for the quota
            assert answer.attempts[0].outcome is Outcome.COOLING_DOWN
            assert "window" in str(answer.attempts[0].error)
            stats = client.stats()["first"]
            assert stats.windows[0]["used"] == 1 and stats.windows[0]["limit"] == 1


def test_a_short_window_wait_is_busy_not_a_pause() -> None:
    """A window that admits again within the call's time is pacing: busy, waited for if need be."""
    with FakeProvider(name="first") as first, FakeProvider(name="second") as second:
        paced = {"windows": [{"requests": 1, "per": 2}]}
        config = {"providers": [first.provider_config(limits=paced), second.provider_config()]}
        with Client(config) as client:
            assert client.chat("one").provider == "first"
            answer = client.chat("two", timeout=30)  # the second is free now: moves on
            assert answer.provider == "second"
            assert answer.attempts[0].outcome is Outcome.BUSY
        solo = {"providers": [first.provider_config(limits=paced)]}
        with Client(solo) as client:
            client.chat("three")
            started = time.monotonic()
            assert client.chat("four", timeout=30).provider == "first"  # queued ~2 s
            assert time.monotonic() - started >= 0.9 * 2


def test_a_spent_quota_on_the_only_provider_fails_at_once() -> None:
    with FakeProvider() as fake:
        quota = {"windows": [{"requests": 1, "per": "1d", "align": "utc"}]}
        with Client({"providers": [fake.provider_config(limits=quota)]}) as client:
            client.chat("one")
            started = time.monotonic()
            with pytest.raises(AllProvidersFailed) as caught:
                client.chat("two", timeout=30)
            assert time.monotonic() - started < 10
            assert "cooling down" in str(caught.value)


def test_token_windows_are_charged_and_settled_by_the_client() -> None:
    with FakeProvider() as fake:
        limits = {"windows": [{"tokens": 100_000, "per": "1h"}]}
        with Client({"providers": [fake.provider_config(limits=limits)]}) as client:
            client.chat("hello there")
            window = client.stats()[fake.provider_config()["name"]].windows[0]
            assert 0 < window["used"] < 1000  # the server's usage, not the estimate


def test_sdk_against_a_sliding_window_server_at_full_speed_gets_no_429() -> None:
    """10 in any 1 s on the server; the client says the same: 25 calls, 6 threads, no 429."""
    with FakeProvider(shapes=[SlidingWindow(limit=10, seconds=1.0)]) as fake:
        # A wider jitter allowance than the 20 ms default: the fake shares 2 noisy cores.
        # the fake shares this process (and its GIL): a wider allowance, paid once per window
        limits = {"windows": [{"requests": 10, "per": 1}], "safety_margin": 0.15}
        retry = {"max_retries": 6, "base_delay": 0.05, "max_delay": 1.0}
        config = {"providers": [fake.provider_config(limits=limits, retry=retry)]}
        prompts = [[{"role": "user", "content": f"request {i}"}] for i in range(25)]
        with Client(config) as client:
            results = client.map(
                prompts, max_workers=6, progress=False, return_exceptions=True, timeout=60
            )
        assert not [r for r in results if isinstance(r, Exception)]
        assert fake.statuses[429] == 0
        ok = sorted(r.arrived for r in fake.requests if r.status == 200)
        assert len(ok) == 25
        assert all(ok[i + 10] - ok[i] > 1.0 for i in range(len(ok) - 10))


# -- Redis ----------------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_window_slots_live_in_one_hash_with_the_limiters_tag(
    redis_url: str, redis_key: str
) -> None:
    windows = [{"requests": 5, "per": 2}, {"tokens": 100, "per": "1d", "align": "utc"}]
    lim = Limiter(backend=redis_url, key=redis_key, windows=windows, on_backend_error="raise")
    other = Limiter(backend=redis_url, key=redis_key, windows=windows, on_backend_error="raise")
    try:
        lim.acquire(1, tokens=30).release()
        p = other.acquire(1, tokens=20)
        client = lim.redis_client  # type: ignore[attr-defined]
        keys = sorted(k.decode() for k in client.keys(f"*{redis_key}*"))
        assert all(f"{{{redis_key}}}" in k for k in keys)
        win = f"{lim.prefix}:{{{redis_key}}}:win"  # type: ignore[attr-defined]
        assert win in keys
        # It expires once the longest window (a day, plus a slot, plus the margin) is over.
        assert 0 < client.pttl(win) <= (86400 * (1 + 1 / SLOTS) + 3) * 1000
        fields = client.hgetall(win)
        assert 2 <= len(fields) <= 4
        snap = lim.snapshot()
        assert [w["used"] for w in snap.windows] == [2, 50]
        p.settle(tokens=5)
        assert [w["used"] for w in other.snapshot().windows] == [2, 35]
        shown = lim.limits()["windows"]  # type: ignore[attr-defined]
        assert shown[1] == {"tokens": 100, "per": 86400.0, "align": "utc"}
    finally:
        lim.close()
        other.close()


@pytest.mark.redis
def test_redis_spent_window_reports_its_wait_in_try_admit(redis_url: str, redis_key: str) -> None:
    lim = Limiter(
        backend=redis_url,
        key=redis_key,
        windows=[{"requests": 1, "per": "1h"}],
        on_backend_error="raise",
    )
    try:
        assert lim.try_acquire() is not None
        seen = lim.try_admit()
        assert isinstance(seen, Availability)
        assert seen.window > 3500
        assert lim.availability().window > 3500
        with pytest.raises(RequestTooLargeError):
            lim.update(windows=[{"tokens": 10, "per": 5}])
            lim.acquire(0, tokens=11)
    finally:
        lim.close()


@pytest.mark.redis
def test_redis_windows_update_reaches_every_process(redis_url: str, redis_key: str) -> None:
    """One process changes the windows; another admits by them on its next call."""
    a = Limiter(
        backend=redis_url,
        key=redis_key,
        windows=[{"requests": 1, "per": "1h"}],
        on_backend_error="raise",
    )
    b = Limiter(
        backend=redis_url,
        key=redis_key,
        windows=[{"requests": 1, "per": "1h"}],
        on_backend_error="raise",
    )
    try:
        assert a.try_acquire() is not None
        assert b.try_acquire() is None
        a.update(windows=[{"requests": 2, "per": "1h"}])
        assert b.try_acquire() is not None  # the count (1) carried over, the limit is 2
        assert b.limits()["windows"] == [{"requests": 2, "per": 3600.0, "align": "sliding"}]  # type: ignore[attr-defined]
        assert a.try_acquire() is None
        b.update(windows=None)
        assert a.try_acquire() is not None
        assert "windows" not in a.limits()  # type: ignore[attr-defined]
    finally:
        a.close()
        b.close()


def test_check_lists_the_windows() -> None:
    from ratelimit_sdk.cli import _limits_text

    limits = LimitsConfig(windows=[{"requests": 1000, "per": "1d", "align": "utc"}])
    assert _limits_text(limits) == "1000 requests per 86400s (UTC)"
