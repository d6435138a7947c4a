"""Config pieces shared by every experiment (not an experiment itself).

An experiment file defines `get_config(arg=None)` and builds its ConfigDict from
these sections, then locks it, so that a mistyped override key fails. The `arg`
string selects variants: "runlocal" shrinks a run for a CPU smoke test, and
"key=value" pairs set the experiment's declared options (see `parse_arg`).
"""

from __future__ import annotations

import ast
import dataclasses

import ml_collections
from ml_collections import config_dict

from rl_lm.models.config import PRESETS

# Logical parameter axes -> mesh axes. Unlisted names (head_dim, layers, norm)
# are replicated; "embed" on fsdp shards every matrix ZeRO-3 style.
RULES = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


def _arg_items(arg: str | None) -> list[tuple[str, str, str]]:
    """(key, "=" or "" when it has no value, raw value) of each item of a config argument."""
    return [s.strip().partition("=") for s in (arg or "").split(",") if s.strip()]


def given_args(arg: str | None) -> set[str]:
    """The keys a config argument sets explicitly (to tell them from defaults)."""
    return {key for key, _, _ in _arg_items(arg)}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses a config argument like "runlocal,steps=100" against `defaults`.

    A bare name sets a bool option to True; "key=value" parses value as a Python
    literal (falling back to a string) and must match the default's type.

    Raises:
      ValueError: for an unknown option or a value of the wrong type.
    """
    out = ml_collections.ConfigDict(defaults)
    for key, has_value, raw in _arg_items(arg):
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r} in {arg!r}; known: {', '.join(defaults)}."
            )
        if not has_value:
            value = True
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        default = defaults[key]
        if default is not None and not isinstance(value, type(default)):
            raise ValueError(
                f"config argument {key}={raw!r} should be a {type(default).__name__}, "
                f"like its default {default!r}."
            )
        out[key] = value
    return out


def model(preset: str, **overrides) -> ml_collections.ConfigDict:
    """The fields of a model preset (rl_lm.models.config.PRESETS), overridable one by one.

    head_dim is left unset (derived as dim // num_heads) unless the preset fixes
    another value, so overriding dim or num_heads alone stays consistent.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}.")
    fields = dataclasses.asdict(PRESETS[preset])
    fields.update(overrides)
    if fields["head_dim"] == fields["dim"] // fields["num_heads"]:
        fields["head_dim"] = config_dict.placeholder(int)
    if fields["rope_scaling"] is None:
        fields["rope_scaling"] = config_dict.placeholder(dict)
    return ml_collections.ConfigDict(fields)


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Mesh axis sizes; one may be -1 (all remaining devices)."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def optim(**overrides) -> ml_collections.ConfigDict:
    """AdamW with warmup and a decay schedule (see rl_lm.algos.common.make_optimizer)."""
    fields = dict(
        lr=1e-3,
        warmup_steps=100,
        schedule="cosine",
        end_lr_ratio=0.1,
        b1=0.9,
        b2=0.99,
        eps=1e-8,
        weight_decay=0.0,
        grad_clip=1.0,
    )
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def train(**overrides) -> ml_collections.ConfigDict:
    """Loop settings. *_every = 0 means only at the last step.

    eval_at_start evaluates a fresh run before its first step (logged as step 0).
    """
    fields = dict(
        num_steps=1000,
        num_microbatches=1,
        log_every=50,
        eval_every=0,
        eval_at_start=False,
        ckpt_every=500,
        keep=3,
    )
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def init(workdir: str | None = None, hf_dir: str | None = None) -> ml_collections.ConfigDict:
    """Where the starting parameters come from (see rl_lm.train.warm_start).

    workdir: a finished run's workdir (its latest checkpoint); hf_dir: a local
    Hugging Face checkpoint. Both unset: the config's `warm_start` stage if it has
    one, else a random initialization.
    """
    return ml_collections.ConfigDict(
        {
            "workdir": workdir if workdir else config_dict.placeholder(str),
            "hf_dir": hf_dir if hf_dir else config_dict.placeholder(str),
        }
    )


def experiment(algo: str, **sections) -> ml_collections.ConfigDict:
    """A config with the shared top-level fields and the given sections."""
    config = ml_collections.ConfigDict()
    config.algo = algo
    config.seed = 0
    config.tokenizer = "byte"
    config.mesh = mesh()
    config.rules = RULES
    config.optim = optim()
    config.train = train()
    for name, section in sections.items():
        config[name] = section
    return config
