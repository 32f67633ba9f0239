"""Testing (fake provider side): FakeFleet, named FakeProviders started and stopped together.

::

    with FakeFleet(
        FakeProvider("kimi", max_concurrency=1, requests_per_minute=4),
        FakeProvider("glm", max_concurrency=10),
    ) as fleet:
        config = {"providers": fleet.provider_configs()}
        fleet["kimi"].fail_all(503)
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

from ratelimit_sdk.testing.fake_provider import FakeProvider

__all__ = ["FakeFleet"]


class FakeFleet:
    """Named :class:`FakeProvider` servers that start and stop as one.

    ``fleet["kimi"]`` is the provider named ``"kimi"``; iterating yields the
    providers in the order given. Starting is all or nothing: if one fails to
    bind, the ones already started are stopped again.

    Thread-safety: the fleet itself is only a fixed collection; start and stop
    it from one thread. Each member is a FakeProvider and as thread-safe as one.
    """

    def __init__(self, *providers: FakeProvider) -> None:
        names = [p.name for p in providers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"FakeFleet: provider names must be unique, repeated: {duplicates}")
        self._providers = {p.name: p for p in providers}

    def start(self) -> FakeFleet:
        """Start every provider (all or nothing); returns ``self``."""
        started: list[FakeProvider] = []
        try:
            for provider in self._providers.values():
                provider.start()
                started.append(provider)
        except BaseException:
            for provider in started:
                provider.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every provider. Idempotent."""
        for provider in self._providers.values():
            provider.stop()

    def __enter__(self) -> FakeFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __getitem__(self, name: str) -> FakeProvider:
        return self._providers[name]

    def __iter__(self) -> Iterator[FakeProvider]:
        return iter(list(self._providers.values()))

    def __len__(self) -> int:
        return len(self._providers)

    def __repr__(self) -> str:
        return f"FakeFleet({', '.join(repr(n) for n in self._providers)})"

    @property
    def names(self) -> list[str]:
        """The providers' names, in the order given."""
        return list(self._providers)

    @property
    def base_urls(self) -> dict[str, str]:
        """``{name: base_url}`` of every provider (they must be running)."""
        return {name: p.base_url for name, p in self._providers.items()}

    def provider_configs(self, **extra: Any) -> list[dict[str, Any]]:
        """One provider config dict per provider (see ``FakeProvider.provider_config``)."""
        return [p.provider_config(**extra) for p in self._providers.values()]

    def heal(self) -> None:
        """``heal()`` every provider."""
        for provider in self._providers.values():
            provider.heal()

    def reset_stats(self) -> None:
        """``reset_stats()`` every provider."""
        for provider in self._providers.values():
            provider.reset_stats()
