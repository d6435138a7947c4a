"""A finished PRM run as a process-reward source: its model section and parameters.

A PRM (configs/prm_chain.py) is read with its own shape and head, from its run's
config.json, so it may be deeper or wider than the policy it rewards; it must
share the policy's vocabulary.
"""

from __future__ import annotations

from typing import Any


def prm_model_config(model: Any) -> Any:
    """The PRM's ModelConfig: a `model` section with a scalar head, no LM head."""
    from rl_lm.algos import common

    fields = model.to_dict() if hasattr(model, "to_dict") else dict(model)
    return common.model_config({**fields, "lm_head": False, "scalar_head": True})


def _saved_model(workdir: str) -> dict[str, Any] | None:
    """The `model` section of the run in `workdir` (its config.json), or None without one."""
    import json
    from pathlib import Path

    path = Path(workdir) / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("model")


def load_prm(workdir: str, model: Any, section: str = "grpo.process") -> tuple[Any, Any]:
    """(params, ModelConfig) of a finished PRM run; `model` is the policy's model section.

    The PRM's shape and head are its own run's (WORKDIR/config.json's model
    section), so a PRM may be wider or deeper than the policy it rewards; it must
    share the policy's vocabulary (tokenizer). A workdir without a config.json is read with
    the policy's shape.
    """
    from rl_lm.algos import common

    policy = model.to_dict() if hasattr(model, "to_dict") else dict(model)
    saved = _saved_model(workdir)
    if saved is not None and saved.get("vocab_size") != policy.get("vocab_size"):
        raise ValueError(
            f"{section}.prm_workdir={workdir!r} is a PRM over {saved.get('vocab_size')} token "
            f"ids but the policy has {policy.get('vocab_size')}: a PRM must be trained with the "
            "policy's tokenizer."
        )
    fields = dict(saved or policy)
    fields["max_seq_len"] = max(fields.get("max_seq_len", 0), policy.get("max_seq_len", 0))
    # A saved PRM keeps its head (scalar, or a token head: lm_head without scalar_head).
    token_head = saved is not None and saved.get("lm_head") and not saved.get("scalar_head")
    prm_cfg = common.model_config(fields) if token_head else prm_model_config(fields)
    params = common.load_run_params(
        workdir,
        prm_cfg,
        f"{section}.prm_workdir",
        "the checkpoint does not fit the model section of its own config.json (or, without "
        "one, the policy's shape); point prm_workdir at a finished configs/prm_chain.py run.",
    )
    return params, prm_cfg
