"""A real Ctrl-C (SIGINT) delivered to a process in the middle of Client.map."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("interrupt_script.py")


@pytest.mark.integration
def test_ctrl_c_in_map_raises_fast_sends_nothing_new_and_leaks_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, (out, proc.stderr[-2000:])
    raised_after = float(re.search(r"raised_after=([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert raised_after < 1.0  # within a second of the signal
    assert "in_flight=0 queued=0" in out  # every permit came back
    assert "late_requests=0" in out  # nothing was sent after the interrupt
    total = int(re.search(r"total=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert total < 400  # the queued items were cancelled
