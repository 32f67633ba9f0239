"""Shared pytest fixtures."""

from __future__ import annotations

# The redis-server fixtures (skipped with a reason when no binary is installed).
from redis_server import (  # noqa: F401
    own_redis_server,
    redis_key,
    redis_server,
    redis_url,
)
