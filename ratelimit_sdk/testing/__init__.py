"""Testing: public helpers for tests of code that uses ratelimit_sdk (and for our own).

- :class:`FakeProvider`: a real HTTP server on 127.0.0.1 that speaks the
  OpenAI-compatible and the Anthropic wire formats, enforces server-side limits
  (concurrency, requests per minute), injects faults and records every request.
- :class:`FakeFleet`: several named FakeProviders started and stopped together.
- :class:`Respond` (alias :data:`Fault`): constructors of scripted answers
  (:data:`Action`): ``status``, ``hang``, ``garbage``, ``reset``, ``ok``,
  ``delay``, ``rate_limited``, ``insufficient_quota``, ``zhipu``, ``overloaded``.
- :class:`RecordedRequest`: one received request, as a frozen snapshot.
- Server shapes for ``FakeProvider(shapes=[...])``: :class:`LeakyBucket`
  (nginx ``limit_req``), :class:`SlidingWindow`, :class:`FixedWindow` (UTC
  aligned), :class:`HiddenConcurrency`, :class:`HiddenRate`,
  :class:`OpenAIHeaders` (see :mod:`ratelimit_sdk.testing.shapes`).
- :class:`FakeClock`: a manual clock for exact, instant limiter and retry tests.

Nothing in ``ratelimit_sdk`` imports this package; it imports only the standard
library and its own modules.
"""

from __future__ import annotations

from ratelimit_sdk.testing.clock import FakeClock, WouldBlockForever
from ratelimit_sdk.testing.fake_provider import FakeProvider, RecordedRequest
from ratelimit_sdk.testing.faults import Action, Fault, Respond
from ratelimit_sdk.testing.fleet import FakeFleet
from ratelimit_sdk.testing.shapes import (
    FixedWindow,
    HiddenConcurrency,
    HiddenRate,
    LeakyBucket,
    OpenAIHeaders,
    Shape,
    SlidingWindow,
)

__all__ = [
    "Action",
    "FakeClock",
    "FakeFleet",
    "FakeProvider",
    "Fault",
    "FixedWindow",
    "HiddenConcurrency",
    "HiddenRate",
    "LeakyBucket",
    "OpenAIHeaders",
    "RecordedRequest",
    "Respond",
    "Shape",
    "SlidingWindow",
    "WouldBlockForever",
]
