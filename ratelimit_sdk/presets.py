"""Helper (builds configuration, not a data-path stage): the seed's four providers as presets.

The providers, limits and chains the SDK grew out of, with
the providers' real OpenAI-compatible endpoints and the usual names of their
API-key environment variables::

    from ratelimit_sdk import Client
    from ratelimit_sdk.presets import seed_config

    client = Client(seed_config())                       # all four, keys from the env
    client = Client(seed_config(only=["kimi", "glm"]))   # just these two
    client = Client(seed_config(kimi={"limits": {"requests_per_minute": 20}}, timeout=120))

``seed_config`` returns a fresh, validated :class:`~ratelimit_sdk.config.ClientConfig`
each call. Like every config it is immutable: derive a changed one with
``model_copy(update={...})`` or pass overrides to ``seed_config``. :data:`PRESETS`,
:data:`REGIONS`, :data:`CHAINS` and :data:`POOLS` are read-only all the way down;
nothing a caller does with what they return can change a later ``seed_config()``.

Where each default comes from
-----------------------------
Every number below is the seed's (measured by the team that
wrote the seed against their own accounts), checked against the providers' public
documentation where that says anything:

* **kimi** (Moonshot): one request in flight, 4 per minute, 1 s apart. That is
  Moonshot's entry tier (concurrency 1, a few requests per minute); paid tiers
  are far higher (Tier 1 at 50 concurrent / 200 RPM), so raise these once your
  account is topped up.
* **glm** (Zhipu / Z.ai): 10 in flight, 0.1 s apart, no per-minute limit. Zhipu
  limits concurrency per model and account level (error 1302 when exceeded) and
  publishes no RPM for GLM-4.x; 10 is what the seed's account had.
* **llama**, **dolphin** (Featherless): 5 in flight, 20 per minute, 0.2 s apart
  each (the seed's), and both draw on one account-wide pool of 4 concurrency
  units: Featherless plans are reservations of concurrency ("Feather Premium":
  4 units), where a 70B model costs 4 units per request and a 7-15B model 1. So
  one Llama-70B call, or up to four Dolphin-8B calls, run at a time.
* Retries and base delays are the seed's (kimi 2 retries from 5 s, glm 3 from
  2 s, the Featherless models 3 from 1 s); breakers and timeouts are the SDK's
  defaults (:mod:`ratelimit_sdk.config`).

Endpoints (``region``)
----------------------
Moonshot and Zhipu each run an international and a mainland-China platform with
separate accounts and keys. The default, ``region="international"``, uses
``https://api.moonshot.ai/v1`` and Z.ai's ``https://api.z.ai/api/paas/v4``
(key in ``ZAI_API_KEY``); ``region="china"`` uses ``https://api.moonshot.cn/v1``
and ``https://open.bigmodel.cn/api/paas/v4`` (key in ``ZHIPUAI_API_KEY``, the
name Zhipu's own SDK reads). Featherless has one endpoint.

Model ids rotate; the ones here were current when written. Check a provider's
``GET {base_url}/models`` and override ``model`` if one has been retired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from .config import ClientConfig, LimitsConfig, ProviderConfig, RetryConfig, TimeoutConfig
from .errors import ConfigError

__all__ = [
    "CHAINS",
    "POOLS",
    "PRESETS",
    "REFLEXION_RETRIES",
    "REGIONS",
    "Region",
    "preset",
    "reflexion_config",
    "seed_config",
]

Region = Literal["international", "china"]

#: Endpoint and key variable per region, for the two providers that have two platforms.
REGIONS: Mapping[str, Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "international": MappingProxyType(
            {
                "kimi": MappingProxyType(
                    {
                        "base_url": "https://api.moonshot.ai/v1",
                        "api_key_env": "MOONSHOT_API_KEY",
                    }
                ),
                "glm": MappingProxyType(
                    {"base_url": "https://api.z.ai/api/paas/v4", "api_key_env": "ZAI_API_KEY"}
                ),
            }
        ),
        "china": MappingProxyType(
            {
                "kimi": MappingProxyType(
                    {
                        "base_url": "https://api.moonshot.cn/v1",
                        "api_key_env": "MOONSHOT_API_KEY",
                    }
                ),
                "glm": MappingProxyType(
                    {
                        "base_url": "https://open.bigmodel.cn/api/paas/v4",
                        "api_key_env": "ZHIPUAI_API_KEY",
                    }
                ),
            }
        ),
    }
)

_FEATHERLESS_URL = "https://api.featherless.ai/v1"
_FEATHERLESS_KEY = "FEATHERLESS_API_KEY"


def _build_presets() -> dict[str, ProviderConfig]:
    intl = REGIONS["international"]
    return {
        "kimi": ProviderConfig(
            name="kimi",
            base_url=intl["kimi"]["base_url"],
            api_key_env=intl["kimi"]["api_key_env"],
            model="kimi-k2.6",  # Kimi K2; older ids (kimi-k2-0711-preview, ...) were retired
            priority=1,
            limits=LimitsConfig(
                max_concurrent=1,  # seed; Moonshot's entry tier allows 1 request in flight
                min_interval=1.0,  # seed
                requests_per_minute=4,  # seed; Moonshot's entry tier RPM is single-digit
                # Seldom free: never queue here while a later provider could answer.
                max_queue_wait=0.0,
            ),
            retry=RetryConfig(max_retries=2, base_delay=5.0),  # seed
            # Kimi K2 may think for minutes before its first byte.
            timeout=TimeoutConfig(connect=5.0, read=300.0),
        ),
        "glm": ProviderConfig(
            name="glm",
            base_url=intl["glm"]["base_url"],
            api_key_env=intl["glm"]["api_key_env"],
            model="glm-4.7",
            priority=2,
            limits=LimitsConfig(
                max_concurrent=10,  # seed; Zhipu limits concurrency per model (error 1302)
                min_interval=0.1,  # seed; Zhipu publishes no RPM for GLM-4.x
            ),
            retry=RetryConfig(max_retries=3, base_delay=2.0),  # seed
            timeout=TimeoutConfig(connect=5.0, read=300.0),  # GLM-4.7 thinks by default
        ),
        "llama": ProviderConfig(
            name="llama",
            base_url=_FEATHERLESS_URL,
            api_key_env=_FEATHERLESS_KEY,
            model="meta-llama/Llama-3.3-70B-Instruct",
            priority=3,
            pool="featherless",
            pool_units=4,  # Featherless: a 70B model costs 4 concurrency units per request
            limits=LimitsConfig(
                max_concurrent=5,  # seed (the pool allows one 70B request at a time anyway)
                min_interval=0.2,  # seed
                requests_per_minute=20,  # seed
            ),
            retry=RetryConfig(max_retries=3, base_delay=1.0),  # seed
        ),
        "dolphin": ProviderConfig(
            name="dolphin",
            base_url=_FEATHERLESS_URL,
            api_key_env=_FEATHERLESS_KEY,
            model="cognitivecomputations/Dolphin3.0-Llama3.1-8B",
            priority=4,
            pool="featherless",
            pool_units=1,  # Featherless: a 7-15B model costs 1 concurrency unit per request
            limits=LimitsConfig(
                max_concurrent=5,  # seed (the pool's 4 units bound it first)
                min_interval=0.2,  # seed
                requests_per_minute=20,  # seed
            ),
            retry=RetryConfig(max_retries=3, base_delay=1.0),  # seed
        ),
    }


#: The seed's providers by name. Read-only: :func:`seed_config` and :func:`preset` copy them.
PRESETS: Mapping[str, ProviderConfig] = MappingProxyType(_build_presets())

#: The seed's chains. ``reflexion`` is for the generate -> critique -> refine agent:
#: reasoning models only, and (with :func:`reflexion_config`) few retries each.
CHAINS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "default": ("kimi", "glm", "llama", "dolphin"),
        "reflexion": ("kimi", "glm", "llama"),
    }
)

#: Account-wide budgets: Featherless "Feather Premium" holds 4 concurrency units.
POOLS: Mapping[str, LimitsConfig] = MappingProxyType(
    {"featherless": LimitsConfig(max_concurrent=4)}
)

#: Retries per provider in the seed's fail-fast ``reflexion`` setting (1-2 each).
REFLEXION_RETRIES: Mapping[str, int] = MappingProxyType({"kimi": 1, "glm": 2, "llama": 2})


def preset(name: str, **overrides: Any) -> ProviderConfig:
    """A copy of one preset provider, with ``overrides`` merged in (nested dicts merge).

    ``preset("kimi", limits={"requests_per_minute": 20})``. Unknown names and
    invalid values raise :class:`~ratelimit_sdk.errors.ConfigError`.
    """
    base = PRESETS.get(name)
    if base is None:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})", field="preset")
    data = _merge(base.model_dump(exclude_unset=False), overrides, name)
    config = ClientConfig.load({"providers": [data], "pools": _pool_dicts()})
    return config.providers[0]


def seed_config(
    *,
    region: Region = "international",
    only: Sequence[str] | None = None,
    **overrides: Any,
) -> ClientConfig:
    """The seed's whole configuration (four providers, two chains, one pool), ready to adjust.

    ``region`` picks the Moonshot and Zhipu platforms (see the module docstring).
    ``only`` keeps just these providers (the chains and pools shrink to match).
    Keyword ``overrides`` named after a provider (``kimi=``, ``glm=``, ``llama=``,
    ``dolphin=``) are merged into that provider's settings, nested dicts merging
    key by key; any other keyword sets a :class:`ClientConfig` field
    (``timeout=``, ``backend=``, ``chains=``, ``pools=``, ...). For example::

        seed_config(kimi={"limits": {"max_concurrent": 4, "requests_per_minute": 200}},
                    backend="redis://localhost:6379/0")

    The result is validated (errors are :class:`ConfigError`) but API keys are
    not looked up until a ``Client`` starts.
    """
    return _seed(region, only, overrides, retries=None)


def reflexion_config(
    *,
    region: Region = "international",
    **overrides: Any,
) -> ClientConfig:
    """The seed's fail-fast setting for its reflexion agent (reasoning models, few retries).

    A chain is only a list of names and retries belong to each provider, so the
    fail-fast retries need a configuration of their own: this one keeps kimi,
    glm and llama, gives them :data:`REFLEXION_RETRIES` (1-2 each) and makes
    ``reflexion`` the ``default`` chain too. ``overrides`` work as in :func:`seed_config`.
    Use it for a ``Client`` dedicated to the agent; :func:`seed_config`'s own
    ``reflexion`` chain walks the same providers with their normal retries.
    """
    return _seed(region, list(CHAINS["reflexion"]), overrides, retries=REFLEXION_RETRIES)


def _seed(
    region: str,
    only: Sequence[str] | None,
    overrides: Mapping[str, Any],
    *,
    retries: Mapping[str, int] | None,
) -> ClientConfig:
    if region not in REGIONS:
        raise ConfigError(
            f"region: unknown region {region!r} (known: {', '.join(REGIONS)})", field="region"
        )
    names = list(PRESETS) if only is None else list(only)
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        raise ConfigError(
            f"only: unknown or no providers {unknown or names!r} (known: {', '.join(PRESETS)})",
            field="only",
        )
    providers = []
    for name in names:
        data = PRESETS[name].model_dump()
        data.update(REGIONS[region].get(name, {}))
        if retries is not None and name in retries:
            data["retry"]["max_retries"] = retries[name]
        if name in overrides:
            data = _merge(data, _mapping(overrides[name], name), name)
        providers.append(data)
    kept = set(names)
    chains = {
        chain: [n for n in members if n in kept]
        for chain, members in CHAINS.items()
        if any(n in kept for n in members)
    }
    if retries is not None:
        chains["default"] = list(chains["reflexion"])
    used_pools = {p["pool"] for p in providers if p.get("pool")}
    config: dict[str, Any] = {
        "providers": providers,
        "chains": chains,
        "pools": {k: v for k, v in _pool_dicts().items() if k in used_pools},
    }
    for key, value in overrides.items():
        if key in PRESETS:
            if key not in kept:
                raise ConfigError(f"{key}: overrides a provider that `only` left out", field=key)
            continue
        config[key] = value
    return ClientConfig.load(config)


def _pool_dicts() -> dict[str, dict[str, Any]]:
    return {name: limits.model_dump() for name, limits in POOLS.items()}


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if isinstance(value, ProviderConfig):
        return value.model_dump(exclude_unset=True)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: overrides must be a mapping, got {type(value).__name__}", field=where
        )
    return value


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``base`` updated by ``extra``; nested mappings merge key by key (pydantic models too)."""
    merged = dict(base)
    for key, value in extra.items():
        if hasattr(value, "model_dump") and not isinstance(value, ProviderConfig):
            value = value.model_dump(exclude_unset=True)
        old = merged.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(old, value, f"{where}.{key}")
        else:
            merged[key] = value
    return merged
