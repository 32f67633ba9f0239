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

Every model is immutable (pydantic ``frozen=True``): assigning a field raises, and
the containers it holds are immutable too (``ClientConfig.providers`` is a tuple,
``chains``, ``pools`` and ``headers`` are :class:`FrozenDict` mappings, each chain a
tuple). A changed configuration is a new object, made with
``model_copy(update={...})`` (validated like the original) and handed to
``Client.reload``; so nothing held by a running client can drift from what it
enforces.
"""

from __future__ import annotations

import json
import os
import re
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from ._redact import redact, redact_url
from ._windows import KINDS, check_window, parse_per
from .errors import ConfigError

__all__ = [
    "AUTO",
    "AutoLimits",
    "BreakerConfig",
    "ClientConfig",
    "FrozenDict",
    "LimitsConfig",
    "ProviderConfig",
    "RetryConfig",
    "TimeoutConfig",
    "WindowConfig",
    "translate_validation_error",
]

# Fields whose values never appear in an error message. ``api_key_env`` is here
# because the only way it fails validation is by not looking like a variable
# name, and then it is most likely the key itself pasted into the wrong field.
_SECRET_FIELDS = frozenset({"api_key", "api_key_env", "headers"})

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_K = TypeVar("_K")
_V = TypeVar("_V")


class FrozenDict(dict[_K, _V]):
    """A ``dict`` that refuses every change (``TypeError``); what config mappings hold.

    It compares, iterates, dumps to JSON and pickles like a dict, and is hashable
    when its values are. Build a changed one as a new mapping.
    """

    __slots__ = ()

    def _immutable(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} is immutable; build a new mapping and use "
            "model_copy(update=...) on the config that holds it"
        )

    __setitem__ = _immutable
    __delitem__ = _immutable
    __ior__ = _immutable
    clear = _immutable
    pop = _immutable
    popitem = _immutable
    setdefault = _immutable
    update = _immutable

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __copy__(self) -> FrozenDict[_K, _V]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict[_K, _V]:
        import copy

        return type(self)({copy.deepcopy(k, memo): copy.deepcopy(v, memo) for k, v in self.items()})

    def __repr__(self) -> str:
        return repr(dict(self))


def _freeze(value: Mapping[Any, Any]) -> FrozenDict[Any, Any]:
    return value if isinstance(value, FrozenDict) else FrozenDict(value)


def _annotation_types(annotation: Any) -> set[Any]:
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    found: set[Any] = set()
    for arg in args:
        found |= _annotation_types(arg)
    return found


def _takes_number(annotation: Any) -> bool:
    return bool(_annotation_types(annotation) & {int, float})


def _takes_bool(annotation: Any) -> bool:
    return bool in _annotation_types(annotation)


class _Model(BaseModel):
    """Settings shared by every model.

    Unknown fields are errors (typos), numbers must be finite ("no limit" is
    spelled ``None``), and pydantic's own messages never echo an input
    (``api_key`` included) when a model is constructed directly.

    Immutable (``frozen=True``): assigning a field raises pydantic's
    ``ValidationError``. :meth:`model_copy` with ``update=`` returns a changed
    copy, validated like a new model.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``True`` is not the number 1 here: a boolean is refused where a number goes."""
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if (
                field is not None
                and _takes_number(field.annotation)
                and not _takes_bool(field.annotation)
            ):
                raise ValueError("must be a number, not a boolean")
        return value

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy, with the fields in ``update`` changed and the result validated.

        Unlike pydantic's own ``model_copy``, an ``update`` is validated (a bad value
        raises ``ValidationError``) and converted (lists become tuples, dicts become
        :class:`FrozenDict`), so the copy is as immutable as the original.
        """
        if not update:
            return super().model_copy(deep=deep)
        data = {name: getattr(self, name) for name in self.model_fields_set}
        data.update(update)
        copied = type(self).model_validate(data)
        return copied.model_copy(deep=True) if deep else copied


#: The value of a limit learned while running (``max_concurrent``,
#: ``requests_per_minute``, ``tokens_per_minute``); see :class:`AutoLimits`.
AUTO: Literal["auto"] = "auto"

_Auto = Literal["auto"]
_PositiveInt = Annotated[int, Field(gt=0)]
_PositiveFloat = Annotated[float, Field(gt=0)]


class AutoLimits(_Model):
    """Bounds and start values of the limits set to ``"auto"`` (learned while running).

    A learned value stays within ``[min_*, max_*]``; an explicit number in
    :class:`LimitsConfig` is never changed. Only the fields of the limits set to
    ``"auto"`` are used. Immutable; change it with ``model_copy(update={...})``.
    """

    min_concurrent: int = Field(default=1, gt=0, description="Lowest learned concurrency.")
    max_concurrent: int = Field(default=64, gt=0, description="Highest learned concurrency.")
    start_concurrent: int | None = Field(
        default=None,
        gt=0,
        description="Concurrency before anything is learned (None: 4, within the bounds).",
    )
    min_rpm: float = Field(default=1.0, gt=0, description="Lowest learned requests per minute.")
    max_rpm: float = Field(
        default=6000.0, gt=0, description="Highest learned (or adopted) requests per minute."
    )
    start_rpm: float | None = Field(
        default=None,
        gt=0,
        description="Requests per minute before anything is learned (None: max_rpm).",
    )
    min_tpm: float = Field(default=1000.0, gt=0, description="Lowest adopted tokens per minute.")
    max_tpm: float = Field(
        default=100_000_000.0, gt=0, description="Highest adopted tokens per minute."
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoLimits:
        for low, high, start in (
            ("min_concurrent", "max_concurrent", "start_concurrent"),
            ("min_rpm", "max_rpm", "start_rpm"),
            ("min_tpm", "max_tpm", None),
        ):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo > hi:
                raise ConfigError(f"{low}: {lo!r} is more than {high} ({hi!r})", field=low)
            first = None if start is None else getattr(self, start)
            if first is not None and not lo <= first <= hi:
                raise ConfigError(f"{start}: {first!r} is outside [{lo!r}, {hi!r}]", field=start)
        return self

    def first_concurrent(self) -> int:
        """The concurrency limit in force before anything is learned."""
        start = 4 if self.start_concurrent is None else self.start_concurrent
        return max(self.min_concurrent, min(self.max_concurrent, start))

    def first_rpm(self) -> float:
        """The requests per minute in force before anything is learned."""
        return self.max_rpm if self.start_rpm is None else self.start_rpm


class WindowConfig(_Model):
    """One window limit: at most ``N`` requests (or tokens) per ``per`` seconds.

    Exactly one amount: ``requests``, ``tokens``, ``input_tokens`` or
    ``output_tokens``. ``per``: seconds, or a string with a unit (``"500ms"``,
    ``"10s"``, ``"1m"``, ``"2h"``, ``"1d"``), at least 1 ms; stored as seconds.
    ``align``: ``"sliding"`` (at most N in any interval of that length) or ``"utc"``
    (a fixed window reset at UTC multiples of ``per``: ``"1d"`` resets at midnight
    UTC). A plain dict is accepted wherever a ``WindowConfig`` goes.
    """

    requests: float | None = Field(default=None, gt=0, description="Requests per window.")
    tokens: float | None = Field(default=None, gt=0, description="LLM tokens per window.")
    input_tokens: float | None = Field(
        default=None, gt=0, description="Input (prompt) tokens per window."
    )
    output_tokens: float | None = Field(
        default=None, gt=0, description="Output (completion) tokens per window."
    )
    per: float = Field(description='Window length: seconds, or "500ms", "10s", "1m", "2h", "1d".')
    align: Literal["sliding", "utc"] = Field(
        default="sliding",
        description='"sliding": any interval of that length; "utc": reset at UTC multiples.',
    )

    @field_validator("per", mode="before")
    @classmethod
    def _parse_per(cls, value: Any) -> float:
        try:
            return parse_per(value)
        except ConfigError as exc:  # a plain ValueError: the error then names the full path
            raise ValueError(str(exc).removeprefix("per: ").rpartition(" (got ")[0]) from None

    @model_validator(mode="after")
    def _one_amount(self) -> WindowConfig:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a window needs exactly one of {', '.join(KINDS)} (got {len(given)})")
        try:
            check_window(self)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def kind(self) -> str:
        """The amount key: ``requests``, ``tokens``, ``input_tokens`` or ``output_tokens``."""
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def limit(self) -> float:
        """The amount ``N``."""
        value = getattr(self, self.kind)
        assert value is not None
        return float(value)


class LimitsConfig(_Model):
    """Admission limits of one provider (or of a shared pool).

    ``None`` means "no such limit". The token bucket starts full.
    ``"auto"`` (``max_concurrent``, ``requests_per_minute``, ``tokens_per_minute``;
    providers only) means "learn it while running", within the bounds of ``auto``.
    Immutable; change it with ``model_copy(update={...})``.
    """

    max_concurrent: _PositiveInt | _Auto | None = Field(
        default=None,
        description='Requests (concurrency units) in flight at once ("auto": learned from '
        "the server's concurrency refusals).",
    )
    requests_per_minute: _PositiveFloat | _Auto | None = Field(
        default=None,
        description='Token-bucket refill rate, requests per minute ("auto": the rate the '
        "server declares in its headers, else learned from its rate-limit refusals).",
    )
    burst: int | None = Field(
        default=None,
        gt=0,
        description="Bucket capacity in requests (None: 1). The bucket starts full.",
    )
    min_interval: float = Field(
        default=0.0, ge=0, description="Seconds between consecutive request starts (0: none)."
    )
    tokens_per_minute: _PositiveFloat | _Auto | None = Field(
        default=None,
        description="LLM token budget per minute; a weighted bucket holding one minute's worth "
        '("auto": the budget the server declares in its headers; none until it does).',
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
        le=86_400,
        description=(
            "Seconds to pause after an exhausted quota that names no reset time "
            "(at most a day, the longest pause any answer can cause)."
        ),
    )
    safety_margin: float = Field(
        default=0.02,
        ge=0,
        le=10,
        description="The jitter allowance, seconds: a request we admit may reach the provider "
        "this much later, and the limits admit so that the provider's own limiter holds for "
        "any such delay. Costs this much once per burst where the burst can absorb it; a "
        "one-token bucket or a spacing pays at most a fifth of its interval per request. "
        "Widens by itself when the provider refuses a paced request (0: none).",
    )
    windows: tuple[WindowConfig, ...] = Field(
        default=(),
        description="Window limits, each at most N requests or tokens per T "
        '(e.g. {"requests": 1000, "per": "1d", "align": "utc"}); admitted with the rest.',
    )

    auto: AutoLimits = Field(
        default_factory=AutoLimits,
        description='Bounds and start values of the limits set to "auto".',
    )

    def auto_fields(self) -> tuple[str, ...]:
        """The names of the limits set to ``"auto"`` (empty: nothing is learned)."""
        return tuple(
            name
            for name in ("max_concurrent", "requests_per_minute", "tokens_per_minute")
            if getattr(self, name) == AUTO
        )

    def limiter_kwargs(self) -> dict[str, Any]:
        """Return the fields a :class:`~ratelimit_sdk.limiter.Limiter` takes, as keywords.

        A limit set to ``"auto"`` is given its start value (see :class:`AutoLimits`).
        """
        auto = self.auto
        mx = self.max_concurrent
        rpm = self.requests_per_minute
        tpm = self.tokens_per_minute
        return {
            "max_concurrent": auto.first_concurrent() if mx == AUTO else mx,
            "requests_per_minute": auto.first_rpm() if rpm == AUTO else rpm,
            "burst": self.burst,
            "min_interval": self.min_interval,
            "tokens_per_minute": None if tpm == AUTO else tpm,
            "margin": self.safety_margin,
            "windows": [w.model_dump(exclude_none=True) for w in self.windows],
        }


class RetryConfig(_Model):
    """Retries on the same provider, after the first try.

    Delay before retry ``n`` (0-based)::

        min(max_delay, max(base_delay * 2**n * (1 + U(0, jitter)), retry_after))

    A wait that would exceed ``max_delay`` ends the retries on this provider.
    ``max_retries=0`` means one try only.
    Immutable; change it with ``model_copy(update={...})``.
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
    """The provider's circuit breaker (pybreaker).

    Immutable; change it with ``model_copy(update={...})``.
    """

    fail_max: int = Field(
        default=5, ge=1, description="Consecutive failures that open the breaker."
    )
    reset_timeout: float = Field(
        default=30.0, gt=0, description="Seconds the breaker stays open before one probe."
    )


class TimeoutConfig(_Model):
    """HTTP timeouts of one attempt, in seconds (capped by the call's remaining deadline).

    ``connect`` and ``read`` bound each socket operation; the call's deadline bounds the
    whole exchange besides (connect, headers, body and, for a stream, the wait for its
    first text chunk), however steadily a server trickles bytes. After a stream's first
    text chunk the deadline no longer applies: ``stream_idle`` bounds each wait for the
    next text chunk instead.

    Immutable; change it with ``model_copy(update={...})``.
    """

    connect: float = Field(default=5.0, gt=0, description="Seconds to establish a connection.")
    read: float = Field(default=120.0, gt=0, description="Seconds to wait between bytes.")
    stream_idle: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a stream may go without a text chunk once its first one arrived "
        "(keep-alive comments and events without text do not count).",
    )


class ProviderConfig(_Model):
    """One provider: where it is, how to authenticate, and its limits.

    ``api_key`` wins over ``api_key_env``. ``api_key_env`` is read from the
    environment when the client starts (:meth:`resolve_api_key`); a variable
    that is named but unset is a :class:`ConfigError`. No key at all means no
    auth header (local vLLM / Ollama servers).

    Immutable (``headers`` is a read-only mapping); change it with
    ``model_copy(update={...})``, e.g. ``pc.model_copy(update={"model": "x"})``.
    """

    name: str = Field(min_length=1, description="Unique name, used in chains and stats.")
    base_url: str = Field(description="e.g. https://api.moonshot.ai/v1")
    model: str = Field(min_length=1, description="Model id sent in the request body.")
    api: Literal["openai", "anthropic"] = Field(
        default="openai", description="Wire format: OpenAI chat completions or Anthropic."
    )
    api_key: SecretStr | None = Field(
        default=None, description="The API key itself (never shown in a repr or message)."
    )
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the key."
    )
    headers: Annotated[Mapping[str, str], AfterValidator(_freeze)] = Field(
        default_factory=FrozenDict,
        repr=False,
        description="Extra HTTP headers for every request (may hold secrets: never shown, "
        "and masked like api_key in a JSON dump).",
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

    @field_serializer("headers", when_used="json")
    def _mask_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        return dict.fromkeys(headers, "**********")

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (leave it out to send no key)")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _check_api_key_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the name of an environment variable (letters, digits and _), "
                "not the key itself"
            )
        return value

    def resolve_api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """Return the key to send: ``api_key``, else the ``api_key_env`` variable, else ``None``.

        Raises :class:`ConfigError` when ``api_key_env`` names an unset variable.
        """
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env is None:
            return None
        env = os.environ if environ is None else environ
        value = env.get(self.api_key_env)
        if not value:
            # A lower-case "name" may well be a key pasted into the wrong field.
            shown = (
                repr(self.api_key_env)
                if self.api_key_env == self.api_key_env.upper()
                else "(name not shown: it is lower-case; is it the key itself?)"
            )
            field = f"providers[{self.name}].api_key_env"
            state = "is empty" if value == "" else "is not set"
            raise ConfigError(f"{field}: environment variable {shown} {state}", field=field)
        return value


class ClientConfig(_Model):
    """The whole client: providers, named chains, pools and the limiter backend.

    ``repr``/``str`` show a ``backend`` URL with its password masked
    (``redis://:***@host:6379/0``).

    Immutable, like every config model: ``providers`` is a tuple, ``chains`` and
    ``pools`` are read-only mappings (each chain a tuple of names). To change
    something, make a copy and reload it::

        cfg = client.config.model_copy(update={"timeout": 120.0})
        client.reload(cfg)
    """

    providers: tuple[ProviderConfig, ...] = Field(description="At least one provider.")
    chains: Annotated[Mapping[str, tuple[str, ...]], AfterValidator(_freeze)] = Field(
        default_factory=FrozenDict,
        description='Named fallback chains; "default" is all providers by priority if absent.',
    )
    use_fallback: bool = Field(default=True, description="False: one provider, no chain.")
    backend: str = Field(default="memory", description='"memory" or "redis://host:port/db".')
    timeout: float = Field(
        default=600.0, gt=0, description="Default deadline of one whole call, seconds."
    )
    pools: Annotated[Mapping[str, LimitsConfig], AfterValidator(_freeze)] = Field(
        default_factory=FrozenDict,
        description="Account-wide budgets shared by several providers.",
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

    def __repr_args__(self) -> Any:
        # repr() and str() of the config: the backend URL's password masked.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "backend" and isinstance(value, str) else value

    @field_serializer("providers", "chains", mode="wrap")
    def _dump_mutable(self, value: Any, handler: Any) -> Any:
        # A dump is the caller's own plain data: lists and dicts, free to edit and load.
        dumped = handler(value)
        if isinstance(dumped, (list, tuple)):
            return list(dumped)
        if isinstance(dumped, Mapping):
            return {k: list(v) if isinstance(v, tuple) else v for k, v in dumped.items()}
        return dumped

    @field_validator("providers", mode="before")
    @classmethod
    def _check_some_providers(cls, value: Any) -> Any:
        # Before validation, so a list whose only provider is invalid reports just that.
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("needs at least one provider (got an empty list)")
        return value

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
        # Raised as ConfigError (a ValueError, so pydantic wraps it); the
        # translation below takes the field from it.
        names = [p.name for p in self.providers]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ConfigError(f"providers: duplicate provider name {name!r}", field="providers")
            seen.add(name)
        for chain_name, members in self.chains.items():
            field = f"chains.{chain_name}"
            if not members:
                raise ConfigError(
                    f"{field}: a chain needs at least one provider (got [])", field=field
                )
            listed: set[str] = set()
            for member in members:
                if member not in seen:
                    raise ConfigError(
                        f"{field}: unknown provider {member!r} (known: {', '.join(names)})",
                        field=field,
                    )
                if member in listed:
                    raise ConfigError(f"{field}: provider {member!r} is listed twice", field=field)
                listed.add(member)
        for pool_name, limits in self.pools.items():
            if limits.auto_fields():
                field = f"pools.{pool_name}.{limits.auto_fields()[0]}"
                raise ConfigError(
                    f'{field}: "auto" is learned per provider, not for a pool; give a number',
                    field=field,
                )
        for provider in self.providers:
            if provider.pool is None:
                continue
            pool = self.pools.get(provider.pool)
            if pool is None:
                field = f"providers[{provider.name}].pool"
                known = ", ".join(self.pools) or "none defined"
                raise ConfigError(
                    f"{field}: unknown pool {provider.pool!r} (known: {known})", field=field
                )
            if isinstance(pool.max_concurrent, int) and provider.pool_units > pool.max_concurrent:
                field = f"providers[{provider.name}].pool_units"
                raise ConfigError(
                    f"{field}: {provider.pool_units} is more than pool {provider.pool!r} "
                    f"holds ({pool.max_concurrent})",
                    field=field,
                )
        return self

    # -- look-ups -------------------------------------------------------------------

    def provider(self, name: str) -> ProviderConfig:
        """Return the provider called ``name``, else the first whose ``model`` is ``name``.

        Raises :class:`ConfigError` naming the known providers if there is none.
        """
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
        """Return the provider names of the chain ``name``, in order.

        ``default``, unless configured, is every provider by ``priority`` (lower first,
        ties in the order listed). An unknown name raises :class:`ConfigError`.
        """
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
        """Build a ``ClientConfig`` from a model (returned as is) or a plain dict.

        Plain dicts may stand for any nested model. Every validation error becomes
        one :class:`ConfigError` naming the fields and values (never a secret).
        """
        if isinstance(obj, ClientConfig):
            return obj
        if not isinstance(obj, Mapping):
            raise ConfigError(
                f"config: expected a ClientConfig or a mapping, got {type(obj).__name__}",
                field="config",
            )
        data = dict(obj)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise translate_validation_error(exc, data) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ClientConfig:
        """Read YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON (``.json``).

        The three formats share one schema. A missing or unreadable file, an
        unknown suffix, malformed text, a repeated key, a top level that is not a
        mapping and every invalid value raise :class:`ConfigError`.
        """
        file = Path(path)
        data = _read_file(file)
        try:
            return cls.load(data)
        except ConfigError as exc:
            raise ConfigError(f"config file {str(file)!r}: {exc}", field=exc.field) from None


_SUFFIXES = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}


def _read_file(path: Path) -> Mapping[str, Any]:
    where = f"config file {str(path)!r}"
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"{where}: unknown format {path.suffix or '(no suffix)'!r}; "
            "use .yaml, .yml, .toml or .json",
            field="path",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} not found", field="path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {where}: {exc}", field="path") from None
    try:
        data = _parse(kind, text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}", field="path") from None
    except Exception as exc:  # each parser has its own error types
        raise ConfigError(
            f"{where} is not valid {kind}: {_parse_error_text(exc)}", field="path"
        ) from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: the top level must be a mapping, got {type(data).__name__}",
            field="path",
        )
    return data


def _parse(kind: str, text: str) -> Any:
    if kind == "TOML":  # TOML itself forbids repeated keys
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on 3.10 only
            import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
        return tomllib.loads(text)
    if kind == "JSON":
        return json.loads(text, object_pairs_hook=_unique_keys)
    import yaml

    class _UniqueKeyLoader(yaml.SafeLoader):
        """PyYAML's safe loader, except that a repeated key is an error, not "last wins"."""

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        pairs = [
            (loader.construct_object(key, deep=True), loader.construct_object(value, deep=True))
            for key, value in node.value
        ]
        return _unique_keys(pairs)

    _UniqueKeyLoader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping
    )
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(f"key {key!r} appears twice in one mapping")
        result[key] = value
    return result


def _parse_error_text(exc: Exception) -> str:
    """Describe a parse error by its complaint and position, without the offending line.

    PyYAML quotes the line it choked on, which may hold an API key.
    JSON's and TOML's messages carry only the position.
    """
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is not None or mark is not None:  # a PyYAML MarkedYAMLError
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{problem or type(exc).__name__}{position}"
    if isinstance(exc, (ValueError, ArithmeticError)):
        return str(exc)
    return type(exc).__name__


def _index_names(source: Mapping[str, Any] | None) -> dict[int, str]:
    """Map provider list index -> name, so messages say ``providers[kimi]``."""
    providers = source.get("providers") if source is not None else None
    if not isinstance(providers, (list, tuple)):
        return {}
    names: dict[int, str] = {}
    for index, item in enumerate(providers):
        name = item.get("name") if isinstance(item, Mapping) else getattr(item, "name", None)
        if isinstance(name, str) and name:
            names[index] = name
    return names


def _field_path(loc: tuple[Any, ...], names: Mapping[int, str]) -> str:
    path = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            label = names.get(part, str(part)) if position == 1 and loc[0] == "providers" else part
            path += f"[{label}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _show_input(loc: tuple[Any, ...], value: Any, error_type: str) -> str:
    if error_type == "extra_forbidden":  # a misspelt "api_key" would show the key
        return ""
    if any(part in _SECRET_FIELDS for part in loc):
        return ""
    if isinstance(value, (Mapping, list, tuple, set)):
        return " (got an empty one)" if not value else ""
    if isinstance(value, str):
        value = redact(redact_url(value))
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f" (got {text})"


#: How pydantic names the members of a union in an error's location.
_UNION_TAGS = ("constrained-int", "constrained-float", "literal[", "int", "float")


def translate_validation_error(
    exc: ValidationError, source: Mapping[str, Any] | None = None
) -> ConfigError:
    """One :class:`ConfigError` naming each failing field and its value (never a secret).

    ``source`` is the data that failed, used only to name providers
    (``providers[kimi].limits.burst`` rather than ``providers[0].limits.burst``).
    ``ConfigError.field`` is the first failing field.
    """
    names = _index_names(source)
    lines = []
    first_field = None
    for error in exc.errors(include_url=False):
        loc = tuple(error.get("loc", ()))
        error_type = str(error.get("type", ""))
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError):  # our own model-level checks
            where = _field_path(loc, names)
            if where and cause.field:  # a nested model's check names its own field
                first_field = first_field or f"{where}.{cause.field}"
                lines.append(f"{where}.{cause}")
            else:
                first_field = first_field or cause.field
                lines.append(str(cause))
            continue
        if any(isinstance(part, str) and part.startswith(_UNION_TAGS) for part in loc):
            # One member of a "number or 'auto'" union: report the number's complaint once.
            if error_type == "literal_error":
                continue
            loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(_UNION_TAGS)))
        field = _field_path(loc, names) or "config"
        first_field = first_field or field
        message = str(error.get("msg", "invalid value"))
        if error_type == "extra_forbidden":
            message = "unknown field (a typo?)"
        message = message.removeprefix("Value error, ")
        lines.append(f"{field}: {message}{_show_input(loc, error.get('input'), error_type)}")
    text = lines[0] if len(lines) == 1 else "invalid config:\n  " + "\n  ".join(lines)
    return ConfigError(text, field=first_field)
