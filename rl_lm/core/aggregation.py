"""Loss aggregation of per-token losses l[N, T] under the response mask.

Every mode is a ratio numerator / denominator where the numerator is a sum
over rows and the denominator depends on the mask only:

| mode                    | numerator                   | denominator      |
| token-mean (DAPO)       | sum_i sum_t m l             | sum_i sum_t m    |
| seq-mean-token-mean     | sum_i (sum_t m l / sum_t m) | N                |
| seq-mean-token-sum      | sum_i sum_t m l             | N                |
| seq-mean-token-sum-norm | sum_i sum_t m l             | N * T_max        |

(the last one is Dr.GRPO's constant normalizer).

Take the denominator once over the whole optimizer batch
(`aggregation_denominator`) and hand it to every microbatch and every data
shard (`aggregate(..., denominator=...)`): the numerators then add up, so
accumulating gradients over k microbatches, or summing them over devices,
gives exactly the full-batch gradient. Dividing each microbatch by its own
token count instead is the classic accumulation bug.

N counts the rows whose mask is not empty, so all-padding rows (added to
fill a batch or make it divisible by the device count) change nothing,
wherever they land. That is why the denominator is the raw count, 0 for an
empty mask: a microbatch or shard of padding rows only must add 0, not 1, to
the global denominator. Only the final division guards a zero (`aggregate`
here, `common.ratio` in the step), where the numerator is 0 too.
"""

import jax.numpy as jnp

from rl_lm.core.masks import masked_mean, masked_sum, safe_denominator

AGGREGATION_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def _check(mode, l_NxT=None, m_NxT=None):
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"Unknown aggregation mode {mode!r}; choose one of {AGGREGATION_MODES}.")
    if jnp.ndim(m_NxT) != 2:
        raise ValueError(f"The mask must be [N, T], got shape {jnp.shape(m_NxT)}.")
    if l_NxT is not None and jnp.shape(l_NxT) != jnp.shape(m_NxT):
        raise ValueError(
            f"The loss has shape {jnp.shape(l_NxT)} but the mask has {jnp.shape(m_NxT)}; "
            "aggregate per-token losses [N, T] under their own mask."
        )


def aggregation_numerator(l_NxT, m_NxT, mode):
    """The numerator of `mode` for this (micro)batch: a sum over its rows.

    Args:
        l_NxT: per-token loss.
        m_NxT: response mask.
        mode: one of `AGGREGATION_MODES`.

    Returns:
        Scalar numerator; numerators of disjoint row sets add up.
    """
    _check(mode, l_NxT, m_NxT)
    if mode == "seq-mean-token-mean":
        return jnp.sum(masked_mean(l_NxT, m_NxT, axis=1))
    return masked_sum(l_NxT, m_NxT)


def aggregation_denominator(mode, m_NxT, t_max=None):
    """The denominator of `mode` over the whole optimizer batch.

    Call it on the full batch's mask before splitting into microbatches or
    shards, or sum it over them: it is a raw count, so an all-empty mask gives
    0 and denominators of disjoint row sets add up. Divide with a guard for 0
    (`aggregate`, `common.ratio`).

    Args:
        mode: one of `AGGREGATION_MODES`.
        m_NxT: response mask of the whole optimizer batch.
        t_max: the maximum response length (the sampler's budget, not the
            padded width of this batch); required by seq-mean-token-sum-norm.

    Returns:
        Scalar denominator (float32).
    """
    _check(mode, m_NxT=m_NxT)
    m_NxT = jnp.asarray(m_NxT, jnp.float32)
    if mode == "token-mean":
        return jnp.sum(m_NxT)
    n_rows = jnp.sum(jnp.sum(m_NxT, axis=1) > 0).astype(jnp.float32)
    if mode == "seq-mean-token-sum-norm":
        if t_max is None or t_max <= 0:
            raise ValueError(
                "seq-mean-token-sum-norm (Dr.GRPO) divides by N * T_max: pass t_max, the "
                f"maximum number of generated tokens, got {t_max}."
            )
        return n_rows * t_max
    return n_rows


def aggregate(l_NxT, m_NxT, mode, denominator=None, t_max=None):
    """Aggregates per-token losses: numerator(l, m) / denominator.

    Args:
        l_NxT: per-token loss of this (micro)batch or shard.
        m_NxT: its response mask.
        mode: one of `AGGREGATION_MODES`.
        denominator: from `aggregation_denominator` over the whole optimizer
            batch. None takes it from `m_NxT` (right only when this is the
            whole batch).
        t_max: needed when `denominator` is None and mode is
            seq-mean-token-sum-norm.

    Returns:
        Scalar loss; the values (and gradients) over microbatches add up to
        the full-batch value. 0 (not NaN) when the denominator is 0.
    """
    if denominator is None:
        denominator = aggregation_denominator(mode, m_NxT, t_max)
    return aggregation_numerator(l_NxT, m_NxT, mode) / safe_denominator(denominator)
