"""Truncated importance weights between the training and the sampling policy.

For off-policy rollouts the sampler's log-probs (lp_sample) differ from the
training policy's recomputed ones (lp_train). Truncated importance sampling
(TIS) reweights each token's policy-gradient term by min(ratio, C), token-level
or sequence-level (the ratio of the whole response, broadcast over its tokens).
The weights are stop-gradient: they scale the gradient, they are not optimized.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IS_MODES = ("token", "sequence")


def truncated_weights(
    lp_train_NxT: jax.Array,
    lp_sample_NxT: jax.Array,
    m_NxT: jax.Array,
    cap: float,
    mode: str = "token",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Truncated importance weights [N,T] (0 on masked tokens) and their metrics.

    token: w_t = min(exp(lp_train_t - lp_sample_t), cap).
    sequence: w = min(exp(sum_t m_t (lp_train_t - lp_sample_t)), cap) on every token.
    A ratio equal to cap is not counted as truncated. Metrics: is_weight_mean
    (mean weight over response tokens), is_truncated (fraction of tokens whose
    ratio exceeded cap).
    """
    if mode not in IS_MODES:
        raise ValueError(f"importance mode {mode!r} not in {IS_MODES}")
    m = m_NxT.astype(jnp.float32)
    diff = (lp_train_NxT - lp_sample_NxT).astype(jnp.float32) * m
    if mode == "token":
        log_ratio = diff
    else:
        log_ratio = jnp.broadcast_to(jnp.sum(diff, axis=1, keepdims=True), diff.shape)
    ratio = jnp.exp(log_ratio)
    w = jax.lax.stop_gradient(jnp.minimum(ratio, cap) * m)
    tokens = jnp.maximum(jnp.sum(m), 1.0)
    metrics = {
        "is_weight_mean": jnp.sum(w) / tokens,
        "is_truncated": jnp.sum((ratio > cap) * m) / tokens,
    }
    return w, metrics
