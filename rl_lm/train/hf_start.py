"""A run started from a local Hugging Face checkpoint: its model and tokenizer come from it.

With `init.hf_dir=DIR` set, `resolve` fills every model section of the config
that shares the policy's trunk (`model`, the warm-start stage's, the reward
model's and its stage's) and the tokenizer from DIR, so that this alone starts
any algorithm from the checkpoint:

    python -m launch.train --config=configs/sft_arith.py --config.init.hf_dir=DIR ...

The shape (vocab_size, dim, layers, heads, head_dim, mlp_dim, RoPE, norm_eps,
biases, QK-norm, tied embeddings) is the checkpoint's; so are dtype and
param_dtype unless set on the command line. A section's heads, remat and
init_std stay the config's, and so does its max_seq_len when it fits the
checkpoint's context (max_position_embeddings; a longer default is cut to it).
An explicit `--config.model.X=v` that contradicts the checkpoint, or an
explicit max_seq_len above its context, is a `ConfigError` naming both values.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from rl_lm.models.config import ModelConfig
from rl_lm.models.hf_config import config_from_hf
from rl_lm.models.tokenizer import load_tokenizer
from rl_lm.train.report import ConfigError

# The fields a checkpoint fixes; a config's other model fields are its own choices.
SHAPE_FIELDS = (
    "vocab_size",
    "dim",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "rope_theta",
    "rope_scaling",
    "norm_eps",
    "qkv_bias",
    "qk_norm",
    "tie_embeddings",
)
# The checkpoint's unless given on the command line (e.g. float32 params of a bf16 checkpoint).
DTYPE_FIELDS = ("dtype", "param_dtype")


def checkpoint_config(hf_dir: str) -> ModelConfig:
    """The ModelConfig of the checkpoint in `hf_dir` (max_seq_len: its context).

    Raises:
      ConfigError: naming init.hf_dir, for a missing directory or an unsupported model.
    """
    try:
        return config_from_hf(hf_dir)
    except (FileNotFoundError, ValueError, KeyError) as e:
        reason = f"config.json lacks {e}" if isinstance(e, KeyError) else str(e)
        raise ConfigError(f"init.hf_dir={hf_dir!r}: {reason}") from e


def _model_fields(cfg: ModelConfig) -> dict[str, Any]:
    fields = {f: getattr(cfg, f) for f in (*SHAPE_FIELDS, *DTYPE_FIELDS)}
    fields["rope_scaling"] = cfg.rope_scaling and dict(cfg.rope_scaling)
    return fields


def _leaf(value: Any, subpath: list[str]) -> Any:
    for key in subpath:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


@dataclasses.dataclass(frozen=True)
class _Source:
    """What a config is filled from: the checkpoint and the command line."""

    hf_dir: str
    ckpt: ModelConfig
    explicit: Mapping[str, Any]
    tokenizer: str
    # (id of a model section, dtype field) set explicitly; sections may be shared objects.
    kept: frozenset[tuple[int, str]]


def _fill_model(section: Any, prefix: str, src: _Source) -> None:
    """Sets the checkpoint's fields in a model section (in place), checking explicit values."""
    fields, ctx = _model_fields(src.ckpt), src.ckpt.max_seq_len
    mine = {k[len(prefix) :]: v for k, v in src.explicit.items() if k.startswith(prefix)}
    for key, value in mine.items():
        name, *sub = key.split(".")
        if name in SHAPE_FIELDS and value != _leaf(fields[name], sub):
            raise ConfigError(
                f"--config.{prefix}{key}={value!r} contradicts the checkpoint init.hf_dir="
                f"{src.hf_dir} ({key}={_leaf(fields[name], sub)!r}); drop the flag: the "
                "checkpoint fixes the model's shape."
            )
    if "max_seq_len" in mine and mine["max_seq_len"] > ctx:
        raise ConfigError(
            f"--config.{prefix}max_seq_len={mine['max_seq_len']} exceeds the context of the "
            f"checkpoint init.hf_dir={src.hf_dir} (max_position_embeddings={ctx}); "
            f"use at most {ctx}."
        )
    for name in DTYPE_FIELDS:
        if (id(section), name) in src.kept:
            del fields[name]
    if not section.get("lm_head", True):
        fields["tie_embeddings"] = False  # A scalar-head model has no output projection to tie.
    fields["max_seq_len"] = min(section.max_seq_len, ctx)
    for name, value in fields.items():
        section[name] = value


def _fill(config: Any, prefix: str, src: _Source) -> None:
    """Fills an experiment config's model sections and tokenizer, and those of its stages."""
    if "tokenizer" in config:
        config.tokenizer = src.tokenizer
    if config.get("model") is not None:
        _fill_model(config.model, f"{prefix}model.", src)
    rm = config.get("reward_model")
    if rm is not None and rm.get("model") is not None:
        _fill_model(rm.model, f"{prefix}reward_model.model.", src)
    stages = [("warm_start", config.get("warm_start"))]
    stages.append(("reward_model.stage", rm.get("stage") if rm is not None else None))
    for name, stage in stages:
        if stage is not None:
            _fill(stage, f"{prefix}{name}.", src)


def _explicit_dtypes(config: Any, explicit: Mapping[str, Any]) -> frozenset[tuple[int, str]]:
    """(id of the section, field) of each dtype field set on the command line."""
    kept = set()
    for key in explicit:
        *path, name = key.split(".")
        node = config
        for part in path:
            node = node.get(part) if hasattr(node, "to_dict") else None
        if name in DTYPE_FIELDS and node is not None:
            kept.add((id(node), name))
    return frozenset(kept)


def resolve(config: Any, explicit: Mapping[str, Any] | None = None) -> Any:
    """`config` with its model sections and tokenizer taken from `init.hf_dir`, if set.

    Args:
      config: the final experiment config (overrides applied).
      explicit: the overrides given on the command line, {"model.dim": 64, ...}
        (ml_collections' `config_flags.get_override_values`); they are checked
        against the checkpoint, and an explicit tokenizer or dtype is kept.

    Returns:
      A copy of `config`, filled in; `config` itself when init.hf_dir is unset.

    Raises:
      ConfigError: one line naming both values, for an explicit model field that
        contradicts the checkpoint or a max_seq_len beyond its context. (A
        checkpoint without tokenizer.json fails at start, in `check_tokenizer`.)
    """
    init = config.get("init")
    hf_dir = init.get("hf_dir") if init is not None else None
    if not hf_dir:
        return config
    explicit = dict(explicit or {})
    ckpt = checkpoint_config(hf_dir)
    config = copy.deepcopy(config)
    tokenizer = explicit.get("tokenizer", hf_dir)
    _fill(
        config, "", _Source(hf_dir, ckpt, explicit, tokenizer, _explicit_dtypes(config, explicit))
    )
    return config


def check_tokenizer(config: Any) -> None:
    """Raises ConfigError, naming --config.tokenizer, when it cannot feed config.model.

    The tokenizer must load and produce no id beyond the model's embedding table.
    """
    spec = config.get("tokenizer")
    model = config.get("model")
    if spec is None or model is None:
        return
    try:
        tokenizer = load_tokenizer(spec)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--config.tokenizer={spec!r}: {e}") from e
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"--config.tokenizer={spec!r} produces ids up to {tokenizer.vocab_size - 1} but "
            f"the model's vocab_size is {model.vocab_size} (model.vocab_size): the tokenizer "
            "does not fit the model. Pass the checkpoint's own tokenizer (--config.init.hf_dir "
            f"sets both) or a model.vocab_size of at least {tokenizer.vocab_size}."
        )
