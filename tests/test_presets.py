"""ratelimit_sdk.presets: the seed's providers, chains and pool, and how users adjust them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ratelimit_sdk import Client, ClientConfig, ConfigError, ProviderConfig
from ratelimit_sdk.presets import (
    CHAINS,
    POOLS,
    PRESETS,
    REFLEXION_RETRIES,
    preset,
    reflexion_config,
    seed_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "providers.yaml"
KEY_VARS = ("MOONSHOT_API_KEY", "ZAI_API_KEY", "ZHIPUAI_API_KEY", "FEATHERLESS_API_KEY")
CANARY = "CANARY-presets-4b7e91d2"

# The seed's numbers, row by row:
# name, max_concurrent, min_interval, requests_per_minute, priority, retries, base delay
SEED_TABLE = [
    ("kimi", 1, 1.0, 4.0, 1, 2, 5.0),
    ("glm", 10, 0.1, None, 2, 3, 2.0),
    ("llama", 5, 0.2, 20.0, 3, 3, 1.0),
    ("dolphin", 5, 0.2, 20.0, 4, 3, 1.0),
]


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("name", "conc", "interval", "rpm", "priority", "retries", "delay"), SEED_TABLE
)
def test_presets_carry_the_seed_table(
    name: str,
    conc: int,
    interval: float,
    rpm: float | None,
    priority: int,
    retries: int,
    delay: float,
) -> None:
    pc = seed_config().provider(name)
    assert pc.limits.max_concurrent == conc
    assert pc.limits.min_interval == interval
    assert pc.limits.requests_per_minute == rpm
    assert pc.priority == priority
    assert pc.retry.max_retries == retries
    assert pc.retry.base_delay == delay
    assert PRESETS[name] == pc


def test_presets_point_at_the_real_endpoints_with_keys_from_the_environment() -> None:
    expected = {
        "kimi": ("https://api.moonshot.ai/v1", "MOONSHOT_API_KEY"),
        "glm": ("https://api.z.ai/api/paas/v4", "ZAI_API_KEY"),
        "llama": ("https://api.featherless.ai/v1", "FEATHERLESS_API_KEY"),
        "dolphin": ("https://api.featherless.ai/v1", "FEATHERLESS_API_KEY"),
    }
    for name, (url, env) in expected.items():
        pc = PRESETS[name]
        assert (pc.base_url, pc.api_key_env, pc.api_key) == (url, env, None)
        assert pc.api == "openai"
    assert PRESETS["glm"].model == "glm-4.7"
    assert PRESETS["kimi"].model.startswith("kimi-k2")
    assert "70B" in PRESETS["llama"].model
    assert "Dolphin3" in PRESETS["dolphin"].model


def test_china_region_uses_the_mainland_platforms() -> None:
    config = seed_config(region="china")
    assert config.provider("kimi").base_url == "https://api.moonshot.cn/v1"
    assert config.provider("glm").base_url == "https://open.bigmodel.cn/api/paas/v4"
    assert config.provider("glm").api_key_env == "ZHIPUAI_API_KEY"
    assert config.provider("llama").base_url == "https://api.featherless.ai/v1"
    with pytest.raises(ConfigError, match="region"):
        seed_config(region="mars")  # type: ignore[arg-type]


def test_chains_and_the_featherless_pool() -> None:
    config = seed_config()
    assert config.chain("default") == ["kimi", "glm", "llama", "dolphin"]
    assert config.chain("reflexion") == ["kimi", "glm", "llama"]
    assert list(CHAINS["reflexion"]) == config.chain("reflexion")
    assert config.pools["featherless"].max_concurrent == 4
    assert POOLS["featherless"].max_concurrent == 4
    assert (config.provider("llama").pool, config.provider("llama").pool_units) == (
        "featherless",
        4,
    )
    assert (config.provider("dolphin").pool, config.provider("dolphin").pool_units) == (
        "featherless",
        1,
    )
    assert config.provider("kimi").pool is None and config.provider("glm").pool is None


def test_reflexion_config_fails_fast_on_reasoning_models() -> None:
    config = reflexion_config()
    assert [p.name for p in config.providers] == ["kimi", "glm", "llama"]
    assert config.chain() == config.chain("reflexion") == ["kimi", "glm", "llama"]
    for pc in config.providers:
        assert pc.retry.max_retries == REFLEXION_RETRIES[pc.name]
        assert 1 <= pc.retry.max_retries <= 2
    assert config.pools == {"featherless": POOLS["featherless"]}
    # seed_config's own reflexion chain keeps the normal retries.
    assert seed_config().provider("glm").retry.max_retries == 3


def test_seed_config_returns_a_fresh_copy_each_time() -> None:
    first = seed_config()
    with pytest.raises(ValidationError):
        first.provider("kimi").limits.max_concurrent = 7  # type: ignore[misc]
    with pytest.raises(ValidationError):
        first.providers[1].model = "changed"  # type: ignore[misc]
    assert seed_config().provider("kimi").limits.max_concurrent == 1
    assert PRESETS["kimi"].limits.max_concurrent == 1
    assert PRESETS["glm"].model == "glm-4.7"
    with pytest.raises(TypeError):
        PRESETS["x"] = PRESETS["kimi"]  # type: ignore[index]


def test_overrides_merge_into_one_provider_and_set_client_fields() -> None:
    config = seed_config(
        kimi={"limits": {"requests_per_minute": 200, "max_concurrent": 50}},
        glm={"model": "glm-4.6", "retry": {"max_retries": 0}},
        timeout=120,
        backend="redis://localhost:6379/0",
    )
    kimi = config.provider("kimi")
    assert kimi.limits.requests_per_minute == 200
    assert kimi.limits.max_concurrent == 50
    assert kimi.limits.min_interval == 1.0  # untouched keys stay
    assert kimi.retry.base_delay == 5.0
    glm = config.provider("glm")
    assert (glm.model, glm.retry.max_retries, glm.retry.base_delay) == ("glm-4.6", 0, 2.0)
    assert config.timeout == 120
    assert config.backend == "redis://localhost:6379/0"


def test_only_keeps_some_providers_and_shrinks_chains_and_pools() -> None:
    config = seed_config(only=["glm", "kimi"])
    assert [p.name for p in config.providers] == ["glm", "kimi"]
    assert config.chain("default") == ["kimi", "glm"]
    assert config.chain("reflexion") == ["kimi", "glm"]
    assert config.pools == {}
    dolphin_only = seed_config(only=["dolphin"])
    assert dolphin_only.chains == {"default": ("dolphin",)}
    assert list(dolphin_only.pools) == ["featherless"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"only": ["kimi", "gpt"]}, "only"),
        ({"only": []}, "only"),
        ({"only": ["kimi"], "glm": {"model": "x"}}, "glm"),
        ({"kimi": {"limits": {"max_concurrent": 0}}}, "providers[kimi].limits.max_concurrent"),
        ({"kimi": {"limits": {"max_concurent": 2}}}, "providers[kimi].limits.max_concurent"),
        ({"kimi": "fast"}, "kimi"),
        ({"timeout": -1}, "timeout"),
        ({"chains": {"default": ["kimi", "nope"]}}, "chains.default"),
    ],
)
def test_bad_overrides_raise_config_error_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        seed_config(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field.split("[")[0].split(".")[0] in str(info.value)


def test_preset_copies_one_provider() -> None:
    llama = preset("llama", limits={"burst": 2}, model="meta-llama/Llama-3.1-70B-Instruct")
    assert isinstance(llama, ProviderConfig)
    assert llama.limits.burst == 2 and llama.limits.requests_per_minute == 20
    assert llama.pool == "featherless" and llama.pool_units == 4
    assert PRESETS["llama"].limits.burst is None
    with pytest.raises(ConfigError, match="unknown preset 'gpt'"):
        preset("gpt")


def test_example_file_matches_the_presets() -> None:
    assert ClientConfig.from_file(EXAMPLE) == seed_config()


def test_client_starts_from_presets_with_keys_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, no_keys: None
) -> None:
    for name in ("MOONSHOT_API_KEY", "ZAI_API_KEY", "FEATHERLESS_API_KEY"):
        monkeypatch.setenv(name, CANARY)
    with Client(seed_config()) as client:  # builds transports; sends nothing
        assert set(client.stats()) == {"kimi", "glm", "llama", "dolphin"}
        assert CANARY not in repr(client)
        assert CANARY not in repr(client.config)


def test_client_names_the_missing_key_variable(no_keys: None) -> None:
    with pytest.raises(ConfigError, match="MOONSHOT_API_KEY") as info:
        Client(seed_config(only=["kimi"]))
    assert info.value.field == "providers[kimi].api_key_env"
