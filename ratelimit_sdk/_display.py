"""Leaf: small HTML tables for Jupyter (``_repr_html_``) of clients and their stats.

Pure formatting: takes :class:`~ratelimit_sdk.models.ProviderStats` values and
returns escaped HTML. Never shows a key (stats hold none).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from .models import ProviderStats

__all__ = ["StatsTable", "stats_html"]

_COLUMNS = (
    ("provider", lambda s: s.name),
    ("limits", lambda s: _limits(s.limits, s.learned)),
    ("in flight", lambda s: s.in_flight),
    ("queued", lambda s: s.queued),
    ("breaker", lambda s: s.breaker_state),
    ("requests", lambda s: s.requests),
    ("ok", lambda s: s.ok),
    ("429s", lambda s: s.rate_limited),
    ("errors", lambda s: s.errors),
    ("retries", lambda s: s.retries),
    ("fallbacks", lambda s: s.fallbacks),
    ("cooldown", lambda s: f"{s.cooldown_remaining:.1f}s" if s.cooldown_remaining else ""),
    ("wait p50/p95", lambda s: f"{s.wait_p50 * 1000:.0f}/{s.wait_p95 * 1000:.0f} ms"),
)


def _limits(limits: Mapping[str, Any], learned: Mapping[str, float] | None = None) -> str:
    short = {
        "max_concurrent": "conc",
        "requests_per_minute": "rpm",
        "burst": "burst",
        "min_interval": "gap",
        "tokens_per_minute": "tpm",
    }
    parts = []
    for key, label in short.items():
        value = limits.get(key)
        if not value:
            continue
        if value == "auto":  # learned: show the value in force
            known = (learned or {}).get(key)
            parts.append(f"{label}=auto" + ("" if known is None else f"({known:g})"))
        else:
            parts.append(f"{label}={value:g}")
    return " ".join(parts) or "unlimited"


def stats_html(stats: Iterable[ProviderStats], title: str = "") -> str:
    """An HTML table, one row per provider."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in _COLUMNS)
    rows = []
    for item in stats:
        cells = "".join(f"<td>{html.escape(str(get(item)))}</td>" for _, get in _COLUMNS)
        rows.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{html.escape(title)}</caption>" if title else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class StatsTable(dict[str, ProviderStats]):
    """``Client.stats()``: a dict of provider name -> ProviderStats; a table in Jupyter."""

    def _repr_html_(self) -> str:
        return stats_html(self.values())
