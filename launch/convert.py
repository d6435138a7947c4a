"""Validates a local Hugging Face checkpoint and converts it to and from rl_lm params.

Check a checkpoint (prints its ModelConfig and parameter count, runs one forward):
    python -m launch.convert --hf_dir=/ckpt/Qwen2.5-0.5B
Re-export it (e.g. as float32, or re-sharded into 2 GB files):
    python -m launch.convert --hf_dir=/ckpt/Qwen2.5-0.5B --out=/tmp/q --dtype=float32
Save it as an orbax params checkpoint plus model_config.json, and back:
    python -m launch.convert --hf_dir=/ckpt/Qwen2.5-0.5B --to=params --out=/tmp/p
    python -m launch.convert --params_dir=/tmp/p --out=/tmp/q \
        --tokenizer=/ckpt/Qwen2.5-0.5B

A training run's workdir is exported by launch.export instead:
    python -m launch.export --workdir=runs/sft --out=/tmp/q
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags, logging

from rl_lm.models import hf
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import abstract_params, forward, logits

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Local Hugging Face model directory to read.")
_PARAMS_DIR = flags.DEFINE_string("params_dir", None, "rl_lm params directory to read instead.")
_OUT = flags.DEFINE_string("out", None, "Output directory; without it, only validate.")
_TO = flags.DEFINE_enum("to", "hf", ["hf", "params"], "Output format.")
_DTYPE = flags.DEFINE_string("dtype", None, "Parameter dtype of the output (default: as read).")
_MODEL_TYPE = flags.DEFINE_string("model_type", None, "HF model_type to export as.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "Tokenizer directory to check (and copy to an HF export); default hf_dir."
)
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors file of an export.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --out.")


def _check_params_dir(path: Path) -> None:
    """Exits with one line when `path` is not a --to=params output (e.g. a run's workdir)."""
    if not (path / "model_config.json").is_file():
        if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
            sys.exit(
                f"--params_dir={path} is a training run's workdir, not a params directory; "
                f"export it with: python -m launch.export --workdir={path} --out=DIR"
            )
        sys.exit(
            f"--params_dir={path} has no model_config.json; pass a directory written by "
            "--to=params (or a run's workdir to python -m launch.export --workdir=...)."
        )


def _read_params(path: Path, dtype: str | None) -> tuple[dict, ModelConfig]:
    cfg = ModelConfig(**json.loads((path / "model_config.json").read_text()))
    if dtype:
        cfg = cfg.replace(param_dtype=dtype)
    params = ocp.StandardCheckpointer().restore(path / "params", abstract_params(cfg))
    return params, cfg


def _write_params(params: dict, cfg: ModelConfig, path: Path) -> None:
    if path.exists() and any(path.iterdir()) and not _OVERWRITE.value:
        raise FileExistsError(f"{path} is not empty; pass --overwrite to replace it.")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / "params", params, force=True)
    checkpointer.wait_until_finished()
    (path / "model_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def main(argv):
    del argv
    if (_HF_DIR.value is None) == (_PARAMS_DIR.value is None):
        raise app.UsageError("Pass exactly one of --hf_dir and --params_dir.")
    if _PARAMS_DIR.value:
        _check_params_dir(Path(_PARAMS_DIR.value).expanduser())
    logging.info("devices: %s", jax.devices())
    tokenizer = _TOKENIZER.value
    if tokenizer is None and _HF_DIR.value and (Path(_HF_DIR.value) / "tokenizer.json").is_file():
        tokenizer = _HF_DIR.value
    if _HF_DIR.value:
        params, cfg = hf.load_hf_checkpoint(_HF_DIR.value, _DTYPE.value, tokenizer_dir=tokenizer)
    else:
        params, cfg = _read_params(Path(_PARAMS_DIR.value).expanduser(), _DTYPE.value)
        params = jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)
    count = sum(x.size for x in jax.tree.leaves(params))
    print(cfg)
    print(f"parameters: {count:,} (config says {cfg.num_params():,})")
    hidden, _ = forward(params, jnp.zeros((1, 8), jnp.int32), cfg)
    if not np.isfinite(np.asarray(logits(params, hidden, cfg))).all():
        raise ValueError("the forward pass gives non-finite logits; the weights are broken.")
    print("forward pass: finite logits")
    if _OUT.value is None:
        return
    out = Path(_OUT.value).expanduser()
    if _TO.value == "params":
        _write_params(params, cfg, out.absolute())
    else:
        hf.save_hf_checkpoint(
            params,
            cfg,
            out,
            model_type=_MODEL_TYPE.value,
            max_shard_bytes=int(_MAX_SHARD_GB.value * 1e9),
            tokenizer_dir=tokenizer,
            overwrite=_OVERWRITE.value,
        )
    print(f"wrote {_TO.value} to {out}")


if __name__ == "__main__":
    app.run(main)
