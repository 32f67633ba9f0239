"""Stage 3b: admission control. ``Limiter`` and ``Permit``; backends plug in below.

``Limiter(...)`` builds the backend registered for ``backend=``'s scheme
(:func:`register_backend`): the in-memory limiter (:mod:`.memory`, imported here)
for ``"memory"``, or the shared one (:mod:`.redis`, imported, with the ``redis``
package, only when the first one is built) for ``redis://``, ``rediss://`` and
``unix://`` URLs. Pure arithmetic lives in :mod:`.bucket`.
"""

from __future__ import annotations

from .base import (
    Limiter,
    Permit,
    backend_class,
    backend_schemes,
    check_limits,
    from_backend,
    register_backend,
)
from .memory import MemoryLimiter

register_backend(("memory",), MemoryLimiter)
register_backend(("redis", "rediss", "unix"), "ratelimit_sdk.limiter.redis:RedisLimiter")

__all__ = [
    "Limiter",
    "MemoryLimiter",
    "Permit",
    "backend_class",
    "backend_schemes",
    "check_limits",
    "from_backend",
    "register_backend",
]
