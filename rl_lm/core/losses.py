"""Per-token policy and value losses: PPO clip, dual clip, GSPO, value clip.

Every loss here is per token, [N, T]; reduce it with `core.aggregation`
under the response mask. Inputs that must not carry gradient (old log-probs,
advantages, old values, returns) are stop-gradiented here, so callers can
pass them straight from the batch. Padding positions may hold any finite
value (the mask removes them later); inf there would turn gradients to NaN.
"""

from numbers import Real

import jax
import jax.numpy as jnp

from rl_lm.core.masks import masked_mean

sg = jax.lax.stop_gradient


def _check_clip_args(eps_lo, eps_hi, dual_clip):
    for name, eps in (("eps_lo", eps_lo), ("eps_hi", eps_hi)):
        if isinstance(eps, Real) and eps < 0:
            raise ValueError(f"{name} must be >= 0, got {eps}.")
    if isinstance(dual_clip, Real) and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (e.g. 3.0) or None, got {dual_clip}.")


def sequence_log_ratio(lp, lp_old, m):
    """GSPO's length-normalized sequence log-ratio, spread over the tokens.

    The value at every token of row i is log s_i = mean_t under m of
    (lp - lp_old), the log of GSPO's sequence ratio s_i. The gradient is the
    one of GSPO-token (Zheng et al. 2025, arXiv 2507.18071): the token-t entry is
    sg(log s_i) + lp_t - sg(lp_t), so d entry_t / d lp_t = 1 and the gradient
    of the loss at token t is s_i * A_{i,t} * grad lp_t (unless clipped).

    With one advantage per sequence this is exactly GSPO's gradient
    s_i * A_i * (1/|y_i|) sum_t grad lp_t under seq-mean-token-mean
    aggregation, and it agrees with differentiating the true sequence ratio
    under every aggregation mode (all modes weight the tokens of a row
    equally). Unlike the true-ratio form it also accepts per-token advantages.

    Args:
        lp: token log-probs under the trained policy, [N, T].
        lp_old: token log-probs under the sampling policy, [N, T].
        m: response mask, [N, T].

    Returns:
        Per-token log-ratios, [N, T].
    """
    log_s_N = masked_mean(lp - sg(lp_old), m, axis=1)
    return sg(log_s_N)[:, None] + lp - sg(lp)


def clipped_surrogate(
    lp, lp_old, adv, eps_lo, eps_hi, dual_clip=None, *, m=None, ratio_level="token"
):
    """PPO clipped surrogate per token, with optional dual clip and GSPO ratio.

    rho = exp(lp - lp_old) (token level) or GSPO's sequence ratio s_i;
    l = -min(rho * A, clip(rho, 1 - eps_lo, 1 + eps_hi) * A); with
    dual_clip = c, where A < 0: l = min(l, -c * A).

    The gradient is zero beyond the clip on the advantage's side
    (A > 0 and rho > 1 + eps_hi, or A < 0 and rho < 1 - eps_lo) and, with the
    dual clip, where A < 0 and rho > c. At rho = 1 it is -A * grad lp.

    Args:
        lp: token log-probs under the trained policy, [N, T].
        lp_old: token log-probs under the sampling policy, [N, T].
        adv: advantages, [N, T] or [N, 1] (see `token_advantages`).
        eps_lo: lower clip range (0.2 in PPO/GRPO).
        eps_hi: upper clip range (0.2; 0.28 for DAPO's clip-higher).
        dual_clip: c > 1 caps the loss of negative-advantage tokens at -c*A
            (Ye et al. 2020); None disables it.
        m: response mask, [N, T]; needed for ratio_level="sequence".
        ratio_level: "token" (PPO) or "sequence" (GSPO, via
            `sequence_log_ratio`).

    Returns:
        (l, metrics): the per-token loss [N, T] and per-token 0/1 indicators
        [N, T] for logging under the mask: "clipped_low" and "clipped_high"
        (the clip stops the gradient on that side), "dual_clipped", plus
        "ratio" (rho, stop-gradiented).
    """
    if jnp.shape(lp) != jnp.shape(lp_old):
        raise ValueError(f"lp {jnp.shape(lp)} and lp_old {jnp.shape(lp_old)} must match.")
    if jnp.ndim(adv) != jnp.ndim(lp):
        raise ValueError(
            f"adv has shape {jnp.shape(adv)} but lp has {jnp.shape(lp)}; pass adv as [N, T] "
            "or [N, 1] (token_advantages broadcasts sequence advantages)."
        )
    _check_clip_args(eps_lo, eps_hi, dual_clip)
    if ratio_level == "token":
        log_rho = lp - sg(lp_old)
    elif ratio_level == "sequence":
        if m is None:
            raise ValueError("ratio_level='sequence' needs the response mask m.")
        log_rho = sequence_log_ratio(lp, lp_old, m)
    else:
        raise ValueError(f"ratio_level must be 'token' or 'sequence', got {ratio_level!r}.")

    adv = sg(adv)
    rho = jnp.exp(log_rho)
    rho_clipped = jnp.clip(rho, 1.0 - eps_lo, 1.0 + eps_hi)
    l = jnp.maximum(-rho * adv, -rho_clipped * adv)
    metrics = {
        "ratio": sg(rho),
        "clipped_low": ((adv < 0) & (rho < 1.0 - eps_lo)).astype(lp.dtype),
        "clipped_high": ((adv > 0) & (rho > 1.0 + eps_hi)).astype(lp.dtype),
    }
    dual_clipped = jnp.zeros_like(l, dtype=bool)
    if dual_clip is not None:
        dual_clipped = (adv < 0) & (l > -dual_clip * adv)
        l = jnp.where(dual_clipped, -dual_clip * adv, l)
    metrics["dual_clipped"] = dual_clipped.astype(lp.dtype)
    return l, metrics


def clipped_value_loss(values, values_old, returns, eps_v):
    """PPO clipped value loss per token.

    l = 0.5 * max((V - ret)^2, (clip(V, V_old - eps_v, V_old + eps_v) - ret)^2)

    Args:
        values: value predictions being trained, [N, T].
        values_old: value predictions at rollout time, [N, T].
        returns: GAE returns (targets), [N, T].
        eps_v: value clip range (0.2 in InstructGPT-style PPO).

    Returns:
        (l, metrics): the per-token loss [N, T] and {"value_clipped": 0/1
        per token where the clipped branch is the larger one}.
    """
    if not jnp.shape(values) == jnp.shape(values_old) == jnp.shape(returns):
        raise ValueError(
            f"values {jnp.shape(values)}, values_old {jnp.shape(values_old)} and returns "
            f"{jnp.shape(returns)} must have the same shape."
        )
    values_old, returns = sg(values_old), sg(returns)
    v_clipped = values_old + jnp.clip(values - values_old, -eps_v, eps_v)
    err = jnp.square(values - returns)
    err_clipped = jnp.square(v_clipped - returns)
    l = 0.5 * jnp.maximum(err, err_clipped)
    return l, {"value_clipped": (err_clipped > err).astype(values.dtype)}
