"""Stage 3b (admission control): the ``Limiter`` interface and the ``Permit`` it hands out.

``Limiter(...)`` picks its backend from ``backend=`` through a registry keyed by
URL scheme (as the ``limits`` library's ``storage_from_string`` does): ``"memory"``
(this process, :mod:`.memory`) or ``"redis://host:port/db"`` (every process sharing
the Redis server, :mod:`.redis`). Backends register themselves with
:func:`register_backend` (``limiter/__init__.py`` registers the two built-in ones);
this module imports none of them. ``Limiter`` is abstract: a backend that misses
one of its abstract methods fails at construction with ``TypeError``.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import math
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .._windows import check_windows
from ..clock import Clock
from ..errors import ConfigError
from ..models import AVAILABLE_NOW, Availability, LimiterSnapshot
from ._args import check_tokens

__all__ = [
    "Limiter",
    "Permit",
    "backend_class",
    "backend_schemes",
    "check_limits",
    "from_backend",
    "register_backend",
]

_LIMIT_FIELDS = (
    "max_concurrent",
    "requests_per_minute",
    "burst",
    "min_interval",
    "tokens_per_minute",
    "margin",
    "windows",
)


def check_limits(fields: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first field whose value is not a valid limit."""
    for name, value in fields.items():
        if name not in _LIMIT_FIELDS:
            raise ConfigError(
                f"{name}: unknown limit (known: {', '.join(_LIMIT_FIELDS)})", field=name
            )
        if name == "windows":
            check_windows(value)
            continue
        if value is None:
            if name in ("min_interval", "margin"):
                raise ConfigError(f"{name}: must be a number >= 0 (got None)", field=name)
            continue
        if value == "auto":
            raise ConfigError(
                f'{name}: "auto" is learned by a Client from its provider\'s answers; a '
                "Limiter takes numbers (to learn with a bare Limiter, build "
                "ratelimit_sdk.learn.Learner on it and feed it the answers)",
                field=name,
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: must be a number (got {value!r})", field=name)
        if not math.isfinite(value):
            raise ConfigError(f"{name}: must be finite (got {value!r})", field=name)
        if name in ("max_concurrent", "burst") and value != int(value):
            raise ConfigError(f"{name}: must be a whole number (got {value!r})", field=name)
        if name in ("min_interval", "margin"):
            if value < 0:
                raise ConfigError(f"{name}: must be >= 0 (got {value!r})", field=name)
        elif value <= 0:
            raise ConfigError(
                f"{name}: must be greater than 0 (got {value!r}); use None for no limit",
                field=name,
            )


def check_pool_units(value: object, pool_max: int | None) -> int:
    """Return ``value`` as pool units, or raise ConfigError naming the problem.

    Pool units must be a whole number >= 1 and no more than the pool's ``max_concurrent``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"pool_units: must be a whole number >= 1 (got {value!r})", field="pool_units"
        )
    if pool_max is not None and value > pool_max:
        raise ConfigError(
            f"pool_units: {value} is more than the pool holds ({pool_max})", field="pool_units"
        )
    return value


#: scheme -> the backend class, or ``"module:Class"`` imported on first use.
_BACKENDS: dict[str, type[Limiter] | str] = {}
_BACKENDS_LOCK = threading.Lock()


def _scheme(backend: str) -> str:
    """``"redis"`` for ``"redis://host/0"``; a bare name (``"memory"``) is its own scheme."""
    return backend.split("://", 1)[0].lower() if "://" in backend else backend.lower()


def register_backend(schemes: str | tuple[str, ...], target: type[Limiter] | str) -> None:
    """Make ``Limiter(backend="<scheme>://...")`` build ``target``.

    ``target``: a :class:`Limiter` subclass, or ``"package.module:Class"`` imported
    when first needed (so an optional dependency is imported only when used).
    A scheme registered again is replaced.
    """
    names = (schemes,) if isinstance(schemes, str) else schemes
    with _BACKENDS_LOCK:
        for name in names:
            _BACKENDS[_scheme(name)] = target


def backend_schemes() -> tuple[str, ...]:
    """The registered schemes, sorted."""
    return tuple(sorted(_BACKENDS))


def backend_class(backend: str) -> type[Limiter]:
    """The limiter class registered for ``backend``'s scheme (``"memory"``, ``redis://...``)."""
    target = _BACKENDS.get(_scheme(backend)) if isinstance(backend, str) else None
    if target is None:
        known = ", ".join(f"{s}://" for s in backend_schemes())
        raise ConfigError(
            f'backend: must be "memory" or a URL with a known scheme ({known}); got {backend!r}',
            field="backend",
        )
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        cls: type[Limiter] = getattr(importlib.import_module(module_name), attr)
        with _BACKENDS_LOCK:
            for name, value in list(_BACKENDS.items()):
                if value == target:
                    _BACKENDS[name] = cls
        return cls
    return target


def from_backend(backend: str = "memory", **kwargs: Any) -> Limiter:
    """Build the limiter for ``backend`` with ``kwargs`` (what ``Limiter(...)`` does)."""
    return backend_class(backend)(backend=backend, **kwargs)


_F = TypeVar("_F")


def _unimplemented(limiter: object, method: str) -> TypeError:
    """The error of an abstract method reached anyway (a backend's ``super()`` call)."""
    return TypeError(f"{type(limiter).__name__} does not implement Limiter.{method}()")


if TYPE_CHECKING:
    # ``Limiter(...)`` is the public way to build a limiter (it picks the backend), so
    # type checkers must see a class they may instantiate; at run time the methods
    # are abstract and a backend that misses one fails at construction.
    def _abstract(fn: _F) -> _F:
        return fn
else:
    _abstract = abc.abstractmethod


class Permit:
    """Admission to make one request: hold it while the request runs, then release it.

    ``release()`` is idempotent and thread-safe. A ``Permit`` is a context manager
    (released on exit, whatever the exit). ``settle(tokens=n)`` corrects the LLM
    token estimate charged at admission once the real usage is known.
    A permit dropped without release (an abandoned stream, a lost reference) is
    released when it is garbage-collected.

    Released exactly once: whichever path gets there first (``release()``, ``with``,
    the garbage collector, or the limiter undoing an admission its caller never
    saw) makes the one held -> released transition, a flag the owner tests and sets
    under its lock; every later path finds it set and does nothing. A half-built
    permit (an interrupt inside ``__init__``) counts as never held: its finalizer
    does nothing. A backend may build its permits not yet held (``_released``
    true) and mark them held in the same step that counts them.
    """

    __slots__ = (
        "__weakref__",
        "_allow",
        "_at",
        "_owner",
        "_released",
        "_settled",
        "tokens",
        "units",
    )

    def __init__(self, owner: Limiter, units: int, tokens: int) -> None:
        self._released = False  # first: a permit cut short here has no owner to release
        self._settled = False
        self._owner = owner
        self.units = units
        self.tokens = tokens
        self._at = 0.0  # when it was admitted (the owner's clock), for mark_sent
        self._allow = math.inf  # the jitter allowance its admission assumed (inf: none)

    @property
    def released(self) -> bool:
        """True once the permit has been given back."""
        return self._released

    def release(self) -> None:
        """Give the concurrency units back (no-op if already released)."""
        if not self._released:
            self._owner._release(self)

    def settle(
        self, *, tokens: int, input_tokens: int | None = None, output_tokens: int | None = None
    ) -> None:
        """Replace the token estimate charged at admission by the real count ``tokens``.

        Refunds the difference when the estimate was high, charges it when low.
        May be called once, before or after release; later calls are ignored (an
        interrupted call counts as made: at most once, never twice).

        Windows of ``input_tokens`` / ``output_tokens`` (see ``Limiter(windows=...)``)
        are settled with ``input_tokens`` / ``output_tokens`` when given, else with
        ``tokens``. The estimate reserved at admission is the total, charged to every
        token window alike (an upper bound for each kind); the correction goes to
        the window slots where the admission was charged.
        """
        check_tokens(tokens)
        if input_tokens is not None:
            check_tokens(input_tokens)
        if output_tokens is not None:
            check_tokens(output_tokens)
        if self._settled:
            return
        self._settled = True
        diff = tokens - self.tokens
        if input_tokens is None and output_tokens is None:
            if diff:
                self._owner._settle(self, diff)
            return
        in_diff = diff if input_tokens is None else input_tokens - self.tokens
        out_diff = diff if output_tokens is None else output_tokens - self.tokens
        if diff or in_diff or out_diff:
            self._owner._settle(self, diff, (in_diff, out_diff))

    def mark_sent(self) -> None:
        """The request this permit admitted is leaving now (call right after writing it).

        The limiter allowed for a delay up to its jitter allowance between the
        admission and the request reaching the provider; half of it is kept for
        the way from here to the provider, and a request that leaves later than
        the other half makes the limiter pace the next ones from now (plus that
        half), so the provider's limiter still holds. Cheap when on time (no lock); a no-op on a
        limiter that paces nothing, on a released permit, or when called again.
        The ``Client`` calls it for you.
        """
        if self._allow != math.inf and not self._released:
            self._owner._mark_sent(self)

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._released:
            self._owner._release(self)

    def __del__(self) -> None:
        try:
            if self._released:
                return
            owner = self._owner
        except AttributeError:  # half-built (an interrupt inside __init__): never held
            return
        with contextlib.suppress(Exception):  # interpreter shutdown
            owner._release_from_gc(self)

    def __repr__(self) -> str:
        state = "released" if getattr(self, "_released", True) else "held"
        return f"<Permit units={self.units} tokens={self.tokens} {state}>"


class Limiter(abc.ABC):
    """Admission control for one provider (or any API): concurrency, rate, spacing, cooldown.

    ``Limiter(max_concurrent=4, requests_per_minute=600, burst=5, min_interval=0.0,
    tokens_per_minute=None, backend="memory", key=None, windows=None)``. ``None``
    means no such limit. With ``backend="redis://..."`` every process using the
    same ``key`` shares the limits.

    ``windows``: window limits, "at most N per T", each a dict
    ``{"requests": N, "per": T}`` (or ``tokens``, ``input_tokens``,
    ``output_tokens``; ``per`` in seconds or ``"500ms"``, ``"10s"``, ``"1m"``,
    ``"2h"``, ``"1d"``) with ``"align": "sliding"`` (any interval of length T, the
    default) or ``"utc"`` (fixed windows reset at UTC multiples of T). They are
    admitted in the same decision as the other limits and allow for the jitter
    margin (N in any ``T + margin``). Each window keeps at most 101 slots of
    ``T / 100``; a charge counts from its slot's end, so it may cost up to
    ``T / 100`` of extra wait, never an extra admission. See :mod:`ratelimit_sdk._windows`.

    Thread-safe: one limiter is meant to be shared by every thread that calls the
    same API. Waiting is first come, first served, and bounded by ``timeout``.

    Abstract: each backend implements the ``@abstractmethod`` members (a backend
    missing one cannot be built: ``TypeError``). The looks (:meth:`availability`,
    :meth:`try_admit`, ...) have defaults built on :meth:`snapshot` and
    :meth:`try_acquire`; a shared backend overrides them to answer in one round trip.
    """

    def __new__(cls, *args: Any, backend: str = "memory", **kwargs: Any) -> Limiter:
        """Pick the implementation for ``backend`` when called as ``Limiter(...)``."""
        if cls is Limiter:
            return object.__new__(backend_class(backend))
        return object.__new__(cls)

    clock: Clock

    # -- admission --------------------------------------------------------------------

    @_abstract
    def acquire(
        self,
        timeout: float | None = None,
        *,
        units: int = 1,
        tokens: int = 0,
        cancel: threading.Event | None = None,
    ) -> Permit:
        """Block until admitted and return a :class:`Permit`.

        ``timeout``: the longest wait in seconds (``None``: no bound; ``0``: do not
        wait). ``cancel``: an event that, once set (and :meth:`wake_all` called),
        makes the wait give up with AcquireTimeout. Raises AcquireTimeout past the
        timeout, and RequestTooLargeError when ``units`` or ``tokens`` can never
        fit the limits.
        """
        raise _unimplemented(self, "acquire")

    @_abstract
    def try_acquire(self, *, units: int = 1, tokens: int = 0) -> Permit | None:
        """Admit now if every limit allows it (and nobody waits ahead), else ``None``."""
        raise _unimplemented(self, "try_acquire")

    def would_admit(self, *, units: int = 1, tokens: int = 0) -> bool:
        """Whether an acquire now would be admitted at once. Takes nothing; only a look.

        The answer can be stale by the time the caller acts on it.
        """
        snap = self.snapshot()
        if snap.queued or snap.cooldown_remaining > 0 or snap.next_start_in > 0:
            return False
        if snap.max_concurrent is not None and snap.in_flight + units > snap.max_concurrent:
            return False
        if snap.tokens is not None and snap.tokens < 1.0 - 1e-9:
            return False
        return not (snap.llm_tokens is not None and tokens and snap.llm_tokens < tokens)

    def time_to_admit(self, *, units: int = 1, tokens: int = 0) -> float | None:
        """Seconds until an acquire would be admitted at once (``None``: needs a release).

        The default reads :meth:`snapshot`; backends may answer more exactly.
        """
        snap = self.snapshot()
        if snap.queued or (
            snap.max_concurrent is not None and snap.in_flight + units > snap.max_concurrent
        ):
            return None
        return max(snap.cooldown_remaining, snap.next_start_in)

    def availability(self, *, units: int = 1, tokens: int = 0) -> Availability:
        """Whether an acquire now would be admitted at once, and if not, from when.

        One look (one round trip with a shared backend); nothing is taken. The
        default reads :meth:`snapshot`; backends may answer more exactly.
        """
        wait = self.time_to_admit(units=units, tokens=tokens)
        if wait == 0.0:
            return AVAILABLE_NOW
        return Availability(wait, cooldown=self.cooldown_remaining())

    def try_admit(self, *, units: int = 1, tokens: int = 0) -> Permit | Availability:
        """Admit now if every limit allows it (nobody waits ahead); else say from when.

        The permit, or the :class:`~ratelimit_sdk.models.Availability` that explains
        the refusal. One round trip with a shared backend; never waits.
        """
        permit = self.try_acquire(units=units, tokens=tokens)
        if permit is not None:
            return permit
        return self.availability(units=units, tokens=tokens)

    def add_listener(self, fn: Any) -> None:  # noqa: B027 - optional, a no-op by default
        """Call ``fn()`` after releases, where the backend can tell (default: never)."""

    def __call__(self, func: Any) -> Any:
        """Use the limiter as a decorator: each call of ``func`` holds a permit."""
        import functools

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.acquire():
                return func(*args, **kwargs)

        return wrapper

    # -- control ------------------------------------------------------------------------

    @_abstract
    def update(self, **limits: Any) -> None:
        """Change any limit while running; ``None`` removes a limit.

        Fields: ``max_concurrent``, ``requests_per_minute``, ``burst``,
        ``min_interval``, ``tokens_per_minute``, ``margin``, ``windows`` (the whole
        list; a window of the same kind, length and alignment as a current one
        keeps what was charged to it). Lowering ``max_concurrent``
        admits nobody until in-flight is under the new value; raising it admits
        waiting threads at once.
        """
        raise _unimplemented(self, "update")

    def limits(self) -> dict[str, Any]:
        """The limits in force now, as the keywords :meth:`update` takes.

        Every built-in backend has it (with Redis: as last read from the shared
        store); a backend without it raises ``TypeError``.
        """
        raise _unimplemented(self, "limits")

    @_abstract
    def cooldown(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now (extends, never shortens, a cooldown)."""
        raise _unimplemented(self, "cooldown")

    @property
    def paces(self) -> bool:
        """Whether this limiter spaces requests in time (a rate, a spacing, a token budget).

        A limiter that only bounds concurrency does not: a rate-limit refusal then
        says nothing about its pacing (:meth:`report_overrun` has nothing to widen).
        """
        limits = self.limits()
        return bool(
            limits.get("requests_per_minute")
            or limits.get("min_interval")
            or limits.get("tokens_per_minute")
            or limits.get("windows")
        )

    def report_overrun(self) -> float:
        """The server refused a request this limiter paced: widen the jitter allowance.

        Called when a request admitted under the rate limits (token bucket,
        spacing, windows) still got a rate-limit refusal: the gap between our
        admission and the server's arrival was larger than the allowance. The
        allowance grows (and decays back slowly); the return value is the
        seconds until the rate limits admit the next request under the wider
        allowance, ignoring concurrency (``0.0`` for a limiter that paces
        nothing). The default does nothing and returns ``0.0``.
        """
        return 0.0

    def wake_all(self) -> None:  # noqa: B027 - optional, a no-op by default
        """Wake waiting threads so they re-check their cancel flags (default: nothing to do)."""

    @_abstract
    def close(self) -> None:
        """Release resources (connections); waiting threads get AcquireTimeout."""
        raise _unimplemented(self, "close")

    # -- observation ----------------------------------------------------------------------

    @property
    @_abstract
    def in_flight(self) -> int:
        """Concurrency units held now (this process)."""
        raise _unimplemented(self, "in_flight")

    @property
    @_abstract
    def queued(self) -> int:
        """Threads waiting for admission now (this process)."""
        raise _unimplemented(self, "queued")

    @_abstract
    def cooldown_remaining(self) -> float:
        """Seconds until the current cooldown ends (0.0: none)."""
        raise _unimplemented(self, "cooldown_remaining")

    @_abstract
    def snapshot(self) -> LimiterSnapshot:
        """A consistent view of the limits and the state."""
        raise _unimplemented(self, "snapshot")

    # -- used by Permit -------------------------------------------------------------------

    @_abstract
    def _release(self, permit: Permit) -> None:
        """Give ``permit``'s units back (called once per permit, by :meth:`Permit.release`)."""
        raise _unimplemented(self, "_release")

    @_abstract
    def _settle(self, permit: Permit, diff: int, kinds: tuple[int, int] | None = None) -> None:
        """Charge ``diff`` more LLM tokens (a refund when negative) for ``permit``.

        ``kinds``: the differences for the ``input_tokens`` and ``output_tokens``
        windows when they differ from ``diff`` (``None``: both are ``diff``).
        """
        raise _unimplemented(self, "_settle")

    def _mark_sent(self, permit: Permit) -> None:  # noqa: B027 - optional, a no-op by default
        """See :meth:`Permit.mark_sent` (default: nothing to correct)."""

    def _release_from_gc(self, permit: Permit) -> None:
        """Release a permit that was garbage-collected while held (no blocking on locks)."""
        self._release(permit)
