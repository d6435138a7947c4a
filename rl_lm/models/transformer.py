"""Llama-style decoder: an NNX parameter schema plus a pure forward pass.

The `Transformer` NNX module owns the parameter schema: shapes, initializers and
the logical axis names that sharding rules map onto a mesh. Layers are stored
stacked (a leading "layers" axis) and the forward pass scans over them, so
compile time does not grow with depth.

Everything under `jax.jit` works on plain pytrees: `init_params` returns the
module's state as a nested dict of arrays, `forward` maps (params, tokens) to
hidden states. Optimizers, checkpoints, checkpoint conversion and the sampler
all see that one dict, with no NNX wrappers to convert at each boundary.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import spmd

from rl_lm.models.config import ModelConfig

Params = dict[str, Any]
# Every logical axis name a parameter can carry.
LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "layers", "norm")
_NEG_INF = -1e30


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype: str) -> jax.Array:
    return std * jax.random.normal(rngs.params(), shape, jnp.dtype(dtype))


class Transformer(nnx.Module):
    """Parameter schema of the decoder. `__call__` runs the pure `forward`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f, h, k, dh, n = (
            cfg.dim,
            cfg.mlp_dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.num_layers,
        )
        std, pd = cfg.init_std, cfg.param_dtype
        # Residual-branch outputs get the GPT-2 style 1/sqrt(2L) scaling.
        out_std = std / math.sqrt(2 * n)

        def param(shape, names, init_std=None, ones=False):
            value = jnp.ones(shape, jnp.dtype(pd)) if ones else _normal(rngs, shape, init_std, pd)
            # Sharding is applied by the jitted init's out_shardings, not eagerly,
            # so the module can be built with or without a mesh in context.
            return nnx.Param(value, out_sharding=names, eager_sharding=False)

        self.embed = param((cfg.vocab_size, d), ("vocab", "embed"), std)
        layers = {
            "attn_norm": param((n, d), ("layers", "norm"), ones=True),
            "wq": param((n, d, h, dh), ("layers", "embed", "heads", "head_dim"), std),
            "wk": param((n, d, k, dh), ("layers", "embed", "kv_heads", "head_dim"), std),
            "wv": param((n, d, k, dh), ("layers", "embed", "kv_heads", "head_dim"), std),
            "wo": param((n, h, dh, d), ("layers", "heads", "head_dim", "embed"), out_std),
            "mlp_norm": param((n, d), ("layers", "norm"), ones=True),
            "w_gate": param((n, d, f), ("layers", "embed", "mlp"), std),
            "w_up": param((n, d, f), ("layers", "embed", "mlp"), std),
            "w_down": param((n, f, d), ("layers", "mlp", "embed"), out_std),
        }
        if cfg.qkv_bias:
            layers["bq"] = param((n, h, dh), ("layers", "heads", "head_dim"), 0.0)
            layers["bk"] = param((n, k, dh), ("layers", "kv_heads", "head_dim"), 0.0)
            layers["bv"] = param((n, k, dh), ("layers", "kv_heads", "head_dim"), 0.0)
        if cfg.qk_norm:
            layers["q_norm"] = param((n, dh), ("layers", "norm"), ones=True)
            layers["k_norm"] = param((n, dh), ("layers", "norm"), ones=True)
        self.layers = nnx.Dict(layers)
        self.final_norm = param((d,), ("norm",), ones=True)
        if cfg.lm_head and not cfg.tie_embeddings:
            self.lm_head = param((d, cfg.vocab_size), ("embed", "vocab"), std)
        if cfg.scalar_head:
            self.score = nnx.Dict({"w": param((d,), ("embed",), std), "b": param((), (), 0.0)})

    def __call__(self, tokens_NxT: jax.Array, **kwargs) -> jax.Array:
        params = nnx.state(self, nnx.Param).to_pure_dict()
        hidden, _ = forward(params, tokens_NxT, self.cfg, **kwargs)
        return logits(params, hidden, self.cfg) if self.cfg.lm_head else scalar(params, hidden)


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
    """Freshly initialized parameters as a nested dict of arrays."""
    with nnx.use_eager_sharding(False):
        model = Transformer(cfg, rngs=nnx.Rngs(params=rng))
    return nnx.state(model, nnx.Param).to_pure_dict()


def abstract_params(cfg: ModelConfig) -> Params:
    """Shapes and dtypes of the parameters, without allocating them."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


def logical_axes(cfg: ModelConfig) -> Params:
    """The logical axis names of every parameter, as a tree of tuples."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    return jax.tree.map(
        lambda v: tuple(v.get_metadata()["out_sharding"]),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    ).to_pure_dict()


def partition_specs(cfg: ModelConfig, rules: Any) -> Params:
    """Mesh PartitionSpecs of the parameters under logical axis `rules`.

    Logical names that `rules` does not mention are replicated.
    """
    rules = list(rules)
    named = {name for name, _ in rules}
    rules += [(name, None) for name in LOGICAL_AXES if name not in named]
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    with spmd.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    return specs.to_pure_dict()


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (w.astype(jnp.float32) * y).astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [Dh/2], with Llama-3 scaling when configured."""
    dh = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh))
    if cfg.rope_scaling is None:
        return inv.astype(np.float32)
    s = dict(cfg.rope_scaling)
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > old_len / lo, inv / factor, inv)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_NxTxHxD: jax.Array, positions_NxT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotary embedding in the rotate-half layout used by Hugging Face Llama."""
    angles = positions_NxT[..., None].astype(jnp.float32) * inv_freq  # [N,T,Dh/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x = x_NxTxHxD.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_NxTxHxD.dtype)


def _attention(q, k, v, allowed_NxTxS):
    """Grouped-query attention; q [N,T,H,Dh], k/v [N,S,K,Dh] -> [N,T,H,Dh]."""
    n, t, h, dh = q.shape
    kv = k.shape[2]
    q = q.reshape(n, t, kv, h // kv, dh)
    scores = jnp.einsum("ntkgd,nskd->nkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(dh).astype(np.float32)
    scores = jnp.where(allowed_NxTxS[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("nkgts,nskd->ntkgd", probs, v)
    return out.reshape(n, t, h, dh)


def _qkv(lp, x, positions, cfg, inv_freq):
    h = rms_norm(x, lp["attn_norm"], cfg.norm_eps)
    q = jnp.einsum("ntd,dhk->nthk", h, lp["wq"].astype(x.dtype))
    k = jnp.einsum("ntd,dhk->nthk", h, lp["wk"].astype(x.dtype))
    v = jnp.einsum("ntd,dhk->nthk", h, lp["wv"].astype(x.dtype))
    if cfg.qkv_bias:
        q, k, v = (a + lp[b].astype(x.dtype) for a, b in ((q, "bq"), (k, "bk"), (v, "bv")))
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], cfg.norm_eps)
        k = rms_norm(k, lp["k_norm"], cfg.norm_eps)
    return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v


def _finish_block(lp, x, attn_out, cfg):
    x = x + jnp.einsum("nthk,hkd->ntd", attn_out, lp["wo"].astype(x.dtype))
    h = rms_norm(x, lp["mlp_norm"], cfg.norm_eps)
    gate = jnp.einsum("ntd,df->ntf", h, lp["w_gate"].astype(x.dtype))
    up = jnp.einsum("ntd,df->ntf", h, lp["w_up"].astype(x.dtype))
    return x + jnp.einsum("ntf,fd->ntd", jax.nn.silu(gate) * up, lp["w_down"].astype(x.dtype))


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict[str, jax.Array]:
    """An empty KV cache of `length` slots for `batch` rows."""
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "mask": jnp.zeros((batch, length), jnp.bool_),
    }


def segment_positions(segment_ids_NxT: jax.Array, mask_NxT: jax.Array) -> jax.Array:
    """Positions restarting at 0 in each segment: the real tokens before, in the segment."""
    m_NxT = mask_NxT.astype(jnp.int32)
    count_NxT = jnp.cumsum(m_NxT, axis=1)
    first = jnp.ones_like(segment_ids_NxT[:, :1], jnp.bool_)
    starts_NxT = jnp.concatenate([first, segment_ids_NxT[:, 1:] != segment_ids_NxT[:, :-1]], 1)
    # The real-token count before the latest segment start (counts never decrease).
    before_NxT = jax.lax.cummax(jnp.where(starts_NxT, count_NxT - m_NxT, 0), axis=1)
    return jnp.maximum(count_NxT - before_NxT - 1, 0)


def forward(
    params: Params,
    tokens_NxT: jax.Array,
    cfg: ModelConfig,
    *,
    mask_NxT: jax.Array | None = None,
    positions_NxT: jax.Array | None = None,
    segment_ids_NxT: jax.Array | None = None,
    cache: dict[str, jax.Array] | None = None,
    slot: jax.Array | int = 0,
) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Runs the decoder trunk.

    Args:
      params: the parameter dict of `init_params` (or a checkpoint import).
      tokens_NxT: token ids.
      cfg: the model config.
      mask_NxT: 1 on real tokens, 0 on padding (padding is never attended to).
        Defaults to all ones.
      positions_NxT: RoPE positions; by default the count of real tokens before
        each one (in its own segment when `segment_ids_NxT` is given), so left
        padding does not shift positions.
      segment_ids_NxT: for packed rows (`rl_lm.data.packing`), each token's
        segment; a token attends only to earlier tokens of its own segment, so a
        segment computes what it would alone in a row. Segments are contiguous
        runs of one id. Not with a cache.
      cache: optional KV cache from `init_cache`; the T new tokens are written
        at cache slots [slot, slot + T) and attend to every valid earlier slot.
      slot: first cache slot of these tokens (a traced scalar is fine).

    Returns:
      (hidden states [N,T,D] after the final norm, the updated cache or None).
    """
    n, t = tokens_NxT.shape
    dtype = jnp.dtype(cfg.dtype)
    mask = jnp.ones((n, t), jnp.bool_) if mask_NxT is None else mask_NxT.astype(jnp.bool_)
    if segment_ids_NxT is not None and cache is not None:
        raise ValueError("segment_ids_NxT (packed rows) cannot be used with a KV cache.")
    if positions_NxT is None and segment_ids_NxT is not None:
        positions_NxT = segment_positions(segment_ids_NxT, mask)
    elif positions_NxT is None:
        positions_NxT = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        if cache is not None:  # Real tokens already in the cache come first.
            before = jnp.arange(cache["mask"].shape[1]) < slot
            positions_NxT = positions_NxT + jnp.sum(cache["mask"] & before, axis=1)[:, None]
    inv_freq = rope_frequencies(cfg)
    x = jnp.take(params["embed"], tokens_NxT, axis=0).astype(dtype)
    layers = params["layers"]

    if cache is None:
        q_slot, k_slot, kv_valid = jnp.arange(t), jnp.arange(t), mask
    else:
        kv_valid = jax.lax.dynamic_update_slice(cache["mask"], mask, (0, slot))
        q_slot, k_slot = slot + jnp.arange(t), jnp.arange(cache["mask"].shape[1])
    allowed = (k_slot[None, None, :] <= q_slot[None, :, None]) & kv_valid[:, None, :]
    if segment_ids_NxT is not None:
        allowed = allowed & (segment_ids_NxT[:, :, None] == segment_ids_NxT[:, None, :])

    if cache is None:

        def body(x, lp):
            q, k, v = _qkv(lp, x, positions_NxT, cfg, inv_freq)
            return _finish_block(lp, x, _attention(q, k, v, allowed), cfg), None

        x, _ = jax.lax.scan(_remat(body, cfg.remat), x, layers)
        new_cache = None
    else:

        def body(carry, xs):
            x, k_all, v_all = carry
            lp, i = xs
            q, k, v = _qkv(lp, x, positions_NxT, cfg, inv_freq)
            k_all = jax.lax.dynamic_update_slice(
                k_all, k[None].astype(k_all.dtype), (i, 0, slot, 0, 0)
            )
            v_all = jax.lax.dynamic_update_slice(
                v_all, v[None].astype(v_all.dtype), (i, 0, slot, 0, 0)
            )
            out = _attention(q, k_all[i], v_all[i], allowed)
            return (_finish_block(lp, x, out, cfg), k_all, v_all), None

        xs = (layers, jnp.arange(cfg.num_layers))
        (x, k_all, v_all), _ = jax.lax.scan(body, (x, cache["k"], cache["v"]), xs)
        new_cache = {"k": k_all, "v": v_all, "mask": kv_valid}
    return rms_norm(x, params["final_norm"], cfg.norm_eps), new_cache


def output_embedding(params: Params, cfg: ModelConfig) -> jax.Array:
    """The [D, V] output projection (the transposed embedding when tied)."""
    if not cfg.lm_head:
        raise ValueError("This model has no lm_head (scalar-head model); it has no logits.")
    return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


def logits(params: Params, hidden_NxTxD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Next-token logits [N,T,V] in float32."""
    w = output_embedding(params, cfg).astype(hidden_NxTxD.dtype)
    return jnp.einsum("ntd,dv->ntv", hidden_NxTxD, w, preferred_element_type=jnp.float32)


def scalar(params: Params, hidden_NxTxD: jax.Array) -> jax.Array:
    """Per-token scalar head [N,T] in float32 (value, reward or preference score)."""
    h = hidden_NxTxD.astype(jnp.float32)
    return h @ params["score"]["w"].astype(jnp.float32) + params["score"]["b"]


def last_index(mask_NxT: jax.Array) -> jax.Array:
    """Index of each row's last nonzero mask entry (0 for an empty row)."""
    t = mask_NxT.shape[1]
    return t - 1 - jnp.argmax(jnp.flip(mask_NxT > 0, axis=1), axis=1)


def last_token_score(
    params: Params, cfg: ModelConfig, tokens_NxT: jax.Array, mask_NxT: jax.Array
) -> jax.Array:
    """The scalar head read at each row's last real token (a reward model's reward).

    Args:
      params: parameters of a model with cfg.scalar_head.
      cfg: the model config.
      tokens_NxT: token ids, padded on either side.
      mask_NxT: 1 on real tokens (attended to), 0 on padding.

    Returns:
      r_N, float32.
    """
    if not cfg.scalar_head:
        raise ValueError("score needs a model with scalar_head=True (a reward model).")
    hidden_NxTxD, _ = forward(params, tokens_NxT, cfg, mask_NxT=mask_NxT)
    last_N = last_index(mask_NxT)
    h_NxD = jnp.take_along_axis(hidden_NxTxD, last_N[:, None, None], axis=1)[:, 0]
    return scalar(params, h_NxD[:, None])[:, 0]


@functools.partial(jax.jit, static_argnames=("cfg",))
def jit_logits(params: Params, tokens_NxT: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Convenience for tests and notebooks: full logits of a batch, jitted."""
    hidden, _ = forward(params, tokens_NxT, cfg)
    return logits(params, hidden, cfg)
