"""Tests for ratelimit_sdk.config: defaults, loading, validation and secrecy."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from ratelimit_sdk.config import (
    BreakerConfig,
    ClientConfig,
    LimitsConfig,
    ProviderConfig,
    RetryConfig,
    TimeoutConfig,
)
from ratelimit_sdk.errors import ConfigError

DATA = Path(__file__).parent / "data"
CANARY = "sk-CANARY-0123456789abcdef"


def provider(name: str = "kimi", **fields: Any) -> dict[str, Any]:
    """A minimal valid provider dict."""
    base: dict[str, Any] = {
        "name": name,
        "base_url": f"https://{name}.example/v1",
        "model": f"{name}-model",
    }
    base.update(fields)
    return base


def config(*providers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A valid ClientConfig dict (one provider unless given)."""
    return {"providers": list(providers) or [provider()], **fields}


def config_error(data: Any) -> ConfigError:
    """Load ``data`` and return the ConfigError it must raise."""
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(data)
    return info.value


def assert_no_canary(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), *map(str, exc.args)):
        assert CANARY not in text
        assert "CANARY" not in text


# -- defaults ------------------------------------------------------------------------


def test_limits_defaults() -> None:
    limits = LimitsConfig()
    assert limits.max_concurrent is None
    assert limits.requests_per_minute is None
    assert limits.burst is None
    assert limits.min_interval == 0.0
    assert limits.tokens_per_minute is None
    assert limits.max_queue_wait is None
    assert limits.quota_cooldown == 3600.0


def test_retry_defaults() -> None:
    retry = RetryConfig()
    assert (retry.max_retries, retry.base_delay, retry.max_delay, retry.jitter) == (
        2,
        1.0,
        60.0,
        0.25,
    )


def test_breaker_defaults() -> None:
    breaker = BreakerConfig()
    assert (breaker.fail_max, breaker.reset_timeout) == (5, 30.0)


def test_timeout_defaults() -> None:
    timeout = TimeoutConfig()
    assert (timeout.connect, timeout.read) == (5.0, 120.0)


def test_provider_defaults() -> None:
    p = ProviderConfig(name="kimi", base_url="https://api.moonshot.ai/v1", model="kimi-k2")
    assert p.api_key is None
    assert p.api_key_env is None
    assert p.priority == 100
    assert p.pool is None
    assert p.pool_units == 1
    assert p.limits == LimitsConfig()
    assert p.retry == RetryConfig()
    assert p.breaker == BreakerConfig()
    assert p.timeout == TimeoutConfig()


def test_provider_defaults_are_not_shared() -> None:
    a = ProviderConfig(name="a", base_url="https://a.example", model="m")
    b = ProviderConfig(name="b", base_url="https://b.example", model="m")
    assert a.limits is not b.limits
    a = a.model_copy(update={"limits": a.limits.model_copy(update={"max_concurrent": 3})})
    assert a.limits.max_concurrent == 3
    assert b.limits.max_concurrent is None


def test_client_defaults() -> None:
    c = ClientConfig.load(config())
    assert c.chains == {}
    assert c.use_fallback is True
    assert c.backend == "memory"
    assert c.timeout == 600.0
    assert c.pools == {}


def test_memory_url_means_memory() -> None:
    assert ClientConfig.load(config(backend="memory://")).backend == "memory"


@pytest.mark.parametrize(
    "backend", ["redis://localhost:6379/0", "rediss://cache.example:6380/1", "unix:///tmp/r.sock"]
)
def test_redis_backends_accepted(backend: str) -> None:
    assert ClientConfig.load(config(backend=backend)).backend == backend


def test_base_url_trailing_slash_is_dropped() -> None:
    p = ProviderConfig(name="glm", base_url="https://open.bigmodel.cn/api/paas/v4/", model="m")
    assert p.base_url == "https://open.bigmodel.cn/api/paas/v4"


# -- plain dicts wherever a model is ------------------------------------------------


def test_dicts_accepted_for_nested_models() -> None:
    c = ClientConfig.load(
        config(
            provider(
                limits={"max_concurrent": 2},
                retry={"max_retries": 0},
                breaker={"fail_max": 1},
                timeout={"read": 9.0},
            ),
            pools={"acct": {"max_concurrent": 8}},
        )
    )
    p = c.providers[0]
    assert isinstance(p.limits, LimitsConfig) and p.limits.max_concurrent == 2
    assert isinstance(p.retry, RetryConfig) and p.retry.max_retries == 0
    assert isinstance(p.breaker, BreakerConfig) and p.breaker.fail_max == 1
    assert isinstance(p.timeout, TimeoutConfig) and p.timeout.read == 9.0
    assert isinstance(c.pools["acct"], LimitsConfig)


def test_direct_construction_accepts_dicts() -> None:
    p = ProviderConfig(
        name="kimi",
        base_url="https://x.example",
        model="m",
        limits={"burst": 3},
        retry={"jitter": 0.0},
    )
    c = ClientConfig(providers=[{"name": "glm", "base_url": "https://g.example", "model": "g"}, p])
    assert p.limits.burst == 3 and p.retry.jitter == 0.0
    assert [q.name for q in c.providers] == ["glm", "kimi"]


def test_models_and_dicts_mix() -> None:
    p = ProviderConfig(name="kimi", base_url="https://x.example", model="m")
    from_models = ClientConfig.load({"providers": [p], "pools": {"a": LimitsConfig(burst=2)}})
    from_dicts = ClientConfig.load({"providers": [p.model_dump()], "pools": {"a": {"burst": 2}}})
    assert from_models == from_dicts


def test_load_returns_a_config_unchanged() -> None:
    c = ClientConfig.load(config())
    assert ClientConfig.load(c) is c


def test_load_rejects_a_non_mapping() -> None:
    exc = config_error(["not", "a", "mapping"])
    assert "mapping" in str(exc) and "list" in str(exc)


def test_config_pickles() -> None:
    c = ClientConfig.load(config(provider(api_key=CANARY)))
    assert pickle.loads(pickle.dumps(c)) == c


# -- files -----------------------------------------------------------------------------


def test_yaml_toml_json_give_equal_configs() -> None:
    configs = [
        ClientConfig.from_file(DATA / f"providers.{ext}") for ext in ("yaml", "toml", "json")
    ]
    assert configs[0] == configs[1] == configs[2]
    c = configs[0]
    assert [p.name for p in c.providers] == ["kimi", "glm", "llama"]
    assert c.providers[2].limits.tokens_per_minute == 100000
    assert c.providers[0].breaker == BreakerConfig(fail_max=3, reset_timeout=10.0)
    assert c.providers[1].retry.max_delay == 60.0  # default filled in
    assert c.chain("reflexion") == ["kimi", "glm"]


def test_file_equals_the_same_dict() -> None:
    data = json.loads((DATA / "providers.json").read_text(encoding="utf-8"))
    assert ClientConfig.from_file(DATA / "providers.json") == ClientConfig.load(data)


def test_from_file_takes_str_and_yml(tmp_path: Path) -> None:
    target = tmp_path / "providers.yml"
    target.write_text((DATA / "providers.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    assert ClientConfig.from_file(str(target)) == ClientConfig.from_file(DATA / "providers.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as info:
        ClientConfig.from_file(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value)


@pytest.mark.parametrize("name", ["providers.ini", "providers", "providers.yaml.bak"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    target.write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown format") as info:
        ClientConfig.from_file(target)
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", "providers: [\n  - name: kimi\n"),
        (".yaml", "a: b: c\n"),
        (".toml", "providers = [\n"),
        (".toml", "[[providers]\nname = 1\n"),
        (".json", '{"providers": [}'),
        (".json", "{'single': 'quotes'}"),
    ],
)
def test_malformed_files(tmp_path: Path, suffix: str, text: str) -> None:
    target = tmp_path / f"bad{suffix}"
    target.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"is not valid (YAML|TOML|JSON)") as info:
        ClientConfig.from_file(target)
    assert "bad" + suffix in str(info.value)
    assert "line" in str(info.value) or "end of" in str(info.value)  # the position


@pytest.mark.parametrize(
    ("suffix", "text", "got"),
    [
        (".yaml", "- a\n- b\n", "list"),
        (".yaml", "just a string\n", "str"),
        (".yaml", "", "NoneType"),
        (".json", "[1, 2]", "list"),
        (".json", "42", "int"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, suffix: str, text: str, got: str) -> None:
    target = tmp_path / f"top{suffix}"
    target.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping") as info:
        ClientConfig.from_file(target)
    assert got in str(info.value)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", "backend: memory\nbackend: redis://h/0\nproviders: []\n"),
        (".json", '{"backend": "memory", "backend": "redis://h/0", "providers": []}'),
        (".toml", 'backend = "memory"\nbackend = "redis://h/0"\n'),  # TOML names no key
    ],
)
def test_repeated_keys_are_errors(tmp_path: Path, suffix: str, text: str) -> None:
    target = tmp_path / f"dup{suffix}"
    target.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'backend' appears twice|line 2"):
        ClientConfig.from_file(target)


def test_invalid_value_in_a_file_names_file_and_field(tmp_path: Path) -> None:
    target = tmp_path / "p.json"
    target.write_text(json.dumps(config(provider(limits={"burst": 0}))), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_file(target)
    assert "p.json" in str(info.value)
    assert "providers[kimi].limits.burst" in str(info.value)
    assert info.value.field == "providers[kimi].limits.burst"


# -- invalid values: every one names the field and the value --------------------------

SECTION_MODELS: dict[str, type[BaseModel]] = {
    "limits": LimitsConfig,
    "retry": RetryConfig,
    "breaker": BreakerConfig,
    "timeout": TimeoutConfig,
}

ZERO_OR_NEGATIVE = [
    # (model section, field, bad value)
    ("limits", "max_concurrent", 0),
    ("limits", "max_concurrent", -1),
    ("limits", "requests_per_minute", 0),
    ("limits", "requests_per_minute", -5.0),
    ("limits", "burst", 0),
    ("limits", "burst", -2),
    ("limits", "min_interval", -0.5),
    ("limits", "tokens_per_minute", 0),
    ("limits", "tokens_per_minute", -100.0),
    ("limits", "max_queue_wait", -1.0),
    ("limits", "quota_cooldown", -1.0),
    ("retry", "max_retries", -1),
    ("retry", "base_delay", -1.0),
    ("retry", "max_delay", -1.0),
    ("retry", "jitter", -0.1),
    ("breaker", "fail_max", 0),
    ("breaker", "fail_max", -3),
    ("breaker", "reset_timeout", 0),
    ("breaker", "reset_timeout", -1.0),
    ("timeout", "connect", 0),
    ("timeout", "connect", -1.0),
    ("timeout", "read", 0),
    ("timeout", "read", -1.0),
]


@pytest.mark.parametrize(("section", "field", "value"), ZERO_OR_NEGATIVE)
def test_zero_or_negative_values(section: str, field: str, value: float) -> None:
    exc = config_error(config(provider("kimi", api_key=CANARY, **{section: {field: value}})))
    assert isinstance(exc, ValueError)
    assert f"providers[kimi].{section}.{field}" in str(exc)
    assert f"(got {value!r})" in str(exc)
    assert exc.field == f"providers[kimi].{section}.{field}"
    assert_no_canary(exc)


@pytest.mark.parametrize(("section", "field", "value"), ZERO_OR_NEGATIVE)
def test_direct_construction_rejects_the_same_values(
    section: str, field: str, value: float
) -> None:
    with pytest.raises(ValidationError):
        SECTION_MODELS[section].model_validate({field: value})


@pytest.mark.parametrize(("section", "field", "value"), ZERO_OR_NEGATIVE)
def test_assignment_is_validated(section: str, field: str, value: float) -> None:
    p = ProviderConfig(name="kimi", base_url="https://x.example", model="m")
    with pytest.raises(ValidationError):
        setattr(getattr(p, section), field, value)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("limits", "min_interval", 0.0),
        ("limits", "max_queue_wait", 0.0),
        ("limits", "quota_cooldown", 0.0),
        ("retry", "max_retries", 0),
        ("retry", "base_delay", 0.0),
        ("retry", "jitter", 0.0),
    ],
)
def test_zero_is_meaningful_here(section: str, field: str, value: float) -> None:
    c = ClientConfig.load(config(provider("kimi", **{section: {field: value}})))
    assert getattr(getattr(c.providers[0], section), field) == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    ("section", "field"),
    [("limits", "requests_per_minute"), ("limits", "min_interval"), ("timeout", "read")],
)
def test_non_finite_numbers(section: str, field: str, value: float) -> None:
    exc = config_error(config(provider("kimi", **{section: {field: value}})))
    assert f"providers[kimi].{section}.{field}" in str(exc)
    assert "finite" in str(exc)


@pytest.mark.parametrize("value", [0, -1.0])
def test_client_timeout_must_be_positive(value: float) -> None:
    exc = config_error(config(timeout=value))
    assert exc.field == "timeout"
    assert "timeout: " in str(exc) and f"(got {value!r})" in str(exc)


def test_pool_units_must_be_positive() -> None:
    exc = config_error(config(provider(pool_units=0)))
    assert "providers[kimi].pool_units" in str(exc) and "(got 0)" in str(exc)


def test_wrong_type_names_field_and_value() -> None:
    exc = config_error(config(provider(limits={"max_concurrent": "lots"})))
    assert "providers[kimi].limits.max_concurrent" in str(exc)
    assert "'lots'" in str(exc)


def test_several_errors_are_all_listed() -> None:
    exc = config_error(
        config(provider("a", limits={"burst": 0}), provider("b", retry={"max_retries": -1}))
    )
    assert "providers[a].limits.burst" in str(exc)
    assert "providers[b].retry.max_retries" in str(exc)
    assert exc.field == "providers[a].limits.burst"


def test_provider_without_name_is_named_by_index() -> None:
    exc = config_error({"providers": [{"base_url": "https://x.example", "model": "m"}]})
    assert "providers[0].name" in str(exc)


def test_unknown_provider_in_chain() -> None:
    exc = config_error(config(provider("kimi"), chains={"fast": ["kimi", "gml"]}))
    assert exc.field == "chains.fast"
    assert "chains.fast" in str(exc) and "'gml'" in str(exc)
    assert "kimi" in str(exc)  # lists the known ones


def test_empty_chain() -> None:
    exc = config_error(config(chains={"fast": []}))
    assert exc.field == "chains.fast"
    assert "chains.fast" in str(exc) and "[]" in str(exc)


def test_provider_listed_twice_in_a_chain() -> None:
    exc = config_error(config(provider("kimi"), chains={"fast": ["kimi", "kimi"]}))
    assert exc.field == "chains.fast" and "'kimi'" in str(exc)


def test_duplicate_provider_names() -> None:
    exc = config_error(config(provider("kimi"), provider("glm"), provider("kimi")))
    assert exc.field == "providers"
    assert "duplicate" in str(exc) and "'kimi'" in str(exc)


def test_empty_providers_list() -> None:
    exc = config_error({"providers": []})
    assert exc.field == "providers"
    assert "providers" in str(exc) and "empty" in str(exc)


def test_providers_missing() -> None:
    exc = config_error({})
    assert exc.field == "providers" and "required" in str(exc)


@pytest.mark.parametrize(
    "url", ["ftp://files.example/v1", "api.moonshot.ai/v1", "file:///etc/passwd", "https://", ""]
)
def test_base_url_must_be_http(url: str) -> None:
    exc = config_error(config(provider(base_url=url)))
    assert exc.field == "providers[kimi].base_url"
    assert "http" in str(exc) and repr(url) in str(exc)


def test_credentials_in_url() -> None:
    exc = config_error(config(provider(base_url=f"https://user:{CANARY}@api.example/v1")))
    assert exc.field == "providers[kimi].base_url"
    assert "credentials" in str(exc)
    assert "api.example" in str(exc)  # the value, with the userinfo masked
    assert_no_canary(exc)


@pytest.mark.parametrize(
    ("where", "data", "field"),
    [
        ("top", config(provders=[]), "provders"),
        ("provider", config(provider(max_concurent=2)), "providers[kimi].max_concurent"),
        ("limits", config(provider(limits={"rpm": 4})), "providers[kimi].limits.rpm"),
        ("retry", config(provider(retry={"retries": 4})), "providers[kimi].retry.retries"),
        ("breaker", config(provider(breaker={"fails": 4})), "providers[kimi].breaker.fails"),
        ("timeout", config(provider(timeout={"total": 4})), "providers[kimi].timeout.total"),
        ("pool", config(pools={"p": {"burts": 4}}), "pools.p.burts"),
    ],
)
def test_unknown_fields_are_errors(where: str, data: dict[str, Any], field: str) -> None:
    exc = config_error(data)
    assert exc.field == field
    assert f"{field}: unknown field" in str(exc)


def test_unknown_pool() -> None:
    exc = config_error(config(provider(pool="featherles"), pools={"featherless": {}}))
    assert exc.field == "providers[kimi].pool"
    assert "'featherles'" in str(exc) and "featherless" in str(exc)


def test_pool_units_bigger_than_the_pool() -> None:
    data = config(provider(pool="fl", pool_units=4), pools={"fl": {"max_concurrent": 2}})
    exc = config_error(data)
    assert exc.field == "providers[kimi].pool_units"
    assert "4" in str(exc) and "'fl'" in str(exc) and "(2)" in str(exc)


def test_pool_units_that_fit() -> None:
    data = config(provider(pool="fl", pool_units=4), pools={"fl": {"max_concurrent": 4}})
    assert ClientConfig.load(data).providers[0].pool_units == 4


@pytest.mark.parametrize("backend", ["redis", "memcached://h:1", "", "http://redis.example"])
def test_bad_backend(backend: str) -> None:
    exc = config_error(config(backend=backend))
    assert exc.field == "backend"
    assert "backend: " in str(exc) and repr(backend) in str(exc)


def test_empty_api_key() -> None:
    exc = config_error(config(provider(api_key="")))
    assert exc.field == "providers[kimi].api_key"


# -- api_key_env ------------------------------------------------------------------------


def test_resolve_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLSDK_TEST_KEY", CANARY)
    p = ProviderConfig(
        name="kimi", base_url="https://x.example", model="m", api_key_env="RLSDK_TEST_KEY"
    )
    assert p.resolve_api_key() == CANARY
    assert p.resolve_api_key({"RLSDK_TEST_KEY": "other"}) == "other"


def test_api_key_wins_over_api_key_env() -> None:
    p = ProviderConfig(
        name="kimi", base_url="https://x.example", model="m", api_key=CANARY, api_key_env="UNSET_X"
    )
    assert p.resolve_api_key({}) == CANARY


def test_no_key_at_all_is_none() -> None:
    p = ProviderConfig(name="vllm", base_url="http://127.0.0.1:8000/v1", model="m")
    assert p.resolve_api_key({}) is None


@pytest.mark.parametrize("environ", [{}, {"RLSDK_TEST_KEY": ""}])
def test_missing_environment_variable(environ: dict[str, str]) -> None:
    p = ProviderConfig(
        name="kimi", base_url="https://x.example", model="m", api_key_env="RLSDK_TEST_KEY"
    )
    with pytest.raises(ConfigError) as info:
        p.resolve_api_key(environ)
    assert isinstance(info.value, ValueError)
    assert info.value.field == "providers[kimi].api_key_env"
    assert "providers[kimi].api_key_env" in str(info.value)
    assert "'RLSDK_TEST_KEY'" in str(info.value)


def test_check_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLSDK_TEST_GLM_KEY", raising=False)
    c = ClientConfig.load(
        config(
            provider("kimi", api_key_env="RLSDK_TEST_KIMI_KEY"),
            provider("glm", api_key_env="RLSDK_TEST_GLM_KEY"),
            provider("local"),
        )
    )
    with pytest.raises(ConfigError, match="RLSDK_TEST_GLM_KEY"):
        c.check_environment({"RLSDK_TEST_KIMI_KEY": "k"})
    c.check_environment({"RLSDK_TEST_KIMI_KEY": "k", "RLSDK_TEST_GLM_KEY": "g"})
    monkeypatch.setenv("RLSDK_TEST_KIMI_KEY", "k")
    with pytest.raises(ConfigError) as info:
        c.check_environment()  # reads os.environ
    assert info.value.field == "providers[glm].api_key_env"


def test_loading_does_not_need_the_environment() -> None:
    """The variable is read when the client starts, not when the config is built."""
    c = ClientConfig.load(config(provider(api_key_env="RLSDK_TEST_NEVER_SET")))
    assert c.providers[0].api_key_env == "RLSDK_TEST_NEVER_SET"


# -- secrets never shown ----------------------------------------------------------------


def test_secret_not_in_repr_or_str() -> None:
    c = ClientConfig.load(
        config(
            provider("kimi", api_key=CANARY, headers={"X-Api-Key": CANARY}),
            provider("glm", api_key=SecretStr(CANARY)),
        )
    )
    p = c.providers[0]
    for shown in (repr(c), str(c), repr(p), str(p), c.model_dump_json(), repr(p.api_key)):
        assert CANARY not in shown
        assert "CANARY" not in shown
    assert p.resolve_api_key() == CANARY
    assert c.providers[1].resolve_api_key() == CANARY


@pytest.mark.parametrize(
    "data",
    [
        config(provider(api_key=CANARY, limits={"max_concurrent": 0})),
        config(provider(api_key=CANARY, base_url="ftp://x")),
        config(provider(api_key=CANARY), chains={"x": ["nope"]}),
        config(provider(api_key=CANARY), provider(api_key=CANARY)),
        config(provider(api_key=CANARY, pool="nope")),
        config(provider(api_key=CANARY), backend="bogus"),
        config(provider(api_key=[CANARY])),
        config(provider(api_key={"value": CANARY})),
        config(provider(apikey=CANARY)),  # misspelt field
        config(provider(api_key_env=CANARY)),  # the key pasted into the wrong field
        config(provider(headers={"Authorization": 42, "X": CANARY})),
        config(provider(headers=CANARY)),
        config(api_key=CANARY),
    ],
)
def test_secret_not_in_config_errors(data: dict[str, Any]) -> None:
    assert_no_canary(config_error(data))


def test_secret_not_in_validation_error_of_direct_construction() -> None:
    for bad in ([CANARY], {"k": CANARY}):
        with pytest.raises(ValidationError) as info:
            ProviderConfig(name="kimi", base_url="https://x.example", model="m", api_key=bad)
        assert CANARY not in str(info.value) and CANARY not in repr(info.value)
    with pytest.raises(ValidationError) as info:
        ProviderConfig.model_validate(
            {"name": "kimi", "base_url": "https://x.example", "model": "m", "apikey": CANARY}
        )
    assert CANARY not in str(info.value)


def test_secret_not_in_missing_env_error() -> None:
    p = ProviderConfig(
        name="kimi", base_url="https://x.example", model="m", api_key_env="rc_canary0123456789"
    )
    with pytest.raises(ConfigError) as info:
        p.resolve_api_key({})
    assert "rc_canary0123456789" not in str(info.value)
    assert "providers[kimi].api_key_env" in str(info.value)


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".yaml", f'providers:\n  - name: kimi\n    api_key: "{CANARY}\n'),
        (".yaml", f"providers:\n  - name: kimi\n    api_key: {CANARY}\n   bad: [\n"),
        (".toml", f'[[providers]]\nname = "kimi"\napi_key = "{CANARY}\n'),
        (".json", f'{{"providers": [{{"api_key": "{CANARY}",}}]}}'),
        (".json", f'{{"providers": [{{"api_key": "{CANARY}", "api_key": "x"}}]}}'),
        (
            ".yaml",
            f"providers:\n  - {{name: kimi, base_url: ftp://x, model: m, api_key: {CANARY}}}\n",
        ),
        (
            ".yaml",
            f"providers:\n  - {{name: kimi, base_url: https://x, model: m, api_key: [{CANARY}]}}\n",
        ),
    ],
)
def test_secret_not_in_file_errors(tmp_path: Path, suffix: str, text: str) -> None:
    target = tmp_path / f"secret{suffix}"
    target.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        ClientConfig.from_file(target)
    assert_no_canary(info.value)


# -- chains and look-ups ----------------------------------------------------------------


def test_default_chain_orders_by_priority_stable_for_ties() -> None:
    c = ClientConfig.load(
        config(
            provider("d", priority=5),
            provider("a", priority=100),
            provider("b", priority=1),
            provider("c", priority=5),
            provider("e"),
        )
    )
    assert c.chain() == ["b", "d", "c", "a", "e"]
    assert c.chain("default") == ["b", "d", "c", "a", "e"]


def test_named_chains_and_explicit_default() -> None:
    c = ClientConfig.load(
        config(
            provider("kimi", priority=1),
            provider("glm", priority=2),
            chains={"fast": ["glm"], "default": ["glm", "kimi"]},
        )
    )
    assert c.chain("fast") == ["glm"]
    assert c.chain("default") == ["glm", "kimi"]


def test_chain_returns_a_copy() -> None:
    c = ClientConfig.load(config(provider("kimi"), chains={"fast": ["kimi"]}))
    c.chain("fast").append("other")
    assert c.chain("fast") == ["kimi"]


def test_unknown_chain() -> None:
    c = ClientConfig.load(config(chains={"fast": ["kimi"]}))
    with pytest.raises(ConfigError) as info:
        c.chain("slow")
    assert info.value.field == "chain"
    assert "'slow'" in str(info.value) and "fast" in str(info.value)


def test_provider_by_name_or_model() -> None:
    c = ClientConfig.load(
        config(
            provider("kimi", model="kimi-k2"),
            provider("glm", model="glm-4.7"),
            provider("glm-alt", model="glm-4.7"),
        )
    )
    assert c.provider("glm").name == "glm"
    assert c.provider("kimi-k2").name == "kimi"
    assert c.provider("glm-4.7").name == "glm"  # the first with that model


def test_provider_name_wins_over_model() -> None:
    c = ClientConfig.load(config(provider("a", model="b"), provider("b", model="x")))
    assert c.provider("b").name == "b"


def test_unknown_provider() -> None:
    c = ClientConfig.load(config(provider("kimi")))
    with pytest.raises(ConfigError) as info:
        c.provider("gpt-5")
    assert "'gpt-5'" in str(info.value) and "kimi" in str(info.value)
