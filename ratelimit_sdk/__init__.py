"""ratelimit_sdk: call LLM providers as fast as their limits allow, never faster."""

from __future__ import annotations

__version__ = "0.1.0"
