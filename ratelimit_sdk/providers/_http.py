"""Transport stage (4), shared part: one HTTP exchange with a provider, whatever its wire format.

Receives a :class:`~ratelimit_sdk.models.ChatRequest` from the guard and hands back a
:class:`~ratelimit_sdk.models.Reply` (any HTTP answer) or a :class:`StreamReply`; raises
only :class:`~ratelimit_sdk.errors.ProviderTimeout` and
:class:`~ratelimit_sdk.errors.ProviderConnectionError`. The providers package is the only
place in the SDK that touches ``requests`` and ``urllib3``; their exceptions are
translated once, by :func:`~ratelimit_sdk.providers._translate.map_transport_errors`
(only the HTTP stack's own exception types; a bug in our code surfaces as itself).

It knows HTTP and nothing about policy: no retries (urllib3's own are off), no redirects,
no decision about what a status means. That is ``classify``'s job.

Hostile bodies never crash or hang it. The body of a non-streamed answer is read through
``stream=True`` and capped at :data:`MAX_BODY_BYTES`; a longer body yields a ``Reply`` with
its status and headers, no ``completion`` and no ``error`` (the status still tells
``classify`` what happened, and a 2xx without a completion counts as a malformed answer).
Anything that is not the expected JSON likewise yields a ``Reply`` without a completion.

Slow bodies never outlast the call either. Connect and read timeouts bound each socket
operation; ``time_left`` bounds the whole exchange (connect, headers, body and, for a
stream, the wait for the first text chunk), however steadily a server trickles bytes:
one shared watchdog thread (``_deadline``) shuts the connection's socket down when it
passes, and the exchange ends in ``ProviderTimeout`` ("deadline passed while reading the
body after 2.0 s").

This module holds the session, the key's header and the :class:`HTTPProvider` base. Its
helpers live beside it, in reading order: ``_translate`` (foreign exceptions to ours),
``_body`` (capped reads, JSON and error objects), ``_deadline`` (the watchdog that
enforces ``time_left``) and ``_sse`` (event streams and :class:`StreamReply`). Their
names are re-exported here, where the wire formats and the tests import them.
:data:`MAX_BODY_BYTES` and :data:`MAX_EVENT_BYTES` are read from this module at call
time and handed down, so patching them here changes the caps.
"""

from __future__ import annotations

import abc
import functools
import http.cookiejar
import json
import math
from types import TracebackType
from typing import Any, ClassVar

import requests
import requests.auth
from urllib3.util.retry import Retry

from .._redact import get_logger, mask, redact, register_secret
from ..config import ProviderConfig
from ..errors import BadRequestError, ConfigError, ProviderConnectionError, RateLimitSDKError
from ..models import ChatRequest, Completion, ErrorBody, Reply
from ._body import (
    NOT_JSON,
    extract_error,
    extract_top_level_error,
    make_excerpt,
    parse_json,
    read_capped,
    usage_int,
)
from ._deadline import PHASE_BODY, PHASE_FIRST_CHUNK, Watch, WatchedAdapter, arm, watching
from ._sse import (
    MAX_EVENT_BYTES,
    SSEEvent,
    SSEParser,
    StreamProtocolError,
    StreamReply,
    StreamState,
)
from ._translate import (
    TRANSPORT_ERRORS,
    map_transport_errors,
    raise_translated,
    translate_error,
)

__all__ = [
    "DEFAULT_POOL_SIZE",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "NOT_JSON",
    "TRANSPORT_ERRORS",
    "HTTPProvider",
    "KeyAuth",
    "SSEEvent",
    "SSEParser",
    "StreamProtocolError",
    "StreamReply",
    "StreamState",
    "extract_error",
    "extract_top_level_error",
    "make_excerpt",
    "map_transport_errors",
    "parse_json",
    "raise_translated",
    "translate_error",
    "usage_int",
    "user_agent",
]

_log = get_logger("ratelimit_sdk.providers")

#: Largest body (after content decoding) read from a non-streamed answer, in bytes.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Connections kept per provider when no pool size is given.
DEFAULT_POOL_SIZE = 10
#: Smallest timeout handed to urllib3 (it rejects 0 and negative values), seconds.
MIN_TIMEOUT = 0.001
#: Largest timeout handed to urllib3, seconds (infinity and NaN are not timeouts).
MAX_TIMEOUT = 86_400.0


@functools.cache
def user_agent() -> str:
    """``ratelimit_sdk/<version>``, the version read from the installed package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ratelimit_sdk/{version('ratelimit_sdk')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "ratelimit_sdk/unknown"


def _lower_headers(response: requests.Response, *, scrub: bool = True) -> dict[str, str]:
    """Header names in lower case; values scrubbed of secrets when ``scrub``.

    Error answers are scrubbed (their headers may reach a message); clean successes
    skip it, since it costs tens of microseconds on every call.
    """
    if not scrub:
        return {name.lower(): value for name, value in response.headers.items()}
    return {name.lower(): redact(value) for name, value in response.headers.items()}


class _Translating:
    """The context manager of :meth:`HttpTransport._translating` (a class: no generator)."""

    __slots__ = ("connect", "provider", "read", "watch")

    def __init__(self, provider: str, connect: float, read: float, watch: Watch | None) -> None:
        self.provider = provider
        self.connect = connect
        self.read = read
        self.watch = watch

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        watch = self.watch
        if isinstance(exc, TRANSPORT_ERRORS) and not isinstance(exc, RateLimitSDKError):
            try:
                raise_translated(
                    exc,
                    self.provider,
                    connect_timeout=_clamp_timeout(self.connect),
                    read_timeout=_clamp_timeout(self.read),
                )
            except RateLimitSDKError as translated:
                if watch is not None and watch.finish():
                    raise watch.timeout(self.provider) from translated
                raise
        if watch is not None and watch.finish() and isinstance(exc, Exception):
            cause = exc if isinstance(exc, RateLimitSDKError) else None
            raise watch.timeout(self.provider) from cause


def _clamp_timeout(value: float) -> float:
    if math.isnan(value) or value < MIN_TIMEOUT:
        return MIN_TIMEOUT
    return min(value, MAX_TIMEOUT)


def _elapsed(response: requests.Response) -> float:
    return max(response.elapsed.total_seconds(), 0.0)


# -- sessions and the provider base -----------------------------------------------------


class _NoRedirectSession(requests.Session):
    """A Session that never follows a redirect, nor reads a 3xx body to prepare one.

    ``allow_redirects=False`` alone still makes requests read the whole body of a 3xx
    (uncapped) to build ``Response.next``; with no redirect target there is nothing to build.
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        """Never a redirect target: 3xx answers come back as they are."""
        return None


class KeyAuth(requests.auth.AuthBase):
    """Puts the API key in one header; with no key, adds nothing.

    Set as the session's ``auth`` it also stops requests from reading ``~/.netrc``
    (which would replace our header with Basic auth). Its repr never shows the key.
    """

    def __init__(self, header: str, key: str | None, prefix: str = "") -> None:
        self._header = header
        self._key = key
        self._prefix = prefix

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        """Set the header on ``r`` (when there is a key)."""
        if self._key is not None:
            r.headers[self._header] = self._prefix + self._key
        return r

    def __repr__(self) -> str:
        return f"KeyAuth(header={self._header!r}, key={mask(self._key)})"


_SECRET_HEADER_HINTS = ("auth", "key", "token", "secret", "cookie", "signature", "password")


def _check_key(name: str, key: str | None) -> None:
    if key is None:
        return
    if not key or key != key.strip() or any(ch in key for ch in "\r\n\0"):
        raise ConfigError(
            f"providers[{name}].api_key: empty, or has whitespace or control characters",
            field="api_key",
        )
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        raise ConfigError(
            f"providers[{name}].api_key: has characters an HTTP header cannot carry",
            field="api_key",
        ) from None


class HTTPProvider(abc.ABC):
    """Base of the wire-format providers: one ``requests.Session`` and the HTTP plumbing.

    A subclass names its endpoint (:attr:`path`), how the key travels
    (:meth:`_make_auth`), and its wire format (:meth:`_body`, :meth:`_parse_completion`,
    :meth:`_on_event`).

    Thread-safety: one provider may be shared by any number of threads. ``send``,
    ``stream`` and ``close`` are the only methods called concurrently; none of them mutates
    the session per request (headers, auth and adapters are set once in the constructor,
    cookies are refused by policy, redirects are never resolved), and urllib3's pool is
    thread-safe. ``pool_size`` connections are kept; more concurrent requests open extra
    connections that are dropped afterwards (``pool_block=False``).
    """

    #: Path appended to ``base_url`` for a chat request.
    path: ClassVar[str] = ""
    #: ``ProviderConfig.api`` value this class speaks.
    api: ClassVar[str] = ""

    def __init__(
        self, config: ProviderConfig, *, api_key: str | None, pool_size: int | None = None
    ) -> None:
        _check_key(config.name, api_key)
        register_secret(api_key)
        self.name: str = config.name
        self.base_url: str = config.base_url.rstrip("/")
        self.model: str = config.model
        self.url: str = self.base_url + self.path
        self._closed = False
        for header, value in config.headers.items():
            if any(hint in header.lower() for hint in _SECRET_HEADER_HINTS):
                register_secret(value)

        retries = Retry(
            total=0,
            connect=0,
            read=0,
            redirect=0,
            status=0,
            raise_on_redirect=False,
            raise_on_status=False,
        )
        adapter = WatchedAdapter(
            pool_connections=1,
            pool_maxsize=pool_size or DEFAULT_POOL_SIZE,
            max_retries=retries,
            pool_block=False,
        )
        session = _NoRedirectSession()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.verify = True
        session.max_redirects = 0
        session.auth = self._make_auth(api_key)
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        session.headers["User-Agent"] = user_agent()
        session.headers["Content-Type"] = "application/json"
        session.headers.update(self._default_headers())
        session.headers.update(config.headers)
        self._session = session

    # -- what a wire format supplies -----------------------------------------------------

    @abc.abstractmethod
    def _make_auth(self, api_key: str | None) -> KeyAuth:
        """Supplied by each wire format."""

    def _default_headers(self) -> dict[str, str]:
        return {}

    @abc.abstractmethod
    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """Supplied by each wire format."""

    @abc.abstractmethod
    def _parse_completion(self, data: Any) -> Completion | None:
        """Supplied by each wire format."""

    @abc.abstractmethod
    def _on_event(self, event: SSEEvent, state: StreamState) -> str | None:
        """Supplied by each wire format."""

    # -- the Provider protocol ---------------------------------------------------------

    def send(
        self,
        request: ChatRequest,
        *,
        connect_timeout: float,
        read_timeout: float,
        time_left: float | None = None,
    ) -> Reply:
        """POST one chat request and return the answer as a :class:`Reply`, whatever its status.

        ``time_left`` (seconds; ``None`` or infinite: no bound) bounds the whole exchange:
        connecting, the headers and the body. When it passes, the connection is dropped
        and a ProviderTimeout names what was under way ("deadline passed while reading
        the body after 2.0 s"), however steadily the bytes were trickling in.

        Raises only ProviderTimeout (connect or read timeout, or ``time_left`` passed) and
        ProviderConnectionError (anything else that kept an answer from arriving whole).
        """
        payload = self._encode(request, stream=False)
        watch = arm(time_left)
        with self._translating(connect_timeout, read_timeout, watch):
            response = self._post(payload, connect_timeout, read_timeout, "application/json", watch)
            try:
                if watch is not None:
                    watch.phase = PHASE_BODY
                body, truncated = read_capped(response, MAX_BODY_BYTES)
            finally:
                response.close()
        if watch is not None and watch.finish():
            raise watch.timeout(self.name)
        return self._reply(response, body, truncated)

    def stream(
        self,
        request: ChatRequest,
        *,
        connect_timeout: float,
        read_timeout: float,
        time_left: float | None = None,
        idle_timeout: float | None = None,
    ) -> StreamReply:
        """POST one chat request with ``stream: true``; see :class:`StreamReply`.

        Raises the same errors as :meth:`send` while connecting and reading the head (or,
        for a non-stream answer, the body). ``time_left`` bounds the exchange up to the
        first text chunk (the iteration raises ProviderTimeout when it passes first);
        after that, ``idle_timeout`` (``None``: no bound) bounds each wait for the next
        text chunk. Keep-alive comments and events without text are not progress.
        """
        payload = self._encode(request, stream=True)
        watch = arm(time_left)
        with self._translating(connect_timeout, read_timeout, watch):
            response = self._post(
                payload, connect_timeout, read_timeout, "text/event-stream", watch
            )
        content_type = response.headers.get("content-type", "").lower()
        if 200 <= response.status_code < 300 and content_type.startswith("text/event-stream"):
            _log.debug("%s: HTTP %s, event stream", self.name, response.status_code)
            if watch is not None:
                watch.phase = PHASE_FIRST_CHUNK
            return StreamReply(
                provider=self.name,
                status=response.status_code,
                headers=_lower_headers(response),
                elapsed=_elapsed(response),
                response=response,
                on_event=self._on_event,
                max_event_bytes=MAX_EVENT_BYTES,
                read_timeout=_clamp_timeout(read_timeout),
                watch=watch,
                idle_timeout=idle_timeout,
            )
        with self._translating(connect_timeout, read_timeout, watch):
            try:
                if watch is not None:
                    watch.phase = PHASE_BODY
                body, truncated = read_capped(response, MAX_BODY_BYTES)
            finally:
                response.close()
        if watch is not None and watch.finish():
            raise watch.timeout(self.name)
        return StreamReply.finished(self.name, self._reply(response, body, truncated))

    def close(self) -> None:
        """Close the session and its connections (idempotent). Later requests fail."""
        self._closed = True
        self._session.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r}, "
            f"model={self.model!r})"
        )

    # -- plumbing -----------------------------------------------------------------------

    def _translating(
        self, connect_timeout: float, read_timeout: float, watch: Watch | None = None
    ) -> _Translating:
        """Translate the block's transport errors; a fired ``watch`` makes them its timeout.

        On any exception the watch is finished (the exchange is over). Once it fired, the
        block failed because the watchdog shut the socket down, whatever the read said.
        """
        return _Translating(self.name, connect_timeout, read_timeout, watch)

    def _encode(self, request: ChatRequest, *, stream: bool) -> bytes:
        body = self._body(request, stream=stream)
        try:
            return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise BadRequestError(
                f"{self.name}: the request cannot be sent as JSON ({type(exc).__name__}: "
                f"{redact(str(exc))[:200]})",
                provider=self.name,
            ) from None

    def _post(
        self,
        payload: bytes,
        connect_timeout: float,
        read_timeout: float,
        accept: str,
        watch: Watch | None = None,
    ) -> requests.Response:
        if self._closed:
            raise ProviderConnectionError(f"{self.name}: provider is closed", provider=self.name)
        before = watching(watch)
        try:
            return self._session.post(
                self.url,
                data=payload,
                headers={"Accept": accept},
                timeout=(_clamp_timeout(connect_timeout), _clamp_timeout(read_timeout)),
                allow_redirects=False,
                stream=True,
                verify=True,
            )
        finally:
            watching(before)

    def _reply(self, response: requests.Response, body: bytes, truncated: bool) -> Reply:
        status = response.status_code
        elapsed = _elapsed(response)
        completion: Completion | None = None
        error: ErrorBody | None = None
        if truncated:
            _log.warning(
                "%s: HTTP %s body longer than %d bytes; not parsed",
                self.name,
                status,
                MAX_BODY_BYTES,
            )
        else:
            data = parse_json(body)
            if data is not NOT_JSON:
                error = extract_error(data)
                if error is None:
                    completion = self._parse_completion(data)
                    if completion is None:
                        error = extract_top_level_error(data)
        _log.debug("%s: HTTP %s in %.3fs", self.name, status, elapsed)
        # A clean success needs no excerpt and no scrubbing (the hot path of every call).
        clean = 200 <= status < 300 and completion is not None and error is None
        return Reply(
            status=status,
            headers=_lower_headers(response, scrub=not clean),
            completion=completion,
            error=error,
            excerpt="" if clean else make_excerpt(body),
            elapsed=elapsed,
        )
