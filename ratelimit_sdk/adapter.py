"""Guard stage (3) for legacy code: a ``requests`` transport adapter that applies a Limiter.

Receives every :class:`requests.PreparedRequest` a :class:`requests.Session` sends to the
URL prefix it is mounted on, and hands back the :class:`requests.Response` unchanged.
On the way it does what :mod:`ratelimit_sdk.guard` does for chat calls, without the
breaker or the fallback: it waits for a permit from the :class:`~ratelimit_sdk.Limiter`
before sending, gives the permit back when the exchange is over, and turns the
server's rate-limit answers into a :meth:`~ratelimit_sdk.Limiter.cooldown` that every
thread sharing the limiter obeys::

    limiter = Limiter(max_concurrent=4, requests_per_minute=600)
    session = requests.Session()
    session.mount("https://api.example.com", RateLimitAdapter(limiter, retry_on_429=2))
    session.post("https://api.example.com/v1/things", json={...})  # unchanged call sites

This is the one module besides :mod:`ratelimit_sdk.providers` that imports ``requests``:
adapting ``requests`` is its whole job. It translates no exception: callers of a
``Session`` keep getting ``requests``' own errors, plus
:class:`~ratelimit_sdk.errors.AcquireTimeout` when admission takes too long.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.exceptions
import requests.utils
from urllib3.util.retry import Retry

from ._redact import get_logger
from .classify import classify, next_slot, server_wait
from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError
from .limiter import Limiter, Permit
from .models import Reply
from .retry import Decision, Step, run_attempts

__all__ = ["DEFAULT_COOLDOWN", "RateLimitAdapter"]

_log = get_logger("ratelimit_sdk.adapter")

#: Seconds of cooldown after a 429 whose headers name no wait at all (no
#: ``Retry-After``, ``retry-after-ms`` or rate-limit reset), on a limiter that
#: paces nothing (one that paces waits for its next slot instead). One second is what
#: Moonshot's "please try again after 1 seconds" asks for, and short enough that a
#: guess costs little.
DEFAULT_COOLDOWN: Final = 1.0

#: Statuses that may carry a "slow down" answer: 429 always, 503 only with a
#: ``Retry-After`` / ``retry-after-ms`` header (a 503 without one is a plain failure).
_TOO_MANY_REQUESTS: Final = 429
_UNAVAILABLE: Final = 503


def _check_seconds(name: str, value: float | None, *, allow_none: bool) -> float | None:
    """Return ``value`` as a float if it is a finite number >= 0 (or an allowed None)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: must be a number of seconds (got {value!r})", field=name)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: must be a finite number >= 0 (got {value!r})", field=name)
    return float(value)


def _host(request: requests.PreparedRequest) -> str:
    """The host a request goes to, for log lines (never the path or query: they may hold keys)."""
    try:
        return urlsplit(request.url or "").hostname or "?"
    except ValueError:
        return "?"


def _rewind(request: requests.PreparedRequest) -> bool:
    """Make the request's body readable again from its start; False when it cannot be.

    ``None``, bytes and text bodies are re-sent as they are; a file-like body is
    rewound to where ``requests`` found it (as ``requests`` does for redirects);
    generators and other one-shot iterables cannot be re-sent.
    """
    body: object = request.body  # the stubs say bytes | str | None; files pass too
    if body is None or isinstance(body, (bytes, bytearray, str)):
        return True
    try:
        requests.utils.rewind_body(request)
    except requests.exceptions.UnrewindableBodyError:
        return False
    return True


def _hold_until_closed(response: requests.Response, permit: Permit) -> None:
    """Tie ``permit`` to a streamed ``response``: released when the response is done with.

    ``urllib3`` calls ``raw.release_conn()`` when the body has been read to its end
    (or reading it failed), and ``Response.close()`` calls it too, so the permit is
    released from there; ``Response.close`` is wrapped as well in case ``raw.close()``
    raises first. The wrappers hold the response weakly, so an abandoned response is
    still freed at once by reference counting, and the permit's own finalizer gives
    it back then.
    """
    raw = response.raw
    original_release: Callable[..., Any] | None = getattr(type(raw), "release_conn", None)
    if raw is not None and callable(original_release):
        raw_ref = weakref.ref(raw)

        def release_conn() -> None:
            try:
                target = raw_ref()
                if target is not None and original_release is not None:
                    original_release(target)
            finally:
                permit.release()

        setattr(raw, "release_conn", release_conn)  # noqa: B010 - instance override

    original_close = type(response).close
    response_ref = weakref.ref(response)

    def close() -> None:
        try:
            target = response_ref()
            if target is not None:
                original_close(target)
        finally:
            permit.release()

    setattr(response, "close", close)  # noqa: B010 - instance override


class RateLimitAdapter(requests.adapters.HTTPAdapter):
    """A ``requests`` transport adapter that sends each request under a Limiter's permit.

    Mount it on a :class:`requests.Session` for the URL prefix of one API::

        session.mount("https://api.x.com", RateLimitAdapter(limiter, timeout=30))

    For every request sent through it:

    1. **Admission.** Wait for a permit from ``limiter`` (first come, first served),
       at most ``timeout`` seconds (``None``: as long as it takes; ``0``: do not wait).
       Past it, :class:`~ratelimit_sdk.errors.AcquireTimeout` is raised and nothing
       is sent.
    2. **Send** through :class:`requests.adapters.HTTPAdapter`, unchanged.
    3. **Release.** The permit covers the whole exchange. Without ``stream=True`` the
       body is read here, inside the permit (``requests`` would read it right after
       anyway), and the permit is released before ``send`` returns. With
       ``stream=True`` the permit is held until the response is closed
       (``response.close()`` or ``with session.get(..., stream=True) as r:``) or its
       body has been read to the end; a streamed response dropped without either
       gives its permit back when it is garbage-collected. Every other path
       (connection errors, timeouts, ``KeyboardInterrupt``) releases it in
       ``finally``.
    4. **Cooldown.** On a 429, or a 503 that carries ``Retry-After``, the limiter is
       put in :meth:`~ratelimit_sdk.Limiter.cooldown` for the wait the server names
       (``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date, else
       the ``x-ratelimit-reset-*`` / ``anthropic-ratelimit-*-reset`` headers; dates
       are read against ``clock.time()``). When the headers name none (nginx's
       default 429), a limiter that paces requests ran ahead of the server: its
       jitter allowance widens and the cooldown lasts until its next slot
       (:meth:`~ratelimit_sdk.Limiter.report_overrun`); one that only bounds
       concurrency cools down for :data:`DEFAULT_COOLDOWN` (1 s). ``Retry-After: 0``
       means no cooldown. On a 2xx whose rate-limit headers say a budget is used up
       (remaining 0 with a reset), the limiter cools down until the budget admits the next request
       (:func:`~ratelimit_sdk.classify.next_slot`: ``reset / limit`` when the
       matching ``-limit`` header is there, since those resets count until the
       budget is whole again; else the whole reset), so the next request waits
       instead of drawing a 429; the chat guard does the same. Cooldowns are set
       before the permit is released, so no waiting thread slips in between.
    5. **Retry.** With ``retry_on_429=n`` a throttled answer is closed and the same
       request is sent again, up to ``n`` times, after sleeping the cooldown, and
       only when that wait is at most ``max_retry_wait`` seconds and the body can be
       sent again (none, bytes, text, or a seekable file; not a generator).
       Otherwise, and always with ``retry_on_429=0`` (the default), the 429 goes
       back to the caller, as without the adapter. Re-sends happen inside
       ``send``: response hooks and ``response.history`` see only the final answer.

    ``pool_connections``, ``pool_maxsize``, ``max_retries`` and ``pool_block`` go to
    :class:`~requests.adapters.HTTPAdapter` (``max_retries=0``: urllib3 retries
    nothing, the default). Keep ``pool_maxsize`` at least the limiter's
    ``max_concurrent``, or urllib3 drops the extra connections after use.
    ``clock`` (default: the limiter's clock) supplies the wall-clock time for
    HTTP-date headers and does the sleeping before a re-send.

    Thread-safe: a mounted adapter is shared by every thread using the session, and
    may be; its only state is its settings (read-only after construction), the
    urllib3 connection pools (thread-safe) and the limiter (thread-safe). Several
    adapters, on several sessions, may share one limiter. ``close()`` closes the
    connection pools, not the limiter, which belongs to the caller. Not picklable
    (a live limiter cannot be copied to another process). The repr shows the
    settings and the limiter, never a header.
    """

    def __init__(
        self,
        limiter: Limiter,
        *,
        timeout: float | None = None,
        retry_on_429: int = 0,
        max_retry_wait: float = 60.0,
        pool_connections: int = requests.adapters.DEFAULT_POOLSIZE,
        pool_maxsize: int = requests.adapters.DEFAULT_POOLSIZE,
        max_retries: Retry | int | None = requests.adapters.DEFAULT_RETRIES,
        pool_block: bool = requests.adapters.DEFAULT_POOLBLOCK,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigError(f"limiter: must be a Limiter (got {limiter!r})", field="limiter")
        if isinstance(retry_on_429, bool) or not isinstance(retry_on_429, int) or retry_on_429 < 0:
            raise ConfigError(
                f"retry_on_429: must be a whole number >= 0 (got {retry_on_429!r})",
                field="retry_on_429",
            )
        self.limiter = limiter
        #: Longest wait for admission, in seconds (``None``: no bound).
        self.timeout = _check_seconds("timeout", timeout, allow_none=True)
        #: How many times one request is re-sent after a throttled answer.
        self.retry_on_429 = retry_on_429
        wait = _check_seconds("max_retry_wait", max_retry_wait, allow_none=False)
        assert wait is not None  # allow_none=False
        #: Longest cooldown (seconds) the adapter sleeps through before a re-send.
        self.max_retry_wait = wait
        self.clock: Clock = (
            clock if clock is not None else getattr(limiter, "clock", None) or SYSTEM_CLOCK
        )
        super().__init__(
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=max_retries,
            pool_block=pool_block,
        )

    # -- the exchange -----------------------------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` under a permit; see the class docstring for the steps.

        ``timeout`` here is ``requests``' HTTP timeout (connect, read), untouched;
        the admission bound is the adapter's own ``timeout``. Raises
        :class:`~ratelimit_sdk.errors.AcquireTimeout` when admission takes longer,
        and whatever :meth:`requests.adapters.HTTPAdapter.send` raises.
        """

        def attempt(resent: int) -> tuple[requests.Response, float | None]:
            left = self.retry_on_429 - resent
            return self._send_once(request, left, stream, timeout, verify, cert, proxies)

        def decision(sent: tuple[requests.Response, float | None], resent: int) -> Decision:
            response, resend_after = sent
            if resend_after is None:
                return Decision(Step.DONE)
            response.close()  # the throttled answer is replaced by the re-send
            return Decision(Step.RETRY, delay=resend_after)

        def on_retry(
            sent: tuple[requests.Response, float | None], decided: Decision, n: int
        ) -> None:
            _log.debug(
                "%s: HTTP %d, re-sending after %.3fs (%d re-send(s) left)",
                _host(request),
                sent[0].status_code,
                decided.delay,
                self.retry_on_429 - n,
            )

        (response, _), _ = run_attempts(
            attempt, decision, sleep=self.clock.sleep, on_retry=on_retry
        )
        return response

    def _send_once(
        self,
        request: requests.PreparedRequest,
        resends_left: int,
        stream: bool,
        timeout: float | tuple[float, float] | tuple[float, None] | None,
        verify: bool | str,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None,
        proxies: Mapping[str, str] | None,
    ) -> tuple[requests.Response, float | None]:
        """One exchange under one permit: the response, and when to re-send it (``None``: keep it).

        The permit is released once, in the ``finally``, unless a streamed response
        that is kept takes it along (it gives it back when closed or read to the end).
        """
        permit = self.limiter.acquire(self.timeout)
        handed_over = False
        try:
            response = super().send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
            if not stream:
                response.content  # noqa: B018 - read the body while the permit is held
            wait = self._apply_cooldown(request, response)
            if wait is not None and self._will_resend(request, wait, resends_left):
                return response, wait
            if stream:
                _hold_until_closed(response, permit)
                handed_over = True
            return response, None
        finally:
            if not handed_over:
                permit.release()

    def _apply_cooldown(
        self, request: requests.PreparedRequest, response: requests.Response
    ) -> float | None:
        """Put the limiter in cooldown if the answer asks for it.

        Returns the wait for a throttled answer (429, or 503 with ``Retry-After``),
        ``None`` for any other answer (a 2xx naming an exhausted budget still cools
        the limiter down, but is not a reason to re-send).
        """
        status = response.status_code
        headers = response.headers
        now = self.clock.time()
        wait: float | None
        if status == _TOO_MANY_REQUESTS:
            # classify's 429 row reads retry-after-ms, Retry-After, then the reset headers.
            wait = classify(Reply(status, headers), now=now).retry_after
            if wait is None:
                wait = self._unnamed_wait()
        elif status == _UNAVAILABLE:
            wait = server_wait(headers, now)
            if wait is None:
                return None
        else:
            if 200 <= status < 300:
                slot = next_slot(headers, now)
                if slot is not None and slot > 0:
                    _log.debug("%s: budget used up, cooling down %.3fs", _host(request), slot)
                    self.limiter.cooldown(slot)
            return None
        if wait > 0:
            _log.debug("%s: HTTP %d, cooling down %.3fs", _host(request), status, wait)
            self.limiter.cooldown(wait)
        return wait

    def _unnamed_wait(self) -> float:
        """The wait after a 429 that names none (nginx's default answer).

        A limiter that paces requests ran ahead of the server: its jitter
        allowance widens and the wait is until its next slot
        (:meth:`~ratelimit_sdk.Limiter.report_overrun`). One that only bounds
        concurrency cannot tell: :data:`DEFAULT_COOLDOWN`.
        """
        if self.limiter.paces:
            return self.limiter.report_overrun()
        return DEFAULT_COOLDOWN

    def _will_resend(self, request: requests.PreparedRequest, wait: float, resends: int) -> bool:
        """Whether a throttled answer is re-sent: one is left, the wait fits, the body rewinds."""
        return resends > 0 and wait <= self.max_retry_wait and _rewind(request)

    # -- housekeeping ---------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} holds a live limiter and cannot be pickled")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(limiter={self.limiter!r}, timeout={self.timeout!r}, "
            f"retry_on_429={self.retry_on_429!r}, max_retry_wait={self.max_retry_wait!r})"
        )
