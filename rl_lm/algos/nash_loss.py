"""Nash learning for language models: the losses of approximate Nash-MP, Nash-MD, online IPO.

Notation: a prompt x, a response y ~ pi_theta
with tokens y_1..y_T under the mask m, lp_t = log pi_theta(y_t | x, y_<t), and
lp_ref, lp_k the same tokens' log-probs under the reference and the anchor
pi_k. P = P(y > y' | x) against an opponent's response y'.

Nash-MP's proximal step (Tiapkin et al. 2025), multiplied by beta (which
leaves its minimizer unchanged and puts the preference term on the scale of
Nash-MD's), minimizes over theta

    L(theta) = E_{y ~ pi_theta, y' ~ opp}[-(P(y > y') - 1/2)]
               + beta KL(pi_theta || ref) + (beta / eta) KL(pi_theta || pi_k),

the opponent being pi_k in the half step and pi_{k+1/2} in the full step.

The gradient estimators. Every term is an expectation under pi_theta, the
distribution being differentiated: grad E_pi[f(y)] = E_pi[f(y) grad log pi(y)]
+ E_pi[grad f(y)]. For the preference term f does not depend on theta; it
acts as a sequence-level reward, -(P - 1/2) multiplying every grad lp_t (the
1/2, like any baseline b_t independent of y_>=t, has zero expected gradient).
For the KL terms, two estimators (nash.kl_estimator):

- "exact" (default): by the chain rule KL(pi || q) = E_pi[sum_t KL_t(y_<t)],
  KL_t the exact KL between the next-token distributions over the vocabulary
  after the prefix y_<t. Its gradient has a pathwise part, sum_t grad KL_t at
  the visited prefixes, and a score part: KL_t' depends on y_<t' only, and
  E[grad lp_t | y_<t] = 0, so grad lp_t is multiplied by the strictly later
  KLs, sum_{t' > t} KL_t'. The pathwise part moves the policy toward q at
  every visited prefix without sampling noise.
- "sampled": f = log pi - log q, whose own gradient has E_pi[grad log pi] = 0,
  so grad KL(pi || q) = E_pi[(log pi(y) - log q(y)) grad log pi(y)]; by the
  same causality grad lp_t takes the cost-to-go sum_{t' >= t} (lp_t' - lq_t').
  Only log-probs of the sampled tokens are needed, but in a large vocabulary
  the signal is weak: it moves q's likely tokens only through the
  normalization of the sampled ones.

With costs c_t = beta KL_t(ref) + (beta / eta) KL_t(pi_k) (or the sampled
log-ratios), the loss is the surrogate

    sg(w) [sum_t m_t lp_t sg(A_t - b_t) + sum_t m_t c_t (exact only, with gradient)],
    A_t = -(P - 1/2) + later costs,

for y drawn from a sampling policy pi_old, w = pi_theta(y) / pi_old(y) (1 on
fresh samples): E_old[w g] = E_theta[g], so the expected gradient is grad L
exactly, also after the policy has moved away from its samples.
tests/algos/test_nash.py checks both estimators on a 3-token vocabulary and
3-token responses by enumerating all 15 sequences: the probability-weighted
sum of per-sequence loss gradients equals the gradient of L in closed form.
The exact KLs need the next-token distributions of the frozen models too:
the loss runs their trunks and computes all three output projections one
time chunk at a time (`token_kls`), never holding [N, T, V] logits.

Nash-MD (Munos et al. 2024) for language models: the opponent samples from
the token-level geometric mixture log_softmax((1 - a) z_pi + a z_ref),
a = eta beta (the sampler's mix_params / mix_coef), and the loss is the same
with only the reference KL. The sampled-token form beta sum_t sg(lp_t - lp_ref_t) lp_t
keeps only the t' = t term of the cost-to-go, which biases the KL gradient
(tested); the estimators here do not.

Online IPO (Calandriello et al. 2024): pairs (a, b) of self-play samples
from sg(pi), h = log(pi/ref)(a) - log(pi/ref)(b) summed over tokens, and the
IPO loss averaged over the label a > b ~ Bernoulli(P):
P (h - 1/(2 beta))^2 + (1 - P)(h + 1/(2 beta))^2 = (h - (P - 1/2)/beta)^2 + const.
Its fixed point is pi*_beta as well. No score-function term: the samples are
treated as data.

Every loss returns (numerator, denominator) sums over rows, the denominator
the number of rows (sequences or pairs).
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
from rl_lm.models.transformer import Params, forward, output_embedding
from rl_lm.sampling.logprobs import response_logprobs

ALGOS = ("nash_mp", "nash_md", "online_ipo")
KL_ESTIMATORS = ("exact", "sampled")
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
            # "exact": per-token KLs over the vocabulary (pathwise) plus a score-function
            # cost-to-go; "sampled": summed log-ratios of the sampled tokens, score only.
            "kl_estimator": "exact",
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
    if cfg.kl_estimator not in KL_ESTIMATORS:
        problems.append(f"nash.kl_estimator={cfg.kl_estimator!r} is not one of {KL_ESTIMATORS}")
    if cfg.max_new_tokens < 1 or cfg.logprob_chunk < 1 or cfg.num_microbatches < 1:
        problems.append("nash.max_new_tokens, logprob_chunk and num_microbatches must be >= 1")
    if problems:
        raise ValueError("Invalid nash config: " + "; ".join(problems) + ".")


def score_function_surrogate(
    lp_NxT: jax.Array,
    m_NxT: jax.Array,
    reward_N: jax.Array,
    cost_NxT: jax.Array,
    baseline_NxT: jax.Array | float = 0.0,
) -> jax.Array:
    """Per-sequence surrogate sum_t m_t lp_t sg(A_t - b_t), [N].

    A_t = -reward + sum_{t' >= t} m_t' cost_t'. With y ~ pi (the parameters lp
    is differentiated at), its expected gradient is grad E_pi[-reward(y)] plus,
    for cost_t = lp_t - lq_t, grad KL(pi || q) (see the module docstring),
    whatever the baseline b_t, as long as b_t does not depend on y_>=t.
    """
    togo_NxT = sum_form_returns(jax.lax.stop_gradient(cost_NxT), m_NxT)
    adv_NxT = jax.lax.stop_gradient(-reward_N[:, None] + togo_NxT - baseline_NxT)
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


def _response_hidden(params, model_cfg, batch):
    """Hidden states predicting each response token, [N, R, D] (as in `response_logprobs`)."""
    p, r = batch["prompt"].shape[1], batch["response"].shape[1]
    tokens_NxT = jnp.concatenate([batch["prompt"], batch["response"]], axis=1)
    mask_NxT = jnp.concatenate([batch["prompt_mask"], batch["mask"]], axis=1).astype(jnp.bool_)
    hidden_NxTxD, _ = forward(params, tokens_NxT, model_cfg, mask_NxT=mask_NxT)
    return hidden_NxTxD[:, p - 1 : p + r - 1]


def token_kls(
    params: Params, others: list[Params], batch: dict[str, jax.Array], model_cfg: ModelConfig,
    chunk_size: int = 128,
) -> tuple[jax.Array, list[jax.Array]]:  # fmt: skip
    """Response log-probs under params and exact per-token KL(pi || q) for each q in others.

    KL_t = sum_v pi(v | y_<t) (log pi(v | y_<t) - log q(v | y_<t)) at every response
    position, differentiable through params (others are held fixed). The output
    projections run one time chunk at a time under `jax.checkpoint`, so no pass
    holds more than [N, chunk, V] logits per model.

    Returns:
      (lp_NxR, [kl_NxR per q]), float32, 0 where batch["mask"] is 0.
    """
    sg = jax.lax.stop_gradient
    hiddens = [_response_hidden(params, model_cfg, batch)]
    hiddens += [sg(_response_hidden(q, model_cfg, batch)) for q in others]
    weights = [output_embedding(x, model_cfg) for x in (params, *(sg(q) for q in others))]
    n, r, _ = hiddens[0].shape
    c = min(chunk_size, r)
    num = -(-r // c)
    chunked = lambda x: jnp.pad(x, ((0, 0), (0, num * c - r)) + ((0, 0),) * (x.ndim - 2))
    to_chunks = lambda x: chunked(x).reshape(n, num, c, *x.shape[2:]).swapaxes(0, 1)
    y_CxNxc = to_chunks(batch["response"])

    @jax.checkpoint
    def chunk(weights, hs, y_Nxc):
        logps = [
            jax.nn.log_softmax(
                jnp.einsum("ncd,dv->ncv", h, w.astype(h.dtype), preferred_element_type=jnp.float32),
                axis=-1,
            )
            for h, w in zip(hs, weights, strict=True)
        ]
        lp_Nxc = jnp.take_along_axis(logps[0], y_Nxc[..., None], axis=-1)[..., 0]
        p_NxcxV = jnp.exp(logps[0])
        return lp_Nxc, [jnp.sum(p_NxcxV * (logps[0] - lq), axis=-1) for lq in logps[1:]]

    _, (lp, kls) = jax.lax.scan(
        lambda _, xs: (None, chunk(weights, xs[0], xs[1])),
        None,
        ([to_chunks(h) for h in hiddens], y_CxNxc),
    )
    m_NxR = batch["mask"].astype(jnp.bool_)
    unchunk = lambda x: jnp.where(m_NxR, x.swapaxes(0, 1).reshape(n, num * c)[:, :r], 0.0)
    return unchunk(lp), [unchunk(k) for k in kls]


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


def leave_one_out_baseline(x: jax.Array, group_size: int) -> jax.Array:
    """b_i = mean of x over the other rows of row i's group (G consecutive rows); 0 if G = 1.

    Independent of row i's own sample, so subtracting it leaves the estimator
    unbiased. x is [N] or [N, T] (then per token).
    """
    if group_size == 1:
        return jnp.zeros_like(x)
    x_BxG = x.reshape(-1, group_size, *x.shape[1:])
    return ((x_BxG.sum(axis=1, keepdims=True) - x_BxG) / (group_size - 1)).reshape(x.shape)


def advantage_baseline(
    batch: dict[str, jax.Array], cfg: Any, anchor_coef: float, group_size: int
) -> jax.Array:
    """Per-token baselines [N, T]: leave-one-out means of the group's advantages A_t.

    A_t = -(P - 1/2) + sum_{t' >= t} c_t' with the sampled log-ratio costs at
    the sampling policy ("lp_old"). A baseline for token t removes most of the
    variance of its cost-to-go, which shrinks with t.
    """
    cost_NxT, _, _ = sequence_costs(batch, batch["lp_old"], cfg, anchor_coef)
    adv_NxT = sum_form_returns(cost_NxT, batch["mask"]) - (batch["pref"] - 0.5)[:, None]
    return leave_one_out_baseline(adv_NxT, group_size) * batch["mask"]


def policy_gradient_loss(
    params: Params,
    batch: dict[str, jax.Array],
    model_cfg: ModelConfig,
    cfg: Any,
    anchor_coef: float,
    frozen: dict[str, Params] | None = None,
) -> tuple[Sums, dict[str, Sums]]:
    """The Nash-MP (anchor_coef = 1/eta) and Nash-MD (anchor_coef = 0) loss of sampled rows.

    The rows are samples of the policy at "lp_old" (the parameters that drew
    them, possibly older than `params`): each row's surrogate is weighted by
    the sequence importance ratio w = pi(y) / pi_old(y) (without gradient),
    which keeps the expected gradient exact after the policy moves. "baseline"
    (e.g. `advantage_baseline`) is subtracted from each token's advantage.

    With cfg.kl_estimator = "exact" the KL terms are the per-token KLs over the
    vocabulary, KL(pi || q) = E_pi[sum_t KL_t(y_<t)], differentiated pathwise at
    every visited prefix, plus the score-function term for their dependence on
    the prefix: grad lp_t times the strictly later KL_t'. With "sampled" they are
    the summed log-ratios lp_t - lq_t as costs-to-go (module docstring).

    Args:
      params: policy parameters.
      batch: "prompt", "prompt_mask" [N, P] (repeated per row), "response",
        "mask" [N, R], "pref" [N] = P(y > y'), "lp_ref" [N, R], "lp_old" [N, R]
        (log-probs under the sampling policy), "baseline" [N, R] and, when
        anchor_coef > 0, "lp_anchor" [N, R].
      model_cfg: the policy's model config.
      cfg: the `nash` section (beta, kl_estimator, logprob_chunk).
      anchor_coef: weight of KL(pi || pi_k) relative to KL(pi || ref).
      frozen: {"ref_params", and "anchor_params" when anchor_coef > 0}, needed
        by the exact estimator.

    Returns:
      ((sum of weighted row surrogates, rows), metrics): "preference" (P
      against the opponent), "kl_ref" and, with an anchor, "kl_anchor" (the
      sequence-KL estimates), "objective" (-(P - 1/2) plus the KL costs), all
      importance-weighted, and "weight" (the mean ratio, 1 in expectation),
      each a (sum, rows) pair.
    """
    m_NxT = batch["mask"].astype(jnp.float32)
    seq = lambda x: masked_sum(x, m_NxT, axis=1)
    reward_N, baseline_NxT = batch["pref"] - 0.5, batch["baseline"]
    if cfg.kl_estimator == "exact":
        if frozen is None:
            raise ValueError("the exact KL estimator needs frozen={'ref_params', ...}.")
        keys = ("ref_params", "anchor_params") if anchor_coef else ("ref_params",)
        lp_NxT, kls = token_kls(
            params, [frozen[k] for k in keys], batch, model_cfg, cfg.logprob_chunk
        )
        kl_NxT = cfg.beta * (kls[0] + (anchor_coef * kls[1] if anchor_coef else 0.0))
        cost_NxT = jax.lax.stop_gradient(kl_NxT)
        # The score-function term takes the strictly later KLs (KL_t' depends on
        # y_<t', so grad lp_t correlates with KL_t' only for t' > t): costs shifted
        # one token left. The pathwise term is the KLs themselves.
        next_NxT = jnp.concatenate([cost_NxT[:, 1:], jnp.zeros_like(cost_NxT[:, :1])], axis=1)
        surrogate_N = score_function_surrogate(
            lp_NxT, m_NxT, reward_N, next_NxT, baseline_NxT
        ) + seq(kl_NxT)
        sums = {"kl_ref": seq(jax.lax.stop_gradient(kls[0]))}
        if anchor_coef:
            sums["kl_anchor"] = seq(jax.lax.stop_gradient(kls[1]))
        value_N = seq(cost_NxT) - (batch["pref"] - 0.5)
    else:
        lp_NxT = _policy_logprobs(params, batch, model_cfg, cfg)
        cost_NxT, value_N, sums = sequence_costs(
            batch, jax.lax.stop_gradient(lp_NxT), cfg, anchor_coef
        )
        surrogate_N = score_function_surrogate(lp_NxT, m_NxT, reward_N, cost_NxT, baseline_NxT)
    lp_sg = jax.lax.stop_gradient(lp_NxT)
    w_N = jnp.exp(masked_sum(lp_sg - batch["lp_old"], m_NxT, axis=1))
    surrogate_N = w_N * surrogate_N
    sums.update(preference=batch["pref"], objective=value_N)
    rows = jnp.asarray(surrogate_N.shape[0], jnp.float32)
    metrics = {k: (jnp.sum(w_N * v), rows) for k, v in sums.items()}
    metrics["weight"] = (jnp.sum(w_N), rows)
    return (jnp.sum(surrogate_N), rows), metrics


def nash_mp_loss(params, batch, model_cfg, cfg, frozen=None):
    """Approximate Nash-MP's proximal-step loss (see `policy_gradient_loss`)."""
    return policy_gradient_loss(params, batch, model_cfg, cfg, 1.0 / cfg.eta, frozen)


def nash_md_loss(params, batch, model_cfg, cfg, frozen=None):
    """Nash-MD's loss, opponents from the geometric mixture (see `policy_gradient_loss`)."""
    return policy_gradient_loss(params, batch, model_cfg, cfg, 0.0, frozen)


def online_ipo_loss(
    params: Params,
    batch: dict[str, jax.Array],
    model_cfg: ModelConfig,
    cfg: Any,
    frozen: dict[str, Params] | None = None,
) -> tuple[Sums, dict[str, Sums]]:
    """Online IPO on self-play pairs, averaged over the label drawn from P.

    Args:
      params: policy parameters.
      batch: "prompt", "prompt_mask" [M, P] (one per pair), "a", "a_mask",
        "b", "b_mask" [M, R], "pref" [M] = P(a > b), "lp_ref_a", "lp_ref_b" [M]
        (the reference's summed response log-probs).
      model_cfg: the policy's model config.
      cfg: the `nash` section (beta, logprob_chunk).
      frozen: unused (the reference log-probs come in the batch).

    Returns:
      ((sum of pair losses, pairs), metrics): "preference" (P(a > b)), "h"
      (the log-ratio margin) and "kl_ref" (mean summed log(pi / ref) of both
      responses, an estimate of KL(pi || ref) at sg(pi) = pi), each (sum, pairs).
    """
    del frozen
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
