"""Transport stage (4), the boundary: foreign transport exceptions become the SDK's own.

Receives whatever ``requests``, ``urllib3``, ``http.client`` or the socket layer raised
during a request or a body read, and hands on a
:class:`~ratelimit_sdk.errors.ProviderTimeout` or a
:class:`~ratelimit_sdk.errors.ProviderConnectionError` naming the provider, with a
redacted message. Both the request path (``_http``) and the stream reader (``_sse``)
translate through here, so the mapping is written once.
"""

from __future__ import annotations

import http.client
from typing import NoReturn

import requests
import urllib3.exceptions

from .._redact import redact
from ..errors import ProviderConnectionError, ProviderError, ProviderTimeout

__all__ = ["FOREIGN_ERRORS", "raise_translated", "translate_error"]

#: Every foreign exception a request or a body read can raise. ``OSError`` covers the
#: socket errors that slip past urllib3; ``ValueError`` covers what ``requests`` raises
#: for a malformed URL or header (``InvalidURL``, ``InvalidHeader`` are both).
FOREIGN_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, requests.Timeout):
        return True
    # urllib3's NewConnectionError (refused) subclasses ConnectTimeoutError for history.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return True
    # requests wraps a read timeout *during the body* in a plain ConnectionError.
    if isinstance(exc, requests.ConnectionError) and exc.args:
        inner = exc.args[0]
        if isinstance(inner, urllib3.exceptions.MaxRetryError):
            inner = inner.reason
        return isinstance(inner, BaseException) and _is_timeout(inner)
    return False


def translate_error(exc: BaseException, provider: str) -> ProviderError:
    """Translate a foreign transport exception into ProviderTimeout or ProviderConnectionError.

    The message names the provider and the failure, redacted. Prefer
    :func:`raise_translated`, which also chains it safely.
    """
    detail = redact(f"{type(exc).__name__}: {exc}")
    if len(detail) > 300:
        detail = detail[:297] + "..."
    if _is_timeout(exc):
        is_connect = isinstance(
            exc, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)
        )
        kind = "connect timeout" if is_connect else "read timeout"
        return ProviderTimeout(f"{provider}: {kind} ({detail})", provider=provider)
    return ProviderConnectionError(f"{provider}: connection failed ({detail})", provider=provider)


def _leaks_secret(exc: BaseException) -> bool:
    """Tell whether the text of ``exc`` or of anything chained to it would show a secret."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        for text in (str(current), repr(current)):
            if redact(text) != text:
                return True
        current = current.__cause__ or current.__context__
    return False


def raise_translated(exc: BaseException, provider: str) -> NoReturn:
    """Raise :func:`translate_error` of ``exc`` ``from exc``.

    The chain is dropped (``from None``) when the foreign exception's own text would show
    a secret, since a printed traceback shows every chained message.
    """
    error = translate_error(exc, provider)
    if _leaks_secret(exc):
        raise error from None
    raise error from exc
