"""The ratelimit-sdk command: check, chat (against a FakeProvider), exit codes, no leaks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ratelimit_sdk.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, main
from ratelimit_sdk.testing import FakeProvider, Respond

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "providers.yaml"
CANARY = "CANARY-cli-9d2f6a0b71"
KEY_ENV = "RLSDK_TEST_CLI_KEY"
KEY_VARS = ("MOONSHOT_API_KEY", "ZAI_API_KEY", "FEATHERLESS_API_KEY")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert CANARY not in out + err
    return code, out, err


def write(tmp_path: Path, data: Any, name: str = "providers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, CANARY)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider("primary", model="fake-large", require_key=CANARY) as provider:
        yield provider


@pytest.fixture
def backup() -> Iterator[FakeProvider]:
    with FakeProvider("backup", model="fake-small", require_key=CANARY) as provider:
        yield provider


def provider_entry(fake: FakeProvider, **extra: Any) -> dict[str, Any]:
    return fake.provider_config(**{"api_key_env": KEY_ENV, "retry": {"max_retries": 0}, **extra})


# -- check ------------------------------------------------------------------------------------


def test_check_prints_chains_limits_pools_and_warns_about_unset_keys(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    code, out, err = run(["check", str(EXAMPLE)], capsys)
    assert code == EXIT_OK
    assert "valid" in out
    assert "default: kimi -> glm -> llama -> dolphin" in out
    assert "reflexion: kimi -> glm -> llama" in out
    assert "featherless: 4 units in flight; members: llama x4, dolphin x1" in out
    assert "1 in flight, 4/min (burst 1), 1s apart" in out
    assert "https://api.moonshot.ai/v1" in out
    assert "$MOONSHOT_API_KEY (NOT SET)" in out
    assert "warning: providers[kimi].api_key_env: environment variable 'MOONSHOT_API_KEY'" in err


def test_check_require_keys_makes_an_unset_key_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(["check", "--require-keys", str(EXAMPLE)], capsys)
    assert code == EXIT_CONFIG
    assert "error: providers[glm].api_key_env" in err
    for name in KEY_VARS:
        monkeypatch.setenv(name, CANARY)
    code, out, err = run(["check", "--require-keys", str(EXAMPLE)], capsys)
    assert code == EXIT_OK
    assert err == ""
    assert "$ZAI_API_KEY (set)" in out


def test_check_default_chain_by_priority_and_inline_key_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        {
            "providers": [
                {"name": "b", "base_url": "http://127.0.0.1:1/v1", "model": "m", "priority": 2},
                {
                    "name": "a",
                    "base_url": "https://example.invalid/v1",
                    "model": "m",
                    "priority": 1,
                    "api_key": CANARY,
                },
            ]
        },
    )
    code, out, err = run(["check", str(path)], capsys)
    assert code == EXIT_OK, err
    assert "default: a -> b   (by priority)" in out
    assert "key: inline" in out
    assert "key: none (no auth header)" in out
    assert "no limits" in out


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (None, "missing.yaml", "not found"),
        ("providers: [\n  - name: x\n", "broken.yaml", "not valid YAML"),
        ("[1, 2]\n", "list.yaml", "top level must be a mapping"),
        ('{"providers": []}', "empty.json", "providers"),
        ("providers = 3\n", "bad.toml", "providers"),
        ("x: 1\n", "config.ini", "unknown format"),
        (
            {
                "providers": [{"name": "k", "base_url": "https://x.invalid/v1", "model": "m"}],
                "chains": {"fast": ["k", "ghost"]},
            },
            "chain.yaml",
            "chains.fast: unknown provider 'ghost'",
        ),
        (
            {
                "providers": [
                    {
                        "name": "k",
                        "base_url": "https://x.invalid/v1",
                        "model": "m",
                        "api_key": CANARY,
                        "limits": {"max_concurrent": -1},
                    }
                ]
            },
            "negative.yaml",
            "providers[k].limits.max_concurrent",
        ),
        (
            {
                "providers": [
                    {
                        "name": "k",
                        "base_url": "https://x.invalid/v1",
                        "model": "m",
                        "apikey": CANARY,
                    }
                ]
            },
            "typo.yaml",
            "providers[k].apikey: unknown field",
        ),
    ],
)
def test_check_bad_files_exit_2_with_one_clear_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: Any,
    name: str,
    expected: str,
) -> None:
    path = tmp_path / name if content is None else write(tmp_path, content, name)
    code, out, err = run(["check", str(path)], capsys)
    assert code == EXIT_CONFIG
    assert out == ""
    assert err.startswith("ratelimit-sdk: error: ")
    assert expected in err


def test_check_through_python_dash_m(tmp_path: Path) -> None:
    bad = write(tmp_path, {"providers": [{"name": "k", "model": "m"}]})
    env_free = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    good = subprocess.run(
        [sys.executable, "-m", "ratelimit_sdk", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_free,
    )
    assert good.returncode == 0, good.stderr
    assert "chains:" in good.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "ratelimit_sdk", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_free,
    )
    assert failed.returncode == 2
    assert "providers[k].base_url" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nope"], ["chat", "hi"], ["demo", "--requests", "0"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


# -- chat -------------------------------------------------------------------------------------


def test_chat_prints_the_answer_provider_and_attempts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keyed: None, fake: FakeProvider
) -> None:
    path = write(tmp_path, {"providers": [provider_entry(fake)]})
    code, out, err = run(["chat", "--config", str(path), "hello there"], capsys)
    assert code == EXIT_OK, err
    assert out == "echo: hello there\n"
    assert "-- primary (fake-large) answered after 1 attempt:" in err
    assert "primary: ok after" in err
    (request,) = fake.requests
    assert request.header("Authorization") == f"Bearer {CANARY}"  # the key was sent ...
    assert request.body["messages"] == [{"role": "user", "content": "hello there"}]


def test_chat_falls_back_and_lists_every_attempt(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    keyed: None,
    fake: FakeProvider,
    backup: FakeProvider,
) -> None:
    fake.fail_all(500)
    path = write(
        tmp_path,
        {"providers": [provider_entry(fake, priority=1), provider_entry(backup, priority=2)]},
    )
    code, out, err = run(
        ["chat", "--config", str(path), "--system", "be brief", "--max-tokens", "5", "hi"],
        capsys,
    )
    assert code == EXIT_OK, err
    assert out == "echo: hi\n"
    assert "-- backup (fake-small) answered after 2 attempts:" in err
    assert "primary: error after" in err
    assert "backup: ok after" in err
    (request,) = backup.requests
    assert request.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert request.body["max_tokens"] == 5


def test_chat_model_and_chain_options(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    keyed: None,
    fake: FakeProvider,
    backup: FakeProvider,
) -> None:
    path = write(
        tmp_path,
        {
            "providers": [provider_entry(fake, priority=1), provider_entry(backup, priority=2)],
            "chains": {"cheap": ["backup"]},
        },
    )
    code, _, err = run(["chat", "--config", str(path), "--model", "fake-small", "x"], capsys)
    assert code == EXIT_OK and "-- backup" in err
    code, _, err = run(["chat", "--config", str(path), "--chain", "cheap", "x"], capsys)
    assert code == EXIT_OK and "-- backup" in err
    assert fake.count == 0
    code, _, err = run(["chat", "--config", str(path), "--chain", "nope", "x"], capsys)
    assert code == EXIT_CONFIG
    assert "unknown chain 'nope'" in err
    code, _, err = run(["chat", "--config", str(path), "--model", "gpt-9", "x"], capsys)
    assert code == EXIT_CONFIG
    assert "gpt-9" in err


def test_chat_reads_the_prompt_from_stdin(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    keyed: None,
    fake: FakeProvider,
) -> None:
    import io

    path = write(tmp_path, {"providers": [provider_entry(fake)]})
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    code, out, _ = run(["chat", "--config", str(path), "-"], capsys)
    assert code == EXIT_OK
    assert out == "echo: from stdin\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("   \n"))
    code, _, err = run(["chat", "--config", str(path), "-"], capsys)
    assert code == EXIT_CONFIG and "empty" in err


def test_chat_all_failed_exits_1_with_every_attempt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keyed: None, fake: FakeProvider
) -> None:
    fake.fail_all(503, {"error": {"message": f"upstream down (key {CANARY})"}})
    path = write(
        tmp_path,
        {"providers": [provider_entry(fake, retry={"max_retries": 1, "base_delay": 0.01})]},
        "providers.json",
    )
    path.write_text(json.dumps(yaml.safe_load(path.read_text())))
    code, out, err = run(["chat", "--config", str(path), "--timeout", "10", "hi"], capsys)
    assert code == EXIT_FAILED
    assert out == ""
    assert "ratelimit-sdk: error: every provider failed (2 attempts):" in err
    assert err.count("primary: error after") == 2


def test_chat_wrong_key_is_an_error_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, CANARY)
    with FakeProvider("strict", require_key="the-right-key") as strict:
        path = write(tmp_path, {"providers": [provider_entry(strict)]})
        code, _, err = run(["chat", "--config", str(path), "hi"], capsys)
        assert strict.statuses[401] == 1
    assert code == EXIT_FAILED
    assert "strict: error" in err and "401" in err


def test_chat_bad_request_exits_1_without_fallback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    keyed: None,
    fake: FakeProvider,
    backup: FakeProvider,
) -> None:
    fake.script([Respond.status(400, {"error": {"message": "messages: too long"}})])
    path = write(
        tmp_path,
        {"providers": [provider_entry(fake, priority=1), provider_entry(backup, priority=2)]},
    )
    code, _, err = run(["chat", "--config", str(path), "hi"], capsys)
    assert code == EXIT_FAILED
    assert "bad request (not retried elsewhere)" in err
    assert "too long" in err
    assert backup.count == 0


def test_chat_config_problems_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeProvider,
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = write(tmp_path, {"providers": [provider_entry(fake)]})
    code, _, err = run(["chat", "--config", str(path), "hi"], capsys)
    assert code == EXIT_CONFIG
    assert f"environment variable '{KEY_ENV}' is not set" in err
    code, _, err = run(["chat", "--config", str(tmp_path / "none.yaml"), "hi"], capsys)
    assert code == EXIT_CONFIG and "not found" in err
    assert fake.count == 0
