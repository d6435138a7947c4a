"""LoRA adapters on the decoder's weight matrices, as a second params dict.

For a targeted weight W of layer l (seen as a matrix from its input axes to its
output axes) the adapted weight is

    W_eff[l] = W[l] + (alpha / rank) * A[l] @ B[l],

A[l] [in, rank] drawn He-uniform over its fan-in and B[l] [rank, out] zero, so
the adapted model starts as the base model (qwix's LoraRule defaults). The
adapters mirror the params tree, stacked on the same leading "layers" axis:
{"layers": {"wq": {"a": [L, D, r], "b": [L, r, H, Dh]}, ...}}, and `merge`
returns a params dict of the base's structure, which the pure forward pass,
the sampler and the checkpoint conversion take unchanged.

Training (`rl_lm.algos.common`) differentiates through `merge` with respect to
the adapters only; the frozen base rides in the train state under `BASE`, which
the checkpointer stores once per run (`rl_lm.train.checkpoint`). Why this is not
qwix's `LoraProvider`: docs/design.md, "LoRA".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax.core import spmd
from flax.linen import partitioning

from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import LOGICAL_AXES, Params, logical_axes

# Target name -> the weight it adapts, with its number of input (contracted) axes
# after the layer axis.
TARGETS = {
    "q": ("wq", 1),
    "k": ("wk", 1),
    "v": ("wv", 1),
    "o": ("wo", 2),
    "gate": ("w_gate", 1),
    "up": ("w_up", 1),
    "down": ("w_down", 1),
}
# The train-state key of the frozen base params of a LoRA run.
BASE = "lora_base"
RANK_AXIS = "lora_rank"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r, alpha (the update is scaled by alpha / r) and the targeted weights."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def weights(self) -> tuple[tuple[str, int], ...]:
        """(weight name, number of input axes) of each target."""
        return tuple(TARGETS[t] for t in self.targets)


def default_config() -> ml_collections.ConfigDict:
    """The `lora` section of a config: off (rank 0) unless rank is set."""
    return ml_collections.ConfigDict({"rank": 0, "alpha": 16.0, "targets": "q,k,v,o,gate,up,down"})


def from_config(section: Mapping[str, Any] | None) -> LoraConfig | None:
    """The validated LoraConfig of a config's `lora` section; None when absent or rank 0.

    Raises:
      ValueError: one line naming the field to fix.
    """
    if section is None or not section.get("rank"):
        return None
    rank, alpha, targets = section["rank"], section["alpha"], section["targets"]
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"lora.rank={rank!r} must be a positive integer (0 turns LoRA off).")
    if not float(alpha) > 0:
        raise ValueError(f"lora.alpha={alpha!r} must be positive (the update is alpha / rank).")
    names = targets.split(",") if isinstance(targets, str) else list(targets)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"lora.targets={targets!r} must name distinct weights among {','.join(TARGETS)} "
            "(e.g. lora.targets=q,v)."
        )
    return LoraConfig(rank=rank, alpha=float(alpha), targets=tuple(names))


def _split(shape: Sequence[int], n_in: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    return shape[0], tuple(shape[1 : 1 + n_in]), tuple(shape[1 + n_in :])


def init_adapters(cfg: LoraConfig, base: Params, rng: jax.Array) -> Params:
    """Fresh adapters (float32) for the targeted weights of `base` (arrays or shapes)."""
    adapters = {}
    for i, (name, n_in) in enumerate(cfg.weights()):
        layers, in_shape, out_shape = _split(base["layers"][name].shape, n_in)
        in_axes = tuple(range(1, 1 + n_in))
        init_a = jax.nn.initializers.he_uniform(in_axis=in_axes, out_axis=-1, batch_axis=0)
        a = init_a(jax.random.fold_in(rng, i), (layers, *in_shape, cfg.rank), jnp.float32)
        b = jnp.zeros((layers, cfg.rank, *out_shape), jnp.float32)
        adapters[name] = {"a": a, "b": b}
    return {"layers": adapters}


def adapter_logical_axes(cfg: LoraConfig, model_cfg: ModelConfig) -> Params:
    """The logical axis names of the adapters: A keeps W's input axes, B its output axes."""
    axes = logical_axes(model_cfg)["layers"]
    out = {}
    for name, n_in in cfg.weights():
        layers, in_names, out_names = _split(axes[name], n_in)
        out[name] = {
            "a": (layers, *in_names, RANK_AXIS),
            "b": (layers, RANK_AXIS, *out_names),
        }
    return {"layers": out}


def partition_specs(cfg: LoraConfig, model_cfg: ModelConfig, rules: Any) -> Params:
    """Mesh PartitionSpecs of the adapters under logical axis `rules` (rank replicated)."""
    rules = list(rules)
    named = {name for name, _ in rules}
    rules += [(name, None) for name in (*LOGICAL_AXES, RANK_AXIS) if name not in named]
    with spmd.logical_axis_rules(rules):
        return jax.tree.map(
            lambda names: partitioning.logical_to_mesh_axes(names),
            adapter_logical_axes(cfg, model_cfg),
            is_leaf=lambda x: isinstance(x, tuple),
        )


def delta(cfg: LoraConfig, a: jax.Array, b: jax.Array) -> jax.Array:
    """(alpha / r) * A @ B per layer, float32, in W's shape [L, *in, *out]."""
    layers, rank = a.shape[0], a.shape[-1]
    ab = jnp.einsum(
        "lir,lro->lio",
        a.reshape(layers, -1, rank).astype(jnp.float32),
        b.reshape(layers, rank, -1).astype(jnp.float32),
    )
    return cfg.scale * ab.reshape(*a.shape[:-1], *b.shape[2:])


def merge(base: Params, adapters: Params, cfg: LoraConfig) -> Params:
    """The base params with every adapted weight replaced by W + (alpha / r) A @ B.

    The sum is formed in float32 and cast to W's dtype; the other params are the
    base's own arrays.
    """
    layers = dict(base["layers"])
    for name, ab in adapters["layers"].items():
        w = layers[name]
        layers[name] = (w.astype(jnp.float32) + delta(cfg, ab["a"], ab["b"])).astype(w.dtype)
    return {**base, "layers": layers}
