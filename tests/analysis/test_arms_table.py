"""experiments/arms_table.py: a metric at chosen steps over each arm's seeds."""

import json

from experiments import arms_table


def _run(path, values):
    path.mkdir(parents=True)
    rows = [{"step": s, "eval/accuracy": v} for s, v in values]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_reads_the_last_step_at_or_before_each_column(tmp_path):
    _run(tmp_path / "a" / "seed_0", [(0, 0.4), (50, 0.8), (100, 0.9)])
    _run(tmp_path / "a" / "seed_1", [(0, 0.4), (50, 0.6), (100, 0.7)])
    _run(tmp_path / "b" / "seed_0", [(0, 0.4), (100, 1.0)])
    table = arms_table.table(tmp_path, ["a", "b", "missing"], "eval/accuracy", [0, 75, 100], 100)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, a, b: an arm without runs is left out
    a = [c.strip() for c in lines[2].split("|")[1:-1]]
    # step 75 reads step 50: (80 + 60) / 2 = 70, t(0.975, 1) * 14.14 / sqrt(2) = 127.
    assert a[:4] == ["a", "2", "40 ± 0 (2 seeds)", "70 ± 127 (2 seeds)"]
    assert a[5] == "90 / 70"
    b = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert b[3] == "40 (1 seed, no interval)" and b[5] == "100"
