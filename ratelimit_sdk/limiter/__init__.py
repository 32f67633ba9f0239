"""Stage 3b: admission control. ``Limiter`` and ``Permit``; backends plug in below.

``Limiter(...)`` builds the in-memory limiter (:mod:`.memory`) or, with
``backend="redis://..."``, the shared one (:mod:`.redis`). Pure arithmetic lives
in :mod:`.bucket`.
"""

from __future__ import annotations

from .base import Limiter, Permit, backend_class, check_limits, from_backend
from .memory import MemoryLimiter

__all__ = ["Limiter", "MemoryLimiter", "Permit", "backend_class", "check_limits", "from_backend"]
