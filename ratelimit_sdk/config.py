"""Leaf: the configuration models (pydantic v2) and ``from_file``.

Every model accepts a plain dict wherever a model is expected. Wherever the SDK
builds the configuration for you (:meth:`ClientConfig.load`,
:meth:`ClientConfig.from_file`, ``Client(dict)``) pydantic's ``ValidationError``
arrives translated into :class:`~ratelimit_sdk.errors.ConfigError`, whose message
names the field and the offending value (never a secret).

All defaults live here, each with its unit and meaning. The backoff formula,
written once (see :class:`RetryConfig`)::

    delay(n) = min(max_delay, max(base_delay * 2**n * (1 + U(0, jitter)), retry_after))

where ``n`` counts retries from 0 and ``retry_after`` is what the server asked
for (0 when it did not say). A wait longer than ``max_delay`` ends the retries
on that provider (the chain moves on instead).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

__all__ = [
    "BreakerConfig",
    "ClientConfig",
    "LimitsConfig",
    "ProviderConfig",
    "RetryConfig",
    "TimeoutConfig",
    "translate_validation_error",
]

_SECRET_FIELDS = frozenset({"api_key", "headers"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class LimitsConfig(_Model):
    """Admission limits of one provider (or of a shared pool).

    ``None`` means "no such limit". The token bucket starts full.
    """

    max_concurrent: int | None = Field(
        default=None, gt=0, description="Requests (concurrency units) in flight at once."
    )
    requests_per_minute: float | None = Field(
        default=None, gt=0, description="Token-bucket refill rate, requests per minute."
    )
    burst: int | None = Field(
        default=None,
        gt=0,
        description="Bucket capacity in requests (None: 1). The bucket starts full.",
    )
    min_interval: float = Field(
        default=0.0, ge=0, description="Seconds between consecutive request starts (0: none)."
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="LLM token budget per minute; a weighted bucket holding one minute's worth.",
    )
    max_queue_wait: float | None = Field(
        default=None,
        ge=0,
        description="Longest wait for admission, seconds (None: as long as the deadline allows; "
        "0: never wait).",
    )
    quota_cooldown: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds to pause after an exhausted quota that names no reset time.",
    )

    def limiter_kwargs(self) -> dict[str, Any]:
        """The fields a :class:`~ratelimit_sdk.limiter.Limiter` takes."""
        return {
            "max_concurrent": self.max_concurrent,
            "requests_per_minute": self.requests_per_minute,
            "burst": self.burst,
            "min_interval": self.min_interval,
            "tokens_per_minute": self.tokens_per_minute,
        }


class RetryConfig(_Model):
    """Retries on the same provider, after the first try.

    Delay before retry ``n`` (0-based)::

        min(max_delay, max(base_delay * 2**n * (1 + U(0, jitter)), retry_after))

    A wait that would exceed ``max_delay`` ends the retries on this provider.
    ``max_retries=0`` means one try only.
    """

    max_retries: int = Field(default=2, ge=0, description="Retries after the first try.")
    base_delay: float = Field(default=1.0, ge=0, description="Seconds; doubled each retry.")
    max_delay: float = Field(
        default=60.0, ge=0, description="Cap in seconds; a longer wait moves on instead."
    )
    jitter: float = Field(
        default=0.25, ge=0, le=10, description="Random extra fraction of the delay, 0..jitter."
    )


class BreakerConfig(_Model):
    """The provider's circuit breaker (pybreaker)."""

    fail_max: int = Field(
        default=5, ge=1, description="Consecutive failures that open the breaker."
    )
    reset_timeout: float = Field(
        default=30.0, gt=0, description="Seconds the breaker stays open before one probe."
    )


class TimeoutConfig(_Model):
    """HTTP timeouts of one attempt, in seconds (capped by the call's remaining deadline)."""

    connect: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read: float = Field(default=120.0, gt=0, description="Seconds to wait between bytes.")


class ProviderConfig(_Model):
    """One provider: where it is, how to authenticate, and its limits.

    ``api_key`` wins over ``api_key_env``. ``api_key_env`` is read from the
    environment when the client starts (:meth:`resolve_api_key`); a variable
    that is named but unset is a :class:`ConfigError`. No key at all means no
    auth header (local vLLM / Ollama servers).
    """

    name: str = Field(min_length=1, description="Unique name, used in chains and stats.")
    base_url: str = Field(description="e.g. https://api.moonshot.ai/v1")
    model: str = Field(min_length=1, description="Model id sent in the request body.")
    api: Literal["openai", "anthropic"] = Field(
        default="openai", description="Wire format: OpenAI chat completions or Anthropic."
    )
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, min_length=1)
    headers: dict[str, str] = Field(
        default_factory=dict, repr=False, description="Extra HTTP headers for every request."
    )
    priority: int = Field(default=100, description="Lower goes first in the default chain.")
    pool: str | None = Field(default=None, description="Also draw from this shared pool.")
    pool_units: int = Field(default=1, ge=1, description="Pool units one request holds.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    timeout: TimeoutConfig = Field(default_factory=TimeoutConfig)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use api_key or api_key_env")
        return value.rstrip("/")

    def resolve_api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The key to send: ``api_key``, else the ``api_key_env`` variable, else ``None``.

        Raises :class:`ConfigError` when ``api_key_env`` names an unset variable.
        """
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is None:
            return None
        env = os.environ if environ is None else environ
        value = env.get(self.api_key_env)
        if not value:
            raise ConfigError(
                f"providers[{self.name}].api_key_env: environment variable "
                f"{self.api_key_env!r} is not set",
                field="api_key_env",
            )
        return value


class ClientConfig(_Model):
    """The whole client: providers, named chains, pools and the limiter backend."""

    providers: list[ProviderConfig] = Field(min_length=1)
    chains: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Named fallback chains; "default" is all providers by priority if absent.',
    )
    use_fallback: bool = Field(default=True, description="False: one provider, no chain.")
    backend: str = Field(default="memory", description='"memory" or "redis://host:port/db".')
    timeout: float = Field(
        default=600.0, gt=0, description="Default deadline of one whole call, seconds."
    )
    pools: dict[str, LimitsConfig] = Field(
        default_factory=dict, description="Account-wide budgets shared by several providers."
    )
    key_prefix: str = Field(
        default="ratelimit_sdk", min_length=1, description="Redis key namespace."
    )
    on_backend_error: Literal["local", "raise"] = Field(
        default="local",
        description='Redis failing: "local" falls back to in-process limits, "raise" raises.',
    )
    lease_timeout: float = Field(
        default=30.0, gt=0, description="Redis: seconds before a crashed holder's permit returns."
    )

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: str) -> str:
        if value in ("memory", "memory://"):
            return "memory"
        scheme = urlsplit(value).scheme
        if scheme in ("redis", "rediss", "unix"):
            return value
        raise ValueError('must be "memory" or a redis://host:port/db URL')

    @model_validator(mode="after")
    def _check_references(self) -> ClientConfig:
        names = [p.name for p in self.providers]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"providers: duplicate provider name {name!r}")
            seen.add(name)
        for chain_name, members in self.chains.items():
            if not members:
                raise ValueError(f"chains.{chain_name}: a chain needs at least one provider")
            for member in members:
                if member not in seen:
                    raise ValueError(
                        f"chains.{chain_name}: unknown provider {member!r} "
                        f"(known: {', '.join(names)})"
                    )
            if len(set(members)) != len(members):
                raise ValueError(f"chains.{chain_name}: a provider is listed twice")
        for provider in self.providers:
            if provider.pool is None:
                continue
            pool = self.pools.get(provider.pool)
            if pool is None:
                raise ValueError(
                    f"providers[{provider.name}].pool: unknown pool {provider.pool!r}"
                )
            if pool.max_concurrent is not None and provider.pool_units > pool.max_concurrent:
                raise ValueError(
                    f"providers[{provider.name}].pool_units: {provider.pool_units} is more "
                    f"than pool {provider.pool!r} holds ({pool.max_concurrent})"
                )
        return self

    # -- look-ups -------------------------------------------------------------------

    def provider(self, name: str) -> ProviderConfig:
        """The provider called ``name`` (or whose ``model`` is ``name``); ConfigError if none."""
        for provider in self.providers:
            if provider.name == name:
                return provider
        for provider in self.providers:
            if provider.model == name:
                return provider
        raise ConfigError(
            f"unknown provider or model {name!r} (known: "
            f"{', '.join(p.name for p in self.providers)})",
            field="preferred_model",
        )

    def chain(self, name: str = "default") -> list[str]:
        """Provider names of the chain ``name``; ``default`` is all providers by priority."""
        if name in self.chains:
            return list(self.chains[name])
        if name == "default":
            ordered = sorted(enumerate(self.providers), key=lambda ip: (ip[1].priority, ip[0]))
            return [p.name for _, p in ordered]
        raise ConfigError(
            f"unknown chain {name!r} (known: {', '.join(sorted({'default', *self.chains}))})",
            field="chain",
        )

    def check_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Raise :class:`ConfigError` if any ``api_key_env`` names an unset variable."""
        for provider in self.providers:
            provider.resolve_api_key(environ)

    # -- construction -----------------------------------------------------------------

    @classmethod
    def load(cls, obj: ClientConfig | Mapping[str, Any]) -> ClientConfig:
        """A ``ClientConfig`` from a model or a plain dict; errors become ConfigError."""
        if isinstance(obj, ClientConfig):
            return obj
        if not isinstance(obj, Mapping):
            raise ConfigError(
                f"config: expected a ClientConfig or a mapping, got {type(obj).__name__}"
            )
        try:
            return cls.model_validate(dict(obj))
        except ValidationError as exc:
            raise translate_validation_error(exc) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClientConfig:
        """Read YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON (``.json``)."""
        return cls.load(_read_file(Path(path)))


def _read_file(path: Path) -> Mapping[str, Any]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data: Any = yaml.safe_load(text)
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - exercised on 3.10 only
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                f"config file {str(path)!r}: unknown format {suffix or '(no suffix)'!r}; "
                "use .yaml, .yml, .toml or .json"
            )
    except ConfigError:
        raise
    except Exception as exc:  # each parser has its own error types
        raise ConfigError(f"config file {str(path)!r} is not valid {suffix[1:]}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {str(path)!r}: the top level must be a mapping, "
            f"got {type(data).__name__}"
        )
    return data


def _show_input(loc: tuple[Any, ...], value: Any) -> str:
    if any(part in _SECRET_FIELDS for part in loc):
        return ""
    if isinstance(value, (Mapping, list, tuple, set)):
        return ""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f" (got {text})"


def translate_validation_error(exc: ValidationError) -> ConfigError:
    """One :class:`ConfigError` naming each failing field and its value (never a secret)."""
    lines = []
    first_field = None
    for error in exc.errors(include_url=False):
        loc = tuple(error.get("loc", ()))
        field = ".".join(str(part) for part in loc) or "config"
        first_field = first_field or field
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        message = message.removeprefix("Value error, ")
        shown = _show_input(loc, error.get("input"))
        lines.append(f"{message}{shown}" if not loc else f"{field}: {message}{shown}")
    text = lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)
    return ConfigError(text, field=first_field)
