"""Runs and checkpoints read back for notebooks (see experiments/analysis.ipynb).

    from rl_lm import analysis

    curves = analysis.load_metrics("runs/default")        # {"loss": Curve(steps, values), ...}
    analysis.checkpoint_steps("runs/default")             # [2000, 2500, 3000]
    params = analysis.load_params("runs/default", 2000)   # on CPU
    analysis.sample(params, ["17+25="], config="runs/default", temperature=0.0)
    analysis.compare_runs({"a": "runs/a", "b": "runs/b"}, ["loss", "eval/accuracy"])
    print(analysis.format_table(analysis.summarize(["runs/a", "runs/b"])))
    runs = analysis.seeds.load_runs(["runs/x/seed_0", "runs/x/seed_1"])  # one config, 2 seeds
    print(analysis.seeds.format_summary(analysis.seeds.summarize(runs)))  # mean ± 95% CI

Nothing here writes to a workdir, so it is safe on a run that is still training.
"""

from rl_lm.analysis import seeds
from rl_lm.analysis.compare import compare_runs, format_table, summarize
from rl_lm.analysis.runs import (
    Curve,
    checkpoint_steps,
    heldout_examples,
    load_config,
    load_metrics,
    load_params,
    model_config,
    run_dir,
)
from rl_lm.analysis.samples import sample

__all__ = [
    "Curve",
    "checkpoint_steps",
    "compare_runs",
    "format_table",
    "heldout_examples",
    "load_config",
    "load_metrics",
    "load_params",
    "model_config",
    "run_dir",
    "sample",
    "seeds",
    "summarize",
]
