"""Stage 3 (per provider), streaming answers: a stream that holds its permit until it ends.

``Client.chat(..., stream=True)`` returns a :class:`ChatStream`. The guard has
already read the first text chunk (so a provider that fails before answering is
still a normal attempt the chain can retry or fall back from); after that the
stream belongs to the caller. The provider's permit is held until the stream
ends, fails or is closed, and a stream dropped half-way gives it back when it is
garbage-collected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Protocol

from .limiter import Permit
from .models import Attempt, Usage

__all__ = ["ChatStream", "finished_stream"]


class _Source(Protocol):
    """What a ChatStream reads from: a provider's ``StreamReply``, or a whole answer."""

    @property
    def content(self) -> str: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def finish_reason(self) -> str | None: ...
    def __iter__(self) -> Iterator[str]: ...
    def close(self) -> None: ...


class ChatStream:
    """An iterator of text chunks from one provider, holding that provider's permit.

    Iterate it (``for text in stream``), or read :attr:`content` once it is done.
    Always finish, :meth:`close` or use it as a context manager; an abandoned
    stream is closed when garbage-collected. Errors after the first chunk
    (``ProviderConnectionError``, ``ProviderTimeout``) surface from the iteration:
    there is no fallback once text has reached the caller.

    One thread iterates; :meth:`close` may be called from any thread.
    """

    def __init__(
        self,
        reply: _Source,
        *,
        provider: str,
        model: str,
        first: str | None,
        permit: Permit | None,
        token_ceiling: int | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.attempts: tuple[Attempt, ...] = ()
        self._reply = reply
        self._permit = permit
        self._ceiling = token_ceiling  # None: settle nothing (no token budget charged)
        self._first = first
        self._lock = threading.Lock()
        self._closed = False
        self._on_close: list[Callable[[], None]] = []
        self._on_close_from_gc: list[Callable[[], None]] = []
        self._iterator = self._generate()

    def on_close(
        self, fn: Callable[[], None], *, from_gc: Callable[[], None] | None = None
    ) -> None:
        """Call ``fn()`` once when the stream closes (after its permit is back).

        A stream closed by the garbage collector calls ``from_gc`` instead (it must
        take no lock: it may run inside any thread at any moment); without one, nothing.
        """
        self._on_close.append(fn)
        if from_gc is not None:
            self._on_close_from_gc.append(from_gc)

    @property
    def content(self) -> str:
        """The text received so far (all of it, once the stream is done)."""
        return self._reply.content

    @property
    def usage(self) -> Usage | None:
        """Token usage, if the provider reported it in the stream."""
        return self._reply.usage

    @property
    def finish_reason(self) -> str | None:
        """Why generation stopped, once known."""
        return self._reply.finish_reason

    @property
    def closed(self) -> bool:
        """True once the stream ended or was closed (the permit is back)."""
        return self._closed

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def __next__(self) -> str:
        return next(self._iterator)

    def _generate(self) -> Iterator[str]:
        try:
            if self._first:
                yield self._first
            yield from self._reply
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading, close the connection and release the permit (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._reply.close()
        finally:
            permit = self._permit
            if permit is not None:
                usage = self._reply.usage
                if self._ceiling is not None and usage is not None and usage.total_tokens:
                    # A server's figure counts only up to what the request could cost.
                    permit.settle(tokens=max(0, min(usage.total_tokens, self._ceiling)))
                permit.release()
            for fn in self._on_close:
                fn()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:
            # Closing the socket needs no SDK lock; the permit's own finalizer-safe
            # release path handles the limiter side.
            self._closed = True
            try:
                self._reply.close()
            finally:
                if self._permit is not None:
                    self._permit._owner._release_from_gc(self._permit)
                for fn in self._on_close_from_gc:
                    fn()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ChatStream provider={self.provider!r} model={self.model!r} {state}>"


class _Finished:
    """An answer that arrived whole (the provider did not stream it): no connection held."""

    def __init__(self, content: str) -> None:
        self.content = content
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def close(self) -> None:
        """Nothing to close."""


def finished_stream(content: str, provider: str, attempts: list[Attempt]) -> ChatStream:
    """A ChatStream over an answer that came back whole: one chunk, no permit held."""
    stream = ChatStream(_Finished(content), provider=provider, model="", first=content, permit=None)
    stream.attempts = tuple(attempts)
    return stream
