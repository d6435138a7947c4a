"""Preference methods compared on the synthetic sorting task, judged by the hidden true reward.

    python -m experiments.preference_summary --runs=runs/pref/dpo,runs/pref/ppo \
        --out=docs/preference_methods.png

Each run (DPO, PPO, GRPO, ... from the same SFT warm start) logs, at every
evaluation, the sequence KL of its temperature-1 samples to the SFT reference
(eval/kl), their mean true reward (eval/reward), the reference's (eval/ref_reward)
and their win rate over the reference's samples (eval/win_rate). Prints a
markdown table of each method at matched KL (its eval point whose KL is closest to
--kl; by default the largest KL every method reaches) and at its last eval, and
saves a figure: true reward against KL for every eval point, and, for runs that
log both, the learned and the true reward of the training rollouts against step
(where they part is where over-optimization of the reward model begins).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from rl_lm import analysis

_RUNS = flags.DEFINE_list(
    "runs", ["runs/pref/dpo", "runs/pref/ppo"], "Workdirs of the runs to compare."
)
_KL = flags.DEFINE_float("kl", None, "KL (nats) to match at; default: the largest all reach.")
_OUT = flags.DEFINE_string("out", "docs/preference_methods.png", "PNG to write.")

_EVAL_KEYS = ("eval/kl", "eval/reward", "eval/win_rate", "eval/ref_reward")


def eval_points(workdir: str | Path) -> dict[str, np.ndarray]:
    """A run's eval steps and its kl, reward, win_rate and ref_reward there.

    Raises:
      ValueError: when the run has not logged an evaluation with a true reward yet.
    """
    curves = analysis.load_metrics(workdir)
    missing = [k for k in _EVAL_KEYS if k not in curves]
    if missing:
        raise ValueError(
            f"{workdir} has no {', '.join(missing)} yet; it needs a sort_pref dataset and at "
            "least one evaluation (train.eval_every)."
        )
    out = {"step": curves["eval/kl"].steps}
    for key in _EVAL_KEYS:
        if not np.array_equal(curves[key].steps, out["step"]):
            raise ValueError(f"{workdir}: {key} was not logged at the same steps as eval/kl.")
        out[key.removeprefix("eval/")] = curves[key].values
    return out


def method_name(workdir: str | Path) -> str:
    """The run's algorithm, upper-cased ("DPO"), or its directory name without a config."""
    try:
        return str(analysis.load_config(workdir).algo).upper()
    except FileNotFoundError:
        return Path(workdir).name


def summary_table(points: dict[str, dict[str, np.ndarray]], kl: float) -> str:
    """Markdown: the SFT start, then each method at the KL closest to `kl` and at its end."""
    header = (
        "| method | point | step | KL to SFT (nats) | true reward | win rate vs SFT |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    ref = np.mean([p["ref_reward"][0] for p in points.values()])
    rows = [header, f"| SFT | start | 0 | 0 | {ref:.3f} | 50.0% |"]
    for name, p in points.items():
        matched = int(np.argmin(np.abs(p["kl"] - kl)))
        for label, i in ((f"KL ~ {kl:.2g}", matched), ("final", len(p["step"]) - 1)):
            rows.append(
                f"| {name} | {label} | {p['step'][i]} | {p['kl'][i]:.2f} | "
                f"{p['reward'][i]:.3f} | {100 * p['win_rate'][i]:.1f}% |"
            )
    return "\n".join(rows)


def overoptimization(curves: dict[str, analysis.Curve]) -> str:
    """One line on a run's learned vs true reward of its training rollouts."""
    learned, true = curves["reward_learned"], curves["reward_true"]
    best = int(np.argmax(true.values))
    corr = np.corrcoef(learned.values, true.values)[0, 1] if len(true.steps) > 2 else np.nan
    return (
        f"rollout reward, learned: {learned.values[0]:.3f} -> {learned.values[-1]:.3f} "
        f"(max {learned.values.max():.3f} at step {learned.steps[learned.values.argmax()]}); "
        f"true: {true.values[0]:.3f} -> {true.values[-1]:.3f} (max {true.values[best]:.3f} at "
        f"step {true.steps[best]}); correlation over logged steps {corr:.2f}"
    )


def figure(points: dict[str, dict[str, np.ndarray]], rlhf: dict[str, dict]) -> Figure:
    """True reward vs KL per method; learned vs true rollout reward per RLHF run."""
    fig = Figure(figsize=(11 if rlhf else 5.5, 4))
    axes = fig.subplots(1, 1 + len(rlhf), squeeze=False)[0]
    ax = axes[0]
    for name, p in points.items():
        kl = np.concatenate([[0.0], p["kl"]])
        reward = np.concatenate([[p["ref_reward"][0]], p["reward"]])
        (line,) = ax.plot(kl, reward, "o-", label=name)
        ax.annotate(
            str(p["step"][-1]),
            (kl[-1], reward[-1]),
            fontsize=8,
            color=line.get_color(),
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.plot([0], [np.mean([p["ref_reward"][0] for p in points.values()])], "k*", ms=10, label="SFT")
    ax.set(xlabel="sequence KL to SFT (nats)", ylabel="held-out true reward (T=1 samples)")
    ax.set_title("eval points (last step annotated)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    for ax, (name, curves) in zip(axes[1:], rlhf.items(), strict=True):
        learned, true = curves["reward_learned"], curves["reward_true"]
        ax.plot(learned.steps, learned.values, color="C3", label="learned (reward model)")
        ax.set(xlabel=f"{name} step", ylabel="learned reward of rollouts")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(true.steps, true.values, color="C2", label="true, rollouts")
        ev = curves["eval/reward"]
        twin.plot(ev.steps, ev.values, "o", color="C2", mfc="none", label="true, held-out")
        twin.set_ylabel("true reward")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=8, loc="lower right")
        ax.set_title(f"{name}: learned vs true reward", fontsize=9)
    fig.tight_layout()
    return fig


def main(argv):
    del argv
    points, rlhf = {}, {}
    for workdir in _RUNS.value:
        name = method_name(workdir)
        points[name] = eval_points(workdir)
        curves = analysis.load_metrics(workdir)
        if "reward_learned" in curves and "reward_true" in curves:
            rlhf[name] = curves
    kl = _KL.value if _KL.value is not None else min(p["kl"].max() for p in points.values())
    print(summary_table(points, kl))
    for name, curves in rlhf.items():
        print(f"\n{name} {overoptimization(curves)}")
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure(points, rlhf).savefig(out, dpi=110)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    app.run(main)
