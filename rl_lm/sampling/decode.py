"""One-token decode step of the transformer, with a decode-friendly KV cache.

`transformer.forward` keeps its cache as [L, N, S, K, Dh], the layout that the
prefill writes naturally. For one query token per row the attention is a batched
matrix-vector product per (row, kv head), and on XLA CPU that layout costs a
transposed copy of the layer's whole cache for each of the two products, every
layer and step (on bench model B's decode shapes the attention ran ~8x slower
than below). The decode cache here is one array per layer, head-major, with keys
stored transposed so that both products have their batch dimensions leading and
their contraction dimension in place:

    k[l]: [N, K, Dh, S]      scores = q @ k          -> [N, K, G, S]
    v[l]: [N, K, S, Dh]      out    = softmax @ v    -> [N, K, G, Dh]

The layer loop is unrolled over per-layer weights sliced once by the caller
(`unstack_layers`), so no weight or cache slice is copied inside the decode loop
(a scan over stacked layers copies each layer's weights and cache slice per step:
~20% slower on bench model B). The price is compile time that grows with depth
(about 0.3-0.6 s per layer on CPU). The projections, norms and MLP are the
model's own (`_qkv`, `_finish_block`), so the numerics are those of `forward`;
the tests check decode against it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import (
    Params,
    _finish_block,
    _qkv,
    forward,
    init_cache,
    logits,
    rms_norm,
    rope_frequencies,
)

_NEG_INF = -1e30  # As in the model's attention: finite, so fully masked rows stay NaN-free.


class DecodeCache(NamedTuple):
    """KV cache of the decode loop; S slots, `mask` marks the valid ones.

    Attributes:
        k: per layer, keys [N, K, Dh, S].
        v: per layer, values [N, K, S, Dh].
        mask: [N, S] bool.
    """

    k: list[jax.Array]
    v: list[jax.Array]
    mask: jax.Array


def unstack_layers(params: Params, cfg: ModelConfig) -> list[Params]:
    """The stacked layer weights as a list of per-layer dicts (slice once, outside loops)."""
    return [jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(cfg.num_layers)]


def prefill(
    params: Params,
    cfg: ModelConfig,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    length: int,
    repeats: int = 1,
) -> tuple[jax.Array, DecodeCache]:
    """Runs the prompts once and builds a decode cache for their continuations.

    Args:
        params: model parameters.
        cfg: the model config.
        prompt_BxP: LEFT-padded prompt ids (the last column is every row's last token).
        prompt_mask_BxP: 1 on real prompt tokens.
        length: slots of the decode cache (>= P); slots P.. start empty.
        repeats: G, rows per prompt in the result (row b * G + g follows prompt b).

    Returns:
        (next-token logits [B * G, V] in float32, the decode cache with B * G rows).
    """
    b, p = prompt_BxP.shape
    hidden_BxPxD, cache = forward(
        params,
        prompt_BxP,
        cfg,
        mask_NxT=prompt_mask_BxP,
        cache=init_cache(cfg, b, p),
        slot=0,
    )
    rows = lambda x: jnp.repeat(x, repeats, axis=0)
    extra = length - p
    k = jnp.pad(cache["k"].transpose(0, 1, 3, 4, 2), [(0, 0)] * 4 + [(0, extra)])
    v = jnp.pad(cache["v"].transpose(0, 1, 3, 2, 4), [(0, 0)] * 3 + [(0, extra), (0, 0)])
    decode_cache = DecodeCache(
        k=[rows(x) for x in k],
        v=[rows(x) for x in v],
        mask=rows(jnp.pad(cache["mask"], [(0, 0), (0, extra)])),
    )
    return rows(logits(params, hidden_BxPxD[:, -1:], cfg)[:, 0]), decode_cache


def _attention(q_NxHxDh, k_NxKxDhxS, v_NxKxSxDh, allowed_NxS):
    n, h, dh = q_NxHxDh.shape
    kv = k_NxKxDhxS.shape[1]
    q = q_NxHxDh.reshape(n, kv, h // kv, dh)
    scores = jnp.einsum("nkgd,nkds->nkgs", q, k_NxKxDhxS, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(dh).astype(np.float32)
    scores = jnp.where(allowed_NxS[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_NxKxSxDh.dtype)
    out = jnp.einsum("nkgs,nksd->nkgd", probs, v_NxKxSxDh)
    return out.reshape(n, 1, h, dh)


def decode_step(
    params: Params,
    layers: list[Params],
    cfg: ModelConfig,
    tokens_N: jax.Array,
    positions_N: jax.Array,
    cache: DecodeCache,
    slot: jax.Array | int,
) -> tuple[jax.Array, DecodeCache]:
    """Feeds one token per row and returns the next-token logits.

    Args:
        params: model parameters (embedding, final norm, output projection).
        layers: `unstack_layers(params, cfg)`.
        cfg: the model config.
        tokens_N: the new token of each row.
        positions_N: its RoPE position.
        cache: the decode cache; the token is written at `slot` and attends to every
            valid slot up to and including it.
        slot: cache slot of the new token (a traced scalar is fine).

    Returns:
        (logits [N, V] in float32, the updated cache).
    """
    dtype = jnp.dtype(cfg.dtype)
    inv_freq = rope_frequencies(cfg)
    x = jnp.take(params["embed"], tokens_N[:, None], axis=0).astype(dtype)
    positions_Nx1 = positions_N[:, None]
    mask_NxS = jax.lax.dynamic_update_slice(
        cache.mask, jnp.ones((tokens_N.shape[0], 1), jnp.bool_), (0, slot)
    )
    allowed_NxS = mask_NxS & (jnp.arange(mask_NxS.shape[1]) <= slot)
    new_k, new_v = [], []
    for lp, k_all, v_all in zip(layers, cache.k, cache.v, strict=True):
        q, k, v = _qkv(lp, x, positions_Nx1, cfg, inv_freq)
        k_all = jax.lax.dynamic_update_slice(
            k_all, k[:, 0, :, :, None].astype(k_all.dtype), (0, 0, 0, slot)
        )
        v_all = jax.lax.dynamic_update_slice(
            v_all, v.transpose(0, 2, 1, 3).astype(v_all.dtype), (0, 0, slot, 0)
        )
        x = _finish_block(lp, x, _attention(q[:, 0], k_all, v_all, allowed_NxS), cfg)
        new_k.append(k_all)
        new_v.append(v_all)
    hidden = rms_norm(x, params["final_norm"], cfg.norm_eps)
    return logits(params, hidden, cfg)[:, 0], DecodeCache(new_k, new_v, mask_NxS)
