"""The PURE summary table: held-out figures first -> last, training means over the ends."""

import json

from experiments import pure_summary


def _write_run(path, rows):
    path.mkdir()
    with (path / "metrics.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _train(step, acc, steps, ret):
    return dict(step=step, train_accuracy=acc, steps_per_response=steps, process_return=ret)


def test_table_reads_each_run_and_marks_missing_cut_figures(tmp_path):
    _write_run(
        tmp_path / "new",
        [
            {"step": 0, "eval/accuracy": 0.5, "eval/cut": 0.25},
            _train(10, 0.2, 4.0, 1.0),
            _train(20, 0.4, 5.0, 2.0),
            _train(30, 0.6, 6.0, 3.0),
            {"step": 30, "eval/accuracy": 0.75, "eval/cut": 0.0},
        ],
    )
    # A run logged before eval/cut existed.
    _write_run(tmp_path / "old", [{"step": 0, "eval/accuracy": 1.0}, _train(10, 1.0, 4.0, 0.5)])
    text = pure_summary.table({"new": str(tmp_path / "new"), "old": str(tmp_path / "old")}, tail=10)
    head, rule, new, old = text.splitlines()
    assert head.count("|") == rule.count("|") == new.count("|") == old.count("|") == 7
    # Means over steps <= 10 and over the last 10 steps (20 < step <= 30).
    assert new == "| new | 50.0% -> 75.0% | 25.0% -> 0.0% | 0.2 -> 0.6 | 4 -> 6 | 1 -> 3 |"
    assert old == "| old | 100.0% -> 100.0% | - | 1 -> 1 | 4 -> 4 | 0.5 -> 0.5 |"
    fig = pure_summary.figure({"new": str(tmp_path / "new")}, window=2)
    assert len(fig.axes) == len(pure_summary.METRICS)
