"""A batch job: thousands of prompts through a thread pool, results to JSONL, resumable.

``client.imap(..., ordered=False)`` runs the calls on a pool of threads and
yields each result as it completes; every result is appended to a JSONL file at
once (one line per prompt id) and flushed, so the job can stop at any point
(Ctrl-C, a crash, ``--stop-after``) and a rerun does only the prompts whose ids
are not in the file yet. Failed prompts are not written: a rerun tries them again.

Runs offline against two FakeProviders on 127.0.0.1 with server-side
concurrency limits equal to the client's, so the server never sends a 429.

    python examples/batch_threadpool.py results.jsonl              # 2000 prompts
    python examples/batch_threadpool.py results.jsonl -n 200 --stop-after 80
    python examples/batch_threadpool.py results.jsonl -n 200       # resumes: 120 more

``-n`` may also come from the environment (``BATCH_N``). The progress bar
needs tqdm (``pip install -e ".[progress]"``) and is silently absent without it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from ratelimit_sdk import Client
from ratelimit_sdk.testing import FakeFleet, FakeProvider


def prompts(n: int) -> list[tuple[str, str]]:
    """The job's input: ``(id, prompt)`` pairs. Ids must be stable across runs."""
    return [(f"p{i:05d}", f"Summarise document number {i} in one line.") for i in range(n)]


def done_ids(path: Path) -> set[str]:
    """Ids already in the results file. A line cut short by a crash is ignored."""
    ids: set[str] = set()
    if not path.exists():
        return ids
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a partial last line: that prompt is simply done again
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                ids.add(record["id"])
    return ids


def open_for_append(path: Path) -> TextIO:
    """Open the results file for appending, first ending a line a crash left unfinished."""
    f = path.open("a+", encoding="utf-8")
    if f.tell() > 0:
        f.seek(f.tell() - 1)
        if f.read(1) != "\n":
            f.write("\n")
    return f


def run(client: Client, out: Path, n: int, workers: int, stop_after: int | None, bar: bool) -> int:
    """Do every prompt not yet in ``out``; return how many results were written."""
    already = done_ids(out)
    todo = [(pid, text) for pid, text in prompts(n) if pid not in already]
    print(f"{n} prompts, {len(already)} already in {out.name}, {len(todo)} to do")
    written = failed = 0
    results = client.imap(
        [text for _, text in todo],
        max_workers=workers,
        progress=bar,
        return_exceptions=True,
        ordered=False,
    )
    # closing(): however the loop ends (done, break, Ctrl-C), the queued calls are cancelled now.
    with open_for_append(out) as f, contextlib.closing(results):
        for index, result in results:
            pid = todo[index][0]
            if isinstance(result, Exception):
                failed += 1
                continue
            record = {"id": pid, "provider": result.provider, "content": result.content}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            written += 1
            if stop_after is not None and written >= stop_after:
                break
    print(f"wrote {written} results, {failed} failed (a rerun retries them)")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="batch_results.jsonl", help="JSONL results")
    parser.add_argument("-n", type=int, default=int(os.environ.get("BATCH_N", "2000")))
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--stop-after", type=int, default=None, help="stop after K new results")
    parser.add_argument("--latency", type=float, default=0.0, help="fake answer delay, seconds")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    fleet = FakeFleet(
        FakeProvider("alpha", max_concurrency=8, latency=args.latency),
        FakeProvider("beta", max_concurrency=8, latency=args.latency),
    )
    with fleet:
        config = {
            "providers": [
                fleet["alpha"].provider_config(priority=1, limits={"max_concurrent": 8}),
                fleet["beta"].provider_config(priority=2, limits={"max_concurrent": 8}),
            ],
        }
        out = Path(args.out)
        started = time.monotonic()
        with Client(config) as client:
            try:
                run(client, out, args.n, args.workers, args.stop_after, not args.no_progress)
            except KeyboardInterrupt:
                print(f"interrupted: {len(done_ids(out))} results saved; rerun to resume")
                return 130
            finally:
                elapsed = time.monotonic() - started
                stats = client.stats()
                for name, s in stats.items():
                    print(f"  {name}: requests={s.requests} ok={s.ok} fallbacks={s.fallbacks}")
        total = len(done_ids(out))
        print(f"{total}/{args.n} prompts done in {out} ({elapsed:.1f}s)")
        print(f"server-side 429s: {sum(p.statuses[429] for p in fleet)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
