"""Configuration objects are immutable: changes go through ``model_copy(update=...)``."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from pydantic import ValidationError

from ratelimit_sdk import Client
from ratelimit_sdk.config import (
    BreakerConfig,
    ClientConfig,
    LimitsConfig,
    ProviderConfig,
    RetryConfig,
    TimeoutConfig,
)
from ratelimit_sdk.presets import PRESETS, REGIONS, preset, seed_config


def _config() -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": "a",
                "base_url": "http://127.0.0.1:9",
                "model": "m",
                "limits": {"max_concurrent": 3},
                "headers": {"X-Team": "t"},
                "pool": "p",
            },
            {"name": "b", "base_url": "http://127.0.0.1:9", "model": "n"},
        ],
        "chains": {"fast": ["b", "a"]},
        "pools": {"p": {"max_concurrent": 4}},
    }


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (LimitsConfig(), "max_concurrent", 1),
        (RetryConfig(), "max_retries", 0),
        (BreakerConfig(), "fail_max", 1),
        (TimeoutConfig(), "read", 1.0),
        (ProviderConfig(name="a", base_url="http://h", model="m"), "model", "x"),
        (ClientConfig.load(_config()), "timeout", 1.0),
    ],
)
def test_assignment_raises(model: Any, field: str, value: Any) -> None:
    before = getattr(model, field)
    with pytest.raises((ValidationError, TypeError)):
        setattr(model, field, value)
    assert getattr(model, field) == before


def test_containers_cannot_be_mutated_in_place() -> None:
    cfg = ClientConfig.load(_config())
    with pytest.raises((TypeError, AttributeError)):
        cfg.providers.append(cfg.providers[0])  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        cfg.chains["x"] = ("a",)  # type: ignore[index]
    with pytest.raises((TypeError, AttributeError)):
        cfg.chains["fast"].append("a")  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        cfg.pools["q"] = LimitsConfig()  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.providers[0].headers["X-Team"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        del cfg.chains["fast"]  # type: ignore[attr-defined]
    # Still readable as a mapping and a sequence.
    assert cfg.chains == {"fast": ("b", "a")}
    assert list(cfg.chains["fast"]) == ["b", "a"]
    assert [p.name for p in cfg.providers] == ["a", "b"]
    assert cfg.chain("fast") == ["b", "a"]


def test_client_config_cannot_drift_from_enforcement() -> None:
    client = Client(_config())
    try:
        with pytest.raises((ValidationError, TypeError)):
            client.config.providers[0].limits.max_concurrent = 1  # type: ignore[misc]
        assert client.stats()["a"].limits["max_concurrent"] == 3
        assert client.guard("a").limiter.snapshot().max_concurrent == 3
    finally:
        client.close()


def test_model_copy_makes_a_changed_validated_copy() -> None:
    cfg = ClientConfig.load(_config())
    pc = cfg.providers[0]
    new_pc = pc.model_copy(update={"limits": pc.limits.model_copy(update={"max_concurrent": 1})})
    assert new_pc.limits.max_concurrent == 1
    assert pc.limits.max_concurrent == 3
    new_cfg = cfg.model_copy(update={"providers": [new_pc, cfg.providers[1]]})
    assert isinstance(new_cfg.providers, tuple)
    assert new_cfg.provider("a").limits.max_concurrent == 1
    with pytest.raises(ValidationError):
        cfg.model_copy(update={"timeout": -1})
    with pytest.raises(TypeError):
        new_cfg.chains["y"] = ("a",)  # type: ignore[index]


def test_round_trips_still_work() -> None:
    cfg = ClientConfig.load(_config())
    dumped = cfg.model_dump()
    assert isinstance(dumped["providers"], list | tuple)
    again = ClientConfig.load(dumped)
    assert again == cfg
    assert ClientConfig.model_validate_json(cfg.model_dump_json()).chains == cfg.chains
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert copy.deepcopy(cfg) == cfg
    client = Client(dumped)
    try:
        client.reload(client.config.model_copy(update={"timeout": 5.0}))
        assert client.config.timeout == 5.0
    finally:
        client.close()


def test_presets_hand_out_fresh_copies() -> None:
    first = seed_config()
    with pytest.raises((ValidationError, TypeError)):
        first.provider("kimi").limits.max_concurrent = 7  # type: ignore[misc]
    data = first.model_dump()
    data["providers"][0]["limits"]["max_concurrent"] = 7
    data["chains"]["default"] = ["glm"]
    assert seed_config().provider("kimi").limits.max_concurrent == 1
    assert seed_config().chain() == ["kimi", "glm", "llama", "dolphin"]
    one = preset("kimi")
    with pytest.raises((ValidationError, TypeError)):
        one.limits.max_concurrent = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        REGIONS["international"]["kimi"]["base_url"] = "http://evil"  # type: ignore[index]
    assert PRESETS["kimi"].limits.max_concurrent == 1
    assert seed_config().provider("kimi").base_url == "https://api.moonshot.ai/v1"


def test_overrides_given_as_dicts_are_not_kept_live() -> None:
    kimi = {"limits": {"requests_per_minute": 20}}
    cfg = seed_config(kimi=kimi)
    kimi["limits"]["requests_per_minute"] = 99
    assert cfg.provider("kimi").limits.requests_per_minute == 20
    assert seed_config().provider("kimi").limits.requests_per_minute == 4
