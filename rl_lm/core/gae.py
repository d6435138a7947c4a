"""Generalized advantage estimation over response tokens.

delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lambda A_{t+1},
returns = A + V, computed by a reverse `lax.scan` over time.
"""

import jax
import jax.numpy as jnp


def gae(rewards_NxT, values_NxT, m_NxT, gamma, lam):
    """GAE advantages and returns under the response mask.

    Masked tokens carry nothing: they are skipped, so "t + 1" is the next
    response token and the value after the last response token is 0 (a
    finished response has no future). Rewards and values at masked positions
    are ignored; a mask hole in the middle of a row (e.g. environment tokens
    in a multi-turn rollout) is bridged, not treated as an episode end.

    Args:
        rewards_NxT: per-token rewards (e.g. -beta * k1, plus the sequence
            reward on the last response token).
        values_NxT: value predictions V_t.
        m_NxT: response mask.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        (adv_NxT, returns_NxT), both 0 off the mask. lam = gamma = 1 gives
        A_t = sum_{t' >= t} r_t' - V_t; lam = 0 gives A_t = delta_t.
    """
    if not jnp.shape(rewards_NxT) == jnp.shape(values_NxT) == jnp.shape(m_NxT):
        raise ValueError(
            f"rewards {jnp.shape(rewards_NxT)}, values {jnp.shape(values_NxT)} and mask "
            f"{jnp.shape(m_NxT)} must all be [N, T]."
        )
    if jnp.ndim(m_NxT) != 2:
        raise ValueError(f"gae expects [N, T] inputs, got shape {jnp.shape(m_NxT)}.")
    dtype = jnp.result_type(rewards_NxT, values_NxT, jnp.float32)
    on_NxT = m_NxT > 0
    rewards_NxT = jnp.where(on_NxT, rewards_NxT, 0).astype(dtype)
    values_NxT = jnp.where(on_NxT, values_NxT, 0).astype(dtype)

    def step(carry, xs):
        next_value_N, next_adv_N = carry
        r_N, v_N, on_N = xs
        delta_N = r_N + gamma * next_value_N - v_N
        adv_N = delta_N + gamma * lam * next_adv_N
        carry = (jnp.where(on_N, v_N, next_value_N), jnp.where(on_N, adv_N, next_adv_N))
        return carry, jnp.where(on_N, adv_N, 0)

    n = m_NxT.shape[0]
    init = (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype))
    _, adv_TxN = jax.lax.scan(step, init, (rewards_NxT.T, values_NxT.T, on_NxT.T), reverse=True)
    adv_NxT = adv_TxN.T
    returns_NxT = jnp.where(on_NxT, adv_NxT + values_NxT, 0)
    return adv_NxT, returns_NxT
