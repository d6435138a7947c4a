"""A Markdown table comparing arms of seed runs: a metric at chosen steps, mean ± interval.

Each arm is a directory of `seed_<k>` runs (what `experiments.seeds` writes),
all under one root; each cell is the mean over the arm's seeds of the metric
at the last logged step at or before the column's step, with its Student t 95%
half-width (`rl_lm.analysis.seeds`), then the per-seed values of the last
column.

    python -m experiments.arms_table --root=runs/variants --metric=eval/accuracy \
        --steps=0,50,100,400 --scale=100 --arms=deepseekmath,dr_grpo,dapo,rloo,gspo
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rl_lm.analysis import seeds


def at_step(curve: seeds.Curve, step: int) -> float | None:
    """The curve's value at its last logged step <= `step` (None before its first)."""
    k = int(np.searchsorted(curve.steps, step, side="right")) - 1
    return float(curve.values[k]) if k >= 0 else None


def cell(values: Sequence[float], scale: float) -> str:
    if not values:
        return "-"
    iv = seeds.interval(list(values))
    if iv.n > 1 and iv.sd == 0:  # every seed the same: no spread to show
        return f"{iv.mean * scale:.4g} ± 0 ({iv.n} seeds)"
    return seeds.format_interval(iv, scale=scale)


def arm_runs(root: Path, arm: str) -> dict[str, dict[str, seeds.Curve]]:
    """{seed: {metric: Curve}} of the `seed_<k>` runs in root/arm, in seed order."""
    dirs = sorted((root / arm).glob("seed_*"), key=lambda d: int(d.name.split("_")[1]))
    return seeds.load_runs({d.name.removeprefix("seed_"): d for d in dirs}) if dirs else {}


def table(
    root: Path, arms: Sequence[str], metric: str, steps: Sequence[int], scale: float = 1.0
) -> str:
    """The Markdown table of `metric` at `steps` for each arm under `root` that has runs."""
    head = " | ".join(f"step {s}" for s in steps)
    rows = [
        f"| arm | seeds | {head} | per seed, step {steps[-1]} |",
        "| --- | --- | " + " | ".join("---" for _ in steps) + " | --- |",
    ]
    for arm in arms:
        runs = arm_runs(root, arm)
        curves = [m[metric] for m in runs.values() if metric in m]
        if not curves:
            continue
        cells = []
        for step in steps:
            cells.append(cell([v for c in curves if (v := at_step(c, step)) is not None], scale))
        last = [at_step(c, steps[-1]) for c in curves]
        per_seed = " / ".join("-" if v is None else f"{v * scale:.4g}" for v in last)
        rows.append(f"| {arm} | {len(curves)} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="directory of the arms")
    parser.add_argument("--arms", required=True, help="comma-separated arm directories")
    parser.add_argument("--metric", default="eval/accuracy")
    parser.add_argument("--steps", default="0", help="comma-separated steps")
    parser.add_argument("--scale", type=float, default=1.0, help="e.g. 100 for percent")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    print(table(Path(args.root), arms, args.metric, steps, args.scale))


if __name__ == "__main__":
    main()
