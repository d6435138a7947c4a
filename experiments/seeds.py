"""One experiment config over several seeds, one after another, with 95% confidence intervals.

    python -m experiments.seeds --config=configs/grpo_arith.py --seeds=5 \
        --workdir=runs/grpo_arith_seeds [--config.a.b=v ...]

Seed k trains in WORKDIR/seed_<k> through `python -m launch.train` (one process
per seed, the --config flags passed on unchanged, in their --flag=value form) with
`--config.seed=k`: the parameter initialization, the order of the batches and
every sampling key change with it; the held-out set (`config.eval.seed`) does
not, so every seed is scored on the same problems. A config with a warm-start
stage (e.g. the SFT stage of configs/grpo_arith.py) reruns it per seed with
`--config.warm_start.seed=k` by default, so the interval covers the whole
recipe; `--warm_start=shared` trains it once, in the first seed's run, and
starts the other seeds from it (`--config.init.workdir`), so the interval
covers the RL stage alone.

Rerunning the command skips the seeds that finished (a checkpoint at
config.train.num_steps) and resumes the others. At the end WORKDIR holds
summary.json and summary.md (first and final figures per seed and as mean ±
Student t half-width, see rl_lm.analysis.seeds) and curves_ci.png (the mean
with its 95% band). --summary_only writes those from the seeds there are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from rl_lm import analysis
from rl_lm.analysis import seeds

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/grpo_arith.py", "Experiment config file[:arg].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the seed_<k> runs.", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 5, "How many seeds.", lower_bound=1)
_FIRST = flags.DEFINE_integer("first_seed", 0, "Seeds are first_seed, first_seed + 1, ...")
_WARM = flags.DEFINE_enum(
    "warm_start", "per_seed", ["per_seed", "shared"], "Rerun the warm-start stage per seed or not."
)
_SUMMARY_ONLY = flags.DEFINE_bool("summary_only", False, "Train nothing; summarize the seeds.")
_PLOT = flags.DEFINE_list("plot", None, "Metrics to plot (default: the leading ones logged).")

SUMMARY_JSON, SUMMARY_MD, PLOT = "summary.json", "summary.md", "curves_ci.png"
_CONFIG_ARG = re.compile(r"--?(no)?config(=|\.)")


def seed_dir(workdir: Path, seed: int) -> Path:
    return workdir / f"seed_{seed}"


def finished(run: Path, num_steps: int) -> bool:
    """The run saved its last step."""
    try:
        return max(analysis.checkpoint_steps(run), default=-1) >= num_steps
    except FileNotFoundError:
        return False


def seed_flags(config, workdir: Path, seed: int, first: int, shared: bool) -> list[str]:
    """The launch.train flags that make run `seed` differ from the others."""
    out = [f"--config.seed={seed}"]
    init = config.get("init")
    from_run = init is not None and (init.get("workdir") or init.get("hf_dir"))
    if config.get("warm_start") is None or from_run:
        return out
    if not shared:
        return out + [f"--config.warm_start.seed={seed}"]
    if seed == first:
        return out
    return out + [f"--config.init.workdir={seed_dir(workdir, first) / 'warm_start'}"]


def write_summary(workdir: Path, runs: dict[str, Path], plot_keys, title: str) -> str:
    """Writes summary.json, summary.md and curves_ci.png; returns the markdown."""
    metrics = seeds.load_runs(runs)
    summary = seeds.summarize(metrics)
    summary["workdirs"] = {k: str(v) for k, v in runs.items()}
    (workdir / SUMMARY_JSON).write_text(json.dumps(summary, indent=1) + "\n")
    text = f"# {title}\n\n" + seeds.format_summary(summary)
    (workdir / SUMMARY_MD).write_text(text)
    seeds.band_figure(metrics, plot_keys, title=title).savefig(workdir / PLOT, dpi=100)
    return text


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config, workdir = _CONFIG.value, Path(_WORKDIR.value).absolute()
    passed = [a for a in sys.argv[1:] if _CONFIG_ARG.match(a)]
    if any("=" not in a for a in passed):
        raise app.UsageError("Pass --config flags as --flag=value (they go on to launch.train).")
    seed_list = list(range(_FIRST.value, _FIRST.value + _SEEDS.value))
    num_steps = config.train.num_steps
    workdir.mkdir(parents=True, exist_ok=True)
    for seed in seed_list if not _SUMMARY_ONLY.value else []:
        run = seed_dir(workdir, seed)
        if finished(run, num_steps):
            print(f"seed {seed}: {run} finished {num_steps} steps; skipped.", flush=True)
            continue
        extra = seed_flags(config, workdir, seed, _FIRST.value, _WARM.value == "shared")
        command = [sys.executable, "-m", "launch.train", *passed, *extra, f"--workdir={run}"]
        print(f"seed {seed}: {' '.join(command[1:])}", flush=True)
        if subprocess.run(command, check=False).returncode:
            sys.exit(f"seed {seed} failed (see above); rerun the same command to resume it.")
    runs = {str(s): seed_dir(workdir, s) for s in seed_list if (seed_dir(workdir, s)).is_dir()}
    if not runs:
        sys.exit(f"{workdir} has no seed_<k> runs to summarize.")
    title = f"{flags.FLAGS['config'].config_filename} over seeds {', '.join(runs)}"
    print(write_summary(workdir, runs, _PLOT.value, title))
    print(f"Wrote {workdir / SUMMARY_MD}, {workdir / SUMMARY_JSON} and {workdir / PLOT}.")


if __name__ == "__main__":
    app.run(main)
