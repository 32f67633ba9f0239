"""A reflexion agent: generate -> critique -> refine, on the seed's fail-fast chain.

Drafts and refinements go through the ``reflexion`` chain (kimi -> glm -> llama,
1-2 retries each, so a bad provider is left quickly); the critic is pinned to
one model with ``preferred_model`` so every critique comes from the same judge,
as the seed's agent did. Each step prints which provider answered and what the
chain tried first.

Runs offline against three FakeProviders on 127.0.0.1 shaped like the seed's
providers (kimi: 1 in flight and 4 per minute, so after the first draft it is
cooling down and the chain moves on at once; glm: 10 in flight; llama: 5). In
round 2 glm has an outage (503s) during the refinement: glm's retries fail and
llama answers.

    python examples/reflexion_agent.py             # 3 rounds
    python examples/reflexion_agent.py 2           # or REFLEXION_ROUNDS=2
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ratelimit_sdk import ChatResponse, Client
from ratelimit_sdk.testing import FakeFleet, FakeProvider

CRITIC = "glm"  # the judge: every critique comes from this provider


def role_reply(name: str) -> Callable[[Mapping[str, Any]], str]:
    """Fake answers: a critique when the system prompt asks for one, else a draft."""

    def reply(body: Mapping[str, Any]) -> str:
        system = str(body["messages"][0]["content"])
        last = str(body["messages"][-1]["content"])
        if "critic" in system:
            return f"[{name}] critique: tighten the argument of ({last[:40]}...)"
        return f"[{name}] draft for: {last[:60]}"

    return reply


def fakes() -> FakeFleet:
    """Three fake providers with the seed's server-side limits."""
    return FakeFleet(
        FakeProvider("kimi", max_concurrency=1, requests_per_minute=4, reply=role_reply("kimi")),
        FakeProvider("glm", max_concurrency=10, reply=role_reply("glm")),
        FakeProvider("llama", max_concurrency=5, reply=role_reply("llama")),
    )


def config(fleet: FakeFleet) -> dict[str, Any]:
    """The seed's reflexion setting (see ``ratelimit_sdk.presets.reflexion_config``).

    Limits as the seed's (glm without its spacing); backoff delays shortened so the
    offline demo is quick.
    """
    fast = {"base_delay": 0.1, "max_delay": 1.0}
    return {
        "providers": [
            fleet["kimi"].provider_config(
                priority=1,
                # never queue for kimi while another provider could answer now
                limits={"max_concurrent": 1, "requests_per_minute": 4, "max_queue_wait": 0},
                retry={"max_retries": 1, **fast},
            ),
            fleet["glm"].provider_config(
                priority=2,
                # no spacing here (the seed's 0.1 s): the refinement right after a
                # critique goes to glm, not on to llama
                limits={"max_concurrent": 10},
                retry={"max_retries": 2, **fast},
            ),
            fleet["llama"].provider_config(
                priority=3,
                limits={"max_concurrent": 5, "min_interval": 0.2},
                retry={"max_retries": 2, **fast},
            ),
        ],
        "chains": {"reflexion": ["kimi", "glm", "llama"]},
        "timeout": 30,
    }


def show(step: str, resp: ChatResponse) -> None:
    """Print who answered a step and what the chain tried on the way."""
    tried = ", ".join(f"{a.provider}:{a.outcome.value}" for a in resp.attempts)
    print(f"  {step:<9} by {resp.provider:<6} [{tried}]")


def agent(client: Client, fleet: FakeFleet, task: str, rounds: int) -> str:
    """Generate a draft, then ``rounds`` times: critique it (pinned critic), refine it."""
    system_gen = {"role": "system", "content": "You write careful, concise answers."}
    system_critic = {"role": "system", "content": "You are a strict critic. List the flaws."}

    print("round 0")
    resp = client.chat([system_gen, {"role": "user", "content": task}], chain="reflexion")
    show("generate", resp)
    draft = resp.content

    for r in range(1, rounds + 1):
        print(f"round {r}")
        critique = client.chat(
            [system_critic, {"role": "user", "content": f"Task: {task}\nDraft: {draft}"}],
            preferred_model=CRITIC,  # pinned: only the critic's provider, no fallback
        )
        show("critique", critique)
        if r == 2:
            print("  (glm outage: it answers 503 during this refinement)")
            fleet["glm"].fail_all(503)
        refine = [
            system_gen,
            {"role": "user", "content": task},
            {"role": "assistant", "content": draft},
            {"role": "user", "content": f"Improve the draft. {critique.content}"},
        ]
        try:
            resp = client.chat(refine, chain="reflexion")
        finally:
            fleet["glm"].heal()
        show("refine", resp)
        draft = resp.content
    return draft


def main(rounds: int) -> None:
    with fakes() as fleet, Client(config(fleet)) as client:
        final = agent(client, fleet, "Explain why rate limits need a token bucket.", rounds)
        print(f"final: {final!r}")
        for name, s in client.stats().items():
            counters = " ".join(f"{k}={v}" for k, v in s.counters.items())
            print(f"  {name}: breaker={s.breaker_state} {counters}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("REFLEXION_ROUNDS", "3")))
