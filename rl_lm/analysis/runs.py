"""A run's directory read back: its config, metrics, checkpoints and held-out data.

Nothing here writes to the workdir, so every function is safe on a run that is
still training. An RL run's warm-start stage is a run of its own, in
WORKDIR/warm_start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
import numpy as np

from rl_lm.algos import common
from rl_lm.data import eval_examples, load_source
from rl_lm.models.config import ModelConfig
from rl_lm.models.saved import load_state, saved_steps
from rl_lm.train.loop import CHECKPOINT_DIR, CONFIG_FILE
from rl_lm.train.metrics import METRICS_FILE, read_metrics

Workdir = str | os.PathLike


class Curve(NamedTuple):
    """One metric of a run: `values[i]` was logged at `steps[i]` (steps increasing)."""

    steps: np.ndarray
    values: np.ndarray


def run_dir(workdir: Workdir) -> Path:
    """`workdir` as an absolute path, checked to be a run directory.

    Raises:
      FileNotFoundError: when it does not exist or holds none of a run's files.
    """
    path = Path(workdir).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist.")
    if not any((path / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR)):
        hint = ""
        if path.name == CHECKPOINT_DIR:
            hint = f" Pass the run's workdir ({path.parent}), not its {CHECKPOINT_DIR}/."
        raise FileNotFoundError(
            f"{path} is not a run directory (it has no {CONFIG_FILE}, {METRICS_FILE} or "
            f"{CHECKPOINT_DIR}/).{hint}"
        )
    return path


def load_config(workdir: Workdir) -> ml_collections.ConfigDict:
    """The experiment config the run was started with (WORKDIR/config.json)."""
    path = run_dir(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; every run writes it when it starts.")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def model_config(config: Workdir | ml_collections.ConfigDict) -> ModelConfig:
    """The ModelConfig of a run (given as its workdir) or of an experiment config."""
    if isinstance(config, str | os.PathLike):
        config = load_config(config)
    return common.model_config(config.model)


def load_metrics(workdir: Workdir) -> dict[str, Curve]:
    """Every metric the run logged, by name ("loss", "eval/accuracy", "wall_time", ...).

    Returns:
      name -> Curve of the steps at which it was logged (int64) and its values
      (float64); {} before the first logged step.
    """
    curves: dict[str, tuple[list, list]] = {}
    for row in read_metrics(run_dir(workdir)):
        for key, value in row.items():
            if key != "step":
                steps, values = curves.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(value)
    return {
        k: Curve(np.asarray(s, np.int64), np.asarray(v, np.float64)) for k, (s, v) in curves.items()
    }


def checkpoint_steps(workdir: Workdir) -> list[int]:
    """The steps with a finished checkpoint, oldest first ([] when none)."""
    return saved_steps(run_dir(workdir) / CHECKPOINT_DIR)


def load_params(workdir: Workdir, step: int | None = None, device: jax.Device | None = None):
    """The policy parameters ("params" of the train state) saved at `step`.

    Args:
      workdir: the run directory.
      step: a saved step (see `checkpoint_steps`); the latest when None.
      device: where the arrays go; the first CPU device when None, so that a
        notebook takes no accelerator memory from a run training beside it.

    Returns:
      The parameter pytree (nested dicts of arrays).

    Raises:
      FileNotFoundError: when the run has no checkpoint yet.
      ValueError: when `step` was not saved (or no longer kept), naming the saved ones.
    """
    path = run_dir(workdir)
    steps = checkpoint_steps(path)
    if not steps:
        raise FileNotFoundError(
            f"{path} has no checkpoint yet; runs save every train.ckpt_every steps and at "
            "their last step."
        )
    if step is not None and step not in steps:
        raise ValueError(
            f"{path} has no checkpoint of step {step}; saved steps: {steps} (a run keeps only "
            "its last train.keep checkpoints)."
        )
    state, _ = load_state(path / CHECKPOINT_DIR, step, device=device or jax.devices("cpu")[0])
    return state["params"]


def heldout_examples(
    config: Workdir | ml_collections.ConfigDict, n: int = 8, split: str = "test"
) -> list[dict[str, str]]:
    """The first `n` examples of a split of the run's dataset (`config.data.name`).

    The dataset is read from `config.data.data_dir` (None: $RL_LM_DATA_DIR or the
    default cache) and prepared first if it is a generated one.

    Returns:
      Dicts of str, e.g. {"prompt": "17+25=", "response": "42", "answer": "42"}.
    """
    if isinstance(config, str | os.PathLike):
        config = load_config(config)
    source = load_source(config.data.name, split, data_dir=config.data.get("data_dir"))
    return eval_examples(source, min(n, len(source)))
