"""Transport stage (4): one HTTP request to one provider. Knows HTTP, knows nothing about policy.

The guard hands a :class:`~ratelimit_sdk.models.ChatRequest` to a :class:`Provider` and
gets back a :class:`~ratelimit_sdk.models.Reply` for *any* HTTP answer (``classify``
decides what it means), or one of the two transport errors:
:class:`~ratelimit_sdk.errors.ProviderTimeout` and
:class:`~ratelimit_sdk.errors.ProviderConnectionError`. Nothing from ``requests`` or
``urllib3`` escapes; they are translated once, in ``_http``.

The transport tells the admission when its request was written (:func:`marking`:
the limiter paces from the real departure of a request that left late).

Wire formats: :class:`OpenAICompatProvider` (``api="openai"``) and
:class:`AnthropicProvider` (``api="anthropic"``); :func:`build_provider` picks one.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._redact import register_secret
from ..config import ProviderConfig
from ..models import ChatRequest, Reply
from ._http import MAX_BODY_BYTES, HTTPProvider, StreamReply
from ._sent import marking
from .anthropic import AnthropicProvider
from .openai_compat import OpenAICompatProvider

__all__ = [
    "MAX_BODY_BYTES",
    "AnthropicProvider",
    "HTTPProvider",
    "OpenAICompatProvider",
    "Provider",
    "StreamReply",
    "build_provider",
    "marking",
]


@runtime_checkable
class Provider(Protocol):
    """One provider's transport. Implementations are safe to share across threads.

    ``send`` and ``stream`` raise only ProviderTimeout and ProviderConnectionError
    (and BadRequestError when the request cannot even be encoded as JSON).

    ``time_left`` is the call's remaining time in seconds (``None``: unbounded): the
    whole exchange must end within it, however steadily the server trickles bytes, or
    end in ProviderTimeout. For a stream it bounds the wait for the first text chunk;
    ``idle_timeout`` then bounds each wait for the next one.
    """

    name: str

    def send(
        self,
        request: ChatRequest,
        *,
        connect_timeout: float,
        read_timeout: float,
        time_left: float | None = None,
    ) -> Reply:
        """Send ``request``; return the HTTP answer, whatever its status."""
        ...

    def stream(
        self,
        request: ChatRequest,
        *,
        connect_timeout: float,
        read_timeout: float,
        time_left: float | None = None,
        idle_timeout: float | None = None,
    ) -> StreamReply:
        """Send ``request`` with streaming on; see :class:`StreamReply`."""
        ...

    def close(self) -> None:
        """Release the connections (idempotent)."""
        ...


_BY_API: dict[str, type[HTTPProvider]] = {
    OpenAICompatProvider.api: OpenAICompatProvider,
    AnthropicProvider.api: AnthropicProvider,
}


def build_provider(
    config: ProviderConfig, *, api_key: str | None, pool_size: int | None = None
) -> Provider:
    """Build the provider for ``config.api``, holding ``pool_size`` connections (default 10).

    ``api_key`` is the resolved key (``config.resolve_api_key()``) or ``None`` for no
    auth header; it is registered for redaction before anything else happens.
    """
    register_secret(api_key)
    cls = _BY_API[config.api]
    return cls(config, api_key=api_key, pool_size=pool_size)
