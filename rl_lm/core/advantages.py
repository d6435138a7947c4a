"""Group-relative advantages from sequence rewards.

Rewards arrive as R[B, G]: B prompts, G completions each. Rows of the flat
batch are grouped prompt-major, so `rewards_N.reshape(B, G)` recovers the
groups. Every estimator satisfies sum_g A = 0 and gives A = 0 for a group
whose rewards are all equal.
"""

import jax.numpy as jnp


def _centered(rewards_BxG):
    """R - mean_g R, exactly 0 for a group of equal rewards.

    Shifting each group by its first reward first makes equal rewards give
    exact zeros (a float mean of equal values can be off by an ulp, which
    grpo's division by a near-zero std would blow up).
    """
    shifted_BxG = rewards_BxG - rewards_BxG[:, :1]
    return shifted_BxG - jnp.mean(shifted_BxG, axis=1, keepdims=True)


def _grpo(rewards_BxG, eps):
    centered_BxG = _centered(rewards_BxG)
    g = rewards_BxG.shape[1]
    std_Bx1 = jnp.sqrt(jnp.sum(jnp.square(centered_BxG), axis=1, keepdims=True) / (g - 1))
    return centered_BxG / (std_Bx1 + eps)


def _dr_grpo(rewards_BxG, eps):
    del eps
    return _centered(rewards_BxG)


def _rloo(rewards_BxG, eps):
    del eps
    # R - (sum_g R - R) / (G - 1) = G / (G - 1) * (R - mean_g R).
    g = rewards_BxG.shape[1]
    return _centered(rewards_BxG) * (g / (g - 1))


def _batch_std(rewards_BxG, eps):
    return _centered(rewards_BxG) / (jnp.std(rewards_BxG, ddof=1) + eps)


ADVANTAGE_ESTIMATORS = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "batch_std": _batch_std,
}


def group_advantages(rewards_BxG, estimator, eps=1e-6):
    """Advantages of each completion relative to its group.

    - grpo:      A = (R - mean_g R) / (std_g R + eps)
    - dr_grpo:   A = R - mean_g R
    - rloo:      A = R - (sum_g R - R) / (G - 1)
    - batch_std: A = (R - mean_g R) / (std of all B*G rewards + eps)

    Standard deviations are the unbiased (ddof=1) ones.

    Args:
        rewards_BxG: sequence rewards, one row per prompt.
        estimator: one of "grpo", "dr_grpo", "rloo", "batch_std".
        eps: added to the standard deviation; keeps groups with equal
            rewards at A = 0 instead of 0/0.

    Returns:
        Advantages, [B, G].
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"Unknown advantage estimator {estimator!r}; "
            f"choose one of {sorted(ADVANTAGE_ESTIMATORS)}."
        )
    if jnp.ndim(rewards_BxG) != 2:
        raise ValueError(
            f"rewards_BxG must be [B, G], got shape {jnp.shape(rewards_BxG)}; "
            "reshape flat rewards with rewards_N.reshape(B, G)."
        )
    if rewards_BxG.shape[1] < 2:
        raise ValueError(
            f"Group advantages need G >= 2 completions per prompt, got G = {rewards_BxG.shape[1]}."
        )
    if isinstance(eps, (int, float)) and eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}.")
    rewards_BxG = jnp.asarray(rewards_BxG, jnp.result_type(float, rewards_BxG))
    return ADVANTAGE_ESTIMATORS[estimator](rewards_BxG, eps)


def token_advantages(adv_N, m_NxT):
    """Broadcasts one advantage per sequence to its response tokens.

    Args:
        adv_N: sequence advantages, [N] (e.g. `group_advantages(...).reshape(-1)`).
        m_NxT: response mask.

    Returns:
        adv_NxT = adv_N[:, None] * m_NxT (0 off the mask).
    """
    if jnp.ndim(adv_N) != 1 or jnp.ndim(m_NxT) != 2 or adv_N.shape[0] != m_NxT.shape[0]:
        raise ValueError(
            f"adv_N {jnp.shape(adv_N)} and m_NxT {jnp.shape(m_NxT)} must be [N] and [N, T]."
        )
    return adv_N[:, None] * m_NxT.astype(adv_N.dtype)
