"""experiments/tool_study.py: the table and figure from seed runs' metrics."""

import json

from experiments import tool_study


def _run(path, accuracy, calls, sampled):
    path.mkdir(parents=True)
    rows = [
        {"step": 0, "eval/accuracy": accuracy[0], "eval/calls": calls[0]},
        *({"step": s, "tool/calls": sampled} for s in range(1, 30)),
        {"step": 30, "eval/accuracy": accuracy[1], "eval/calls": calls[1]},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_and_figure(tmp_path):
    _run(tmp_path / "tool" / "seed_0", (0.9, 1.0), (1.5, 1.2), 1.25)
    _run(tmp_path / "tool" / "seed_1", (0.8, 1.0), (1.5, 1.0), 1.75)
    _run(tmp_path / "otc_on" / "seed_0", (0.5, 0.6), (2.0, 1.0), 1.0)
    table = tool_study.table(tmp_path).splitlines()
    assert len(table) == 4 and table[2].startswith("| tool | 2 |")
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    # Percent; t(0.975, 1) = 12.71: 85 ± 12.71 * 7.07 / sqrt(2).
    assert cells[2] == "85 ± 64 (2 seeds)" and cells[3] == "100 ± 0 (2 seeds)"
    assert cells[6] == "1.5 ± 3.2 (2 seeds)"  # the last logged step, per seed
    assert "1 seed, no interval" in table[3]
    tool_study.figure(tmp_path).savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
