"""The backend registry and the abstract Limiter interface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ratelimit_sdk.errors import ConfigError
from ratelimit_sdk.limiter import (
    Limiter,
    MemoryLimiter,
    backend_class,
    backend_schemes,
    register_backend,
)
from ratelimit_sdk.limiter.base import _BACKENDS


def test_built_in_schemes() -> None:
    assert {"memory", "redis", "rediss", "unix"} <= set(backend_schemes())
    assert backend_class("memory") is MemoryLimiter
    assert backend_class("memory://") is MemoryLimiter
    assert isinstance(Limiter(max_concurrent=1), MemoryLimiter)


def test_an_unknown_scheme_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="redis://") as info:
        Limiter(max_concurrent=1, backend="mongodb://x")
    assert info.value.field == "backend"


class _Incomplete(Limiter):
    """Misses every abstract method but acquire."""

    def acquire(self, timeout: float | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError


def test_a_backend_missing_a_method_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="abstract"):
        _Incomplete()


def test_a_new_backend_plugs_in_without_touching_base() -> None:
    class Custom(MemoryLimiter):
        """A backend of a test's own."""

        def __init__(self, *, backend: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.url = backend

    saved = dict(_BACKENDS)
    try:
        register_backend("custom", Custom)
        lim = Limiter(max_concurrent=3, backend="custom://somewhere")
        assert isinstance(lim, Custom) and lim.url == "custom://somewhere"
        register_backend(("lazy",), "ratelimit_sdk.limiter.memory:MemoryLimiter")
        assert backend_class("lazy://") is MemoryLimiter
    finally:
        _BACKENDS.clear()
        _BACKENDS.update(saved)


def test_the_redis_backend_is_imported_only_when_a_redis_limiter_is_built() -> None:
    # (pybreaker itself imports redis when it is installed; the SDK's modules do not.)
    code = (
        "import sys, ratelimit_sdk\n"
        "from ratelimit_sdk.limiter import Limiter\n"
        "Limiter(max_concurrent=1)\n"
        "assert not [m for m in sys.modules if m.startswith('ratelimit_sdk.limiter.redis')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_redis_package_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from ratelimit_sdk.limiter import Limiter\n"
        "from ratelimit_sdk.errors import ConfigError\n"
        "try:\n"
        "    Limiter(max_concurrent=1, backend='redis://127.0.0.1:1/0', key='k')\n"
        "except ConfigError as exc:\n"
        "    assert 'pip install \"ratelimit_sdk[redis]\"' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no ConfigError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_base_imports_no_backend() -> None:
    import ratelimit_sdk.limiter.base as base

    source = Path(base.__file__).read_text(encoding="utf-8")
    assert ".memory" not in source.replace(":mod:`.memory`", "")
    assert ".redis" not in source.replace(":mod:`.redis`", "")
