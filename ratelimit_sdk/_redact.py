"""Leaf: secret redaction for reprs, messages and log records.

API keys must never reach a repr, an exception message or a log line. Known
secrets are registered here when a provider is built; :func:`redact` scrubs
them (and anything shaped like a bearer token or ``api_key=...``) from text.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref

__all__ = ["RedactingFilter", "get_logger", "install_filter", "mask", "redact", "register_secret"]

_lock = threading.Lock()
_secrets: set[str] = set()

_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|x-api-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"
    ),
    re.compile(r"\b(sk-)[A-Za-z0-9_-]{8,}"),
)

_REPLACEMENT = "***"


def register_secret(secret: str | None) -> None:
    """Remember ``secret`` so :func:`redact` removes it from any text (short ones are ignored)."""
    if secret and len(secret) >= 4:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and key-shaped token replaced."""
    if not text:
        return text
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, _REPLACEMENT)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + _REPLACEMENT, text)
    return text


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
