"""Hugging Face config.json <-> ModelConfig for the Llama family.

Accepts llama, mistral, qwen2 and qwen3 configs as written by transformers 4.x
(rope_theta / rope_scaling, torch_dtype) and 5.x (rope_parameters, dtype), and
rejects, naming the field, every option the decoder cannot reproduce exactly:
sliding-window attention, RoPE types other than default and llama3, MLP biases,
non-SwiGLU activations, quantized weights.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl_lm.models.config import DTYPES, ModelConfig

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _unsupported(field: str, value: Any, supported: str) -> ValueError:
    return ValueError(f"Unsupported Hugging Face config: {field}={value!r}; {supported}.")


def read_hf_config(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """The config.json of a model directory (or a config.json path, or a dict) as a dict."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass a local Hugging Face model directory holding config.json."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, float] | None]:
    """(rope_theta, Llama-3 scaling or None) from 5.x rope_parameters or 4.x keys."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise _unsupported("rope_parameters", params, "per-layer-type RoPE is not supported")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise _unsupported("partial_rotary_factor", partial, "only full rotary (1.0) is supported")
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise _unsupported("rope_type", kind, "supported RoPE types are 'default' and 'llama3'")
    scaling = {
        "factor": float(params["factor"]),
        "low_freq_factor": float(params["low_freq_factor"]),
        "high_freq_factor": float(params["high_freq_factor"]),
        # Transformers fills this in from max_position_embeddings when absent.
        "original_max_position_embeddings": int(
            params.get("original_max_position_embeddings", hf["max_position_embeddings"])
        ),
    }
    return theta, scaling


def _check_full_attention(hf: dict[str, Any], model_type: str) -> None:
    n = hf["num_hidden_layers"]
    kinds = set(hf.get("layer_types") or ())
    if kinds - {"full_attention"}:
        raise _unsupported("layer_types", sorted(kinds), "only 'full_attention' is supported")
    if model_type == "mistral":
        window = hf.get("sliding_window")
        if window is not None and window < hf.get("max_position_embeddings", math.inf):
            raise _unsupported(
                "sliding_window",
                window,
                "rl_lm attends to the full context; if sequences never exceed this many "
                "tokens, attention is identical: set sliding_window to null in config.json",
            )
    elif hf.get("use_sliding_window") and hf.get("max_window_layers", 0) < n:
        raise _unsupported(
            "use_sliding_window", True, "sliding-window attention is not supported (set it false)"
        )


def config_from_hf(source: str | os.PathLike | Mapping[str, Any]) -> ModelConfig:
    """Builds a ModelConfig from a Hugging Face config.

    Args:
      source: a model directory, a config.json path, or the config as a dict.

    Returns:
      The config. dtype and param_dtype are the checkpoint's dtype (float32 if unset).

    Raises:
      ValueError: naming the field, for an architecture or option rl_lm lacks.
    """
    hf = read_hf_config(source)
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise _unsupported(
            "model_type", model_type, f"supported model types are {sorted(ARCHITECTURES)}"
        )
    archs = hf.get("architectures") or [ARCHITECTURES[model_type]]
    if archs != [ARCHITECTURES[model_type]]:
        raise _unsupported(
            "architectures", archs, f"a {model_type} checkpoint must be {ARCHITECTURES[model_type]}"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise _unsupported("hidden_act", hf["hidden_act"], "only 'silu' (SwiGLU) is supported")
    if hf.get("mlp_bias"):
        raise _unsupported("mlp_bias", True, "MLP biases are not supported")
    if hf.get("quantization_config"):
        raise _unsupported(
            "quantization_config", hf["quantization_config"], "quantized checkpoints are not"
        )
    _check_full_attention(hf, model_type)
    theta, scaling = _rope(hf)
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if dtype not in DTYPES:
        raise _unsupported("dtype", dtype, f"supported dtypes are {DTYPES}")
    heads = hf["num_attention_heads"]
    # Each transformers config class has its own head_dim default.
    head_dim = hf.get("head_dim") or (128 if model_type == "qwen3" else hf["hidden_size"] // heads)
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        dim=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        mlp_dim=hf["intermediate_size"],
        rope_theta=theta,
        rope_scaling=scaling,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2"
        or (model_type != "mistral" and bool(hf.get("attention_bias"))),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=hf.get("max_position_embeddings", 2048),
        dtype=dtype,
        param_dtype=dtype,
    )


def default_model_type(cfg: ModelConfig) -> str:
    """The Hugging Face family that represents `cfg` exactly."""
    if cfg.qk_norm:
        return "qwen3"
    return "qwen2" if cfg.qkv_bias else "llama"


def config_to_hf(cfg: ModelConfig, model_type: str | None = None, dtype: str | None = None) -> dict:
    """The config.json that describes `cfg` to transformers.

    Args:
      cfg: a language-model config.
      model_type: "llama", "mistral", "qwen2" or "qwen3"; default `default_model_type`.
      dtype: the dtype the weights are written in; default cfg.param_dtype.

    Returns:
      The config as a dict, readable by transformers 4.x and 5.x. Its
      max_position_embeddings is cfg.max_seq_len: to keep a source checkpoint's
      longer context, pass cfg.replace(max_seq_len=...) (launch.export does).

    Raises:
      ValueError: if `model_type` cannot express `cfg` (e.g. qk_norm outside qwen3).
    """
    model_type = model_type or default_model_type(cfg)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"model_type={model_type!r}; choose one of {sorted(ARCHITECTURES)}.")
    problems = []
    if cfg.scalar_head or not cfg.lm_head:
        problems.append("only language models (lm_head=True, scalar_head=False) have an HF form")
    if cfg.qk_norm != (model_type == "qwen3"):
        problems.append(f"qk_norm={cfg.qk_norm} but only qwen3 has q/k norms")
    if model_type == "qwen2" and not cfg.qkv_bias:
        problems.append("qwen2 always has q/k/v biases but qkv_bias=False")
    if model_type == "mistral" and cfg.qkv_bias:
        problems.append("mistral has no q/k/v biases but qkv_bias=True")
    if problems:
        raise ValueError(f"Cannot export as {model_type}: " + "; ".join(problems) + ".")
    dtype = dtype or cfg.param_dtype
    scaling = (
        None if cfg.rope_scaling is None else {**dict(cfg.rope_scaling), "rope_type": "llama3"}
    )
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta, **(scaling or {})}
    hf = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # Both spellings: transformers 5 reads rope_parameters, 4.x the legacy pair.
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    if model_type in ("llama", "qwen3"):
        hf["attention_bias"] = cfg.qkv_bias
    if model_type == "llama":
        hf["mlp_bias"] = False
    if model_type in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=False, sliding_window=None)
    if model_type == "mistral":
        hf["sliding_window"] = None
    return hf
