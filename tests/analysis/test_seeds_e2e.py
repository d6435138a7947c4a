"""experiments.seeds end to end: 2 seeds of the shrunken default experiment, then a rerun."""

import json

import pytest

from tests.launch_helpers import run_launch


@pytest.mark.slow
def test_two_seeds_then_a_rerun_skips_them(tmp_path):
    workdir, data_dir = tmp_path / "seeds", tmp_path / "data"
    flags = ("--config=configs/grpo_arith.py:runlocal", "--seeds=2", f"--workdir={workdir}")
    out = run_launch("experiments.seeds", *flags, data_dir=data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    for k in (0, 1):
        config = json.loads((workdir / f"seed_{k}" / "config.json").read_text())
        assert (config["seed"], config["warm_start"]["seed"]) == (k, k)
        assert (workdir / f"seed_{k}" / "warm_start" / "metrics.jsonl").is_file()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["seeds"] == ["0", "1"]
    accuracy = summary["metrics"]["eval/accuracy"]
    assert accuracy["final"]["n"] == 2 and accuracy["final_steps"] == [4]
    assert (workdir / "curves_ci.png").stat().st_size > 0
    assert "(2 seeds)" in (workdir / "summary.md").read_text()

    again = run_launch("experiments.seeds", *flags, data_dir=data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished 4 steps; skipped.") == 2
    assert "Run directory" not in again.stdout
