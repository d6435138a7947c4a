"""Starting parameters of a run: scratch, a finished run, a HF checkpoint or a warm start.

RL recipes start from a supervised policy. A config says where it comes from
with its `init` section (see configs/base.py `init()`):

- `init.workdir`: the latest checkpoint of a finished run's workdir;
- `init.hf_dir`: a local Hugging Face checkpoint directory (the launcher takes
  the model sections and tokenizer from it first, see `rl_lm.train.hf_start`);
- otherwise, when the config has a `warm_start` sub-config (a whole experiment,
  e.g. SFT), that experiment is run first in WORKDIR/warm_start (resumable like
  any run) and its final parameters are taken.

Either of the first two replaces the warm-start stage: it does not run. The
parameters come back on the host as a plain dict; the algorithm places them
into its sharded state (`make_trainer(config, mesh, init_from=params)`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from absl import logging

from rl_lm.algos import common
from rl_lm.models.transformer import init_params
from rl_lm.train.hf_start import check_tokenizer
from rl_lm.train.report import ConfigError, announce

WARM_START_DIR = "warm_start"


def _load_run_params(workdir: Path) -> Any:
    from rl_lm.train.checkpoint import load_state

    ckpt = workdir / "checkpoints"
    if not ckpt.is_dir():
        raise FileNotFoundError(
            f"init.workdir={str(workdir)!r} has no checkpoints/ directory; point it at the "
            "workdir of a run that saved at least one checkpoint."
        )
    state, step = load_state(ckpt)
    announce(f"Starting from the parameters of step {step} of {workdir}.")
    return state["params"]


_TRUNK = ("embed", "layers", "final_norm")


def _check_shapes(params: Any, config: Any, source: str, hint: str = "") -> None:
    """The transformer trunk must match; heads may differ (e.g. an RM from an SFT policy)."""
    expected = jax.eval_shape(
        lambda: init_params(common.model_config(config.model), jax.random.key(0))
    )
    got = {k: jax.tree.map(lambda x: tuple(x.shape), params.get(k)) for k in _TRUNK}
    want = {k: jax.tree.map(lambda x: tuple(x.shape), expected.get(k)) for k in _TRUNK}
    if got != want:
        raise ConfigError(
            f"The parameters of {source} do not match config.model: expected {want}, got "
            f"{got}. {hint or 'Use the same model settings as the run you start from.'}"
        )


class Preempted(SystemExit):
    """SIGTERM stopped a warm-start stage; the run stops too (exit status 1, with the message)."""


def initial_params(
    config: Any, workdir: Path, resuming: bool, run_stage: Callable[[Any, Path], dict] | None = None
) -> Any | None:
    """The parameters `config` starts from, or None for a fresh initialization.

    Args:
      config: the experiment config.
      workdir: its run directory.
      resuming: the run already has a checkpoint (then nothing is loaded: the
        checkpoint holds the state).
      run_stage: (stage config, stage workdir) -> the training loop's result; runs
        the config's warm_start stage (the loop passes itself, so this module
        does not import it).

    Raises:
      ConfigError: for a tokenizer that does not fit config.model (naming
        --config.tokenizer), or parameters of another shape than config.model's.
    """
    check_tokenizer(config)
    if resuming:
        return None
    init = config.get("init")
    if init is not None and init.get("workdir"):
        params = _load_run_params(Path(init.workdir).absolute())
        _check_shapes(params, config, f"init.workdir={init.workdir}")
        return params
    if init is not None and init.get("hf_dir"):
        from rl_lm.models.hf import load_hf_checkpoint

        dtype = config.model.get("param_dtype")
        params, cfg = load_hf_checkpoint(init.hf_dir, dtype)
        hint = "launch.train takes config.model from it (rl_lm.train.hf_start.resolve)."
        _check_shapes(params, config, f"init.hf_dir={init.hf_dir}", hint)
        logging.info("Hugging Face model config: %s", cfg)
        announce(f"Starting from the Hugging Face checkpoint {init.hf_dir}.")
        return params
    if config.get("warm_start") is not None:
        if run_stage is None:
            raise ValueError("a config with a warm_start stage needs run_stage (loop.train).")
        stage = workdir / WARM_START_DIR
        announce(f"Warm start: running the {config.warm_start.algo} stage in {stage} first.")
        if run_stage(config.warm_start, stage)["preempted"]:
            # Going on would start this run from a half-trained stage, for good.
            raise Preempted(
                f"SIGTERM during the warm-start stage in {stage}: its checkpoint is saved; "
                "rerun the same command to resume it."
            )
        params = _load_run_params(stage)
        _check_shapes(params, config, "the warm-start stage")
        return params
    return None
