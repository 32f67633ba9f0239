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
    AcquireTimeout,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    RateLimitSDKError,
)
from .guard import Guard, build_guards
from .hooks import Event, HookFn, Hooks
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
        self._retired: list[Guard] = []
        self._fleet = Fleet(self._clock)
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
                guard.apply(pc)
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
        check_keywords(params, CHAT_PARAMS, "chat()")
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
            raise ValueError(f"timeout must be a number >= 0 or None, got {limit!r}")
        return math.inf if limit is None else self._clock.monotonic() + limit

    def _run_stream(
        self,
        request: ChatRequest,
        preferred_model: str | None,
        chain_name: str | None,
        timeout: float | _NotGiven | None,
    ) -> ChatStream:
        if self._closed:
            raise RateLimitSDKError("client is closed")
        state = self._state
        chain = self._pick_chain(state, preferred_model, chain_name)
        _, result, attempts = chain.run(request, deadline=self._deadline(state, timeout))
        assert result is not None
        if result.stream is None:  # the provider answered without streaming: serve it whole
            completion = result.completion
            assert completion is not None
            return finished_stream(completion.content, result.attempt.provider, attempts)
        result.stream.attempts = tuple(attempts)
        return result.stream

    def _run(
        self,
        request: ChatRequest,
        preferred_model: str | None,
        chain_name: str | None,
        timeout: float | _NotGiven | None,
        cancel: threading.Event | None,
    ) -> ChatResponse:
        if self._closed:
            raise RateLimitSDKError("client is closed")
        state = self._state
        chain = self._pick_chain(state, preferred_model, chain_name)
        deadline = self._deadline(state, timeout)
        response, _, _ = chain.run(request, deadline=deadline, cancel=cancel)
        assert response is not None
        return response

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
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a whole number >= 1, got {max_workers!r}")
        unknown = set(options) - {"preferred_model", "chain", "timeout"}
        if unknown:
            raise TypeError(f"map() got unexpected options: {', '.join(sorted(unknown))}")
        requests = [_item_request(item) for item in items]
        cancel = threading.Event()
        bar = _progress_bar(len(requests), progress)
        pool = ThreadPoolExecutor(
            max_workers=min(max_workers, max(1, len(requests))),
            thread_name_prefix="ratelimit_sdk",
        )
        futures: dict[Future[ChatResponse], int] = {}
        preferred = options.get("preferred_model")
        chain_name = options.get("chain")
        timeout = options.get("timeout", NOT_GIVEN)
        first_error: BaseException | None = None
        # Submit lazily, a bounded window ahead of the workers: a long job stopped early
        # (Ctrl-C, an error, an abandoned imap) has sent only what was really running.
        window = max_workers * 2
        todo = iter(enumerate(requests))
        pending: set[Future[ChatResponse]] = set()

        def submit_more() -> None:
            while len(pending) < window and not cancel.is_set():
                nxt = next(todo, None)
                if nxt is None:
                    return
                index, (request, extra) = nxt
                fut = pool.submit(
                    self._run,
                    request,
                    extra.get("preferred_model", preferred),
                    extra.get("chain", chain_name),
                    extra.get("timeout", timeout),
                    cancel,
                )
                futures[fut] = index
                pending.add(fut)

        try:
            submit_more()
            while pending:
                # Wake at least twice a second so Ctrl-C in this thread is seen promptly.
                done, still = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                pending.intersection_update(still)
                for fut in done:
                    if fut.cancelled():  # never started: cancelled after the first error
                        continue
                    index = futures.pop(fut)
                    error = fut.exception()
                    if bar is not None:
                        bar.update(1)
                    if error is None:
                        yield index, fut.result()
                    elif return_exceptions and isinstance(error, (RateLimitSDKError, ValueError)):
                        yield index, error
                    else:
                        if first_error is None:
                            first_error = error
                            cancel.set()  # stop sending; let the running calls end
                            for other in pending:
                                other.cancel()
                            self._wake_waiters()
                submit_more()
            if first_error is not None:
                raise first_error
        except BaseException:
            cancel.set()
            for fut in futures:
                fut.cancel()
            self._wake_waiters()
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
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
        """
        guard = self.guard(provider)

        def decorator(fn: Callable[P, T]) -> Callable[P, T]:
            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
                deadline = self._deadline(self._state, timeout)
                retries = 0
                while True:
                    try:
                        return guard.call(fn, args, kwargs, deadline=deadline, failures=retry_on)
                    except (CircuitOpenError, AcquireTimeout):
                        raise
                    except retry_on as exc:
                        wait = guard.backoff.next_wait(retries, getattr(exc, "retry_after", None))
                        if wait is None or self._clock.monotonic() + wait >= deadline:
                            raise
                        retries += 1
                        guard.count_retry()
                        _log.info("%s: %r; retry %d in %.2fs", guard.name, exc, retries, wait)
                        if self._hooks:
                            self._hooks.emit(Event("retry", guard.name, delay=wait, error=exc))
                        self._clock.sleep(wait)

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
            state.guards[pc.name].apply(new_pc)
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
            self._state = self._build(cfg, reuse, old.pools if same_backend else {})
            kept = set(reuse)
            self._retired.extend(g for n, g in old.guards.items() if n not in kept)
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
            guards = list(self._state.guards.values()) + self._retired
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


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="call", desc="ratelimit_sdk", leave=False)
