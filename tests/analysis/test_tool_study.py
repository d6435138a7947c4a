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


def _toolrl_run(path, accuracy, sampled):
    path.mkdir(parents=True)
    rows = [
        {"step": 0, "eval/accuracy": accuracy[0]},
        {"step": 5, "train_accuracy": sampled, "reward_toolrl": 2 * sampled},
        {"step": 10, "eval/accuracy": accuracy[1], "toolrl/value": sampled},
        {"step": 20, "eval/accuracy": accuracy[2]},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_toolrl_table_reads_the_middle_step_and_the_last_logged_values(tmp_path):
    _toolrl_run(tmp_path / "outcome" / "seed_0", (0.1, 0.2, 0.3), 0.5)
    _toolrl_run(tmp_path / "outcome" / "seed_1", (0.1, 0.4, 0.5), 0.7)
    _toolrl_run(tmp_path / "toolrl" / "seed_0", (0.1, 0.9, 1.0), 0.9)
    table = tool_study.toolrl_table(tmp_path, mid=15).splitlines()
    assert "accuracy at step 15" in table[0] and len(table) == 4
    outcome = [c.strip() for c in table[2].split("|")[1:-1]]
    # step 15 reads the step-10 eval: (20 + 40) / 2 = 30, t(0.975, 1) * 14.14 / sqrt(2) = 127.
    assert outcome[:4] == ["outcome", "2", "10 ± 0 (2 seeds)", "30 ± 127 (2 seeds)"]
    assert outcome[5].startswith("60 ± ") and outcome[6].startswith("1.2 ± ")
    assert table[3].startswith("| toolrl | 1 | ") and "90" in table[3]
    fig = tool_study.figure(tmp_path, tool_study.TOOLRL_ARMS, tool_study.TOOLRL_FIGURE)
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
