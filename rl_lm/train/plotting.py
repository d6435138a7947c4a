"""Curves of runs: one panel per metric against the step, one line per run.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so plotting
never picks or changes a backend: the loop writes PNGs headless, and a
notebook displays the returned figures inline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

_SKIP = ("step", "wall_time")
# The curves a person looks at first, in this order; the rest follow by name.
LEADING = (
    "reward",
    "eval/accuracy",
    "kl",
    "response_len",
    "eval/response_len",
    "loss",
    "eval/loss",
)


def curves_figure(
    runs: Mapping[str, Sequence[dict]], keys: Sequence[str] | None = None, title: str = ""
) -> Figure:
    """One panel per metric, each run's curve overlaid in it.

    Args:
      runs: label -> rows of metrics.jsonl (dicts with "step" and metric values;
        a metric may be absent from some rows, e.g. evaluation metrics). A single
        run labelled "" gets no legend.
      keys: the metrics to plot, in order; None plots every numeric metric of
        any run that is not constant across all runs (a column of zeros or a
        fixed learning rate says nothing), those of `LEADING` first.
      title: figure title.

    Returns:
      The figure.
    """
    if keys is None:
        keys = default_keys(runs)
    cols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4.5 * cols, 3.2 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for label, rows in runs.items():
            points = [(r["step"], r[key]) for r in rows if _is_number(r.get(key))]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if any(runs) and ax.lines:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def default_keys(runs: Mapping[str, Sequence[dict]]) -> list[str]:
    """The metrics worth a panel: numeric, not constant, those of `LEADING` first."""
    values: dict[str, set] = {}
    for rows in runs.values():
        for r in rows:
            for k, v in r.items():
                if _plottable(k, v):
                    values.setdefault(k, set()).add(v)
    varying = [k for k, seen in values.items() if len(seen) > 1]
    if not varying:  # A single logged row still gets its panels.
        varying = list(values)
    rank = {k: i for i, k in enumerate(LEADING)}
    return sorted(varying, key=lambda k: (rank.get(k, len(LEADING)), k))


def plot_curves(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Writes a PNG of every numeric metric of `rows` (metrics.jsonl rows) against "step"."""
    curves_figure({"": rows}, title=title).savefig(path, dpi=100)


def _plottable(key: str, value) -> bool:
    return key not in _SKIP and _is_number(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
