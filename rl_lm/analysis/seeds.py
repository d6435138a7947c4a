"""Runs of one config over several seeds: per-step means with 95% confidence intervals.

    from rl_lm.analysis import seeds

    runs = seeds.load_runs({"0": "runs/x/seed_0", "1": "runs/x/seed_1", ...})
    summary = seeds.summarize(runs)           # first and final figures, per seed and pooled
    print(seeds.format_summary(summary))      # "eval/accuracy: 0.9713 ± 0.0081 (5 seeds)"
    seeds.band_figure(runs, ["eval/accuracy"]).savefig("curves_ci.png")

Every interval is a Student t interval on the seeds' values: mean ± t_{0.975, n-1}
* sd / sqrt(n), with sd the sample standard deviation (n - 1 in the
denominator). It assumes the seeds' values are independent draws of a roughly
normal figure; with 5 seeds t_{0.975, 4} = 2.776, so the half-width is 1.24
sample standard deviations. One seed has no interval, and says so.

Runs may be ragged (a seed still training, a metric logged at other steps): a
step's statistics use the seeds that logged it, and `n` says how many.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from rl_lm.analysis.runs import Curve, Workdir, load_metrics
from rl_lm.train.plotting import LEADING

LEVEL = 0.95


class Interval(NamedTuple):
    """Mean ± half-width of `n` seeds' values; sd and half_width are nan when n < 2."""

    mean: float
    sd: float
    half_width: float
    n: int


class SeedCurve(NamedTuple):
    """One metric over seeds: at `steps[i]`, `n[i]` seeds logged it (arrays, one per step)."""

    steps: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    half_width: np.ndarray
    n: np.ndarray


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer `df`, closed form (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        if df == 1:
            return 2 * theta / math.pi
        term, total = 1.0, 1.0
        for k in range(2, df - 1, 2):  # 1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...
            term *= c2 * k / (k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0
    for k in range(1, df - 2, 2):  # 1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...
        term *= c2 * k / (k + 1)
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, df: int) -> float:
    """The `p` quantile (p > 0.5) of Student's t with `df` degrees of freedom.

    E.g. t_quantile(0.975, 4) = 2.7764.

    Bisection on the closed-form CDF, to about 1e-10; no scipy needed.
    """
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}.")
    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < target:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < target else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student t confidence interval of independent seeds' values (nan ignored).

    Raises:
      ValueError: when no value is finite.
    """
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        raise ValueError("interval() needs at least one finite value.")
    n, mean = len(x), float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    return Interval(mean, sd, t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n), n)


def format_interval(iv: Interval, scale: float = 1.0, unit: str = "") -> str:
    """'0.9713 ± 0.0081 (5 seeds)'; one seed: '0.9713 (1 seed, no interval)'.

    The half-width has two significant digits and the mean as many decimals.

    `scale` and `unit` show e.g. accuracies as percentages (scale=100, unit="%").
    """
    mean, hw = iv.mean * scale, iv.half_width * scale
    if iv.n < 2:
        return f"{mean:.4g}{unit} (1 seed, no interval)"
    # Two significant digits of the half-width, the mean to the same decimal place.
    places = max(0, 1 - math.floor(math.log10(hw))) if hw > 0 else 4
    return f"{mean:.{places}f}{unit} ± {hw:.{places}f}{unit} ({iv.n} seeds)"


def load_runs(workdirs: Mapping[str, Workdir] | Sequence[Workdir]) -> dict[str, dict[str, Curve]]:
    """label -> the run's metrics (`rl_lm.analysis.load_metrics`); a list's labels are indices."""
    if not isinstance(workdirs, Mapping):
        workdirs = {str(i): w for i, w in enumerate(workdirs)}
    return {label: load_metrics(w) for label, w in workdirs.items()}


def align(curves: Sequence[Curve], level: float = LEVEL) -> SeedCurve:
    """Per-step statistics of one metric over seeds, on every step any seed logged."""
    by_step: dict[int, list[float]] = {}
    for c in curves:
        for s, v in zip(c.steps.tolist(), c.values.tolist(), strict=True):
            if math.isfinite(v):
                by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    ivs = [interval(by_step[s], level) for s in steps]
    col = lambda i: np.asarray([iv[i] for iv in ivs], np.float64)  # noqa: E731
    return SeedCurve(
        np.asarray(steps, np.int64), col(0), col(1), col(2), np.asarray([iv.n for iv in ivs])
    )


def summary_keys(runs: Mapping[str, Mapping[str, Curve]]) -> list[str]:
    """The figures worth a summary: every held-out ("eval/") metric, then "reward"."""
    names = {k for metrics in runs.values() for k in metrics}
    return sorted(k for k in names if k.startswith("eval/")) + (["reward"] * ("reward" in names))


def summarize(
    runs: Mapping[str, Mapping[str, Curve]],
    keys: Sequence[str] | None = None,
    level: float = LEVEL,
) -> dict:
    """The first and final value of each metric, per seed and as mean ± CI (JSON-able).

    For a run with `eval_at_start`, "first" is the held-out figure of the
    starting parameters (an RL run's warm start) at step 0. "final" is each
    seed's last logged value; `final_steps` says at which steps, so a seed that
    stopped early shows.

    Returns:
      {"level", "interval": "Student t", "seeds": [labels], "metrics": {key:
      {"first": Interval dict, "final": Interval dict, "per_seed": {label:
      {"first", "first_step", "final", "final_step"}}, "final_steps": [...]}}}.
    """
    keys = summary_keys(runs) if keys is None else list(keys)
    metrics = {}
    for key in keys:
        per_seed = {}
        for label, m in runs.items():
            c = m.get(key)
            ok = np.isfinite(c.values) if c is not None else np.zeros(0, bool)
            if c is None or not ok.any():
                continue
            steps, values = c.steps[ok], c.values[ok]
            per_seed[label] = dict(
                first=float(values[0]),
                first_step=int(steps[0]),
                final=float(values[-1]),
                final_step=int(steps[-1]),
            )
        if not per_seed:
            continue
        metrics[key] = dict(
            first=interval([s["first"] for s in per_seed.values()], level)._asdict(),
            final=interval([s["final"] for s in per_seed.values()], level)._asdict(),
            final_steps=sorted({s["final_step"] for s in per_seed.values()}),
            per_seed=per_seed,
        )
    return dict(level=level, interval="Student t", seeds=list(runs), metrics=metrics)


def format_summary(summary: Mapping) -> str:
    """Markdown: a table of mean ± CI per metric, then each seed's values."""
    pct = int(round(summary["level"] * 100))
    lines = [
        f"Mean ± {pct}% confidence half-width ({summary['interval']}) over seeds "
        f"{', '.join(summary['seeds'])}.",
        "",
        "| metric | first | at step | final | at step |",
        "|---|---|---|---|---|",
    ]
    for key, m in summary["metrics"].items():
        first_steps = sorted({s["first_step"] for s in m["per_seed"].values()})
        final = ", ".join(map(str, m["final_steps"]))
        if len(m["final_steps"]) > 1:
            final = f"{final}: the seeds end at different steps"
        lines.append(
            f"| {key} | {format_interval(Interval(**m['first']))} | "
            f"{', '.join(map(str, first_steps))} | {format_interval(Interval(**m['final']))} | "
            f"{final} |"
        )
    labels = summary["seeds"]
    lines += ["", "| metric | " + " | ".join(f"seed {s}" for s in labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for key, m in summary["metrics"].items():
        for which in ("first", "final"):
            cells = [m["per_seed"].get(s, {}).get(which) for s in labels]
            shown = ["-" if v is None else f"{v:.4g}" for v in cells]
            lines.append(f"| {key} ({which}) | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def band_keys(runs: Mapping[str, Mapping[str, Curve]], limit: int = 6) -> list[str]:
    """The curves a person looks at first (`rl_lm.train.plotting.LEADING`) that the runs logged."""
    names = {k for metrics in runs.values() for k in metrics}
    return [k for k in LEADING if k in names][:limit]


def band_figure(
    runs: Mapping[str, Mapping[str, Curve]],
    keys: Sequence[str] | None = None,
    title: str = "",
    level: float = LEVEL,
) -> Figure:
    """One panel per metric: each seed faintly, their mean, and the Student t band.

    The band is drawn where at least two seeds logged the step; one seed is
    drawn as a line with no band, and the legend says so.
    """
    keys = band_keys(runs) if keys is None else list(keys)
    cols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4.5 * cols, 3.2 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    pct = int(round(level * 100))
    for ax, key in zip(axes.flat, keys, strict=False):
        curves = [m[key] for m in runs.values() if key in m]
        if not curves:
            continue
        for c in curves:
            ax.plot(c.steps, c.values, color="C0", alpha=0.25, linewidth=0.8)
        sc = align(curves, level)
        n = int(sc.n.max()) if len(sc.n) else 0
        label = f"mean of {n} seeds" if n > 1 else "1 seed, no interval"
        ax.plot(
            sc.steps,
            sc.mean,
            color="C0",
            marker="o" if len(sc.steps) < 30 else None,
            markersize=3,
            label=label,
        )
        band = sc.n > 1
        ax.fill_between(
            sc.steps,
            sc.mean - sc.half_width,
            sc.mean + sc.half_width,
            where=band,
            color="C0",
            alpha=0.25,
            label=f"{pct}% CI" if band.any() else None,
        )
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
