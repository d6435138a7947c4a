"""A PNG of a run's curves: one panel per metric against the step."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # Files only; never needs a display.
import matplotlib.pyplot as plt  # noqa: E402

_SKIP = ("step", "wall_time")


def plot_curves(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Plots every numeric metric of `rows` (metrics.jsonl rows) against "step".

    Args:
      rows: dicts with "step" and metric values; a metric may be absent from some
        rows (e.g. evaluation metrics, logged less often).
      path: the PNG to write.
      title: figure title (e.g. the workdir).
    """
    keys = sorted({k for r in rows for k, v in r.items() if k not in _SKIP and _is_number(v)})
    # Training loss and held-out accuracy first: the two curves readers look for.
    keys.sort(key=lambda k: (k not in ("loss", "eval/accuracy"), k))
    cols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in rows if _is_number(r.get(key))]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
