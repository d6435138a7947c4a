"""Which curves a run's curves.png shows, and in what order."""

from rl_lm.train import plotting


def test_leading_metrics_come_first_and_constant_series_are_left_out():
    rows = [
        {"step": 10, "wall_time": 1.0, "loss": 0.5, "reward": 0.1, "lr": 1e-4, "clip_low": 0.0},
        {"step": 20, "wall_time": 2.0, "loss": 0.4, "reward": 0.3, "lr": 1e-4, "clip_low": 0.0},
        {"step": 20, "eval/accuracy": 0.7, "kl": 0.01, "grad_norm": 2.0, "response_len": 30.0},
        {"step": 30, "eval/accuracy": 0.8, "kl": 0.02, "grad_norm": 1.0, "response_len": 31.0},
    ]
    keys = plotting.default_keys({"": rows})
    assert keys == ["reward", "eval/accuracy", "kl", "response_len", "loss", "grad_norm"]


def test_a_series_constant_in_one_run_but_not_across_runs_is_kept():
    runs = {
        "a": [{"step": 1, "beta": 0.1}, {"step": 2, "beta": 0.1}],
        "b": [{"step": 1, "beta": 0.2}],
    }
    assert plotting.default_keys(runs) == ["beta"]


def test_a_single_row_still_gets_its_panels():
    assert plotting.default_keys({"": [{"step": 0, "eval/accuracy": 0.5, "x": True}]}) == [
        "eval/accuracy"
    ]


def test_the_figure_has_one_panel_per_key(tmp_path):
    rows = [{"step": s, "reward": s / 10, "loss": 1 - s / 10} for s in range(3)]
    fig = plotting.curves_figure({"": rows})
    assert [ax.get_title() for ax in fig.axes if ax.lines] == ["reward", "loss"]
    plotting.plot_curves(rows, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
