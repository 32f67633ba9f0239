"""Transport stage (4), the boundary: the HTTP stack's exceptions become the SDK's own.

One translating context manager, :func:`map_transport_errors` (the pattern of httpx's
``map_httpcore_exceptions()``), wraps every place that talks to the network: the request
and body read (``_http``) and the event-stream reader (``_sse``). It maps a fixed table
of exception types, :data:`TRANSPORT_ERRORS`, and nothing else:

* ``requests.exceptions.RequestException`` (connect/read timeouts, connection, TLS,
  proxy, chunked-encoding and content-decoding errors, invalid URL or header),
* ``urllib3.exceptions.HTTPError`` (what urllib3 raises when requests does not wrap it),
* ``http.client.HTTPException`` (``IncompleteRead``, ``RemoteDisconnected``, ...),
* the socket layer's own network failures: builtin ``ConnectionError`` (refused, reset,
  aborted, broken pipe), ``TimeoutError`` (``socket.timeout``) and ``ssl.SSLError``.

Each becomes a :class:`~ratelimit_sdk.errors.ProviderTimeout` or a
:class:`~ratelimit_sdk.errors.ProviderConnectionError` naming the provider, with a short
``reason`` and a redacted message, raised ``from`` the original. Anything else (a
``ValueError``, a plain ``OSError``, an ``AttributeError`` from a bug in our own code)
passes through unchanged, so a bug is never reported as a provider's connection trouble.
A body that does not parse as JSON is not a transport error at all: ``_body.parse_json``
turns exactly its decode errors into "not JSON", and ``classify`` calls that a bad body.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
from collections.abc import Iterator
from typing import NoReturn

import requests
import urllib3.exceptions

from .._redact import redact
from ..errors import ProviderConnectionError, ProviderError, ProviderTimeout, RateLimitSDKError

__all__ = ["TRANSPORT_ERRORS", "map_transport_errors", "raise_translated", "translate_error"]

#: The exception types a request, a body read or a stream read may raise for a network
#: reason. Nothing broader (no ``OSError``, no ``ValueError``): see the module docstring.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
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


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, what it wraps (``args[0]``, ``reason``) and what it was raised from."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (
            getattr(current, "reason", None),
            current.args[0] if current.args else None,
            current.__cause__,
            current.__context__,
        ):
            if isinstance(inner, BaseException):
                todo.append(inner)


def _connection_reason(exc: BaseException) -> str:
    """The cause of a connection failure in a few words."""
    causes = list(_causes(exc))
    texts = " ".join(str(c) for c in causes).lower()
    if any(isinstance(c, ConnectionRefusedError) for c in causes) or "refused" in texts:
        return "connection refused"
    if any(isinstance(c, ConnectionResetError) for c in causes) or "reset by peer" in texts:
        return "connection reset"
    if any(isinstance(c, urllib3.exceptions.NameResolutionError) for c in causes) or (
        "name or service not known" in texts or "nodename nor servname" in texts
    ):
        return "name resolution failed"
    if any(isinstance(c, (ssl.SSLError, requests.exceptions.SSLError)) for c in causes):
        return "TLS error"
    if any(isinstance(c, requests.exceptions.ProxyError) for c in causes):
        return "proxy error"
    if any(
        isinstance(
            c,
            (
                urllib3.exceptions.ProtocolError,
                requests.exceptions.ChunkedEncodingError,
                http.client.HTTPException,
            ),
        )
        for c in causes
    ):
        return "connection broken"
    if any(isinstance(c, requests.exceptions.ContentDecodingError) for c in causes):
        return "body could not be decoded"
    return "connection failed"


def _seconds(value: float | None) -> str:
    return "" if value is None else f" after {value:.1f} s"


def translate_error(
    exc: BaseException,
    provider: str,
    *,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> ProviderError:
    """Translate one :data:`TRANSPORT_ERRORS` exception into our timeout or connection error.

    The result is a ProviderTimeout or a ProviderConnectionError. Its message reads
    ``"{provider}: {reason} ({detail})"``, redacted; ``reason`` is set on the error too
    (``"connection refused"``, ``"read timeout after 5.0 s"`` when the timeout is
    given). Prefer :func:`map_transport_errors`, which also chains it safely.
    """
    detail = redact(f"{type(exc).__name__}: {exc}")
    if len(detail) > 300:
        detail = detail[:297] + "..."
    if _is_timeout(exc):
        is_connect = isinstance(
            exc, (requests.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)
        )
        reason = (
            f"connect timeout{_seconds(connect_timeout)}"
            if is_connect
            else f"read timeout{_seconds(read_timeout)}"
        )
        return ProviderTimeout(f"{provider}: {reason} ({detail})", provider=provider, reason=reason)
    reason = _connection_reason(exc)
    return ProviderConnectionError(
        f"{provider}: {reason} ({detail})", provider=provider, reason=reason
    )


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


def raise_translated(
    exc: BaseException,
    provider: str,
    *,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> NoReturn:
    """Raise :func:`translate_error` of ``exc`` ``from exc``.

    The chain is dropped (``from None``) when the foreign exception's own text would show
    a secret, since a printed traceback shows every chained message.
    """
    error = translate_error(
        exc, provider, connect_timeout=connect_timeout, read_timeout=read_timeout
    )
    if _leaks_secret(exc):
        raise error from None
    raise error from exc


@contextlib.contextmanager
def map_transport_errors(
    provider: str,
    *,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
) -> Iterator[None]:
    """Translate the :data:`TRANSPORT_ERRORS` raised in the block; re-raise anything else.

    ``with map_transport_errors("kimi", read_timeout=5.0): response = session.post(...)``.
    SDK errors raised in the block (``ProviderConnectionError`` for a closed provider, say)
    pass through as they are. The timeouts only word the message.
    """
    try:
        yield
    except RateLimitSDKError:  # ProviderTimeout and AcquireTimeout are TimeoutErrors too
        raise
    except TRANSPORT_ERRORS as exc:
        raise_translated(exc, provider, connect_timeout=connect_timeout, read_timeout=read_timeout)
