"""Application (on top of the package, not a data-path stage): the ``ratelimit-sdk`` command.

::

    ratelimit-sdk demo [--requests N] [--workers N] [--seed S] [--no-progress] [--no-faults]
    ratelimit-sdk chat --config FILE [--chain NAME] [--model NAME] [--timeout S] "prompt"
    ratelimit-sdk check [--require-keys] FILE

``python -m ratelimit_sdk`` is the same command.

Exit codes: 0 success; 1 the demo failed its checks, or a chat call failed
(every provider refused, a bad request, a timeout); 2 the command line or the
configuration is wrong (a bad file, an unset key variable where one is needed);
130 interrupted. Errors are one clear paragraph on stderr, never a traceback
for an SDK error, and never an API key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from ._redact import redact, redact_url
from .config import ClientConfig, LimitsConfig, ProviderConfig
from .errors import (
    AllProvidersFailed,
    BadRequestError,
    ConfigError,
    RateLimitSDKError,
)
from .models import Attempt, ChatResponse

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "build_parser", "main"]

EXIT_OK = 0
#: A chat call failed, or the demo's checks did not pass.
EXIT_FAILED = 1
#: The command line or the configuration is wrong.
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

_PROG = "ratelimit-sdk"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ratelimit-sdk`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Call LLM providers within their rate limits, with fallback across them.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log the SDK's decisions to stderr (-v: info, -vv: debug)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="run the offline demo: the seed's four providers, faked on 127.0.0.1",
        description="Start four fake providers shaped like the seed's on 127.0.0.1, send a "
        "batch through one Client and report what each provider saw. No API key, no network.",
    )
    demo.add_argument(
        "--requests", type=_positive_int, default=150, metavar="N", help="batch size (150)"
    )
    demo.add_argument("--workers", type=_positive_int, default=32, metavar="N", help="threads (32)")
    demo.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the faults")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--no-faults", action="store_true", help="no injected 5xx or outage")

    chat = sub.add_parser(
        "chat",
        help="send one prompt to real providers from a config file",
        description="Send one chat call through the configured chain and print the answer "
        "(stdout) and which provider gave it after which attempts (stderr).",
    )
    chat.add_argument("--config", required=True, metavar="FILE", help="YAML, TOML or JSON")
    chat.add_argument("--chain", metavar="NAME", help="a chain of the config (default: default)")
    chat.add_argument("--model", metavar="NAME", help="use only this provider (or model)")
    chat.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="deadline of the whole call (s)"
    )
    chat.add_argument("--max-tokens", type=_positive_int, metavar="N", help="answer length cap")
    chat.add_argument("--system", metavar="TEXT", help="a system message before the prompt")
    chat.add_argument("prompt", help='the prompt ("-" reads it from stdin)')

    check = sub.add_parser(
        "check",
        help="validate a config file and print the effective chains and limits",
        description="Validate a config file and print what a Client would use. An unset "
        "API-key variable is a warning (exit 0) unless --require-keys makes it an error.",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--require-keys",
        action="store_true",
        help="fail (exit 2) when an api_key_env variable is not set here",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ratelimit-sdk`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "chat":
            return _chat(args, sys.stdout, sys.stderr)
        return _check(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- demo -----------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from .demo import LATENCY, run_demo  # starts servers; imported only when asked for

    print(
        f"Starting {len(LATENCY)} fake providers on 127.0.0.1 ({', '.join(LATENCY)}) and "
        f"sending {args.requests} requests through one Client from {args.workers} threads...",
        flush=True,
    )
    report = run_demo(
        requests=args.requests,
        workers=args.workers,
        seed=args.seed,
        progress=not args.no_progress,
        faults=not args.no_faults,
    )
    print(report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


# -- chat -----------------------------------------------------------------------------------------


def _chat(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .client import NOT_GIVEN, Client

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        return _fail(err, "the prompt is empty", EXIT_CONFIG)
    messages = [{"role": "user", "content": prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    try:
        client = Client.from_file(args.config)
    except ConfigError as exc:
        return _fail(err, str(exc), EXIT_CONFIG)
    try:
        with client:
            response = client.chat(
                messages,
                preferred_model=args.model,
                chain=args.chain,
                max_tokens=args.max_tokens,
                timeout=NOT_GIVEN if args.timeout is None else args.timeout,
            )
    except ConfigError as exc:  # an unknown --chain or --model
        return _fail(err, str(exc), EXIT_CONFIG)
    except AllProvidersFailed as exc:
        lines = [f"every provider failed ({len(exc.attempts)} attempts):"]
        lines += [f"  {_attempt_line(a)}" for a in exc.attempts]
        return _fail(err, "\n".join(lines), EXIT_FAILED)
    except BadRequestError as exc:
        return _fail(err, f"bad request (not retried elsewhere): {redact(str(exc))}", EXIT_FAILED)
    except RateLimitSDKError as exc:
        return _fail(err, f"{type(exc).__name__}: {redact(str(exc))}", EXIT_FAILED)
    _print_response(response, out, err)
    return EXIT_OK


def _print_response(response: ChatResponse, out: TextIO, err: TextIO) -> None:
    out.write(response.content)
    if not response.content.endswith("\n"):
        out.write("\n")
    out.flush()
    attempts = response.attempts
    print(
        f"-- {response.provider} ({response.model}) answered after "
        f"{len(attempts)} attempt{'s' if len(attempts) != 1 else ''}:",
        file=err,
    )
    for attempt in attempts:
        print(f"   {_attempt_line(attempt)}", file=err)


def _attempt_line(attempt: Attempt) -> str:
    text = f"{attempt.provider}: {attempt.outcome.value} after {attempt.elapsed:.2f}s"
    if attempt.error is not None:
        text += f" ({_one_line(str(attempt.error))})"
    return redact(text)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- check ----------------------------------------------------------------------------------------


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        config = ClientConfig.from_file(args.file)
    except ConfigError as exc:
        return _fail(err, str(exc), EXIT_CONFIG)
    missing = _missing_keys(config)
    print(f"{args.file}: valid", file=out)
    print(
        f"backend: {redact_url(config.backend)}   timeout: {config.timeout:g}s   "
        f"fallback: {'on' if config.use_fallback else 'off (first provider only)'}",
        file=out,
    )
    print("", file=out)
    print("providers:", file=out)
    for pc in config.providers:
        _print_provider(pc, missing, out)
    if config.pools:
        print("", file=out)
        print("pools:", file=out)
        for name, limits in config.pools.items():
            members = [f"{p.name} x{p.pool_units}" for p in config.providers if p.pool == name]
            text = _limits_text(limits).replace(" in flight", " units in flight")
            print(f"  {name}: {text}; members: {', '.join(members)}", file=out)
    print("", file=out)
    print("chains:", file=out)
    for name in sorted({"default", *config.chains}, key=lambda n: (n != "default", n)):
        members = config.chain(name)
        if not config.use_fallback:
            members = members[:1]
        origin = "" if name in config.chains else "   (by priority)"
        print(f"  {name}: {' -> '.join(members)}{origin}", file=out)
    for _, message in missing:
        level = "error" if args.require_keys else "warning"
        print(f"{level}: {message}", file=err)
    if missing and args.require_keys:
        return EXIT_CONFIG
    return EXIT_OK


def _missing_keys(config: ClientConfig) -> list[tuple[ProviderConfig, str]]:
    missing = []
    for pc in config.providers:
        try:
            pc.resolve_api_key(os.environ)
        except ConfigError as exc:
            missing.append((pc, str(exc)))
    return missing


def _print_provider(
    pc: ProviderConfig, missing: Sequence[tuple[ProviderConfig, str]], out: TextIO
) -> None:
    if pc.api_key is not None:
        key = "key: inline"
    elif pc.api_key_env is None:
        key = "key: none (no auth header)"
    else:
        state = "NOT SET" if any(m[0] is pc for m in missing) else "set"
        key = f"key: ${pc.api_key_env} ({state})"
    pool = f"   pool: {pc.pool} x{pc.pool_units}" if pc.pool else ""
    print(f"  {pc.name}  (priority {pc.priority})", file=out)
    print(f"    {pc.api} {pc.base_url}  model: {pc.model}", file=out)
    print(f"    {key}{pool}", file=out)
    print(f"    limits: {_limits_text(pc.limits)}", file=out)
    retry = pc.retry
    print(
        f"    retry: {retry.max_retries} retries from {retry.base_delay:g}s "
        f"(max {retry.max_delay:g}s, jitter {retry.jitter:g}); breaker: opens after "
        f"{pc.breaker.fail_max} failures for {pc.breaker.reset_timeout:g}s",
        file=out,
    )
    print(f"    timeouts: connect {pc.timeout.connect:g}s, read {pc.timeout.read:g}s", file=out)


def _limits_text(limits: LimitsConfig) -> str:
    parts = []
    if limits.max_concurrent is not None:
        parts.append(f"{limits.max_concurrent} in flight")
    if limits.requests_per_minute is not None:
        rpm = limits.requests_per_minute
        shown = rpm if isinstance(rpm, str) else f"{rpm:g}"
        parts.append(f"{shown}/min (burst {limits.burst or 1})")
    if limits.min_interval:
        parts.append(f"{limits.min_interval:g}s apart")
    if limits.tokens_per_minute is not None:
        tpm = limits.tokens_per_minute
        parts.append(f"{tpm if isinstance(tpm, str) else format(tpm, 'g')} tokens/min")
    for w in limits.windows:
        kind = w.kind.replace("_", " ")
        parts.append(f"{w.limit:g} {kind} per {w.per:g}s" + (" (UTC)" if w.align == "utc" else ""))
    if limits.max_queue_wait is not None:
        parts.append(f"queue at most {limits.max_queue_wait:g}s")
    return ", ".join(parts) if parts else "no limits"


# -- helpers --------------------------------------------------------------------------------------


def _fail(err: TextIO, message: str, code: int) -> int:
    # Config errors never hold a secret (config.py); provider text went through redact().
    print(f"{_PROG}: error: {message}", file=err)
    return code


def _setup_logging(verbose: int) -> None:
    """Send the SDK's log to stderr: errors only by default, more with -v / -vv."""
    level = logging.ERROR if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logger = logging.getLogger("ratelimit_sdk")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
