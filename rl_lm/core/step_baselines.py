"""PURE's group baselines for step credit: applied after the credit form.

PURE's released code (CJReinforce/PURE, `openrlhf/trainer/ppo_utils/
experience_maker.py`, `process_experiences`) composes credit and baseline in
this order, for a group of G responses to one prompt:

1. Each row's step rewards r_s are reweighted by the credit form (the soft-min
   weights w = softmax(-r / T) over the row's steps, or none for sum-form) and
   placed on the steps' last tokens; their sum over the row is its total
   T_i = sum_s w_s r_s, the credit form's first return G_1.
2. A leave-one-out baseline is subtracted from every step's reward:
   - "step" (`reward_baseline=step`): b_i = mean over the other rows j of
     T_j / K_j (K_j = the row's step count), once per step;
   - "token" (`reward_baseline=token`, the one its training script uses):
     b_i = sum_{j != i} T_j / sum_{j != i} L_j (L_j = the row's response
     length in tokens), times the step's token count without its last token.
3. The verifiable reward (leave-one-out) joins at EOS, the returns are the
   reverse cumulative sum over tokens, and the advantage of every step's last
   token (the separators and the final token) is set to 0.

So the return of step s is G_s - b_i * (steps from s to the end) or
G_s - b_i * (tokens from s to the end, less one per step): the baseline counts
once per remaining step (or token), whatever the form. For any credit form
with returns G this is the same computation with r'_s = G_s - G_{s+1} in place
of the reweighted rewards, which is what these functions take.

rl_lm's `baseline="loo"` (`credit.subtract_loo_mean` on the raw step rewards
before the credit form) is another composition; `rl_lm.algos.process_rewards`
offers both.
"""

import jax.numpy as jnp

from rl_lm.core import masks


def _loo_of_rows(x_BxG, group_size):
    """For each row: the mean of x over the other G - 1 rows of its group."""
    return (jnp.sum(x_BxG, axis=1, keepdims=True) - x_BxG) / (group_size - 1)


def _check(G_NxS, step_mask_NxS, group_size):
    n = jnp.shape(G_NxS)[0]
    if jnp.ndim(G_NxS) != 2 or jnp.shape(G_NxS) != jnp.shape(step_mask_NxS):
        raise ValueError(
            f"G_NxS {jnp.shape(G_NxS)} and step_mask_NxS {jnp.shape(step_mask_NxS)} must both be "
            "[N, S]."
        )
    if not isinstance(group_size, int) or group_size < 2 or n % group_size:
        raise ValueError(
            f"group_size must be an int >= 2 dividing the {n} rows, got {group_size!r}."
        )


def _remaining(x_NxS, step_mask_NxS):
    """sum_{s' >= s} x_s' over each row's existing steps."""
    x_NxS = jnp.where(step_mask_NxS, x_NxS, 0)
    return jnp.where(step_mask_NxS, jnp.flip(jnp.cumsum(jnp.flip(x_NxS, 1), 1), 1), 0)


def per_step_baseline(G_NxS, step_mask_NxS, group_size):
    """PURE's "step" baseline: G_s - b_i * (number of steps from s to the end).

    b_i is the mean over the other rows j of its group of G_1^j / K_j, the
    row's total credited reward per step.

    Args:
        G_NxS: step returns of a credit form (`credit.step_returns`).
        step_mask_NxS: existing steps (a prefix of each row).
        group_size: G, rows prompt-major.

    Returns:
        Baselined returns, 0 on absent steps.
    """
    _check(G_NxS, step_mask_NxS, group_size)
    G_NxS = jnp.where(step_mask_NxS, G_NxS, 0)
    k_N = jnp.sum(step_mask_NxS, axis=1).astype(G_NxS.dtype)
    per_step_N = G_NxS[:, 0] / masks.safe_denominator(k_N)
    b_N = _loo_of_rows(per_step_N.reshape(-1, group_size), group_size).reshape(-1)
    return jnp.where(step_mask_NxS, G_NxS - b_N[:, None] * _remaining(1.0, step_mask_NxS), 0)


def per_token_baseline(G_NxS, step_mask_NxS, step_tokens_NxS, lengths_N, group_size):
    """PURE's "token" baseline: G_s - b_i * sum_{s' >= s} (n_s' - 1).

    b_i = sum_{j != i} G_1^j / sum_{j != i} L_j over the other rows of the
    group: their total credited reward per response token. Each step is
    charged for its tokens less its last one (PURE counts a step's tokens
    without its separator), while L counts every response token.

    Args:
        G_NxS: step returns of a credit form.
        step_mask_NxS: existing steps (a prefix of each row).
        step_tokens_NxS: n_s, the number of response tokens of each step.
        lengths_N: L, each row's response length in tokens.
        group_size: G, rows prompt-major.

    Returns:
        Baselined returns, 0 on absent steps.
    """
    _check(G_NxS, step_mask_NxS, group_size)
    G_NxS = jnp.where(step_mask_NxS, G_NxS, 0)
    totals_BxG = G_NxS[:, 0].reshape(-1, group_size)
    lengths_BxG = jnp.asarray(lengths_N, G_NxS.dtype).reshape(-1, group_size)
    others_len_BxG = jnp.sum(lengths_BxG, axis=1, keepdims=True) - lengths_BxG
    others_sum_BxG = jnp.sum(totals_BxG, axis=1, keepdims=True) - totals_BxG
    b_N = (others_sum_BxG / masks.safe_denominator(others_len_BxG)).reshape(-1)
    charged_NxS = jnp.maximum(jnp.asarray(step_tokens_NxS, G_NxS.dtype) - 1, 0)
    return jnp.where(
        step_mask_NxS, G_NxS - b_N[:, None] * _remaining(charged_NxS, step_mask_NxS), 0
    )


def tokens_per_step(token_step_NxT, num_slots):
    """n_NxS: how many response tokens each step slot holds (`Steps.token_step_NxT`)."""
    slots_S = jnp.arange(num_slots)
    return jnp.sum(token_step_NxT[:, :, None] == slots_S[None, None, :], axis=1)
