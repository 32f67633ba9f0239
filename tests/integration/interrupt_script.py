"""Run by test_interrupt.py in its own process: Ctrl-C (SIGINT) in the middle of Client.map."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from ratelimit_sdk import Client
from ratelimit_sdk.testing import FakeProvider


def main() -> int:
    with FakeProvider("p", latency=0.2, max_concurrency=4) as fake:
        client = Client(
            {
                "providers": [
                    {
                        "name": "p",
                        "base_url": fake.base_url,
                        "model": "m",
                        "limits": {"max_concurrent": 4},
                    }
                ]
            }
        )
        sent_at: list[float] = []

        def interrupter() -> None:
            fake.wait_for_count(8, timeout=30)
            sent_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupter, daemon=True).start()
        try:
            client.map([f"q{i}" for i in range(400)], max_workers=16, progress=True)
        except KeyboardInterrupt:
            raised = time.monotonic()
            print(f"raised_after={raised - sent_at[0]:.3f}")
        else:
            print("no KeyboardInterrupt")
            return 1
        time.sleep(1.0)  # the calls already on the wire finish (0.2 s latency)
        limiter = client.guard("p").limiter
        late = [r for r in fake.requests if r.arrived > raised + 0.05]
        print(f"in_flight={limiter.in_flight} queued={limiter.queued}")
        print(f"late_requests={len(late)} total={fake.count}")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
