"""Held-out accuracy through an RL run's stages (SFT warm start, then RL) on one axis.

    python -m experiments.stages_figure --workdir=runs/default --out=docs/grpo_arith.png

Reads WORKDIR/warm_start (the SFT stage) and WORKDIR (the RL run) with
`rl_lm.analysis.load_metrics`; the RL steps continue the SFT steps on the x
axis. A second panel shows the RL run's training reward (the mean reward of
its temperature-1 samples) and the held-out accuracy of greedy decoding.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from matplotlib.figure import Figure

from rl_lm import analysis

_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/default", "The RL run (its SFT stage in warm_start/)."
)
_OUT = flags.DEFINE_string("out", None, "PNG to write; default WORKDIR/stages.png.")


def stages_figure(workdir: str | Path) -> Figure:
    """The figure described in the module docstring."""
    workdir = Path(workdir)
    sft = analysis.load_metrics(workdir / "warm_start")
    rl = analysis.load_metrics(workdir)
    algo = analysis.load_config(workdir).algo.upper()
    offset = int(sft["eval/accuracy"].steps[-1])
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    left.plot(sft["eval/accuracy"].steps, sft["eval/accuracy"].values, "o-", label="SFT")
    left.plot(rl["eval/accuracy"].steps + offset, rl["eval/accuracy"].values, "o-", label=algo)
    left.axvline(offset, color="gray", lw=0.8, ls="--")
    left.set(xlabel="step (SFT, then RL)", ylabel="held-out exact match (greedy)", ylim=(0, 1))
    left.legend()
    left.grid(alpha=0.3)
    right.plot(rl["reward"].steps, rl["reward"].values, label="train reward (T=1 samples)")
    right.plot(
        rl["eval/accuracy"].steps, rl["eval/accuracy"].values, "o-", label="held-out (greedy)"
    )
    right.set(xlabel=f"{algo} step", ylim=(0, 1))
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle(str(workdir))
    fig.tight_layout()
    return fig


def main(argv):
    del argv
    out = Path(_OUT.value or Path(_WORKDIR.value) / "stages.png")
    stages_figure(_WORKDIR.value).savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
