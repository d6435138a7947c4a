"""rl_lm.analysis.seeds: Student t intervals over seeds, checked by hand."""

import json
import math

import numpy as np
import pytest

from experiments import seeds as seeds_cmd
from rl_lm.analysis import Curve, seeds


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 30, 2.0423),
        (0.95, 9, 1.8331),
    ],
)
def test_t_quantile_matches_the_table(p, df, expected):
    assert seeds.t_quantile(p, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 60):
        assert seeds.t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)


def test_interval_by_hand():
    iv = seeds.interval([1, 2, 3, 4, 5])
    assert iv.n == 5
    assert iv.mean == pytest.approx(3.0)
    assert iv.sd == pytest.approx(math.sqrt(2.5))
    # t_{0.975,4} * sd / sqrt(5) = 2.7764 * 1.5811 / 2.2361
    assert iv.half_width == pytest.approx(1.9632, abs=1e-4)
    assert seeds.format_interval(iv) == "3.0 ± 2.0 (5 seeds)"
    acc = seeds.interval([0.96, 0.97, 0.98])  # sd 0.01, t_{0.975,2} = 4.3027
    assert acc.half_width == pytest.approx(4.3027 * 0.01 / math.sqrt(3), abs=1e-6)
    assert seeds.format_interval(acc, scale=100, unit="%") == "97.0% ± 2.5% (3 seeds)"


def test_one_seed_has_no_interval():
    iv = seeds.interval([0.5, math.nan])
    assert iv.mean == 0.5 and iv.n == 1
    assert math.isnan(iv.sd) and math.isnan(iv.half_width)
    assert seeds.format_interval(iv) == "0.5 (1 seed, no interval)"
    with pytest.raises(ValueError, match="finite"):
        seeds.interval([math.nan])


def _curve(steps, values):
    return Curve(np.asarray(steps, np.int64), np.asarray(values, np.float64))


def test_align_ragged_runs():
    a = _curve([0, 10, 20], [1.0, 2.0, 3.0])
    b = _curve([0, 10], [3.0, 4.0])  # stopped early
    sc = seeds.align([a, b])
    np.testing.assert_array_equal(sc.steps, [0, 10, 20])
    np.testing.assert_allclose(sc.mean, [2.0, 3.0, 3.0])
    np.testing.assert_array_equal(sc.n, [2, 2, 1])
    # Two values 2 apart: sd sqrt(2), half-width t_{0.975,1} * sqrt(2) / sqrt(2) = 12.706.
    np.testing.assert_allclose(sc.half_width[:2], [12.7062, 12.7062], atol=1e-4)
    assert math.isnan(sc.half_width[2])


def _write_run(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_of_runs_on_disk(tmp_path):
    finals = [0.95, 0.97, 0.99]
    for k, final in enumerate(finals):
        _write_run(
            tmp_path / f"seed_{k}",
            [
                {"step": 0, "eval/accuracy": [0.40, 0.41, 0.42][k]},
                {"step": 10, "reward": 0.5, "loss": 1.0},
                {"step": 20, "reward": 0.9, "eval/accuracy": final},
            ],
        )
    runs = seeds.load_runs({str(k): tmp_path / f"seed_{k}" for k in range(3)})
    summary = seeds.summarize(runs)
    assert list(summary["metrics"]) == ["eval/accuracy", "reward"]
    acc = summary["metrics"]["eval/accuracy"]
    assert acc["first"]["mean"] == pytest.approx(0.41)
    assert acc["final"]["mean"] == pytest.approx(0.97)
    assert acc["final"]["half_width"] == pytest.approx(4.3027 * 0.02 / math.sqrt(3), abs=1e-6)
    assert acc["per_seed"]["2"] == dict(first=0.42, first_step=0, final=0.99, final_step=20)
    assert acc["final_steps"] == [20]
    text = seeds.format_summary(summary)
    assert "| eval/accuracy | 0.410 ± 0.025 (3 seeds) | 0 | 0.970 ± 0.050 (3 seeds) | 20 |" in text
    json.dumps(summary)  # JSON-able as it is
    fig = seeds.band_figure(runs, ["eval/accuracy", "reward"])
    assert [ax.get_title() for ax in fig.axes] == ["eval/accuracy", "reward"]


def test_summary_says_when_seeds_end_at_different_steps():
    runs = {
        "0": {"eval/accuracy": _curve([0, 20], [0.4, 0.9])},
        "1": {"eval/accuracy": _curve([0, 10], [0.4, 0.6])},
    }
    summary = seeds.summarize(runs)
    assert summary["metrics"]["eval/accuracy"]["final_steps"] == [10, 20]
    assert "the seeds end at different steps" in seeds.format_summary(summary)
    one = seeds.summarize({"0": runs["0"]})
    assert "(1 seed, no interval)" in seeds.format_summary(one)
    legend = seeds.band_figure({"0": runs["0"]}).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["1 seed, no interval"]


def test_seed_flags():
    from configs import grpo_arith, sft_arith

    config, workdir = grpo_arith.get_config("runlocal"), seeds_cmd.Path("/w")
    assert seeds_cmd.seed_flags(config, workdir, 3, 0, shared=False) == [
        "--config.seed=3",
        "--config.warm_start.seed=3",
    ]
    assert seeds_cmd.seed_flags(config, workdir, 0, 0, shared=True) == ["--config.seed=0"]
    assert seeds_cmd.seed_flags(config, workdir, 3, 0, shared=True) == [
        "--config.seed=3",
        "--config.init.workdir=/w/seed_0/warm_start",
    ]
    assert seeds_cmd.seed_flags(sft_arith.get_config(), workdir, 2, 0, False) == ["--config.seed=2"]
