"""Every example in examples/ runs offline, small, to the end, and says what it should.

Each script runs as a subprocess of this interpreter (against the fakes it starts
itself on 127.0.0.1); the batch job is stopped half-way and resumed, and also
interrupted with a real SIGINT and resumed; the notebook is executed top to
bottom with nbclient on a kernel of this interpreter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN_TIMEOUT = 120  # a hard bound only; each script takes a second or two

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_example(name: str, *args: str, cwd: Path, **env: str) -> str:
    """Run ``examples/<name>`` with ``args``; assert it exits 0; return its stdout."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for path in sorted(EXAMPLES.iterdir()):
        if path.suffix in (".py", ".ipynb"):
            assert path.name in readme, f"examples/README.md does not mention {path.name}"


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", "3", cwd=tmp_path)
    assert "chat: 'echo: Hello, who are you?' from kimi" in out
    # kimi's bucket (4 per minute) is empty after the first call: skipped at once, glm answers
    skipped = r"chat 2: 'echo: Question 2' from glm \[kimi:(cooling_down|busy), glm:ok\]"
    assert re.search(skipped, out)
    assert "stream: 3 chunks from glm: 'echo: Tell me a short story'" in out
    assert "kimi: in_flight=0 breaker=closed requests=1 ok=1" in out
    assert "server-side 429s: kimi=0 glm=0" in out


def test_quickstart_size_from_env(tmp_path: Path) -> None:
    out = run_example("quickstart.py", cwd=tmp_path, QUICKSTART_N="2")
    assert "chat 1:" in out and "chat 2:" not in out


def test_legacy_service(tmp_path: Path) -> None:
    out = run_example("legacy_service.py", "30", cwd=tmp_path)
    assert "30 answers in" in out
    assert "service statuses: {200: 30}" in out
    assert "kimi server:" in out and "(limit 2)" in out
    assert "server-side 429s: 0" in out


def test_reflexion_agent(tmp_path: Path) -> None:
    out = run_example("reflexion_agent.py", "2", cwd=tmp_path)
    lines = [line.split() for line in out.splitlines()]
    steps = [(words[0], words[2]) for words in lines if len(words) > 2 and words[1] == "by"]
    assert steps[0] == ("generate", "kimi")
    assert [s for s in steps if s[0] == "critique"] == [("critique", "glm")] * 2  # pinned
    assert steps[-1] == ("refine", "llama")  # glm's outage in round 2: llama answers
    assert "glm:error, glm:error, glm:error, llama:ok]" in out  # 2 retries, then move on
    assert "final: '[llama] draft for:" in out


def test_any_api(tmp_path: Path) -> None:
    out = run_example("any_api.py", "6", cwd=tmp_path)
    assert "429 from weather: cooldown 1s" in out
    assert "guarded: 6 forecasts" in out
    assert "stats: requests=7 ok=6 rate_limited=1 retries=1 errors=0 breaker=closed" in out
    assert "server: 429s=1 (the scripted one), most in flight" in out
    assert "limiter: 6 lookups, first 'city-0: 48.1 N, 11.6 E'" in out
    assert "server: 429s=0, most in flight" in out


def test_legacy_requests_if_present(tmp_path: Path) -> None:
    if not (EXAMPLES / "legacy_requests.py").exists():
        pytest.skip("examples/legacy_requests.py is not there")
    out = run_example("legacy_requests.py", cwd=tmp_path)
    assert "answers in" in out


# -- the batch job ---------------------------------------------------------------------------


def _ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record: Any = json.loads(line)
        except ValueError:
            continue
        ids.append(record["id"])
    return ids


def _expected_ids(n: int) -> list[str]:
    return [f"p{i:05d}" for i in range(n)]


def test_batch_stops_half_way_and_resumes(tmp_path: Path) -> None:
    out_file = tmp_path / "results.jsonl"
    first = run_example(
        "batch_threadpool.py", str(out_file), "-n", "120", "--stop-after", "50", cwd=tmp_path
    )
    assert "120 prompts, 0 already in results.jsonl, 120 to do" in first
    assert "wrote 50 results" in first
    assert len(_ids(out_file)) == 50

    # A crash can leave half a line behind: the rerun ignores it and does that prompt again.
    with out_file.open("a", encoding="utf-8") as f:
        f.write('{"id": "p001')

    second = run_example("batch_threadpool.py", str(out_file), cwd=tmp_path, BATCH_N="120")
    assert "120 prompts, 50 already in results.jsonl, 70 to do" in second
    assert "120/120 prompts done" in second
    assert "server-side 429s: 0" in second
    ids = _ids(out_file)
    assert sorted(ids) == _expected_ids(120)  # every id exactly once

    third = run_example("batch_threadpool.py", str(out_file), "-n", "120", cwd=tmp_path)
    assert "0 to do" in third and "wrote 0 results" in third
    assert sorted(_ids(out_file)) == _expected_ids(120)


@pytest.mark.skipif(os.name != "posix", reason="needs SIGINT")
def test_batch_interrupted_with_sigint_resumes(tmp_path: Path) -> None:
    out_file = tmp_path / "results.jsonl"
    args = ["-n", "300", "--latency", "0.02", "--workers", "4", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "batch_threadpool.py"), str(out_file), *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out_file.exists() and out_file.read_text(encoding="utf-8").count("\n") >= 20:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, f"{proc.returncode}\n{stdout}\n{stderr}"
    assert "interrupted:" in stdout and "rerun to resume" in stdout
    saved = _ids(out_file)
    assert 20 <= len(saved) < 300
    assert len(set(saved)) == len(saved)

    out = run_example("batch_threadpool.py", str(out_file), "-n", "300", cwd=tmp_path)
    assert f"{len(saved)} already in results.jsonl" in out
    assert sorted(_ids(out_file)) == _expected_ids(300)


# -- the notebook ----------------------------------------------------------------------------


def test_notebook_is_committed_without_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def _kernel_manager(tmp_path: Path) -> Any:
    """A kernel of *this* interpreter, from a kernel spec in a temp dir (nothing installed)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    name = "ratelimit-sdk-test"
    spec_dir = tmp_path / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ratelimit_sdk tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=name, kernel_spec_manager=specs)


def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("NOTEBOOK_N", "8")  # the kernel inherits the environment
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    km = _kernel_manager(tmp_path)
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=120,
        kernel_name=km.kernel_name,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert errors == []

    def html(cell: Any) -> str:
        return "".join(
            o.get("data", {}).get("text/html", "")
            for o in cell.outputs
            if o.output_type == "execute_result"
        )

    def text(cell: Any) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    by_source = {cell.source.strip(): cell for cell in code}
    client_html = html(by_source["client"])
    assert "<table>" in client_html and "kimi" in client_html and "Client (open" in client_html
    stats_html = html(by_source["client.stats()"])
    assert "<table>" in stats_html and "<th>429s</th>" in stats_html
    assert "<td>8</td>" in stats_html  # 8 requests, 8 ok
    printed = "".join(text(cell) for cell in code)
    assert "8 answers; first: echo: Question 0 from kimi" in printed
    assert "0 429s" in printed
    assert "done: echo: Stream a short answer, please | in flight now: 0" in printed
    assert "Client (closed" in html(code[-1])
