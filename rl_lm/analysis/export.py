"""A trained run's policy as a Hugging Face model directory (`python -m launch.export`).

A run started from a Hugging Face checkpoint (init.hf_dir, possibly through
init.workdir or its warm-start stage) keeps that checkpoint's model_type and
context length (max_position_embeddings, not the run's shorter
model.max_seq_len), and its tokenizer files are copied from config.tokenizer, so
transformers loads the same tokenizer and chat template. A from-scratch run
(byte tokenizer) exports the model only. A LoRA run (config `lora`) is exported
merged: its frozen base (saved once beside its checkpoints) plus
(alpha / rank) A @ B of the step's adapters, in the base's dtype.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax

from rl_lm.analysis.runs import checkpoint_steps, load_config, load_params, model_config, run_dir
from rl_lm.models import hf, lora
from rl_lm.train.checkpoint import load_base
from rl_lm.train.loop import CHECKPOINT_DIR

_MAX_DEPTH = 8  # Runs started from runs started from ... a checkpoint.


def source_checkpoint(config: Any, depth: int = 0) -> str | None:
    """The Hugging Face checkpoint a run's parameters descend from, or None (from scratch).

    Follows init.hf_dir, else the run in init.workdir, else the warm-start stage.
    """
    init = config.get("init") or {}
    if init.get("hf_dir"):
        return init["hf_dir"]
    if depth >= _MAX_DEPTH:
        return None
    if init.get("workdir"):
        try:
            return source_checkpoint(load_config(init["workdir"]), depth + 1)
        except FileNotFoundError:
            return None
    if config.get("warm_start") is not None:
        return source_checkpoint(config.warm_start, depth + 1)
    return None


def export(workdir: str, out: str, step: int | None = None, dtype: str | None = None) -> str:
    """Writes the run's policy at `step` (default: the latest) to `out`.

    Returns:
      The one-line report of what was written.

    Raises:
      FileNotFoundError, FileExistsError, ValueError: one line each, before anything
        is written.
    """
    target = Path(out).expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"--out={target} exists and is not empty; choose a new directory.")
    run = run_dir(workdir)
    config = load_config(run)
    cfg = model_config(config)
    if not cfg.lm_head:
        raise ValueError(
            f"{run} is a {config.algo} run whose model has no language-model head "
            "(model.lm_head=False); only language models have a Hugging Face form."
        )
    steps = checkpoint_steps(run)
    params = load_params(run, step)
    step = steps[-1] if step is None else step
    lora_cfg = lora.from_config(config.get("lora"))
    if lora_cfg is not None:
        base = load_base(run / CHECKPOINT_DIR, jax.devices("cpu")[0])
        params = jax.jit(functools.partial(lora.merge, cfg=lora_cfg))(base, params)
    if "policy" in params:  # PPO keeps the policy (and a critic) under one "params".
        params = params["policy"]
    params = {k: v for k, v in params.items() if k != "score"}  # A value head stays behind.
    cfg = cfg.replace(scalar_head=False)
    source = source_checkpoint(config)
    model_type, notes = None, []
    if source is not None:
        source_cfg = hf.read_hf_config(source)
        model_type = source_cfg["model_type"]
        cfg = cfg.replace(max_seq_len=hf.config_from_hf(source_cfg).max_seq_len)
        notes.append(f"from {source}, max_position_embeddings={cfg.max_seq_len}")
    tokenizer = config.get("tokenizer")
    if tokenizer in (None, "byte"):
        tokenizer = None
        notes.append("model only: the run's byte tokenizer has no Hugging Face form")
    else:
        notes.append(f"tokenizer files from {tokenizer}")
    hf.save_hf_checkpoint(
        params, cfg, target, model_type=model_type, dtype=dtype, tokenizer_dir=tokenizer
    )
    return f"Exported step {step} of {run} to {target} ({'; '.join(notes)})."
