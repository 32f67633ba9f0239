"""Type-checked public usage (``mypy --strict tests/typing``); never executed by pytest.

If a change to the public API breaks how users are meant to write code, mypy
fails here.
"""

from __future__ import annotations

import requests

from ratelimit_sdk import (
    AllProvidersFailed,
    Attempt,
    ChatResponse,
    ChatStream,
    Client,
    ClientConfig,
    Limiter,
    Permit,
    ProviderStats,
    RateLimitAdapter,
)
from ratelimit_sdk.presets import seed_config


def limiter_usage() -> None:
    lim: Limiter = Limiter(max_concurrent=4, requests_per_minute=600, burst=5)
    permit: Permit = lim.acquire(timeout=2.0)
    permit.release()
    with lim.acquire(units=2, tokens=1200) as held:
        held.settle(tokens=900)
    maybe: Permit | None = lim.try_acquire()
    if maybe is not None:
        maybe.release()
    lim.update(max_concurrent=2)
    lim.cooldown(5.0)
    in_flight: int = lim.in_flight
    del in_flight

    @lim
    def call(x: int) -> int:
        return x

    call(1)


def client_usage(config: ClientConfig) -> None:
    with Client(config) as client:
        resp: ChatResponse = client.chat([{"role": "user", "content": "hi"}], max_tokens=10)
        text: str = resp.content
        attempts: tuple[Attempt, ...] = resp.attempts
        del text, attempts
        stream: ChatStream = client.chat("hi", stream=True)
        for chunk in stream:
            print(chunk)
        tuned: ChatResponse = client.chat(
            [{"role": "user", "content": "hi"}],
            temperature=0.3,
            top_p=0.9,
            max_tokens=100,
            stop=["\n\n"],
            n=1,
            seed=7,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice="auto",
            response_format={"type": "json_object"},
            presence_penalty=0.0,
            frequency_penalty=None,
            logprobs=False,
            top_logprobs=None,
            user="u-1",
            extra_body={"top_k": 40},
            preferred_model="kimi",
            timeout=30.0,
        )
        del tuned
        streamed: ChatStream = client.chat_stream(
            "hi", chain="default", temperature=0.1, stream_options={"include_usage": True}
        )
        for chunk in streamed:
            print(chunk)
        answers = client.map(["a", "b"], max_workers=4, progress=False)
        del answers
        for item in client.imap(["a"], ordered=True):
            del item
        stats: dict[str, ProviderStats] = client.stats()
        del stats
        client.update_limits("kimi", max_concurrent=2, requests_per_minute=10)

        @client.guarded("kimi")
        def fetch(url: str) -> int:
            return requests.get(url, timeout=5).status_code

        code: int = fetch("http://127.0.0.1:1/")
        del code
    try:
        Client(seed_config(only=["kimi"])).chat("hi", timeout=None)
    except AllProvidersFailed as exc:
        print(len(exc.attempts))


def adapter_usage() -> None:
    session = requests.Session()
    session.mount("https://api.example.com", RateLimitAdapter(Limiter(max_concurrent=2)))
