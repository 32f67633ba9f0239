"""Stage 1: the ``Client`` users hold. Builds the guards and chains, and runs calls through them.

``Client.chat`` turns the arguments into a :class:`~ratelimit_sdk.models.ChatRequest`,
picks the chain (``preferred_model``, ``chain=`` or the default), sets the call's
deadline, and hands over to :class:`~ratelimit_sdk.chain.Chain`. ``map``/``imap``
run many calls from a thread pool. Limits and the whole configuration can be
changed while calls are running (``update_limits``, ``reload``).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, TypeVar, overload

from typing_extensions import Unpack

from ._display import StatsTable, stats_html
from ._redact import get_logger, redact_url
from .chain import Chain, Fleet
from .clock import SYSTEM_CLOCK, Clock
from .config import ClientConfig, LimitsConfig, ProviderConfig
from .errors import (
    BadRequestError,
    ConfigError,
    RateLimitSDKError,
)
from .guard import Guard, build_guards
from .hooks import HookFn, Hooks
from .models import (
    CHAT_PARAMS,
    ChatParams,
    ChatRequest,
    ChatResponse,
    ProviderStats,
    check_keywords,
)
from .stream import ChatStream, finished_stream

if TYPE_CHECKING:  # typing only: the client never drives a limiter itself
    from .limiter import Limiter

__all__ = ["NOT_GIVEN", "Client"]

_log = get_logger("ratelimit_sdk.client")

P = ParamSpec("P")
T = TypeVar("T")


class _NotGiven:
    """Marks an argument that was not passed (``timeout=None`` means "no timeout")."""

    _instance: _NotGiven | None = None

    def __new__(cls) -> _NotGiven:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


#: Sentinel for "use the configured default" (as opposed to ``None``).
NOT_GIVEN: Final = _NotGiven()


@dataclass(frozen=True)
class _State:
    """Everything a call needs, swapped as one piece on reload (calls read it once)."""

    config: ClientConfig
    guards: Mapping[str, Guard]
    chains: Mapping[str, Chain]
    pools: Mapping[str, Limiter]


class _Usage:
    """Which configurations running calls hold, so a replaced guard closes when idle.

    A call counts itself on the state it started with (:meth:`enter`) until it ends
    (:meth:`leave`; a stream, until it closes). A guard replaced by a reload is
    closed once no running call holds a state that has it. Thread-safe; the lock
    is held for a few dictionary operations, never across I/O.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[_State, int]] = {}  # id(state) -> (state, calls)
        self._retired: list[Guard] = []
        self._later: deque[_State] = deque()  # leaves from finalizers, taken at the next call

    def enter(self, client: Client) -> _State:
        """Count a call on the client's current state and return that state."""
        with self._lock:
            state = client._state
            _, calls = self._running.get(id(state), (state, 0))
            self._running[id(state)] = (state, calls + 1)
            if self._later:
                self._drain()
        return state

    def leave(self, state: _State, current: _State) -> list[Guard]:
        """Uncount a call on ``state``; the retired guards now idle (to close)."""
        with self._lock:
            _, calls = self._running.pop(id(state))
            if calls > 1:
                self._running[id(state)] = (state, calls - 1)
            if self._later:
                self._drain()
            return self._idle(current) if self._retired else []

    def leave_later(self, state: _State) -> None:
        """:meth:`leave` from a finalizer: takes no lock; counted at the next enter or leave."""
        self._later.append(state)

    def _drain(self) -> None:
        while self._later:
            self._uncount(self._later.popleft())

    def _uncount(self, state: _State) -> None:
        _, calls = self._running.pop(id(state))
        if calls > 1:
            self._running[id(state)] = (state, calls - 1)

    def retire(self, guards: list[Guard], current: _State) -> list[Guard]:
        """Note ``guards`` as replaced; those no running call holds (to close now)."""
        with self._lock:
            self._retired.extend(guards)
            return self._idle(current)

    def retire_all(self) -> list[Guard]:
        """Every retired guard not yet closed (the client is closing)."""
        with self._lock:
            guards, self._retired = self._retired, []
        return guards

    def _idle(self, current: _State) -> list[Guard]:
        if not self._retired:
            return []
        held = {id(g) for g in current.guards.values()}
        for state, _ in self._running.values():
            held.update(id(g) for g in state.guards.values())
        idle = [g for g in self._retired if id(g) not in held]
        self._retired = [g for g in self._retired if id(g) in held]
        return idle


class _InUse:
    """``with _InUse(client) as state:`` runs one call on the current state, counted."""

    __slots__ = ("_client", "_state")

    def __init__(self, client: Client) -> None:
        self._client = client
        self._state: _State | None = None

    def __enter__(self) -> _State:
        self._state = self._client._enter()
        return self._state

    def __exit__(self, *exc_info: object) -> None:
        if self._state is not None:
            self._client._leave(self._state)


class Client:
    """A blocking, thread-safe client over one or more LLM providers.

    Share one ``Client`` among all threads of a process: each provider's limits
    are enforced across every thread using it. Calls block the calling thread;
    nothing here needs or starts an event loop. Hooks registered with :meth:`on`
    run in the calling thread and must not call back into the same client's
    ``close``/``reload``.
    """

    def __init__(
        self,
        config: ClientConfig | Mapping[str, Any],
        *,
        clock: Clock | None = None,
    ) -> None:
        cfg = ClientConfig.load(config)
        cfg.check_environment()
        self._clock = clock if clock is not None else SYSTEM_CLOCK
        self._hooks = Hooks()
        self._lock = threading.Lock()
        self._closed = False
        self._fleet = Fleet(self._clock)
        self._usage = _Usage()
        self._state = self._build(cfg, {}, {})

    @classmethod
    def from_file(cls, path: str, **kwargs: Any) -> Client:
        """A client from a YAML, TOML or JSON file (errors are ConfigError)."""
        return cls(ClientConfig.from_file(path), **kwargs)

    # -- building ------------------------------------------------------------------------

    def _build(
        self, cfg: ClientConfig, reuse: Mapping[str, Guard], old_pools: Mapping[str, Limiter]
    ) -> _State:
        # Pools live on across a reload (with the new limits): kept and new members share them.
        pools = {name: lim for name, lim in old_pools.items() if name in cfg.pools}
        for name, lim in pools.items():
            lim.update(**cfg.pools[name].limiter_kwargs())
        fresh = [p for p in cfg.providers if p.name not in reuse]
        built: dict[str, Guard] = {}
        if fresh:
            partial = cfg.model_copy(update={"providers": fresh, "chains": {}})
            built = build_guards(partial, clock=self._clock, hooks=self._hooks, pools=pools)
        guards: dict[str, Guard] = {}
        for pc in cfg.providers:
            if pc.name in reuse:
                guard = reuse[pc.name]
                guard.apply(pc, None if pc.pool is None else cfg.pools[pc.pool])
                guards[pc.name] = guard
            else:
                guards[pc.name] = built[pc.name]
        chains = {
            name: Chain(
                [guards[n] for n in cfg.chain(name)],
                clock=self._clock,
                hooks=self._hooks,
                fleet=self._fleet,
            )
            for name in {"default", *cfg.chains}
        }
        return _State(cfg, guards, chains, pools)

    @property
    def config(self) -> ClientConfig:
        """The configuration in force (immutable: ``model_copy(update=...)`` makes a changed copy).

        Pass the changed copy to :meth:`reload`.
        """
        return self._state.config

    # -- calls ---------------------------------------------------------------------------

    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        preferred_model: str | None = ...,
        chain: str | None = ...,
        timeout: float | _NotGiven | None = ...,
        stream: Literal[False] = ...,
        **params: Unpack[ChatParams],
    ) -> ChatResponse: ...

    @overload
    def chat(
        self,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        preferred_model: str | None = ...,
        chain: str | None = ...,
        timeout: float | _NotGiven | None = ...,
        stream: Literal[True],
        **params: Unpack[ChatParams],
    ) -> ChatStream: ...

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        preferred_model: str | None = None,
        chain: str | None = None,
        timeout: float | _NotGiven | None = NOT_GIVEN,
        stream: bool = False,
        **params: Any,
    ) -> ChatResponse | ChatStream:
        """Send one chat call through the chain and return the first good answer.

        ``messages``: OpenAI-style ``[{"role": ..., "content": ...}]`` (a plain
        string is one user message). ``preferred_model`` names a provider (or its
        model) and uses only it; ``chain`` names one of ``ClientConfig.chains``.
        ``timeout`` bounds the whole call (waits, retries, fallbacks); omitted:
        ``ClientConfig.timeout``; ``None``: no bound.

        The body parameters are OpenAI's, by name (:class:`~ratelimit_sdk.models.ChatParams`):
        ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``n``, ``seed``, ``tools``,
        ``tool_choice``, ``response_format``, ``presence_penalty``, ``frequency_penalty``,
        ``logprobs``, ``top_logprobs``, ``user`` and the other current ones. ``None`` is
        not sent. Any other field goes in ``extra_body={...}``, merged into the body
        last. An unknown keyword raises ``TypeError`` naming it (and the closest
        name), before anything is sent.

        ``stream=True`` returns a :class:`~ratelimit_sdk.stream.ChatStream` of text
        chunks instead; the provider's permit is held until the stream ends or is
        closed, and fallback happens only before the first chunk.

        Raises ``BadRequestError`` (the request itself is wrong; no fallback) or
        ``AllProvidersFailed`` (with every attempt).
        """
        if not CHAT_PARAMS.issuperset(params):
            check_keywords(params, CHAT_PARAMS, "chat()")  # raises, naming the first
        request = _make_request(messages, params, stream=stream)
        if stream:
            return self._run_stream(request, preferred_model, chain, timeout)
        return self._run(request, preferred_model, chain, timeout, None)

    def chat_stream(
        self,
        messages: Sequence[Mapping[str, Any]] | str,
        *,
        preferred_model: str | None = None,
        chain: str | None = None,
        timeout: float | _NotGiven | None = NOT_GIVEN,
        **params: Unpack[ChatParams],
    ) -> ChatStream:
        """``chat(messages, stream=True, ...)``: an iterator of text chunks."""
        check_keywords(params, CHAT_PARAMS, "chat_stream()")
        return self.chat(
            messages,
            preferred_model=preferred_model,
            chain=chain,
            timeout=timeout,
            stream=True,
            **params,
        )

    def _deadline(self, state: _State, timeout: float | _NotGiven | None) -> float:
        limit = state.config.timeout if isinstance(timeout, _NotGiven) else timeout
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0
        ):
            raise ConfigError(
                f"timeout: must be a number of seconds >= 0, or None for no bound (got {limit!r})",
                field="timeout",
            )
        return math.inf if limit is None else self._clock.monotonic() + limit

    def _run_stream(
        self,
        request: ChatRequest,
        preferred_model: str | None,
        chain_name: str | None,
        timeout: float | _NotGiven | None,
    ) -> ChatStream:
        state: _State | None = self._enter()
        assert state is not None
        try:
            chain = self._pick_chain(state, preferred_model, chain_name)
            _, result, attempts = chain.run(request, deadline=self._deadline(state, timeout))
            assert result is not None
            stream = result.stream
            if stream is None:  # the provider answered without streaming: serve it whole
                completion = result.completion
                assert completion is not None
                return finished_stream(completion.content, result.attempt.provider, attempts)
            stream.attempts = tuple(attempts)
            # The state (and its guards' sessions) stays held until the stream closes.
            stream.on_close(
                functools.partial(self._leave, state),
                from_gc=functools.partial(self._usage.leave_later, state),
            )
            state = None
            return stream
        finally:
            if state is not None:
                self._leave(state)

    def _run(
        self,
        request: ChatRequest,
        preferred_model: str | None,
        chain_name: str | None,
        timeout: float | _NotGiven | None,
        cancel: threading.Event | None,
    ) -> ChatResponse:
        with _InUse(self) as state:
            chain = self._pick_chain(state, preferred_model, chain_name)
            deadline = self._deadline(state, timeout)
            response, _, _ = chain.run(request, deadline=deadline, cancel=cancel)
        assert response is not None
        return response

    def _enter(self) -> _State:
        """The configuration a new call runs on, counted until :meth:`_leave`."""
        if self._closed:
            raise RateLimitSDKError("client is closed")
        return self._usage.enter(self)

    def _leave(self, state: _State) -> None:
        """A call on ``state`` ended: close the replaced guards nobody uses any more."""
        for guard in self._usage.leave(state, self._state):
            guard.close()

    def _pick_chain(
        self, state: _State, preferred_model: str | None, chain_name: str | None
    ) -> Chain:
        cfg = state.config
        if preferred_model is not None:
            if chain_name is not None:
                raise ConfigError("pass preferred_model or chain, not both", field="chain")
            guard = state.guards[cfg.provider(preferred_model).name]
            return Chain([guard], clock=self._clock, hooks=self._hooks, fleet=self._fleet)
        name = chain_name or "default"
        chain = state.chains.get(name)
        if chain is None:
            cfg.chain(name)  # raises ConfigError naming the known chains
            raise ConfigError(f"unknown chain {name!r}", field="chain")
        if not cfg.use_fallback:
            return Chain(chain.guards[:1], clock=self._clock, hooks=self._hooks, fleet=self._fleet)
        return chain

    # -- many calls ------------------------------------------------------------------------

    def map(
        self,
        items: Iterable[Any],
        *,
        max_workers: int = 8,
        progress: bool = True,
        return_exceptions: bool = False,
        **options: Any,
    ) -> list[Any]:
        """Run many calls from a thread pool; the results come back in input order.

        Each item is a messages list, a prompt string, a dict of ``chat`` keyword
        arguments (``{"messages": ..., "max_tokens": ...}``) or a ``ChatRequest``.
        ``options`` (``chain``, ``preferred_model``, ``timeout``, ...) apply to every
        item. With ``return_exceptions=True`` a failed item holds its SDK error;
        otherwise the first error is raised once the running calls end.
        Ctrl-C raises KeyboardInterrupt within about a second: queued items are
        cancelled, waiting threads give up, nothing new is sent, no permit leaks.
        """
        items = list(items)
        results: list[Any] = [None] * len(items)
        for index, outcome in self._iterate(
            items, max_workers, progress, return_exceptions, options
        ):
            results[index] = outcome
        return results

    def imap(
        self,
        items: Iterable[Any],
        *,
        max_workers: int = 8,
        progress: bool = False,
        return_exceptions: bool = False,
        ordered: bool = True,
        **options: Any,
    ) -> Generator[Any, None, None]:
        """Like :meth:`map`, but yield results as they are ready (for long jobs).

        ``ordered=True`` yields in input order; ``ordered=False`` yields
        ``(index, result)`` pairs as calls complete.
        """
        items = list(items)
        if not ordered:
            yield from self._iterate(items, max_workers, progress, return_exceptions, options)
            return
        pending: dict[int, Any] = {}
        next_index = 0
        for index, outcome in self._iterate(
            items, max_workers, progress, return_exceptions, options
        ):
            pending[index] = outcome
            while next_index in pending:
                yield pending.pop(next_index)
                next_index += 1

    def _iterate(
        self,
        items: list[Any],
        max_workers: int,
        progress: bool,
        return_exceptions: bool,
        options: Mapping[str, Any],
    ) -> Generator[tuple[int, Any], None, None]:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(
                f"max_workers: must be a whole number >= 1 (got {max_workers!r})",
                field="max_workers",
            )
        check_keywords(options, _CALL_OPTIONS, "map()")
        requests = [_checked_item(item, return_exceptions) for item in items]
        batch = _Batch(self, requests, max_workers, options)
        bar = _progress_bar(len(requests), progress)
        first_error: BaseException | None = None
        try:
            batch.submit_more()
            while batch.pending:
                for index, fut in batch.finished():
                    error = fut.exception()
                    if bar is not None:
                        bar.update(1)
                    if error is None:
                        yield index, fut.result()
                    elif return_exceptions and isinstance(error, (RateLimitSDKError, ValueError)):
                        yield index, error
                    elif first_error is None:
                        first_error = error
                        batch.stop()  # send nothing new; let the running calls end
                batch.submit_more()
            if first_error is not None:
                raise first_error
        except BaseException:
            batch.stop(everything=True)
            raise
        finally:
            batch.shutdown()
            if bar is not None:
                bar.close()

    def _wake_waiters(self) -> None:
        self._fleet.notify()
        for guard in self._state.guards.values():
            wake = getattr(guard.limiter, "wake_all", None)
            if callable(wake):
                wake()

    # -- any callable -------------------------------------------------------------------------

    def guarded(
        self,
        provider: str,
        *,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        timeout: float | _NotGiven | None = NOT_GIVEN,
    ) -> Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorate any callable so each call gets ``provider``'s limits, breaker and retries.

        ``@client.guarded("kimi")`` on a function that calls some other API: each
        call waits for admission (FIFO, through cooldowns), counts for the breaker,
        and is retried after the provider's backoff when it raises one of
        ``retry_on`` (a ``requests``/``httpx`` error carrying a 429 also sets a
        cooldown from its Retry-After). ``timeout`` bounds waits and retries
        together (omitted: ``ClientConfig.timeout``). The last error is re-raised.
        Each call runs on the provider's guard as configured when it starts (after a
        :meth:`reload`, the new one).
        """
        self.guard(provider)  # an unknown provider fails here, not at the first call

        def decorator(fn: Callable[P, T]) -> Callable[P, T]:
            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                with _InUse(self) as state:
                    guard = state.guards[state.config.provider(provider).name]
                    deadline = self._deadline(state, timeout)
                    return guard.call_with_retries(
                        fn, args, kwargs, deadline=deadline, failures=retry_on
                    )

            return wrapper

        return decorator

    # -- control -----------------------------------------------------------------------------

    def update_limits(self, provider: str, **limits: Any) -> None:
        """Change one provider's limits now, without a restart (validated like the config).

        ``client.update_limits("kimi", max_concurrent=2, requests_per_minute=10)``.
        Lowering ``max_concurrent`` admits nobody new until in-flight is under it.
        """
        with self._lock:
            state = self._state
            pc = state.config.provider(provider)
            merged = {**pc.limits.model_dump(), **limits}
            try:
                new_limits = LimitsConfig.model_validate(merged)
            except ValueError as exc:
                from .config import translate_validation_error

                if hasattr(exc, "errors"):
                    raise translate_validation_error(exc) from None  # type: ignore[arg-type]
                raise
            new_pc = pc.model_copy(update={"limits": new_limits})
            providers = [new_pc if p.name == pc.name else p for p in state.config.providers]
            new_cfg = state.config.model_copy(update={"providers": providers})
            pool = None if new_pc.pool is None else state.config.pools[new_pc.pool]
            state.guards[pc.name].apply(new_pc, pool)
            self._state = _State(new_cfg, state.guards, state.chains, state.pools)
        _log.info("%s: limits updated: %s", pc.name, limits)

    def reload(self, config: ClientConfig | Mapping[str, Any]) -> None:
        """Replace the whole configuration while running.

        Providers kept under the same name, URL, model, wire format, key and backend
        keep their limiter state (in flight, bucket, cooldown) and take the new limits;
        others are built fresh. Pools live on too: new members share them and they take
        the new pool limits. Calls already running finish on what they started with.
        """
        cfg = ClientConfig.load(config)
        cfg.check_environment()
        with self._lock:
            old = self._state
            same_backend = cfg.backend == old.config.backend
            reuse = {
                p.name: old.guards[p.name]
                for p in cfg.providers
                if same_backend
                and p.name in old.guards
                and _same_endpoint(old.guards[p.name].config, p)
                and (p.pool or None) == (old.guards[p.name].config.pool or None)
            }
            self._state = new = self._build(cfg, reuse, old.pools if same_backend else {})
            kept = set(reuse)
            idle = self._usage.retire([g for n, g in old.guards.items() if n not in kept], new)
        for guard in idle:  # replaced, and no running call holds them: close them now
            guard.close()
        _log.info("configuration reloaded: %s", ", ".join(p.name for p in cfg.providers))

    def on(self, event: str, fn: HookFn) -> HookFn:
        """Call ``fn(event)`` on each ``event`` (see :mod:`ratelimit_sdk.hooks`)."""
        return self._hooks.on(event, fn)

    def off(self, event: str, fn: HookFn) -> None:
        """Stop calling ``fn`` for ``event``."""
        self._hooks.off(event, fn)

    # -- observation ---------------------------------------------------------------------------

    def stats(self) -> dict[str, ProviderStats]:
        """Per-provider figures (this process's counts; shared ones too with Redis).

        A plain dict; in Jupyter it renders as a table.
        """
        return StatsTable((name, guard.stats()) for name, guard in self._state.guards.items())

    def _repr_html_(self) -> str:
        status = "closed" if self._closed else "open"
        backend = redact_url(self._state.config.backend)
        title = f"ratelimit_sdk.Client ({status}, backend {backend})"
        return stats_html(self.stats().values(), title)

    def guard(self, provider: str) -> Guard:
        """The guard of one provider (limiter, breaker, transport), for advanced use."""
        state = self._state
        return state.guards[state.config.provider(provider).name]

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every transport and wake waiting threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            guards = list(self._state.guards.values()) + self._usage.retire_all()
        for guard in guards:
            guard.close()
        self._fleet.notify()  # calls waiting for any provider: look again, and give up

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._state
        parts = []
        for name, guard in state.guards.items():
            limiter = guard.limiter
            parts.append(
                f"{name}(in_flight={limiter.in_flight}, queued={limiter.queued}, "
                f"breaker={guard.breaker.state})"
            )
        status = "closed" if self._closed else "open"
        backend = redact_url(state.config.backend)
        return f"<Client {status} backend={backend!r} {' '.join(parts)}>"


def _same_endpoint(old: ProviderConfig, new: ProviderConfig) -> bool:
    return (
        old.base_url == new.base_url
        and old.model == new.model
        and old.api == new.api
        and old.api_key == new.api_key
        and old.api_key_env == new.api_key_env
        and old.headers == new.headers
        and old.timeout == new.timeout
    )


def _make_request(
    messages: Any,
    params: Mapping[str, Any],
    stream: bool = False,
) -> ChatRequest:
    """A :class:`ChatRequest` from ``chat``'s arguments (names already checked).

    ``None`` values are dropped; ``max_tokens`` and ``temperature`` get their own
    fields, ``extra_body`` its own, the rest go to ``params``.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise BadRequestError("messages: expected a non-empty list of {'role', 'content'} dicts")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise BadRequestError(f"messages[{i}]: expected a dict with 'role' and 'content'")
        clean.append(dict(message))
    given = {name: value for name, value in params.items() if value is not None}
    max_tokens = given.pop("max_tokens", None)
    temperature = given.pop("temperature", None)
    extra_body = given.pop("extra_body", None) or {}
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise BadRequestError(f"max_tokens: expected a whole number >= 1, got {max_tokens!r}")
    if not isinstance(extra_body, Mapping):
        raise BadRequestError(f"extra_body: expected a dict, got {type(extra_body).__name__}")
    return ChatRequest(
        messages=clean,
        max_tokens=max_tokens,
        temperature=temperature,
        params=given,
        stream=stream,
        extra_body=dict(extra_body),
    )


_CALL_OPTIONS = ("preferred_model", "chain", "timeout")
_ITEM_KEYS = frozenset({"messages", *_CALL_OPTIONS, *CHAT_PARAMS})


def _checked_item(
    item: Any, return_exceptions: bool
) -> tuple[ChatRequest, dict[str, Any]] | RateLimitSDKError | ValueError:
    """The request of one ``map`` item; with ``return_exceptions``, a bad one's error.

    Every item is checked before anything is sent: without ``return_exceptions`` a
    bad item raises here; with it, its error takes its slot in the results.
    """
    try:
        return _item_request(item)
    except (RateLimitSDKError, ValueError) as exc:
        if not return_exceptions:
            raise
        return exc


def _item_request(item: Any) -> tuple[ChatRequest, dict[str, Any]]:
    if isinstance(item, ChatRequest):
        return item, {}
    if isinstance(item, Mapping) and "messages" in item:
        check_keywords(item, _ITEM_KEYS, "map() item")
        kwargs = dict(item)
        extra = {k: kwargs.pop(k) for k in _CALL_OPTIONS if k in kwargs}
        messages = kwargs.pop("messages")
        return _make_request(messages, kwargs), extra
    return _make_request(item, {}), {}


class _Batch:
    """The calls of one ``map``/``imap``: a thread pool fed a bounded window ahead.

    Submitting lazily, at most twice ``max_workers`` ahead of the workers, means a
    long job stopped early (Ctrl-C, an error, an abandoned ``imap``) has sent only
    what was really running. Used by the one thread that iterates.
    """

    def __init__(
        self,
        client: Client,
        requests: list[tuple[ChatRequest, dict[str, Any]] | RateLimitSDKError | ValueError],
        max_workers: int,
        options: Mapping[str, Any],
    ) -> None:
        self.client = client
        self.cancel = threading.Event()
        self.pool = ThreadPoolExecutor(
            max_workers=min(max_workers, max(1, len(requests))),
            thread_name_prefix="ratelimit_sdk",
        )
        self.window = max_workers * 2
        self.todo = iter(enumerate(requests))
        self.options = options
        self.futures: dict[Future[ChatResponse], int] = {}
        self.pending: set[Future[ChatResponse]] = set()

    def submit_more(self) -> None:
        """Fill the window (nothing once stopped)."""
        while len(self.pending) < self.window and not self.cancel.is_set():
            nxt = next(self.todo, None)
            if nxt is None:
                return
            index, item = nxt
            if isinstance(item, BaseException):  # a bad item: its error takes its slot
                fut: Future[ChatResponse] = Future()
                fut.set_exception(item)
                self.futures[fut] = index
                self.pending.add(fut)
                continue
            request, extra = item
            options = {**self.options, **extra}
            fut = self.pool.submit(
                self.client._run,
                request,
                options.get("preferred_model"),
                options.get("chain"),
                options.get("timeout", NOT_GIVEN),
                self.cancel,
            )
            self.futures[fut] = index
            self.pending.add(fut)

    def finished(self) -> list[tuple[int, Future[ChatResponse]]]:
        """The calls that ended since the last look, with their input index.

        Wakes at least twice a second so Ctrl-C in the iterating thread is seen promptly.
        """
        done, still = wait(self.pending, timeout=0.5, return_when=FIRST_COMPLETED)
        self.pending.intersection_update(still)
        # A future cancelled before it started (after the first error) has no result.
        return [(self.futures.pop(f), f) for f in done if not f.cancelled()]

    def stop(self, *, everything: bool = False) -> None:
        """Send nothing new: cancel what has not started and wake the waiting calls."""
        self.cancel.set()
        for fut in self.futures if everything else self.pending:
            fut.cancel()
        self.client._wake_waiters()

    def shutdown(self) -> None:
        """Let the pool go without waiting for the calls still running."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="call", desc="ratelimit_sdk", leave=False)
