"""Several runs side by side: overlaid curves and a final / best value table."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from rl_lm.analysis.runs import Workdir, load_metrics, run_dir
from rl_lm.train.metrics import read_metrics
from rl_lm.train.plotting import curves_figure

# Metrics whose name contains one of these are better when higher; others when lower.
HIGHER_IS_BETTER = ("accuracy", "reward", "win_rate", "tokens_per_s")
_NOT_COMPARED = ("wall_time",)

Runs = Mapping[str, Workdir] | Sequence[Workdir]


def _labelled(runs: Runs) -> dict[str, Path]:
    """label -> run directory; a list is labelled by the directories' names."""
    if isinstance(runs, str | bytes):
        raise TypeError("runs must be a list or a {label: workdir} dict, got a single path.")
    if not isinstance(runs, Mapping):
        paths = [run_dir(w) for w in runs]
        names = [p.name for p in paths]
        unique = len(set(names)) == len(names)
        runs = {(n if unique else str(p)): p for n, p in zip(names, paths, strict=True)}
    if not runs:
        raise ValueError("runs is empty; pass at least one workdir.")
    return {label: run_dir(w) for label, w in runs.items()}


def _check_metrics(metrics: Sequence[str], available: Collection[str]) -> None:
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(
            f"no run logged the metric(s) {unknown}; logged metrics: {sorted(available)}."
        )


def compare_runs(runs: Runs, metrics: Sequence[str] | None = None, title: str = "") -> Figure:
    """Overlays the curves of several runs, one panel per metric.

    Args:
      runs: {label: workdir}, or a list of workdirs (labelled by their names).
      metrics: the metrics to plot, e.g. ["loss", "eval/accuracy"]; None plots
        every metric any run logged.
      title: figure title.

    Returns:
      A matplotlib Figure (a notebook displays it; `fig.savefig(path)` writes it).
    """
    rows = {label: read_metrics(path) for label, path in _labelled(runs).items()}
    if metrics is not None:
        _check_metrics(metrics, {k for rs in rows.values() for r in rs for k in r} - {"step"})
    return curves_figure(rows, keys=metrics, title=title)


def summarize(
    runs: Runs,
    metrics: Sequence[str] | None = None,
    higher_is_better: Collection[str] | None = None,
) -> list[dict]:
    """The final and best value of each metric of each run.

    Args:
      runs: {label: workdir}, or a list of workdirs.
      metrics: which metrics; None for every metric any run logged (but wall_time).
      higher_is_better: metrics whose best value is the largest; None takes the
        metrics whose name contains one of `HIGHER_IS_BETTER`. The others' best
        is the smallest.

    Returns:
      One dict per (metric, run), ordered by metric then run, with keys "metric",
      "run", "final", "final_step", "best", "best_step" (the earliest step
      reaching the best value). A metric a run did not log is absent from it.
    """
    curves = {label: load_metrics(path) for label, path in _labelled(runs).items()}
    logged = {k for c in curves.values() for k in c}
    if metrics is None:
        metrics = sorted(logged - set(_NOT_COMPARED))
    _check_metrics(metrics, logged)
    out = []
    for metric in metrics:
        if higher_is_better is None:
            maximize = any(word in metric for word in HIGHER_IS_BETTER)
        else:
            maximize = metric in higher_is_better
        for label, run in curves.items():
            if metric not in run:
                continue
            steps, values = run[metric]
            best = int(values.argmax() if maximize else values.argmin())
            out.append(
                {
                    "metric": metric,
                    "run": label,
                    "final": float(values[-1]),
                    "final_step": int(steps[-1]),
                    "best": float(values[best]),
                    "best_step": int(steps[best]),
                }
            )
    return out


def format_table(rows: Sequence[dict]) -> str:
    """`summarize`'s rows as an aligned plain-text table."""
    if not rows:
        return "(no metrics)"
    keys = list(rows[0])
    cells = [keys] + [[_cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
