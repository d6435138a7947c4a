"""Checks of a config before a run builds or writes anything.

A mistyped override or a sequence that cannot fit the model's context should
cost one line at start, not a traceback or a run that trains until its first
evaluation.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from rl_lm.train.report import ConfigError


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A config (or nested dicts) as {"optim.lr": 0.001, ...}, in definition order."""
    if hasattr(tree, "to_dict"):
        tree = tree.to_dict()
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def unknown_field(config: Any, path: str) -> str | None:
    """The error for an override of `path` ("optim.lrr") when no such field exists.

    Returns:
      One line naming the full dotted path and, when one is close, the field
      probably meant; None when `path` names a field (or a place this check
      cannot judge, such as an index or the inside of a non-config value).
    """
    node = config
    for depth, key in enumerate(path.split(".")):
        if not re.fullmatch(r"\w+", key) or not hasattr(node, "to_dict"):
            return None
        if key not in node:
            close = difflib.get_close_matches(path, list(flatten(config)), n=1, cutoff=0.6)
            where = ".".join(path.split(".")[:depth]) or "the config"
            hint = f"; did you mean {close[0]}?" if close else f"; {where} has {sorted(node)}."
            return f"Unknown config field {path}{hint}"
        node = node[key]
    return None


def length_problems(config: Any, prefix: str = "") -> list[str]:
    """The sequence lengths of `config` (and its warm-start stage) that exceed the model's context.

    A row of data.max_len tokens must fit model.max_seq_len, and so must a prompt of
    data.max_prompt_len tokens plus the max_new_tokens of any section that samples
    from it (eval, grpo, ppo, nash, ...).
    """
    problems = []
    model, data = config.get("model"), config.get("data")
    context = model.get("max_seq_len") if model is not None else None
    if context is not None and data is not None:
        if data.get("max_len") is not None and data.max_len > context:
            problems.append(
                f"{prefix}data.max_len={data.max_len} exceeds {prefix}model.max_seq_len="
                f"{context}: training rows would not fit the model's context"
            )
        prompt = data.get("max_prompt_len")
        for name, section in config.items():
            new = section.get("max_new_tokens") if hasattr(section, "to_dict") else None
            if prompt is not None and new is not None and prompt + new > context:
                problems.append(
                    f"{prefix}data.max_prompt_len={prompt} + {prefix}{name}.max_new_tokens={new}"
                    f" = {prompt + new} exceeds {prefix}model.max_seq_len={context}"
                )
    if config.get("warm_start") is not None:
        problems += length_problems(config.warm_start, f"{prefix}warm_start.")
    return problems


def check_lengths(config: Any) -> None:
    """Raises ConfigError naming the fields when a sequence cannot fit the model's context."""
    problems = length_problems(config)
    if problems:
        raise ConfigError(
            "; ".join(problems) + ". Raise model.max_seq_len or shorten the sequences."
        )


def check_init(config: Any) -> None:
    """Raises ConfigError when the config needs a checkpoint (init.require_hf_dir) and has none.

    A config tuned for a real model (configs/grpo_math.py) would otherwise train
    its placeholder random model without a word.
    """
    init = config.get("init")
    if init is not None and init.get("require_hf_dir") and not init.get("hf_dir"):
        raise ConfigError(
            "This config starts from a Hugging Face checkpoint: pass --config.init.hf_dir=DIR "
            "(a local model directory with config.json, *.safetensors and tokenizer.json); "
            "without it the run would train a random placeholder model."
        )
