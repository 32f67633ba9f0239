"""Leaf: secret redaction for reprs, messages and log records.

API keys must never reach a repr, an exception message or a log line. Known
secrets are registered here when a provider is built; :func:`redact` scrubs
them (and anything shaped like a bearer token, ``api_key=...`` or a URL's
password) from text. :func:`redact_url` is the one way to show a URL that may
carry a password (a Redis ``backend``): ``redis://:***@host:6379/0``.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from urllib.parse import urlsplit

__all__ = [
    "RedactingFilter",
    "get_logger",
    "install_filter",
    "mask",
    "redact",
    "redact_message",
    "redact_url",
    "register_secret",
]

_lock = threading.Lock()
_secrets: set[str] = set()

_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"
    ),
    re.compile(r"\b(sk-)[A-Za-z0-9_-]{8,}"),
    # The password of a URL's userinfo: scheme://user:PASSWORD@host (user may be empty).
    re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@/'\"]+(?=@)"),
    # A lone userinfo, which for Redis and most token URLs is the secret itself.
    re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s:/@'\"]+(?=@)"),
    # A password in a query string: unix:///run/redis.sock?password=...
    re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&\s'\"#]+"),
)

_REPLACEMENT = "***"
_MESSAGE_PATTERNS = tuple(p for i, p in enumerate(_PATTERNS) if i != 1)


def register_secret(secret: str | None) -> None:
    """Remember ``secret`` so :func:`redact` removes it from any text (short ones are ignored)."""
    if secret and len(secret) >= 4:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and key-shaped token replaced."""
    return _scrub(text, _PATTERNS)


def redact_message(text: str) -> str:
    """:func:`redact` for the SDK's own messages (what every SDK error's text goes through).

    Registered secrets, bearer tokens, ``sk-`` keys and URL passwords are masked; the
    ``api_key: value`` pattern is not applied, since the SDK's messages name such
    fields themselves (``providers[k].api_key: must not be empty``) and a value they
    quote has passed through :func:`redact` already.
    """
    return _scrub(text, _MESSAGE_PATTERNS)


def _scrub(text: str, patterns: tuple[re.Pattern[str], ...]) -> str:
    if not text:
        return text
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, _REPLACEMENT)
    for pattern in patterns:
        text = pattern.sub(lambda m: m.group(1) + _REPLACEMENT, text)
    return text


_QUERY_SECRET = re.compile(r"(?i)((?:^|&)(?:password|passwd|pwd)=)[^&#]*")


def redact_url(url: str) -> str:
    """Show ``url`` with its password masked: ``redis://:***@host:6379/0``.

    The password of the userinfo (``user:pw@``, ``:pw@``), a lone userinfo
    (``pw@``, most likely a token) and a ``password=`` query parameter
    (``unix:///run/redis.sock?password=...``) become ``***``; everything else is
    kept. Text that does not parse as a URL is scrubbed with :func:`redact`, and
    an ``@`` it still holds hides what comes before it.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or (not parts.scheme and "@" in url):
        clean = redact(url)
        return "***@" + clean.rpartition("@")[2] if "@" in clean else clean
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{_REPLACEMENT}@{host}" if sep else f"{_REPLACEMENT}@{host}"
    query = _QUERY_SECRET.sub(lambda m: m.group(1) + _REPLACEMENT, parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else netloc + parts.path
    if query:
        shown += f"?{query}"
    if parts.fragment:
        shown += f"#{parts.fragment}"
    return shown


def mask(secret: str | None) -> str:
    """A display form of a secret that reveals nothing: ``'***'`` or ``'None'``."""
    return "None" if secret is None else _REPLACEMENT


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs secrets from every record it passes.

    Attached to the ``ratelimit_sdk`` logger, so records from the SDK are clean
    whatever handler a user adds.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message once, redact it, and keep the record."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the logger's problem, not ours
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg = clean
            record.args = None
        return True


_installed: weakref.WeakSet[logging.Logger] = weakref.WeakSet()


def install_filter(logger: logging.Logger) -> None:
    """Attach one :class:`RedactingFilter` to ``logger`` (idempotent)."""
    with _lock:
        if logger not in _installed:
            logger.addFilter(RedactingFilter())
            _installed.add(logger)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the redacting filter attached.

    Filters on a parent logger do not see records of its children, so every
    SDK module gets its logger through here.
    """
    logger = logging.getLogger(name)
    install_filter(logger)
    return logger
