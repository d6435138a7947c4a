"""The tool-use study of configs/grpo_tool_arith.py: tables and one figure from its seed runs.

Arms (each a directory of seed_<k> runs made by `experiments.seeds`, see
docs/results/tool_use.md for the commands):

- notool: no calculator (demonstrations answer directly), single-turn GRPO;
- tool: the calculator, multi-turn GRPO (the ReTool contrast is tool vs notool);
- otc_off / otc_on: demonstrations that call twice 70% of the time, GRPO without
  and with OTC's tool-efficiency reward (`grpo.tool_efficiency=1`).

The ToolRL study (`--study=toolrl`, its own root) has the arms outcome (exact
match), toolrl (ToolRL's decomposed reward alone) and toolrl_outcome (both),
from one under-trained warm start; its table adds the held-out accuracy at
`--mid` steps and the training samples' exact match, and its figure is
OUT/toolrl.png.

    python -m experiments.tool_study --root=runs/tool_study --out=docs/results
    python -m experiments.tool_study --study=toolrl --root=runs/toolrl_study --mid=20

prints a Markdown table (held-out greedy accuracy and calls per episode at the
warm start and after GRPO, mean ± Student t 95% half-width over the seeds, and
the sampled calls per training episode at the last logged step) and writes
OUT/tool_use.png (held-out accuracy, held-out calls per episode and sampled
calls per training episode against steps, every seed faintly and the mean per arm).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from experiments.arms_table import arm_runs, at_step, cell

ARMS = ("notool", "tool", "otc_off", "otc_on")
TOOLRL_ARMS = ("outcome", "toolrl", "toolrl_outcome")
PANELS = (("eval/accuracy", "held-out accuracy", 100.0), ("eval/calls", "calls per episode", 1.0))
FIGURE = (*PANELS, ("tool/calls", "sampled calls per training episode", 1.0))
TOOLRL_FIGURE = (
    PANELS[0],
    ("train_accuracy", "exact match of the training samples", 100.0),
    ("toolrl/value", "sampled calls with the right expression", 1.0),
    ("reward_toolrl", "ToolRL reward of the training samples", 1.0),
)


def table(root: Path) -> str:
    rows = [
        "| arm | seeds | accuracy start | accuracy after GRPO | calls start | calls after GRPO "
        "| sampled calls, last logged step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        runs = arm_runs(root, arm)
        if not runs:
            continue
        cells = []
        for key, _, scale in PANELS:
            curves = [m[key] for m in runs.values() if key in m]
            cells.append(cell([c.values[0] for c in curves], scale))
            cells.append(cell([c.values[-1] for c in curves], scale))
        sampled = [m["tool/calls"].values[-1] for m in runs.values() if "tool/calls" in m]
        cells.append(cell(sampled, 1.0))
        rows.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def toolrl_table(root: Path, mid: int) -> str:
    """The ToolRL study's rows: held-out accuracy at the start, at `mid` and at the end, and
    the last logged exact match and ToolRL reward of the training samples."""
    rows = [
        f"| arm | seeds | accuracy start | accuracy at step {mid} | accuracy after GRPO "
        "| sampled exact match, last logged | sampled ToolRL reward, last logged |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in TOOLRL_ARMS:
        runs = arm_runs(root, arm)
        if not runs:
            continue
        acc = [m["eval/accuracy"] for m in runs.values() if "eval/accuracy" in m]
        cells = [
            cell([c.values[0] for c in acc], 100.0),
            cell([at_step(c, mid) for c in acc], 100.0),
            cell([c.values[-1] for c in acc], 100.0),
        ]
        for key, scale in (("train_accuracy", 100.0), ("reward_toolrl", 1.0)):
            cells.append(cell([m[key].values[-1] for m in runs.values() if key in m], scale))
        rows.append(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def figure(root: Path, arms=ARMS, panels=FIGURE) -> Figure:
    fig = Figure(figsize=(4.7 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        for i, arm in enumerate(arms):
            curves = [m[key] for m in arm_runs(root, arm).values() if key in m]
            if not curves:
                continue
            color = f"C{i}"
            for c in curves:
                ax.plot(c.steps, c.values * scale, color=color, alpha=0.25, lw=0.8)
            steps = min((c.steps for c in curves), key=len)
            mean = np.mean([c.values[: len(steps)] * scale for c in curves], axis=0)
            ax.plot(steps, mean, color=color, lw=2, label=f"{arm} ({len(curves)} seeds)")
        ax.set(xlabel="GRPO step", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main():
    # argparse, not absl flags: module-level absl flags of two experiments collide
    # when both are imported in one process (the test suite).
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="runs/tool_study", help="directory of the arms")
    parser.add_argument("--out", default="docs/results", help="where the figure goes")
    parser.add_argument("--study", default="tool_use", choices=("tool_use", "toolrl"))
    parser.add_argument("--mid", type=int, default=20, help="toolrl: the middle step reported")
    args = parser.parse_args()
    root, out = Path(args.root), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.study == "toolrl":
        print(toolrl_table(root, args.mid))
        fig = figure(root, TOOLRL_ARMS, TOOLRL_FIGURE)
    else:
        print(table(root))
        fig = figure(root)
    fig.savefig(out / f"{args.study}.png", dpi=110)
    print(f"wrote {out / f'{args.study}.png'}")


if __name__ == "__main__":
    main()
