"""Quickstart: one Client over two providers, a chat, a streamed chat, and the stats.

Runs offline: the two "providers" are ratelimit_sdk.testing.FakeProvider servers
on 127.0.0.1 shaped like Moonshot Kimi (1 request in flight, 4 per minute) and
Zhipu GLM (10 in flight). With real providers only the config changes: a real
``base_url``, ``model`` and ``api_key_env``.

    python examples/quickstart.py            # 5 chats
    python examples/quickstart.py 20         # or QUICKSTART_N=20
"""

from __future__ import annotations

import os
import sys

from ratelimit_sdk import Client
from ratelimit_sdk.testing import FakeFleet, FakeProvider


def main(n: int) -> None:
    kimi = FakeProvider("kimi", max_concurrency=1, requests_per_minute=4, latency=0.01)
    glm = FakeProvider("glm", max_concurrency=10, latency=0.01)
    with FakeFleet(kimi, glm):
        config = {
            "providers": [
                kimi.provider_config(
                    priority=1,  # tried first ...
                    # ... within its limits; never wait for it while glm is free
                    limits={"max_concurrent": 1, "requests_per_minute": 4, "max_queue_wait": 0},
                    retry={"max_retries": 1, "base_delay": 0.1},
                ),
                glm.provider_config(priority=2, limits={"max_concurrent": 10}),
            ],
            "timeout": 30,
        }
        with Client(config) as client:
            print(repr(client))

            # One call: the first provider with room answers; attempts say what happened.
            resp = client.chat([{"role": "user", "content": "Hello, who are you?"}], max_tokens=50)
            print(f"chat: {resp.content!r} from {resp.provider}")

            # kimi's bucket (4 per minute) is empty now: the next calls go to glm at once.
            for i in range(1, n):
                resp = client.chat(f"Question {i}")
                tried = ", ".join(f"{a.provider}:{a.outcome.value}" for a in resp.attempts)
                print(f"chat {i}: {resp.content!r} from {resp.provider} [{tried}]")

            # Streaming: text chunks as they arrive; the permit is held until the end.
            stream = client.chat("Tell me a short story", stream=True)
            with stream:
                chunks = list(stream)
            print(f"stream: {len(chunks)} chunks from {stream.provider}: {''.join(chunks)!r}")

            print("stats:")
            for name, s in client.stats().items():
                counters = " ".join(f"{k}={v}" for k, v in s.counters.items())
                print(f"  {name}: in_flight={s.in_flight} breaker={s.breaker_state} {counters}")
        print(f"server-side 429s: kimi={kimi.statuses[429]} glm={glm.statuses[429]}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("QUICKSTART_N", "5")))
