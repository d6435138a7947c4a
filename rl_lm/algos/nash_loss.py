"""Nash learning for language models: the losses of approximate Nash-MP, Nash-MD, online IPO.

Notation (DESIGN.md sections 4 and 6): a prompt x, a response y ~ pi_theta
with tokens y_1..y_T under the mask m, lp_t = log pi_theta(y_t | x, y_<t), and
lp_ref, lp_k the same tokens' log-probs under the reference and the anchor
pi_k. P = P(y > y' | x) against an opponent's response y'.

Nash-MP's proximal step (Tiapkin et al. 2025), multiplied by beta (which
leaves its minimizer unchanged and puts the preference term on the scale of
Nash-MD's), minimizes over theta

    L(theta) = E_{y ~ pi_theta, y' ~ opp}[-(P(y > y') - 1/2)]
               + beta KL(pi_theta || ref) + (beta / eta) KL(pi_theta || pi_k),

the opponent being pi_k in the half step and pi_{k+1/2} in the full step.

The gradient estimator. Every term is an expectation under pi_theta, the
distribution being differentiated, so the score function carries the
gradient: grad E_pi[f(y)] = E_pi[f(y) grad log pi(y)] + E_pi[grad f(y)]. For
the preference term f does not depend on theta. For KL(pi || q),
f = log pi - log q and its own gradient has E_pi[grad log pi(y)] = 0, so

    grad KL(pi || q) = E_pi[(log pi(y) - log q(y)) grad log pi(y)].

Causality removes most of its variance: the log-ratio of token t' depends on
y_<=t' only, and E[grad lp_t | y_<t] = 0, so tokens after t' do not
correlate with it. With the per-token cost
c_t = beta (lp_t - lp_ref_t) + (beta / eta)(lp_t - lp_k_t),

    grad L = E_pi[sum_t grad lp_t * A_t],   A_t = -(P - 1/2) + sum_{t' >= t} c_t',

the preference acting as a sequence-level reward (1/2 is a baseline: any
quantity independent of y, such as a leave-one-out mean over the prompt's
other samples, has zero expected gradient) and the KLs as costs-to-go. The
loss is the surrogate sg(w) sum_t m_t lp_t sg(A_t - b) for a y drawn from a
sampling policy pi_old, with w = pi_theta(y) / pi_old(y) (1 on fresh
samples): E_old[w g] = E_theta[g], so its expected gradient is grad L
exactly, also after the policy has moved away from the samples.
tests/algos/test_nash.py checks that on a 3-token vocabulary and 3-token
responses by enumerating all 15 sequences: the probability-weighted sum of
per-sequence surrogate gradients equals the gradient of L computed in closed
form. (An exact per-token KL over the vocabulary would lower the variance
further but needs the full [N, T, V] logits of three models.)

Nash-MD (Munos et al. 2024) for language models: the opponent samples from
the token-level geometric mixture log_softmax((1 - a) z_pi + a z_ref),
a = eta beta (the sampler's mix_params / mix_coef), and the loss is the same
estimator with c_t = beta (lp_t - lp_ref_t). DESIGN.md's form
beta sum_t sg(lp_t - lp_ref_t) lp_t keeps only the t' = t term of the
cost-to-go, which biases the KL gradient; the cost-to-go here does not.

Online IPO (Calandriello et al. 2024): pairs (a, b) of self-play samples
from sg(pi), h = log(pi/ref)(a) - log(pi/ref)(b) summed over tokens, and the
IPO loss averaged over the label a > b ~ Bernoulli(P):
P (h - 1/(2 beta))^2 + (1 - P)(h + 1/(2 beta))^2 = (h - (P - 1/2)/beta)^2 + const.
Its fixed point is pi*_beta as well. No score-function term: the samples are
treated as data.

Every loss returns (numerator, denominator) sums over rows (DESIGN.md
section 5), the denominator the number of rows (sequences or pairs).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rl_lm.algos import dpo_loss
from rl_lm.core.credit import sum_form_returns
from rl_lm.core.masks import masked_sum
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params
from rl_lm.sampling.logprobs import response_logprobs

ALGOS = ("nash_mp", "nash_md", "online_ipo")
Sums = tuple[jax.Array, jax.Array]


def default_config() -> ml_collections.ConfigDict:
    """The `nash` section shared by nash_mp, nash_md and online_ipo."""
    return ml_collections.ConfigDict(
        {
            "beta": 0.1,  # KL(pi || ref) regularization of the game J_beta
            # nash_mp: proximal step size (KL(pi || pi_k) / eta); nash_md: the
            # opponent's mixture weight on ref is eta * beta; online_ipo: unused.
            "eta": 0.5,
            "num_inner_steps": 4,  # nash_mp: M optimizer steps per half step
            # nash_mp: fresh rollouts per half step, each reused for M / inner_rollouts
            # steps (importance-weighted); inner_rollouts = M resamples at every step.
            "inner_rollouts": 1,
            # nash_mp: restart the optimizer state with every half step. Adam's first
            # steps from a fresh state move every weight by about lr whatever the
            # gradient, so by default its moment estimates carry over (the
            # parameters still restart from theta_k).
            "reset_optimizer": False,
            # nash_mp: scale the learning rate by a cosine from 1 to 0 over the M steps
            # of every half step, so that each proximal problem is solved to its end.
            "inner_decay": True,
            "anchor_ema": 0.0,  # nash_mp: anchor <- ema anchor + (1 - ema) theta_{k+1}
            "num_generations": 8,  # G samples per prompt (online_ipo: G/2 pairs)
            "max_new_tokens": 16,
            "preference": "intransitive",  # a programmatic judge (rewards.preference_model)
            "logprob_chunk": 128,  # time chunk of the output projection
            "num_microbatches": 1,
        }
    )


def validate(cfg: Any, algo: str) -> None:
    """Fails early, naming the field, on an inconsistent `nash` section."""
    problems = []
    if algo not in ALGOS:
        problems.append(f"algo={algo!r} is not one of {ALGOS}")
    if not cfg.beta > 0:
        problems.append(f"nash.beta={cfg.beta} must be > 0")
    if not cfg.eta > 0:
        problems.append(f"nash.eta={cfg.eta} must be > 0")
    if algo == "nash_md" and cfg.eta * cfg.beta > 1:
        problems.append(
            f"nash_md needs nash.eta * nash.beta <= 1 (a mixture weight), got {cfg.eta * cfg.beta}"
        )
    if (
        cfg.num_inner_steps < 1
        or cfg.inner_rollouts < 1
        or cfg.num_inner_steps % cfg.inner_rollouts
    ):
        problems.append(
            f"nash.num_inner_steps={cfg.num_inner_steps} must be a positive multiple of "
            f"nash.inner_rollouts={cfg.inner_rollouts}"
        )
    if not 0 <= cfg.anchor_ema < 1:
        problems.append(f"nash.anchor_ema={cfg.anchor_ema} must be in [0, 1)")
    if cfg.num_generations < 1 or (algo == "online_ipo" and cfg.num_generations % 2):
        problems.append(
            f"nash.num_generations={cfg.num_generations} must be >= 1 (even for online_ipo, "
            "whose pairs are consecutive samples of a prompt)"
        )
    if cfg.max_new_tokens < 1 or cfg.logprob_chunk < 1 or cfg.num_microbatches < 1:
        problems.append("nash.max_new_tokens, logprob_chunk and num_microbatches must be >= 1")
    if problems:
        raise ValueError("Invalid nash config: " + "; ".join(problems) + ".")


def score_function_surrogate(
    lp_NxT: jax.Array, m_NxT: jax.Array, reward_N: jax.Array, cost_NxT: jax.Array
) -> jax.Array:
    """Per-sequence surrogate sum_t m_t lp_t sg(-reward + sum_{t' >= t} m_t' cost_t'), [N].

    With y ~ pi (the parameters lp is differentiated at), its expected gradient
    is grad E_pi[-reward(y)] plus, for cost_t = lp_t - lq_t, grad KL(pi || q)
    (see the module docstring). reward and cost enter only through sg.
    """
    togo_NxT = sum_form_returns(jax.lax.stop_gradient(cost_NxT), m_NxT)
    adv_NxT = jax.lax.stop_gradient(-reward_N[:, None] + togo_NxT)
    return masked_sum(lp_NxT * adv_NxT, m_NxT.astype(lp_NxT.dtype), axis=1)


def _policy_logprobs(params, batch, model_cfg, cfg):
    return response_logprobs(
        params,
        model_cfg,
        batch["prompt"],
        batch["prompt_mask"],
        batch["response"],
        batch["mask"],
        chunk_size=cfg.logprob_chunk,
    )


def sequence_costs(batch: dict[str, jax.Array], lp_NxT: jax.Array, cfg: Any, anchor_coef: float):
    """Per-token KL costs c_t and per-sequence values -(P - 1/2) + sum_t c_t at log-probs lp.

    Returns:
      (cost_NxT, value_N, {"kl_ref": [N], "kl_anchor": [N] when anchor_coef}),
      the KLs as summed log-ratios (unbiased sequence-KL estimates on samples of lp).
    """
    m_NxT = batch["mask"].astype(jnp.float32)
    seq = lambda x: masked_sum(x, m_NxT, axis=1)
    ratio_ref = lp_NxT - batch["lp_ref"]
    cost_NxT = cfg.beta * ratio_ref
    kls = {"kl_ref": seq(ratio_ref)}
    if anchor_coef:
        ratio_anchor = lp_NxT - batch["lp_anchor"]
        cost_NxT = cost_NxT + cfg.beta * anchor_coef * ratio_anchor
        kls["kl_anchor"] = seq(ratio_anchor)
    return cost_NxT, seq(cost_NxT) - (batch["pref"] - 0.5), kls


def leave_one_out_baseline(value_N: jax.Array, group_size: int) -> jax.Array:
    """b_i = mean of value over the other rows of row i's group (G consecutive rows); 0 if G = 1.

    Independent of row i's own sample, so subtracting it leaves the estimator unbiased.
    """
    if group_size == 1:
        return jnp.zeros_like(value_N)
    v_BxG = value_N.reshape(-1, group_size)
    return ((v_BxG.sum(axis=1, keepdims=True) - v_BxG) / (group_size - 1)).reshape(-1)


def policy_gradient_loss(
    params: Params,
    batch: dict[str, jax.Array],
    model_cfg: ModelConfig,
    cfg: Any,
    anchor_coef: float,
) -> tuple[Sums, dict[str, Sums]]:
    """The Nash-MP (anchor_coef = 1/eta) and Nash-MD (anchor_coef = 0) loss of sampled rows.

    The rows are samples of the policy at "lp_old" (the parameters that drew
    them, possibly older than `params`): each row's surrogate is weighted by
    the sequence importance ratio w = pi(y) / pi_old(y) (without gradient),
    which keeps the expected gradient exact after the policy moves. "baseline"
    (e.g. `leave_one_out_baseline`) is subtracted from every token's advantage.

    Args:
      params: policy parameters.
      batch: "prompt", "prompt_mask" [N, P] (repeated per row), "response",
        "mask" [N, R], "pref" [N] = P(y > y'), "lp_ref" [N, R], "lp_old" [N, R]
        (log-probs under the sampling policy), "baseline" [N] and, when
        anchor_coef > 0, "lp_anchor" [N, R].
      model_cfg: the policy's model config.
      cfg: the `nash` section (beta, logprob_chunk).
      anchor_coef: weight of KL(pi || pi_k) relative to KL(pi || ref).

    Returns:
      ((sum of weighted row surrogates, rows), metrics): "preference" (P
      against the opponent), "kl_ref" and, with an anchor, "kl_anchor" (summed
      log-ratios), "objective" (-(P - 1/2) plus the KL costs), all
      importance-weighted, and "weight" (the mean ratio, 1 in expectation),
      each a (sum, rows) pair.
    """
    lp_NxT = _policy_logprobs(params, batch, model_cfg, cfg)
    m_NxT = batch["mask"].astype(jnp.float32)
    lp_sg = jax.lax.stop_gradient(lp_NxT)
    cost_NxT, value_N, sums = sequence_costs(batch, lp_sg, cfg, anchor_coef)
    w_N = jnp.exp(masked_sum(lp_sg - batch["lp_old"], m_NxT, axis=1))
    reward_N = batch["pref"] - 0.5 + batch["baseline"]
    surrogate_N = w_N * score_function_surrogate(lp_NxT, m_NxT, reward_N, cost_NxT)
    sums.update(preference=batch["pref"], objective=value_N)
    rows = jnp.asarray(surrogate_N.shape[0], jnp.float32)
    metrics = {k: (jnp.sum(w_N * v), rows) for k, v in sums.items()}
    metrics["weight"] = (jnp.sum(w_N), rows)
    return (jnp.sum(surrogate_N), rows), metrics


def nash_mp_loss(params, batch, model_cfg, cfg):
    """Approximate Nash-MP's proximal-step loss (see `policy_gradient_loss`)."""
    return policy_gradient_loss(params, batch, model_cfg, cfg, anchor_coef=1.0 / cfg.eta)


def nash_md_loss(params, batch, model_cfg, cfg):
    """Nash-MD's loss, opponents from the geometric mixture (see `policy_gradient_loss`)."""
    return policy_gradient_loss(params, batch, model_cfg, cfg, anchor_coef=0.0)


def online_ipo_loss(
    params: Params, batch: dict[str, jax.Array], model_cfg: ModelConfig, cfg: Any
) -> tuple[Sums, dict[str, Sums]]:
    """Online IPO on self-play pairs, averaged over the label drawn from P.

    Args:
      params: policy parameters.
      batch: "prompt", "prompt_mask" [M, P] (one per pair), "a", "a_mask",
        "b", "b_mask" [M, R], "pref" [M] = P(a > b), "lp_ref_a", "lp_ref_b" [M]
        (the reference's summed response log-probs).
      model_cfg: the policy's model config.
      cfg: the `nash` section (beta, logprob_chunk).

    Returns:
      ((sum of pair losses, pairs), metrics): "preference" (P(a > b)), "h"
      (the log-ratio margin) and "kl_ref" (mean summed log(pi / ref) of both
      responses, an estimate of KL(pi || ref) at sg(pi) = pi), each (sum, pairs).
    """
    m = batch["a"].shape[0]
    both = {
        "prompt": jnp.concatenate([batch["prompt"], batch["prompt"]]),
        "prompt_mask": jnp.concatenate([batch["prompt_mask"], batch["prompt_mask"]]),
        "response": jnp.concatenate([batch["a"], batch["b"]]),
        "mask": jnp.concatenate([batch["a_mask"], batch["b_mask"]]),
    }
    lp_2M = masked_sum(
        _policy_logprobs(params, both, model_cfg, cfg), both["mask"].astype(jnp.float32), axis=1
    )
    ratio_a, ratio_b = lp_2M[:m] - batch["lp_ref_a"], lp_2M[m:] - batch["lp_ref_b"]
    h_M = ratio_a - ratio_b
    p_M = batch["pref"]
    ipo = lambda h: dpo_loss.preference_loss(h, "ipo", cfg.beta)
    loss_M = p_M * ipo(h_M) + (1.0 - p_M) * ipo(-h_M)
    pairs = jnp.asarray(m, jnp.float32)
    sg = jax.lax.stop_gradient
    metrics = {
        "preference": (jnp.sum(p_M), pairs),
        "h": (jnp.sum(sg(h_M)), pairs),
        "kl_ref": (0.5 * jnp.sum(sg(ratio_a + ratio_b)), pairs),
    }
    return (jnp.sum(loss_M), pairs), metrics


LOSSES = {"nash_mp": nash_mp_loss, "nash_md": nash_md_loss, "online_ipo": online_ipo_loss}
