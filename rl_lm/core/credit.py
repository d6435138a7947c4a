"""Credit assignment from process rewards.

Step rewards p_NxS live under a step mask (from `steps.segment_steps`: the
existing steps of each row form a prefix). Entries of absent steps may hold
anything (zeros, garbage, NaN): every function masks them before any
arithmetic, so they never reach a result. A credit form maps p to step
returns G_NxS; `steps.steps_to_tokens` then gives token t of step s the value
G_s, 0 off the response.

- sum-form:   G_s = sum_{s' >= s} gamma^(s' - s) p_s'
- strict min: G_s = min_{s' >= s} p_s'                       (PURE)
- soft min:   w = softmax(-p / temp) over the row's steps, G_s = sum_{s' >= s} w_s' p_s'  (PURE)
- Clip:       p~ = min(p - eta, 0);  Delta: p~_s = p_s - p_{s+1}, p~_last = 0
  (Gao et al.; "delta_keep_last" keeps p~_last = p_last)
- GRPO process supervision: group-normalized steps, then sum-form with gamma = 1.
- PRIME: implicit token rewards beta (lp_phi - lp_ref), leave-one-out per source,
  returns by reverse cumulative sum over tokens.
- For a learner that sums token rewards (PPO), any G becomes step rewards
  r'_s = G_s - G_{s+1} on step ends (`step_end_rewards`), so that the
  undiscounted sum from step s on is G_s again.

Rows are grouped prompt-major as in `advantages`: rows g*G .. g*G + G - 1
are the G completions of prompt g.
"""

import jax
import jax.numpy as jnp

from rl_lm.core import advantages, gae, masks, steps


def _as_float(x):
    return jnp.asarray(x, jnp.result_type(float, x))


def _check_steps(p_NxS, step_mask_NxS):
    if jnp.ndim(p_NxS) != 2 or jnp.shape(p_NxS) != jnp.shape(step_mask_NxS):
        raise ValueError(
            f"p_NxS {jnp.shape(p_NxS)} and step_mask_NxS {jnp.shape(step_mask_NxS)} must both be "
            "[N, S]; take the mask from steps.segment_steps."
        )


def _masked(p_NxS, step_mask_NxS):
    """p on existing steps, exactly 0 elsewhere (garbage never leaks)."""
    _check_steps(p_NxS, step_mask_NxS)
    p_NxS = _as_float(p_NxS)
    return jnp.where(step_mask_NxS, p_NxS, jnp.zeros_like(p_NxS))


def _check_group(n, group_size):
    if not isinstance(group_size, int) or group_size < 2 or n % group_size:
        raise ValueError(
            f"group_size must be an int >= 2 dividing the {n} rows (prompt-major groups), "
            f"got {group_size!r}."
        )


def sum_form_returns(p_NxS, step_mask_NxS, gamma=1.0):
    """Discounted step returns G_s = sum_{s' >= s} gamma^(s' - s) p_s'.

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps (a prefix of each row).
        gamma: discount per step.

    Returns:
        G_NxS, 0 on absent steps.
    """
    p_NxS = _masked(p_NxS, step_mask_NxS)

    def back(next_G_N, p_N):
        G_N = p_N + gamma * next_G_N
        return G_N, G_N

    _, G_SxN = jax.lax.scan(back, jnp.zeros(p_NxS.shape[:1], p_NxS.dtype), p_NxS.T, reverse=True)
    return jnp.where(step_mask_NxS, G_SxN.T, 0)


def strict_min_returns(p_NxS, step_mask_NxS):
    """PURE min-form G_s = min_{s' >= s} p_s' over the existing steps only.

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps.

    Returns:
        G_NxS, 0 on absent steps.
    """
    _check_steps(p_NxS, step_mask_NxS)
    p_NxS = _as_float(p_NxS)
    # Absent steps become +inf, the identity of min, so they are never read.
    p_NxS = jnp.where(step_mask_NxS, p_NxS, jnp.inf)
    G_NxS = jax.lax.cummin(p_NxS, axis=1, reverse=True)
    return jnp.where(step_mask_NxS, G_NxS, 0)


def soft_min_weights(p_NxS, step_mask_NxS, temperature):
    """w = softmax(-p / temperature) over each row's existing steps.

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps.
        temperature: > 0; PURE uses 0.1.

    Returns:
        w_NxS summing to 1 over each non-empty row, 0 on absent steps and on
        rows without steps.
    """
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; use strict_min_returns for T = 0."
        )
    p_NxS = _masked(p_NxS, step_mask_NxS)
    logits_NxS = jnp.where(step_mask_NxS, -p_NxS / temperature, -jnp.inf)
    top_Nx1 = jnp.max(logits_NxS, axis=1, keepdims=True)
    top_Nx1 = jnp.where(jnp.isfinite(top_Nx1), top_Nx1, 0)
    e_NxS = jnp.where(step_mask_NxS, jnp.exp(logits_NxS - top_Nx1), 0)
    return e_NxS / masks.safe_denominator(jnp.sum(e_NxS, axis=1, keepdims=True))


def soft_min_returns(p_NxS, step_mask_NxS, temperature=0.1):
    """PURE soft min-form: sum-form (gamma = 1) of the reweighted p~_s = w_s p_s.

    The weights are normalized once over the whole response (as in PURE's
    code, where they are applied before the token-level reverse cumsum), so
    G_s = sum_{s' >= s} w_s' p_s' with w = softmax(-p / temperature) over all
    steps of the row. G_1 = sum_s w_s p_s, the softmin-weighted mean of p:
    it tends to min p as temperature -> 0 and to the mean of p as
    temperature -> inf. Later returns are partial sums: as temperature -> 0,
    G_s -> min p times the share of the minimizing steps at or after s (so 0
    once the minimum lies behind), and as temperature -> inf,
    G_s -> (sum_{s' >= s} p_s') / (number of steps).

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps.
        temperature: > 0.

    Returns:
        G_NxS, 0 on absent steps.
    """
    w_NxS = soft_min_weights(p_NxS, step_mask_NxS, temperature)
    return sum_form_returns(w_NxS * _masked(p_NxS, step_mask_NxS), step_mask_NxS, 1.0)


def clip_transform(p_NxS, step_mask_NxS, eta=0.0):
    """Clip mechanism: p~ = min(p - eta, 0), so no step earns a positive reward.

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps.
        eta: threshold subtracted before clipping.

    Returns:
        p~_NxS, 0 on absent steps.
    """
    p_NxS = _masked(p_NxS, step_mask_NxS)
    return jnp.where(step_mask_NxS, jnp.minimum(p_NxS - eta, 0), 0)


def _minus_next(p_NxS, step_mask_NxS):
    """p_s - p_{s+1} on every step, p itself on each row's last step (p_{S+1} = 0)."""
    p_NxS = _masked(p_NxS, step_mask_NxS)
    next_NxS = jnp.pad(p_NxS[:, 1:], ((0, 0), (0, 1)))
    return jnp.where(step_mask_NxS, p_NxS - next_NxS, 0)


def delta_transform(p_NxS, step_mask_NxS):
    """Delta mechanism (Gao et al. 2024, arXiv 2410.15115, section 4): adjacent differences.

    p~_k = p_k - p_{k+1} for k < K, and the last step's reward is dropped,
    p~_K = 0 (the paper's figure of the mechanism strikes the last step out,
    leaving K - 1 deltas; the final step is the one the success reward
    judges). The sum-form return (gamma = 1) from step k then telescopes to
    G_k = p_k - p_K, and G_K = 0: no trajectory's return exceeds the range of
    p, so adding or repeating steps cannot raise it.

    Example: p = [0.7, 0.2, 0.4, 0.8] gives p~ = [0.5, -0.2, -0.4, 0] and
    returns [-0.1, -0.6, -0.4, 0].

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps (a prefix of each row).

    Returns:
        p~_NxS, 0 on absent steps and on each row's last step.
    """
    p_NxS = _masked(p_NxS, step_mask_NxS)
    has_next_NxS = jnp.pad(step_mask_NxS[:, 1:], ((0, 0), (0, 1)))
    return jnp.where(has_next_NxS, _minus_next(p_NxS, step_mask_NxS), 0)


def delta_keep_last_transform(p_NxS, step_mask_NxS):
    """Delta with the last step kept: p~_k = p_k - p_{k+1} for k < K, p~_K = p_K.

    The sum-form return (gamma = 1) from step k telescopes to p_k itself; the
    variant rl_lm offered as "delta" before following the paper
    (`delta_transform`), kept as "delta_keep_last".

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps (a prefix of each row).

    Returns:
        p~_NxS, 0 on absent steps.
    """
    return _minus_next(p_NxS, step_mask_NxS)


STEP_TRANSFORMS = {
    "none": lambda p, m, eta: _masked(p, m),
    "clip": clip_transform,
    "delta": lambda p, m, eta: delta_transform(p, m),
    "delta_keep_last": lambda p, m, eta: delta_keep_last_transform(p, m),
}

CREDIT_FORMS = {
    "sum": lambda p, m, gamma, temperature: sum_form_returns(p, m, gamma),
    "min": lambda p, m, gamma, temperature: strict_min_returns(p, m),
    "soft_min": lambda p, m, gamma, temperature: soft_min_returns(p, m, temperature),
}


def step_returns(p_NxS, step_mask_NxS, form, transform="none", gamma=1.0, temperature=0.1, eta=0.0):
    """Applies a reward transform, then a credit form.

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps.
        form: "sum", "min" (strict) or "soft_min".
        transform: "none", "clip", "delta" (the paper's: returns p_s - p_K)
            or "delta_keep_last" (returns p_s).
        gamma: discount of the sum-form.
        temperature: soft-min temperature.
        eta: Clip threshold.

    Returns:
        G_NxS, 0 on absent steps; map to tokens with `steps.steps_to_tokens`.
    """
    if form not in CREDIT_FORMS:
        raise ValueError(f"Unknown credit form {form!r}; choose one of {sorted(CREDIT_FORMS)}.")
    if transform not in STEP_TRANSFORMS:
        raise ValueError(
            f"Unknown step-reward transform {transform!r}; choose one of {sorted(STEP_TRANSFORMS)}."
        )
    p_NxS = STEP_TRANSFORMS[transform](p_NxS, step_mask_NxS, eta)
    return CREDIT_FORMS[form](p_NxS, step_mask_NxS, gamma, temperature)


def returns_to_step_rewards(G_NxS, step_mask_NxS):
    """Step rewards whose undiscounted return is G: r'_s = G_s - G_{s+1}, 0 after the last step.

    Identity: sum_{s' >= s} r'_s' = G_s on every existing step s (the sum
    telescopes), whatever credit form made G. This is how a credit form
    reaches a learner that sums rewards, such as PPO's GAE: with r'_s on step
    s's last token (`steps.at_step_ends`), token gamma = lambda = 1 and zero
    values, every token of step s gets A_t = G_s. By form (r = the step rewards):
    - sum, gamma = 1: r'_s = r_s; sum, gamma < 1: r'_s = r_s - (1 - gamma) G_{s+1};
    - strict min: r'_s = min(r_s - G_{s+1}, 0) before the last step, r' = r on
      it: a step costs only what it falls below every later step, and a step
      no worse than those (a padded correct one) earns exactly 0 (PURE's
      min-form credit written as rewards);
    - soft min: r'_s = w_s r_s, PURE's softmin-reweighted step rewards.
    It is `delta_keep_last_transform` of the returns: Delta with the last step
    kept inverts the gamma = 1 sum-form.

    Args:
        G_NxS: step returns (e.g. `step_returns`).
        step_mask_NxS: existing steps (a prefix of each row).

    Returns:
        r'_NxS, 0 on absent steps.
    """
    return delta_keep_last_transform(G_NxS, step_mask_NxS)


def step_end_rewards(p_NxS, seg, form, transform="none", gamma=1.0, temperature=0.1, eta=0.0):
    """Token rewards at step ends whose undiscounted sum from any token of step s on is G_s.

    G = `step_returns`(p, form, transform, ...); r' = `returns_to_step_rewards`(G)
    sits on each step's last token, so sum_{t' >= t} r_t' = G_s for every token
    t of step s (tokens after the last step end carry nothing).

    Args:
        p_NxS: step rewards.
        seg: `steps.segment_steps` of the responses (step_end_NxS,
            step_mask_NxS, token_step_NxT).
        form, transform, gamma, temperature, eta: see `step_returns`.

    Returns:
        (r_NxT, 0 off the step ends; G_NxS, 0 on absent steps).
    """
    G_NxS = step_returns(p_NxS, seg.step_mask_NxS, form, transform, gamma, temperature, eta)
    r_NxS = returns_to_step_rewards(G_NxS, seg.step_mask_NxS)
    return steps.at_step_ends(r_NxS, seg.step_end_NxS, seg.token_step_NxT), G_NxS


def group_normalize_steps(p_NxS, step_mask_NxS, group_size, eps=1e-6):
    """DeepSeekMath process supervision: (p - mean) / (std + eps) over a group's steps.

    Mean and (unbiased, as in `advantages`) std are taken over all existing
    steps of the group's G rows together.

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps.
        group_size: G, completions per prompt.
        eps: added to the std; a group of equal rewards gives exactly 0.

    Returns:
        Normalized step rewards, 0 on absent steps.
    """
    p_NxS = _masked(p_NxS, step_mask_NxS)
    n, s = p_NxS.shape
    _check_group(n, group_size)
    p_BxK = p_NxS.reshape(n // group_size, group_size * s)
    on_BxK = step_mask_NxS.reshape(p_BxK.shape)
    # Shifting by a value of the group (its max) makes equal rewards cancel
    # exactly instead of leaving ulp noise for the division to blow up.
    top_Bx1 = jnp.max(jnp.where(on_BxK, p_BxK, -jnp.inf), axis=1, keepdims=True)
    shifted_BxK = jnp.where(on_BxK, p_BxK - jnp.where(jnp.isfinite(top_Bx1), top_Bx1, 0), 0)
    count_Bx1 = jnp.sum(on_BxK, axis=1, keepdims=True).astype(p_BxK.dtype)
    mean_Bx1 = jnp.sum(shifted_BxK, axis=1, keepdims=True) / masks.safe_denominator(count_Bx1)
    centered_BxK = jnp.where(on_BxK, shifted_BxK - mean_Bx1, 0)
    var_Bx1 = jnp.sum(jnp.square(centered_BxK), axis=1, keepdims=True) / masks.safe_denominator(
        count_Bx1 - 1
    )
    return (centered_BxK / (jnp.sqrt(var_Bx1) + eps)).reshape(n, s)


def grpo_process_returns(p_NxS, step_mask_NxS, group_size, eps=1e-6):
    """GRPO process supervision: A_t = sum of normalized rewards of the steps ending at or after t.

    A token of step s sees the steps s, s + 1, ... ending at or after it, so
    this is the gamma = 1 sum-form of `group_normalize_steps`.

    Args:
        p_NxS: step rewards.
        step_mask_NxS: existing steps.
        group_size: G, completions per prompt.
        eps: added to the group's std.

    Returns:
        G_NxS, 0 on absent steps; map to tokens with `steps.steps_to_tokens`.
    """
    normalized_NxS = group_normalize_steps(p_NxS, step_mask_NxS, group_size, eps)
    return sum_form_returns(normalized_NxS, step_mask_NxS, 1.0)


def leave_one_out(rewards_N, group_size):
    """A_i = R_i - mean of the other G - 1 rewards of its group (sums to 0 per group)."""
    if jnp.ndim(rewards_N) != 1:
        raise ValueError(f"rewards_N must be [N], got shape {jnp.shape(rewards_N)}.")
    _check_group(rewards_N.shape[0], group_size)
    return advantages.group_advantages(rewards_N.reshape(-1, group_size), "rloo").reshape(-1)


def subtract_loo_mean(x_NxK, mask_NxK, group_size):
    """x - (mean over the other rows of the group of each row's masked mean of x).

    PRIME's baseline for dense rewards (tokens), and rl_lm's "loo" process
    baseline on raw step rewards before the credit form (not PURE's, which
    baselines the credited rewards: `core.step_baselines`): every entry of
    row i loses (1 / (G - 1)) sum_{j != i} mean_k x_jk.

    Args:
        x_NxK: per-token or per-step rewards.
        mask_NxK: which entries exist.
        group_size: G.

    Returns:
        Baselined rewards, 0 off the mask.
    """
    x_NxK = _as_float(x_NxK)
    mean_N = masks.masked_mean(jnp.where(mask_NxK > 0, x_NxK, 0), mask_NxK, axis=1)
    baseline_N = mean_N - leave_one_out(mean_N, group_size)
    return jnp.where(mask_NxK > 0, x_NxK - baseline_N[:, None], 0)


def add_to_last_step(p_NxS, x_N, step_mask_NxS):
    """Adds a sequence-level reward to each row's last step (the one holding EOS).

    Sum-form returns of the result carry x with return-to-go semantics:
    G_s gains gamma^(last - s) x. With gamma = 1 every step gains x, the same
    as adding x to every token with `combine_with_outcome` (PURE adds its
    verifiable reward at EOS and takes a reverse cumsum, i.e. this case).
    Rows without steps drop x.
    """
    p_NxS = _masked(p_NxS, step_mask_NxS)
    is_last_NxS = step_mask_NxS & ~jnp.pad(step_mask_NxS[:, 1:], ((0, 0), (0, 1)))
    return p_NxS + jnp.where(is_last_NxS, x_N[:, None], 0)


def combine_with_outcome(
    process_adv_NxT, outcome_adv_N, m_NxT, process_weight=1.0, outcome_weight=1.0
):
    """w_p * process advantage + w_o * sequence advantage on every response token.

    Args:
        process_adv_NxT: token advantages from step credit.
        outcome_adv_N: sequence advantages, e.g. `leave_one_out(solved - 1, G)`.
        m_NxT: response mask.
        process_weight: w_p.
        outcome_weight: w_o.

    Returns:
        adv_NxT, 0 off the mask.
    """
    process_NxT = jnp.where(m_NxT > 0, _as_float(process_adv_NxT), 0)
    outcome_NxT = advantages.token_advantages(_as_float(outcome_adv_N), m_NxT)
    return process_weight * process_NxT + outcome_weight * outcome_NxT


def implicit_process_rewards(lp_phi_NxT, lp_ref_NxT, m_NxT, beta=0.05):
    """PRIME's implicit PRM token rewards r_t = beta (lp_phi - lp_ref), 0 off the mask."""
    if not jnp.shape(lp_phi_NxT) == jnp.shape(lp_ref_NxT) == jnp.shape(m_NxT):
        raise ValueError(
            f"lp_phi {jnp.shape(lp_phi_NxT)}, lp_ref {jnp.shape(lp_ref_NxT)} and mask "
            f"{jnp.shape(m_NxT)} must all be [N, T]."
        )
    return jnp.where(m_NxT > 0, beta * (lp_phi_NxT - lp_ref_NxT), 0)


def implicit_prm_bce_loss(lp_phi_NxT, lp_ref_NxT, m_NxT, labels_N, beta=0.05):
    """Outcome loss of the implicit PRM: BCE(sigmoid(beta sum_t m (lp_phi - lp_ref)), label).

    Args:
        lp_phi_NxT: token log-probs under the PRM being trained (gradients flow here).
        lp_ref_NxT: token log-probs under the frozen reference.
        m_NxT: response mask.
        labels_N: outcome labels in [0, 1] (1 = correct).
        beta: the implicit reward scale beta_p.

    Returns:
        (numerator, denominator): the summed BCE over rows and the row count;
        sum both over microbatches before dividing.
    """
    z_N = jnp.sum(implicit_process_rewards(lp_phi_NxT, lp_ref_NxT, m_NxT, beta), axis=1)
    labels_N = _as_float(labels_N)
    bce_N = -labels_N * jax.nn.log_sigmoid(z_N) - (1 - labels_N) * jax.nn.log_sigmoid(-z_N)
    return jnp.sum(bce_N), jnp.asarray(bce_N.shape[0], bce_N.dtype)


def prime_advantages(
    token_rewards_NxT,
    outcome_N,
    m_NxT,
    group_size,
    gamma=1.0,
    process_weight=1.0,
    outcome_weight=1.0,
):
    """PRIME advantages: leave-one-out per reward source, then reverse cumsum over tokens.

    A_t^i = sum_{t' >= t} gamma^(t' - t) [w_p (r_t'^i - (1/(G-1)) sum_{j != i} mean_t r^j)]
            + gamma^(last - t) w_o (o^i - (1/(G-1)) sum_{j != i} o^j),
    i.e. the outcome enters at the last response token. verl's PRIME then
    whitens A over the batch (`masks.masked_whiten`), left to the caller.

    Args:
        token_rewards_NxT: implicit process rewards (`implicit_process_rewards`).
        outcome_N: outcome rewards (e.g. verifier accuracy).
        m_NxT: response mask.
        group_size: G.
        gamma: token-level discount (PRIME uses 1).
        process_weight: w_p.
        outcome_weight: w_o.

    Returns:
        adv_NxT, 0 off the mask.
    """
    if jnp.shape(token_rewards_NxT) != jnp.shape(m_NxT) or jnp.ndim(m_NxT) != 2:
        raise ValueError(
            f"token_rewards_NxT {jnp.shape(token_rewards_NxT)} and m_NxT {jnp.shape(m_NxT)} must "
            "both be [N, T]."
        )
    process_NxT = subtract_loo_mean(token_rewards_NxT, m_NxT, group_size)
    outcome_NxT = jnp.where(
        steps.last_token_mask(m_NxT), leave_one_out(_as_float(outcome_N), group_size)[:, None], 0
    )
    rewards_NxT = process_weight * process_NxT + outcome_weight * outcome_NxT
    adv_NxT, _ = gae.gae(rewards_NxT, jnp.zeros_like(rewards_NxT), m_NxT, gamma, 1.0)
    return adv_NxT
