"""The PURE comparison on the chain task: credit forms and reward sources side by side.

    python -m experiments.pure_summary --runs=sum=runs/pure_sum,min=runs/pure_min \
        --out=docs/pure_chain.png

Every run is a configs/pure_chain.py run from one SFT warm start. The figure
overlays, per step, the accuracy of the temperature-1 training samples
(`train_accuracy`, smoothed over --smooth logged points), the greedy held-out exact
match (`eval/accuracy`), the steps per response (padding shows here) and the
first step's return under the run's credit form before any baseline
(`process_return`: what the policy is paid), and the fraction of greedy
held-out responses the budget cut before their end (`eval/cut`: padding that
pushed the answer out). A markdown table gives, per run, the held-out accuracy
and cut fraction at the start and the end and the means of the training curves
over the first and the last --tail steps.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from rl_lm import analysis

METRICS = (
    ("train_accuracy", "accuracy of training samples (T=1)"),
    ("eval/accuracy", "held-out greedy exact match"),
    ("steps_per_response", "steps per response"),
    ("process_return", "process return (first step)"),
    ("eval/cut", "held-out greedy cut by the budget"),
)


def _runs(items: list[str]) -> dict[str, str]:
    runs = {}
    for item in items:
        label, sep, workdir = item.partition("=")
        if not sep:
            raise ValueError(f"--runs item {item!r} is not label=workdir.")
        runs[label] = workdir
    return runs


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def figure(runs: dict[str, str], window: int) -> Figure:
    fig = Figure(figsize=(17, 3.6))
    axes = fig.subplots(1, len(METRICS))
    for label, workdir in runs.items():
        curves = analysis.load_metrics(workdir)
        for ax, (key, _) in zip(axes, METRICS, strict=True):
            if key not in curves:
                continue
            c = curves[key]
            values = c.values if key.startswith("eval/") else _smooth(c.values, window)
            ax.plot(c.steps, values, label=label, marker="o" if key.startswith("eval/") else None)
    for ax, (_, title) in zip(axes, METRICS, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def table(runs: dict[str, str], tail: int) -> str:
    """Markdown: held-out figures first -> last eval, training means first -> last `tail` steps."""
    head = (
        "| run | held-out greedy | greedy cut by the budget | T=1 accuracy | steps per response "
        "| process return |"
    )
    lines = [head, "|---" * 6 + "|"]
    for label, workdir in runs.items():
        curves = analysis.load_metrics(workdir)
        cells = []
        for key in ("eval/accuracy", "eval/cut"):  # runs before eval/cut existed show "-"
            ev = curves.get(key)
            cells.append("-" if ev is None else f"{ev.values[0]:.1%} -> {ev.values[-1]:.1%}")
        for key in ("train_accuracy", "steps_per_response", "process_return"):
            c = curves[key]
            first, last = c.values[c.steps <= tail], c.values[c.steps > c.steps[-1] - tail]
            cells.append(f"{first.mean():.3g} -> {last.mean():.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    runs = _runs(FLAGS.runs)
    print(table(runs, FLAGS.tail))
    figure(runs, FLAGS.smooth).savefig(FLAGS.out, dpi=110)
    print(f"figure: {FLAGS.out}")


if __name__ == "__main__":
    # Flags are defined here, not on import, so tests can import this module
    # next to other experiment scripts that also have an --out.
    flags.DEFINE_list("runs", ["sum=runs/pure_sum", "min=runs/pure_min"], "label=workdir")
    flags.DEFINE_string("out", "docs/pure_chain.png", "PNG to write.")
    flags.DEFINE_integer("smooth", 5, "Moving-average window, in logged points.")
    flags.DEFINE_integer("tail", 50, "Steps averaged at the start and the end of the table.")
    app.run(main)
