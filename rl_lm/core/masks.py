"""Masked reductions over response tokens.

Masks are `m_NxT` arrays of 0/1 (bool, int or float): 1 on generated tokens up
to and including EOS. Reductions treat masked-out entries as absent: the
values stored there (padding, even inf or NaN) never reach a result or a
gradient.
"""

import jax.numpy as jnp


def safe_denominator(d):
    """Replaces zero denominators by 1: an empty mask then yields 0, not NaN.

    The numerator of an empty mask is 0, so 0 / 1 = 0; using `where` on the
    denominator (not on the quotient) keeps the gradient NaN-free too.
    """
    return jnp.where(d > 0, d, jnp.ones_like(d))


def _check_same_shape(x, m, name="x"):
    if jnp.shape(x) != jnp.shape(m):
        raise ValueError(
            f"{name} has shape {jnp.shape(x)} but the mask has shape {jnp.shape(m)}; "
            "pass a mask with one entry per token."
        )


def masked_sum(x, m, axis=None):
    """Sum of `x` over the entries where `m` is set.

    Args:
        x: values, any shape.
        m: mask of the same shape as `x`.
        axis: axis or axes to reduce; None reduces everything.

    Returns:
        sum(x * m) over `axis`.
    """
    _check_same_shape(x, m)
    m = m.astype(x.dtype)
    return jnp.sum(jnp.where(m > 0, x * m, 0), axis=axis)


def masked_mean(x, m, axis=None):
    """Mean of `x` over the entries where `m` is set (0 where the mask is empty).

    Args:
        x: values, any shape.
        m: mask of the same shape as `x`.
        axis: axis or axes to reduce; None reduces everything.

    Returns:
        sum(x * m) / sum(m) over `axis`.
    """
    _check_same_shape(x, m)
    return masked_sum(x, m, axis) / safe_denominator(jnp.sum(m.astype(x.dtype), axis=axis))


def masked_var(x, m, axis=None):
    """Population variance of `x` over the entries where `m` is set.

    The biased (divide-by-count) estimator, so that `masked_whiten` returns
    values with variance exactly 1 under the mask.

    Args:
        x: values, any shape.
        m: mask of the same shape as `x`.
        axis: axis or axes to reduce; None reduces everything.

    Returns:
        mean((x - mean(x))^2) under the mask, over `axis`.
    """
    mean = masked_mean(x, m, axis)
    if axis is not None:
        mean = jnp.expand_dims(mean, axis)
    return masked_mean(jnp.square(x - mean), m, axis)


def masked_whiten(x, m, shift_mean=True, eps=1e-8):
    """Normalizes `x` to mean 0 and variance 1 over the whole mask.

    Statistics are global over every masked-in entry (for PPO advantages:
    over the whole batch). Under `jax.jit` with a sharded batch the sums are
    global too, so sharding does not change the result.

    Args:
        x: values, any shape (e.g. `adv_NxT`).
        m: mask of the same shape as `x`.
        shift_mean: if False, add the mean back after scaling (only rescale),
            as some PPO implementations do for advantages.
        eps: added to the variance before the square root.

    Returns:
        Whitened `x`, 0 where the mask is not set.
    """
    mean = masked_mean(x, m)
    var = masked_var(x, m)
    out = (x - mean) * jnp.reciprocal(jnp.sqrt(var + eps))
    if not shift_mean:
        out = out + mean
    return jnp.where(m.astype(x.dtype) > 0, out, 0)


def response_mask_from_eos(tokens_NxT, eos_id):
    """Response mask: 1 up to and including the first EOS of each row.

    Rows without an EOS (truncated responses) are all ones.

    Args:
        tokens_NxT: generated token ids.
        eos_id: id of the end-of-sequence token.

    Returns:
        int32 mask of shape [N, T].
    """
    if jnp.ndim(tokens_NxT) != 2:
        raise ValueError(f"tokens_NxT must be [N, T], got shape {jnp.shape(tokens_NxT)}.")
    is_eos_NxT = (tokens_NxT == eos_id).astype(jnp.int32)
    eos_before_NxT = jnp.cumsum(is_eos_NxT, axis=1) - is_eos_NxT
    return (eos_before_NxT == 0).astype(jnp.int32)
