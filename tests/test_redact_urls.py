"""A backend URL's password never shows: reprs, str, HTML, log records, error messages."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ratelimit_sdk import Client
from ratelimit_sdk._redact import get_logger, redact, redact_url
from ratelimit_sdk.config import ClientConfig
from ratelimit_sdk.errors import ConfigError, ProviderConnectionError

PW = "s3cretPassw0rd"

URLS = [
    (f"redis://:{PW}@localhost:6379/0", "redis://:***@localhost:6379/0"),
    (f"redis://alice:{PW}@cache.example:6380/2", "redis://alice:***@cache.example:6380/2"),
    (f"rediss://:{PW}@cache.example/0", "rediss://:***@cache.example/0"),
    (f"unix:///run/redis.sock?db=0&password={PW}", "unix:///run/redis.sock?db=0&password=***"),
    (f"redis://{PW}@localhost/0", "redis://***@localhost/0"),
]


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_leaves_plain_urls_alone() -> None:
    for url in ("memory", "redis://localhost:6379/0", "unix:///tmp/r.sock?db=1", "https://h/v1"):
        assert redact_url(url) == url


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_redact_masks_urls_inside_text(url: str, shown: str) -> None:
    text = f"could not connect to {url}: refused"
    assert PW not in redact(text)


def _config(backend: str) -> dict[str, Any]:
    return {
        "providers": [{"name": "a", "base_url": "http://127.0.0.1:9", "model": "m"}],
        "backend": backend,
    }


@pytest.mark.parametrize(("url", "shown"), URLS)
def test_config_repr_and_str_mask_the_password(url: str, shown: str) -> None:
    cfg = ClientConfig.load(_config(url))
    assert cfg.backend == url  # the value itself is intact, for the limiter
    for text in (repr(cfg), str(cfg)):
        assert PW not in text
        assert shown in text


def test_client_repr_and_html_mask_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client(_config("memory"))
    try:
        state = client._state
        cfg = state.config.model_copy(update={"backend": URLS[1][0]})
        monkeypatch.setattr(client, "_state", type(state)(cfg, state.guards, state.chains, {}))
        for text in (repr(client), client._repr_html_()):
            assert PW not in text
            assert "alice:***@cache.example" in text
    finally:
        client.close()


def test_log_records_mask_url_passwords(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("ratelimit_sdk.test_redact_urls")
    with caplog.at_level(logging.INFO, logger="ratelimit_sdk"):
        log.warning("redis at %s failed", URLS[0][0])
        log.info("plain %s", URLS[3][0])
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert PW not in record.getMessage()
    assert PW not in caplog.text


@pytest.mark.parametrize(
    "backend", [f"redis//:{PW}@host/0", f"mysql://root:{PW}@db/0", f"ftp://{PW}@host"]
)
def test_a_bad_backend_url_error_hides_the_password(backend: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(_config(backend))
    assert "backend" in str(info.value)
    assert PW not in str(info.value)
    assert PW not in repr(info.value)


def test_error_messages_mask_url_passwords() -> None:
    err = ProviderConnectionError(f"cannot reach {URLS[1][0]}", provider="a")
    assert PW not in str(err)
    assert PW not in repr(err)
    assert PW not in str(ConfigError(f"backend: bad {URLS[0][0]}", field="backend"))
