"""bench/nash_step.py runs end to end on a tiny workload (it prints figures, nothing is timed)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_nash_step_bench_runs():
    args = ["--repeats=1", "--inner_steps=1,2", "--prompts=8", "--samples=2", "--new_tokens=4"]
    out = subprocess.run(
        [sys.executable, "-m", "bench.nash_step", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "M=1:" in out.stdout and "M=2:" in out.stdout and "per optimizer update" in out.stdout
