"""Hugging Face checkpoint import and export (Llama, Mistral, Qwen2, Qwen3).

Reads a local `save_pretrained` directory (config.json plus one or more safetensors
files) into the stacked parameter dict of `rl_lm.models.transformer`, and writes
that dict back as a directory that `transformers.AutoModelForCausalLM` loads.
Neither direction needs torch: safetensors' numpy backend reads and writes
bfloat16 through ml_dtypes.

Torch `Linear` weights are [out, in]; ours are [in..., out...] with heads split
out (wq [D,H,Dh], wo [H,Dh,D]) and layers stacked on a leading axis. Hugging
Face's Llama family already uses the rotate-half RoPE layout, so q/k need no
permutation.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from rl_lm.models.config import ModelConfig
from rl_lm.models.hf_config import (
    ARCHITECTURES,
    config_from_hf,
    config_to_hf,
    default_model_type,
    read_hf_config,
)
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import Params, abstract_params

__all__ = [
    "ARCHITECTURES",
    "config_from_hf",
    "config_to_hf",
    "default_model_type",
    "load_hf_checkpoint",
    "read_hf_config",
    "save_hf_checkpoint",
]

# Files copied next to an export so that it is a complete model directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# Buffers some exporters save although they are recomputed from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _tensor_specs(cfg: ModelConfig, model_type: str) -> dict[str, tuple[tuple, tuple, bool]]:
    """HF tensor name -> (our param path, HF shape, whether HF stores it transposed).

    A path ending in a layer index names one slice of a stacked param; a path of ()
    names a tensor that must be all zeros (the o_proj bias of llama / qwen3 models
    with attention_bias, which rl_lm's decoder does not have).
    """
    d, f, h, k, dh, v = (
        cfg.dim,
        cfg.mlp_dim,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
    )
    per_layer = {
        "input_layernorm.weight": ("attn_norm", (d,), False),
        "self_attn.q_proj.weight": ("wq", (h * dh, d), True),
        "self_attn.k_proj.weight": ("wk", (k * dh, d), True),
        "self_attn.v_proj.weight": ("wv", (k * dh, d), True),
        "self_attn.o_proj.weight": ("wo", (d, h * dh), True),
        "post_attention_layernorm.weight": ("mlp_norm", (d,), False),
        "mlp.gate_proj.weight": ("w_gate", (f, d), True),
        "mlp.up_proj.weight": ("w_up", (f, d), True),
        "mlp.down_proj.weight": ("w_down", (d, f), True),
    }
    if cfg.qkv_bias:
        per_layer["self_attn.q_proj.bias"] = ("bq", (h * dh,), False)
        per_layer["self_attn.k_proj.bias"] = ("bk", (k * dh,), False)
        per_layer["self_attn.v_proj.bias"] = ("bv", (k * dh,), False)
        if model_type != "qwen2":
            per_layer["self_attn.o_proj.bias"] = (None, (d,), False)
    if cfg.qk_norm:
        per_layer["self_attn.q_norm.weight"] = ("q_norm", (dh,), False)
        per_layer["self_attn.k_norm.weight"] = ("k_norm", (dh,), False)
    specs = {"model.embed_tokens.weight": (("embed",), (v, d), False)}
    for i in range(cfg.num_layers):
        for suffix, (key, shape, transposed) in per_layer.items():
            path = () if key is None else ("layers", key, i)
            specs[f"model.layers.{i}.{suffix}"] = (path, shape, transposed)
    specs["model.norm.weight"] = (("final_norm",), (d,), False)
    if not cfg.tie_embeddings:
        specs["lm_head.weight"] = (("lm_head",), (v, d), True)
    return specs


def _to_ours(w: np.ndarray, transposed: bool, shape: tuple) -> np.ndarray:
    return (w.T if transposed else w).reshape(shape)


def _to_hf(x: np.ndarray, transposed: bool, hf_shape: tuple) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(hf_shape[::-1]).T if transposed else x.reshape(hf_shape))


def _open_shards(path: Path, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Tensor name -> open safetensors handle holding it."""
    if (path / _INDEX).is_file():
        weight_map = json.loads((path / _INDEX).read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (path / _SINGLE).is_file():
        files = [_SINGLE]
    else:
        found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "no such directory"
        raise FileNotFoundError(
            f"No {_SINGLE} or {_INDEX} in {path} (found: {found}). PyTorch .bin checkpoints "
            "are not read: re-save them with save_pretrained(dir, safe_serialization=True)."
        )
    handles = {}
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / _INDEX} lists shard {name}, which is missing.")
        handle = stack.enter_context(safe_open(str(path / name), framework="numpy"))
        handles.update(dict.fromkeys(handle.keys(), handle))
    return handles


def _check_tensors(handles: dict[str, Any], specs: dict, cfg: ModelConfig, path: Path) -> None:
    problems = []
    for name, (_, shape, _) in specs.items():
        if name not in handles:
            problems.append(f"missing tensor {name} (expected shape {shape})")
            continue
        found = tuple(handles[name].get_slice(name).get_shape())
        if found != shape:
            problems.append(f"tensor {name}: expected shape {shape}, found {found}")
    tied_head = cfg.tie_embeddings and "lm_head.weight" in handles
    extra = [
        n
        for n in handles
        if n not in specs
        and not n.endswith(_IGNORED_SUFFIXES)
        and not (tied_head and n == "lm_head.weight")
    ]
    if extra:
        problems.append(
            f"{len(extra)} unexpected tensor(s) the config does not explain: {extra[:10]}"
        )
    if problems:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise ValueError(
            f"The checkpoint in {path} does not match its config.json:\n  " + "\n  ".join(shown)
        )


def _place(host: np.ndarray, sharding: Any) -> jax.Array:
    if sharding is None:
        return jnp.asarray(host)
    # Each device (and host, when multi-process) copies in only its own slice.
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _leaf_paths(tree: Any) -> dict[tuple, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
    return {tuple(k.key for k in path): leaf for path, leaf in flat}


def _nest(flat: dict[tuple, Any]) -> Params:
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return out


def load_hf_checkpoint(
    path: str | os.PathLike,
    dtype: str | None = None,
    shardings: Any = None,
    tokenizer_dir: str | os.PathLike | None = None,
) -> tuple[Params, ModelConfig]:
    """Loads a local Hugging Face checkpoint into rl_lm's parameter layout.

    Args:
      path: a `save_pretrained` directory: config.json plus model.safetensors, or
        shards listed in model.safetensors.index.json.
      dtype: storage dtype of the returned params (sets cfg.param_dtype); defaults
        to the checkpoint's. The compute dtype cfg.dtype is the checkpoint's.
      shardings: optional pytree of jax.Shardings shaped like the params; each
        param is then assembled directly on its devices.
      tokenizer_dir: optional tokenizer directory whose vocabulary must fit the model's.

    Returns:
      (params, cfg).

    Raises:
      ValueError: unsupported config; a missing, misshapen or unexpected tensor; an
        lm_head that differs from the tied embedding; a tokenizer that does not fit.
    """
    path = Path(path).expanduser()
    hf_config = read_hf_config(path)
    cfg = config_from_hf(hf_config)
    model_type = hf_config["model_type"]
    if dtype is not None:
        cfg = cfg.replace(param_dtype=dtype)
    if tokenizer_dir is not None:
        check_vocab(load_tokenizer(str(tokenizer_dir)), cfg.vocab_size)
    abstract = _leaf_paths(abstract_params(cfg))
    placements = dict.fromkeys(abstract)
    if shardings is not None:
        placements = _leaf_paths(shardings)
        if placements.keys() != abstract.keys():
            raise ValueError(
                "shardings must mirror the params: "
                f"missing {sorted(abstract.keys() - placements.keys())}, "
                f"extra {sorted(placements.keys() - abstract.keys())}."
            )
    specs = _tensor_specs(cfg, model_type)
    pdt = np.dtype(jnp.dtype(cfg.param_dtype))
    with contextlib.ExitStack() as stack:
        handles = _open_shards(path, stack)
        _check_tensors(handles, specs, cfg, path)

        def read(name: str) -> np.ndarray:
            return handles[name].get_tensor(name)

        if cfg.tie_embeddings and "lm_head.weight" in handles:
            if not np.array_equal(read("lm_head.weight"), read("model.embed_tokens.weight")):
                raise ValueError(
                    f"{path}: tie_word_embeddings is true but lm_head.weight differs from "
                    "model.embed_tokens.weight; set tie_word_embeddings to false in config.json "
                    "if the head is meant to be separate."
                )
        slices: dict[tuple, list] = {
            p: [None] * cfg.num_layers for p in abstract if p[0] == "layers"
        }
        host: dict[tuple, np.ndarray] = {}
        for name, (target, _, transposed) in specs.items():
            w = read(name)
            if not target:
                if np.any(w):
                    raise ValueError(
                        f"{path}: {name} is nonzero, but rl_lm's decoder has no output-projection "
                        "bias, so this checkpoint cannot be represented exactly."
                    )
            elif target[0] == "layers":
                shape = abstract[target[:2]].shape[1:]
                slices[target[:2]][target[2]] = _to_ours(w, transposed, shape).astype(pdt)
            else:
                host[target] = _to_ours(w, transposed, abstract[target].shape).astype(pdt)
    host.update((p, np.stack(layers)) for p, layers in slices.items())
    params = {p: _place(host.pop(p), placements[p]) for p in abstract}
    return _nest(params), cfg


def _target_ready(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another output path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{path} exists and is not empty; pass overwrite=True (--overwrite) to replace it."
        )


def save_hf_checkpoint(
    params: Params,
    cfg: ModelConfig,
    path: str | os.PathLike,
    *,
    model_type: str | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 5 * 10**9,
    tokenizer_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes params as a Hugging Face model directory (config.json + safetensors).

    The directory is written next to `path` under a temporary name and renamed
    into place, so a failure never leaves a half-written checkpoint at `path`.

    Args:
      params: parameters in rl_lm's layout (jax or numpy arrays).
      cfg: their config.
      path: output directory.
      model_type: "llama", "mistral", "qwen2" or "qwen3"; default: the family
        that represents cfg exactly (see `default_model_type`).
      dtype: dtype of the written tensors; defaults to cfg.param_dtype.
      max_shard_bytes: above this, tensors are split over several files listed in
        model.safetensors.index.json (a larger single tensor gets its own file).
      tokenizer_dir: a Hugging Face tokenizer / model directory whose tokenizer and
        generation files are copied along (its vocabulary must fit the model's).
      overwrite: replace an existing non-empty `path`.

    Returns:
      The output directory.
    """
    path = Path(path).expanduser().absolute()
    _target_ready(path, overwrite)
    hf_config = config_to_hf(cfg, model_type, dtype)
    model_type = hf_config["model_type"]
    if tokenizer_dir is not None:
        check_vocab(load_tokenizer(str(tokenizer_dir)), cfg.vocab_size)
    abstract = _leaf_paths(abstract_params(cfg))
    leaves = _leaf_paths(params)
    problems = [f"missing {p}" for p in abstract.keys() - leaves.keys()]
    problems += [f"unexpected {p}" for p in leaves.keys() - abstract.keys()]
    problems += [
        f"{p}: expected shape {abstract[p].shape}, found {tuple(leaves[p].shape)}"
        for p in abstract.keys() & leaves.keys()
        if tuple(leaves[p].shape) != abstract[p].shape
    ]
    problems += [
        f"{p} is not fully addressable; gather it to this host first"
        for p, x in leaves.items()
        if isinstance(x, jax.Array) and not x.is_fully_addressable
    ]
    if problems:
        raise ValueError(f"params do not match {cfg}: " + "; ".join(sorted(problems)) + ".")
    out_dtype = np.dtype(jnp.dtype(hf_config["dtype"]))
    specs = _tensor_specs(cfg, model_type)

    def tensor(name: str) -> np.ndarray:
        target, shape, transposed = specs[name]
        if not target:
            return np.zeros(shape, out_dtype)
        x = leaves[target[:2]][target[2]] if target[0] == "layers" else leaves[target]
        return _to_hf(np.asarray(x).astype(out_dtype), transposed, shape)

    shards: list[list[str]] = [[]]
    size = 0
    for name, (_, shape, _) in specs.items():
        nbytes = math.prod(shape) * out_dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        files = (
            [_SINGLE]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        for file, names in zip(files, shards, strict=True):
            save_file({n: tensor(n) for n in names}, str(tmp / file), metadata={"format": "pt"})
        if len(shards) > 1:
            total = sum(math.prod(s[1]) for s in specs.values()) * out_dtype.itemsize
            weight_map = {n: f for f, names in zip(files, shards, strict=True) for n in names}
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / _INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
        if tokenizer_dir is not None:
            source = Path(tokenizer_dir).expanduser()
            source_config = read_hf_config(source) if (source / "config.json").is_file() else {}
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if key in source_config:
                    hf_config[key] = source_config[key]
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2), encoding="utf-8")
        _target_ready(path, overwrite)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path
