"""Transport stage (4), event streams: parse ``text/event-stream`` and read a live stream.

Receives the bytes of a streamed answer as they arrive; hands on text deltas through a
:class:`StreamReply`, which the guard returns for ``Provider.stream``. The parser
(:class:`SSEParser`) is pure: bytes in, :class:`SSEEvent` values out, every line and
payload capped at :data:`MAX_EVENT_BYTES`. What an event *means* is the wire format's
business (its :data:`EventHandler` fills a :class:`StreamState`); a stream that breaks,
times out, exceeds the cap, reports an error or ends early is raised as a
:class:`~ratelimit_sdk.errors.ProviderConnectionError` or
:class:`~ratelimit_sdk.errors.ProviderTimeout`, never as a foreign exception.
A stream that sends no text (keep-alive comments, role-only deltas, pings) is ended by
its watch: the call's deadline until the first text chunk, the idle timeout after it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType

import requests

from .._redact import get_logger
from ..errors import ProviderConnectionError, ProviderTimeout, RateLimitSDKError
from ..models import Completion, ErrorBody, Reply, Usage
from ._body import READ_CHUNK
from ._deadline import PHASE_IDLE, Watch
from ._translate import TRANSPORT_ERRORS, map_transport_errors

#: What closing a response whose socket is broken may raise (logged, then ignored).
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, OSError)
#: What a read may raise once the consumer closed the response under it (ends the stream).
_CLOSED_READ_ERRORS: tuple[type[BaseException], ...] = (*TRANSPORT_ERRORS, OSError, ValueError)

__all__ = [
    "MAX_EVENT_BYTES",
    "EventHandler",
    "SSEEvent",
    "SSEParser",
    "StreamProtocolError",
    "StreamReply",
    "StreamState",
]

_log = get_logger("ratelimit_sdk.providers")

#: Largest single server-sent-event line or event payload, in bytes.
MAX_EVENT_BYTES = 1024 * 1024


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

    ``max_event_bytes`` caps each line and event payload, as :class:`SSEParser`'s
    ``max_bytes`` does (``None``: :data:`MAX_EVENT_BYTES`). ``read_timeout`` (seconds,
    if known) only words the message of a timeout.

    ``watch`` (from the provider, armed with the call's deadline) bounds the wait for the
    first text chunk; from then on, each wait for the next text chunk is bounded by
    ``idle_timeout`` seconds (``None``: the watch ends with the first chunk). Only text
    counts as progress: keep-alive comments and events without text (a role-only delta,
    a ping) do not. When the watch fires, the connection is shut down and the iteration
    raises :class:`~ratelimit_sdk.errors.ProviderTimeout`.
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
        max_event_bytes: int | None = None,
        read_timeout: float | None = None,
        watch: Watch | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.provider = provider
        self._read_timeout = read_timeout
        self._watch = watch
        self._idle_timeout = idle_timeout
        self.status = status
        self.headers = headers
        self.elapsed = elapsed
        self.reply = reply
        self._response = response
        self._on_event = on_event
        self._max_event_bytes = max_event_bytes
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
            data = read1(READ_CHUNK)
            if not data:
                return
            yield data

    def _generate(self) -> Iterator[str]:
        if self._response is None or self._on_event is None:
            return
        parser = SSEParser(self._max_event_bytes)
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
                        watch = self._progress()
                        yield delta
                        if watch is not None:
                            watch.resume()  # the consumer is back: idle time counts again
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
        except RateLimitSDKError as exc:
            if self._fired():  # the watchdog shut the socket down: that is why it ended
                raise self._timeout() from exc
            raise
        except StreamProtocolError as exc:
            if self._fired():
                raise self._timeout() from None
            raise ProviderConnectionError(
                f"{self.provider}: malformed event stream ({exc})", provider=self.provider
            ) from exc
        except Exception as exc:
            if self._closed and isinstance(exc, _CLOSED_READ_ERRORS):
                # Closed by the consumer, maybe from another thread: a read on a closed
                # response raises whatever the socket layer has at hand.
                return
            if self._fired():
                raise self._timeout() from None
            with map_transport_errors(self.provider, read_timeout=self._read_timeout):
                raise
        finally:
            self.close()

    def _progress(self) -> Watch | None:
        """A text chunk arrived: the deadline is met and the idle clock stops.

        Returns the watch to :meth:`Watch.resume` when the consumer asks for more (its
        time holding the chunk is not the server's idle time), or ``None``.
        """
        watch = self._watch
        if watch is None:
            return None
        if self._idle_timeout is None:
            watch.finish()
            self._watch = None
            return None
        if watch.phase != PHASE_IDLE:
            watch.extend(self._idle_timeout, PHASE_IDLE)
        watch.pause()
        return watch

    def _fired(self) -> bool:
        return self._watch is not None and self._watch.fired

    def _timeout(self) -> ProviderTimeout:
        assert self._watch is not None
        self._watch.finish()
        return self._watch.timeout(self.provider)

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
        if self._watch is not None:
            self._watch.finish()  # before the connection can go back to the pool
        response, self._response = self._response, None
        if response is not None:
            try:
                response.close()
            except _CLOSE_ERRORS as exc:  # closing a broken socket: nothing left to do
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
