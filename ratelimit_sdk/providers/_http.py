"""Transport stage (4), shared part: one HTTP exchange with a provider, whatever its wire format.

Receives a :class:`~ratelimit_sdk.models.ChatRequest` from the guard and hands back a
:class:`~ratelimit_sdk.models.Reply` (any HTTP answer) or a :class:`StreamReply`; raises
only :class:`~ratelimit_sdk.errors.ProviderTimeout` and
:class:`~ratelimit_sdk.errors.ProviderConnectionError`. This module (with the two wire-format
modules beside it) is the only place in the SDK that touches ``requests`` and ``urllib3``:
their exceptions are translated here, once, in :func:`translate_error`.

It knows HTTP and nothing about policy: no retries (urllib3's own are off), no redirects,
no decision about what a status means. That is ``classify``'s job.

Hostile bodies never crash or hang it. The body of a non-streamed answer is read through
``stream=True`` and capped at :data:`MAX_BODY_BYTES`; a longer body yields a ``Reply`` with
its status and headers, no ``completion`` and no ``error`` (the status still tells
``classify`` what happened, and a 2xx without a completion counts as a malformed answer).
Anything that is not the expected JSON (not JSON at all, non-UTF-8, ``null``, a list,
nesting deep enough to make :func:`json.loads` raise ``RecursionError``) likewise yields a
``Reply`` without a completion.
"""

from __future__ import annotations

import abc
import functools
import http.client
import http.cookiejar
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, NoReturn

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions
from urllib3.util.retry import Retry

from .._redact import get_logger, mask, redact, register_secret
from ..config import ProviderConfig
from ..errors import (
    BadRequestError,
    ConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    RateLimitSDKError,
)
from ..models import ChatRequest, Completion, ErrorBody, Reply, Usage

__all__ = [
    "DEFAULT_POOL_SIZE",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "NOT_JSON",
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
    "parse_json",
    "raise_translated",
    "translate_error",
    "usage_int",
    "user_agent",
]

_log = get_logger("ratelimit_sdk.providers")

#: Largest body (after content decoding) read from a non-streamed answer, in bytes.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Largest single server-sent-event line or event payload, in bytes.
MAX_EVENT_BYTES = 1024 * 1024
#: Connections kept per provider when no pool size is given.
DEFAULT_POOL_SIZE = 10
#: Characters of body kept in ``Reply.excerpt``.
EXCERPT_CHARS = 200
#: Smallest timeout handed to urllib3 (it rejects 0 and negative values), seconds.
MIN_TIMEOUT = 0.001
#: Largest timeout handed to urllib3, seconds (infinity and NaN are not timeouts).
MAX_TIMEOUT = 86_400.0
_READ_CHUNK = 64 * 1024
_MAX_ERROR_MESSAGE = 1000

#: Every foreign exception a request or a body read can raise. ``OSError`` covers the
#: socket errors that slip past urllib3; ``ValueError`` covers what ``requests`` raises
#: for a malformed URL or header (``InvalidURL``, ``InvalidHeader`` are both).
_FOREIGN_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    ValueError,
)


class _NotJSON:
    """Marker for a body that did not parse as JSON."""

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJSON()


@functools.cache
def user_agent() -> str:
    """``ratelimit_sdk/<version>``, the version read from the installed package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ratelimit_sdk/{version('ratelimit_sdk')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "ratelimit_sdk/unknown"


# -- exceptions -------------------------------------------------------------------------


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


# -- bodies -----------------------------------------------------------------------------


def parse_json(body: bytes | str) -> Any:
    """``json.loads(body)``, or :data:`NOT_JSON` for anything that is not JSON.

    Catches what hostile bodies raise: invalid JSON or encoding (``ValueError``) and
    deep nesting (``RecursionError``).
    """
    if not body:
        return NOT_JSON
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return NOT_JSON


def make_excerpt(body: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """Return the first ``limit`` printable characters of ``body``, spaces collapsed, redacted."""
    if isinstance(body, bytes):
        text = body[: limit * 16].decode("utf-8", errors="replace")
    else:
        text = body[: limit * 16]
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    collapsed = " ".join(printable.split())
    # Redact a wider window than we keep, so a secret across the cut is still removed.
    return redact(collapsed[: limit * 5])[:limit]


def _as_code(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value:
        return redact(value[:200])[:100]
    return None


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, dict)):
        try:
            text = json.dumps(value, ensure_ascii=False)[: _MAX_ERROR_MESSAGE * 2]
        except (ValueError, TypeError, RecursionError):
            return None
    else:
        return None
    text = redact(text)
    if len(text) > _MAX_ERROR_MESSAGE:
        text = text[: _MAX_ERROR_MESSAGE - 3] + "..."
    return text


def _error_object(obj: Mapping[str, Any]) -> ErrorBody:
    kind = obj.get("type")
    if not isinstance(kind, str):
        kind = obj.get("status")  # Google-style {"error": {"code": 429, "status": "..."}}
    message = obj.get("message")
    if message is None:
        message = obj.get("msg")
    return ErrorBody(
        code=_as_code(obj.get("code")),
        type=_as_code(kind) if isinstance(kind, str) else None,
        message=_as_text(message),
    )


def extract_error(data: Any) -> ErrorBody | None:
    """Return the ``{"error": {...}}`` or ``{"error": "..."}`` object of a parsed body, or None.

    Covers OpenAI-compatible servers, Zhipu (``{"error": {"code": "1302", ...}}``) and
    Anthropic (``{"type": "error", "error": {"type": ..., "message": ...}}``), on any status.
    A list whose first item holds such an object counts too. For the looser top-level
    forms see :func:`extract_top_level_error`.
    """
    if isinstance(data, list) and data and isinstance(data[0], dict) and "error" in data[0]:
        data = data[0]
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict):
        return _error_object(error)
    if isinstance(error, str) and error:
        return ErrorBody(message=_as_text(error))
    return None


_NOT_ERROR_CODES = frozenset({"0", "200"})


def extract_top_level_error(data: Any) -> ErrorBody | None:
    """Return a top-level error without an ``error`` key, or None (for non-success bodies).

    Recognizes ``{"code": 1302, "msg": ...}`` (Zhipu, many gateways; codes 0 and 200 mean
    success there), ``{"object": "error", "message": ..., "code": 400}`` (vLLM) and
    ``{"detail": ...}`` (FastAPI servers).
    """
    if not isinstance(data, dict):
        return None
    code = _as_code(data.get("code"))
    message = data.get("message")
    if message is None:
        message = data.get("msg")
    marked = data.get("object") == "error" or data.get("type") == "error"
    failed = data.get("success") is False or (code is not None and code not in _NOT_ERROR_CODES)
    if marked or (failed and (message is not None or "msg" in data)):
        kind = data.get("type")
        return ErrorBody(
            code=code,
            type=_as_code(kind) if isinstance(kind, str) and kind != "error" else None,
            message=_as_text(message),
        )
    detail = data.get("detail")
    if detail is not None and len(data) == 1:
        return ErrorBody(message=_as_text(detail))
    return None


def usage_int(value: Any) -> int:
    """Read a token count from a body: a non-negative int, else 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)


def _lower_headers(response: requests.Response, *, scrub: bool = True) -> dict[str, str]:
    """Header names in lower case; values scrubbed of secrets when ``scrub``.

    Error answers are scrubbed (their headers may reach a message); clean successes
    skip it, since it costs tens of microseconds on every call.
    """
    if not scrub:
        return {name.lower(): value for name, value in response.headers.items()}
    return {name.lower(): redact(value) for name, value in response.headers.items()}


def _read_capped(response: requests.Response, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the (decoded) body, and whether there was more."""
    buffer = bytearray()
    for chunk in response.iter_content(chunk_size=_READ_CHUNK):
        buffer += chunk
        if len(buffer) > limit:
            return bytes(buffer[:limit]), True
    return bytes(buffer), False


def _clamp_timeout(value: float) -> float:
    if math.isnan(value) or value < MIN_TIMEOUT:
        return MIN_TIMEOUT
    return min(value, MAX_TIMEOUT)


def _elapsed(response: requests.Response) -> float:
    return max(response.elapsed.total_seconds(), 0.0)


# -- server-sent events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One server-sent event: its ``event`` name (``"message"`` if unnamed) and ``data``."""

    event: str
    data: str


class StreamProtocolError(Exception):
    """The event stream broke the SSE format or our size limits (translated by StreamReply)."""


_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Incremental ``text/event-stream`` parser (WHATWG rules; ``id`` and ``retry`` ignored).

    Feed it byte chunks as they arrive, in any split; it returns the events completed so
    far. A line or an event payload longer than ``max_bytes`` raises
    :class:`StreamProtocolError`. Not thread-safe: one parser per stream.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max = MAX_EVENT_BYTES if max_bytes is None else max_bytes
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._skip_lf = False
        self._event = ""
        self._data: list[str] = []
        self._data_len = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed."""
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        pieces = _LINE_BREAK.split(chunk)
        self._skip_lf = chunk.endswith(b"\r")
        events: list[SSEEvent] = []
        for index, piece in enumerate(pieces[:-1]):
            if index == 0 and self._pending:
                piece = b"".join([*self._pending, piece])
                self._pending = []
                self._pending_len = 0
            self._line(piece, events)
        rest = pieces[-1]
        if rest:
            self._pending.append(rest)
            self._pending_len += len(rest)
            if self._pending_len > self._max:
                raise StreamProtocolError(f"event-stream line longer than {self._max} bytes")
        return events

    def finish(self) -> list[SSEEvent]:
        """End of input: dispatch what is pending, even without its closing blank line."""
        events: list[SSEEvent] = []
        if self._pending:
            self._line(b"".join(self._pending), events)
            self._pending = []
            self._pending_len = 0
        self._line(b"", events)
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._event = ""
            self._data = []
            self._data_len = 0
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
            self._data_len += len(raw)
            if self._data_len > self._max:
                raise StreamProtocolError(f"event payload longer than {self._max} bytes")
        elif field == "event":
            self._event = value


@dataclass(slots=True)
class StreamState:
    """What a wire format's event handler learned from the stream so far (mutable)."""

    model: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    done: bool = False
    error: ErrorBody | None = None


#: A wire format's event handler: updates the state, returns the text delta (or None).
EventHandler = Callable[[SSEEvent, StreamState], str | None]


class StreamReply:
    """The answer to :meth:`Provider.stream`: either a finished :class:`Reply` or live text.

    When the status is not 2xx or the content type is not ``text/event-stream``, the body
    was read already: :attr:`reply` holds a normal ``Reply`` (for ``classify``) and
    iterating yields nothing. Otherwise :attr:`reply` is ``None`` and iterating yields
    the text deltas as they arrive; :attr:`usage`, :attr:`finish_reason`, :attr:`model`
    fill in as the stream reports them, and :attr:`completion` is set once it ended
    properly. A stream that breaks, times out, reports an error event or ends before its
    terminator raises :class:`~ratelimit_sdk.errors.ProviderConnectionError` or
    :class:`~ratelimit_sdk.errors.ProviderTimeout` from the iteration.

    Always :meth:`close` it (or use it as a context manager): that returns or drops the
    connection. It closes itself when the stream ends or fails. Not thread-safe: one
    thread iterates; :meth:`close` may come from another thread and ends the iteration.
    """

    def __init__(
        self,
        *,
        provider: str,
        status: int,
        headers: Mapping[str, str],
        elapsed: float,
        reply: Reply | None = None,
        response: requests.Response | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        self.headers = headers
        self.elapsed = elapsed
        self.reply = reply
        self._response = response
        self._on_event = on_event
        self._state = StreamState()
        self._parts: list[str] = []
        self._closed = response is None
        self._iterator: Iterator[str] = self._generate()

    @classmethod
    def finished(cls, provider: str, reply: Reply) -> StreamReply:
        """Wrap an answer that was not a stream (no chunks, ``reply`` set)."""
        return cls(
            provider=provider,
            status=reply.status,
            headers=reply.headers,
            elapsed=reply.elapsed,
            reply=reply,
        )

    # -- what the stream reported -------------------------------------------------------

    @property
    def usage(self) -> Usage | None:
        """Token usage, once the stream reported it (else ``None``)."""
        return self._state.usage

    @property
    def finish_reason(self) -> str | None:
        """Why generation stopped, once the stream said so."""
        return self._state.finish_reason

    @property
    def model(self) -> str | None:
        """The model the stream named, if any."""
        return self._state.model

    @property
    def error(self) -> ErrorBody | None:
        """The error object of an error event, if the stream sent one."""
        return self._state.error

    @property
    def done(self) -> bool:
        """True once the stream ended properly (terminator or finish reason seen)."""
        return self._state.done

    @property
    def content(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    @property
    def completion(self) -> Completion | None:
        """The whole answer once the stream ended properly; the reply's own for a non-stream."""
        if self.reply is not None:
            return self.reply.completion
        if not self._state.done:
            return None
        return Completion(
            content=self.content,
            model=self._state.model,
            usage=self._state.usage,
            finish_reason=self._state.finish_reason,
        )

    # -- iteration and lifetime ---------------------------------------------------------

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def _chunks(self) -> Iterator[bytes]:
        assert self._response is not None
        raw = self._response.raw
        read1 = getattr(raw, "read1", None)
        if read1 is None:  # urllib3 < 2.3: chunked bodies still arrive chunk by chunk
            yield from self._response.iter_content(chunk_size=None)
            return
        while not self._closed:
            data = read1(_READ_CHUNK)
            if not data:
                return
            yield data

    def _generate(self) -> Iterator[str]:
        if self._response is None or self._on_event is None:
            return
        parser = SSEParser()
        state = self._state
        try:
            chunks = self._chunks()
            ended = False
            while not ended:
                chunk = next(chunks, None)
                events = parser.finish() if chunk is None else parser.feed(chunk)
                for event in events:
                    if self._closed:
                        return  # closed by the consumer between two chunks
                    delta = self._on_event(event, state)
                    if state.error is not None:
                        raise self._error_event(state.error)
                    if delta:
                        self._parts.append(delta)
                        yield delta
                    if state.done:
                        break
                ended = chunk is None or state.done
            if not state.done and state.finish_reason is not None:
                state.done = True  # ended without its terminator, but generation had finished
            if not state.done and not self._closed:
                raise ProviderConnectionError(
                    f"{self.provider}: event stream ended before its end marker",
                    provider=self.provider,
                )
        except RateLimitSDKError:
            raise
        except StreamProtocolError as exc:
            raise ProviderConnectionError(
                f"{self.provider}: malformed event stream ({exc})", provider=self.provider
            ) from exc
        except _FOREIGN_ERRORS as exc:
            if self._closed:
                return  # closed by the consumer, maybe from another thread
            raise_translated(exc, self.provider)
        finally:
            self.close()

    def _error_event(self, error: ErrorBody) -> ProviderConnectionError:
        text = error.message or error.type or error.code or "error event"
        return ProviderConnectionError(
            f"{self.provider}: error event in the stream: {text}",
            provider=self.provider,
            code=error.code or error.type,
        )

    def close(self) -> None:
        """Close the underlying response (idempotent)."""
        if self._closed and self._response is None:
            return
        self._closed = True
        response, self._response = self._response, None
        if response is not None:
            try:
                response.close()
            except _FOREIGN_ERRORS as exc:  # closing a broken socket: nothing left to do
                _log.debug("%s: error while closing a stream: %s", self.provider, exc)

    def __enter__(self) -> StreamReply:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "reply" if self.reply is not None else "stream"
        return f"StreamReply(provider={self.provider!r}, status={self.status}, kind={kind!r})"


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
        adapter = requests.adapters.HTTPAdapter(
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

    def send(self, request: ChatRequest, *, connect_timeout: float, read_timeout: float) -> Reply:
        """POST one chat request and return the answer as a :class:`Reply`, whatever its status.

        Raises only ProviderTimeout (connect or read timeout) and ProviderConnectionError
        (anything else that kept an answer from arriving whole).
        """
        payload = self._encode(request, stream=False)
        try:
            response = self._post(payload, connect_timeout, read_timeout, "application/json")
            try:
                body, truncated = _read_capped(response, MAX_BODY_BYTES)
            finally:
                response.close()
        except RateLimitSDKError:
            raise
        except _FOREIGN_ERRORS as exc:
            raise_translated(exc, self.name)
        return self._reply(response, body, truncated)

    def stream(
        self, request: ChatRequest, *, connect_timeout: float, read_timeout: float
    ) -> StreamReply:
        """POST one chat request with ``stream: true``; see :class:`StreamReply`.

        Raises the same errors as :meth:`send` while connecting and reading the head (or,
        for a non-stream answer, the body).
        """
        payload = self._encode(request, stream=True)
        try:
            response = self._post(payload, connect_timeout, read_timeout, "text/event-stream")
        except RateLimitSDKError:
            raise
        except _FOREIGN_ERRORS as exc:
            raise_translated(exc, self.name)
        content_type = response.headers.get("content-type", "").lower()
        if 200 <= response.status_code < 300 and content_type.startswith("text/event-stream"):
            _log.debug("%s: HTTP %s, event stream", self.name, response.status_code)
            return StreamReply(
                provider=self.name,
                status=response.status_code,
                headers=_lower_headers(response),
                elapsed=_elapsed(response),
                response=response,
                on_event=self._on_event,
            )
        try:
            try:
                body, truncated = _read_capped(response, MAX_BODY_BYTES)
            finally:
                response.close()
        except RateLimitSDKError:
            raise
        except _FOREIGN_ERRORS as exc:
            raise_translated(exc, self.name)
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
        self, payload: bytes, connect_timeout: float, read_timeout: float, accept: str
    ) -> requests.Response:
        if self._closed:
            raise ProviderConnectionError(f"{self.name}: provider is closed", provider=self.name)
        return self._session.post(
            self.url,
            data=payload,
            headers={"Accept": accept},
            timeout=(_clamp_timeout(connect_timeout), _clamp_timeout(read_timeout)),
            allow_redirects=False,
            stream=True,
            verify=True,
        )

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
