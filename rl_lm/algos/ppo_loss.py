"""PPO's loss and rollout targets for language models.

InstructGPT-style PPO: the token reward is -beta * KL_t to the reference, plus
the sequence score on the last response token; GAE turns rewards and the
critic's values into advantages and returns (`rollout_targets`); the loss is
the clipped policy surrogate plus vf_coef times the clipped value loss minus
ent_coef times the entropy, aggregated under the response mask (`loss_fn`).
The critic is a scalar head on the policy trunk or a separate scalar-head
model. The on-policy loop that feeds these lives in `rl_lm.algos.ppo`.

Process rewards (the `ppo.process` section, `process_rewards.default_config`
with PPO's defaults) add step rewards on step ends (`process_token_rewards`):
r_s = 2 p_s - 1, transformed, credit form G_s, then r'_s = G_s - G_{s+1} on
step s's last token, so the undiscounted token return from step s on is
exactly G_s (`credit.step_end_rewards`). The token reward becomes
    r_t = -beta KL_t + outcome_weight * score [last token] + process_weight * r'_t,
where the score is normalized and clipped as without process rewards and r'
is neither: r in [-1, 1] is bounded already, and centering r' by a constant c
would add c times the number of remaining steps to every return, paying (or
charging) for step count, the very hack min-form credit removes. With
reward.normalize="batch" the score has unit spread and a min-form G lies in
[-1, 1], so the two weights compare like with like. Whitening (when on) acts
on the advantages of the sum, as without process rewards. The critic is the
baseline, so the group baselines of GRPO do not apply.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rl_lm.algos import episodes, ppo_episodes, process_advantages, process_rewards, rm_rewards
from rl_lm.core import aggregation, credit, gae, kl, losses, masks
from rl_lm.core import steps as core_steps
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params, forward, scalar
from rl_lm.rewards import steps as step_checkers
from rl_lm.sampling.logprobs import hidden_logprobs

CRITICS = ("value_head", "separate")
REWARD_SOURCES = rm_rewards.SOURCES
REWARD_NORMALIZATIONS = ("none", "batch", "running")
# Step scores PPO can turn into step rewards: a checker's or a frozen PRM's.
PROCESS_SOURCES = ("none", *step_checkers.CHECKERS, "prm")

sg = jax.lax.stop_gradient


def default_process_config() -> ml_collections.ConfigDict:
    """The `ppo.process` section: GRPO's with no group baseline and the score at full weight."""
    cfg = process_rewards.default_config()
    cfg.update(baseline="none", outcome_weight=1.0)
    return cfg


def default_config() -> ml_collections.ConfigDict:
    """PPO hyperparameters; InstructGPT / lm-human-preferences values where they exist."""
    config = ml_collections.ConfigDict(
        {
            "num_generations": 4,  # samples per prompt; rows = data.batch_size * this
            "max_new_tokens": 16,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "gamma": 1.0,
            "lam": 0.95,
            "clip_eps": 0.2,
            "value_clip_eps": 0.2,
            "vf_coef": 0.1,
            "ent_coef": 0.0,
            "aggregation": "token-mean",  # see core.aggregation
            "whiten_advantages": True,
            "kl": {
                "coef": 0.05,  # beta, the initial one when adaptive
                "estimator": "k1",  # per-token KL in the reward: k1 | k2 | k3
                "adaptive": False,  # Ziegler et al. 2019 controller
                "target": 6.0,  # target sequence KL (nats) of the controller
                "horizon": 10000,  # controller horizon, in samples
            },
            "reward": {
                "source": "reward_model",  # reward_model | verifiable | both (their sum)
                "verifiable": {"exact_match": 1.0},  # weights of rl_lm.rewards.verifiable
                "normalize": "none",  # none | batch | running (statistics in the state)
                "clip": 0.0,  # |score| <= clip after normalization; 0 disables
                "eps": 1e-8,
            },
            "critic": "value_head",  # value_head (on the policy trunk) | separate
            "num_epochs": 4,  # passes over each rollout with lp_old fixed
            "num_minibatches": 1,  # optimizer steps per epoch
            "num_microbatches": 1,  # gradient accumulation inside a minibatch
            "logprob_chunk": 64,
        }
    )
    config.process = default_process_config()  # off: source="none"
    # Multi-turn tool episodes (rl_lm.algos.ppo_episodes); name "" = single-turn.
    config.env = episodes.default_config()
    config.reward_sources = ""  # "name=weight,..." (rl_lm.algos.source_spec); "" = reward
    return config


def validate(cfg: Any) -> None:
    """Fails early, naming the field and the fix, on an inconsistent PPO config."""
    problems = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    check(cfg.critic in CRITICS, f"ppo.critic={cfg.critic!r} must be one of {CRITICS}")
    check(
        cfg.reward.source in REWARD_SOURCES,
        f"ppo.reward.source={cfg.reward.source!r} must be one of {REWARD_SOURCES}",
    )
    check(
        cfg.reward.normalize in REWARD_NORMALIZATIONS,
        f"ppo.reward.normalize={cfg.reward.normalize!r} must be one of {REWARD_NORMALIZATIONS}",
    )
    check(cfg.reward.clip >= 0, f"ppo.reward.clip={cfg.reward.clip} must be >= 0 (0 disables)")
    check(
        cfg.kl.estimator in kl.KL_ESTIMATORS,
        f"ppo.kl.estimator={cfg.kl.estimator!r} must be one of {sorted(kl.KL_ESTIMATORS)}",
    )
    check(cfg.kl.coef >= 0, f"ppo.kl.coef={cfg.kl.coef} must be >= 0")
    if cfg.kl.adaptive:
        check(
            cfg.kl.coef > 0,
            "ppo.kl.adaptive=True multiplies ppo.kl.coef, which must then be > 0",
        )
        check(cfg.kl.target > 0, f"ppo.kl.target={cfg.kl.target} must be > 0")
        check(cfg.kl.horizon > 0, f"ppo.kl.horizon={cfg.kl.horizon} must be > 0")
    check(
        cfg.aggregation in aggregation.AGGREGATION_MODES,
        f"ppo.aggregation={cfg.aggregation!r} must be one of {aggregation.AGGREGATION_MODES}",
    )
    for name in ("gamma", "lam"):
        check(0 <= cfg[name] <= 1, f"ppo.{name}={cfg[name]} must be in [0, 1]")
    for name in ("clip_eps", "value_clip_eps"):
        check(cfg[name] > 0, f"ppo.{name}={cfg[name]} must be > 0")
    for name in ("vf_coef", "ent_coef"):
        check(cfg[name] >= 0, f"ppo.{name}={cfg[name]} must be >= 0")
    check(
        cfg.temperature > 0,
        f"ppo.temperature={cfg.temperature} must be > 0 (PPO needs a stochastic policy)",
    )
    for name in ("num_generations", "num_epochs", "num_minibatches", "num_microbatches"):
        check(cfg[name] >= 1, f"ppo.{name}={cfg[name]} must be >= 1")
    if cfg.get("process") is not None:
        problems += process_problems(cfg.process, cfg.gamma)
    problems += ppo_episodes.problems(cfg)
    if problems:
        raise ValueError("Invalid PPO config: " + "; ".join(problems) + ".")


def process_problems(proc: Any, gamma: float) -> list[str]:
    """The problems of a `ppo.process` section under token discount `gamma` (ppo.gamma)."""
    if proc.source not in PROCESS_SOURCES:
        return [f"ppo.process.source={proc.source!r} must be one of {PROCESS_SOURCES} in PPO"]
    problems = process_rewards.validate(proc, None, section="ppo.process")
    if not process_rewards.enabled(proc):
        return problems
    if proc.baseline != "none":
        problems.append(
            f"ppo.process.baseline={proc.baseline!r}: PPO's critic is the baseline, a group "
            "baseline does not apply; set ppo.process.baseline='none'"
        )
    for name in ("process_weight", "outcome_weight"):
        if proc[name] < 0:
            problems.append(f"ppo.process.{name}={proc[name]} must be >= 0")
    # Only r' = r (sum-form, no step discount, no Delta) stays meaningful under a token
    # discount; differences of returns telescope to G_s only when summed undiscounted.
    if gamma != 1 and (proc.form != "sum" or proc.gamma != 1 or proc.transform.startswith("delta")):
        problems.append(
            f"ppo.gamma={gamma} discounts per token, which breaks the return identity of "
            f"ppo.process.form={proc.form!r} (gamma={proc.gamma}, transform={proc.transform!r}); "
            "set ppo.gamma=1 (discount steps with ppo.process.gamma under form='sum')"
        )
    return problems


def process_token_rewards(
    scores_NxS: jax.Array,
    tokens_NxT: jax.Array,
    m_NxT: jax.Array,
    *,
    form: str,
    transform: str = "none",
    gamma: float = 1.0,
    temperature: float = 0.1,
    eta: float = 0.0,
    delimiter_ids: tuple[int, ...] = (10,),
    max_steps: int = 8,
    eos_id: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Unweighted process token rewards r' [N, T]; jit with everything after `*` static.

    Args:
        scores_NxS: step scores p in [0, 1] in `segment_steps`' slots (absent
            steps are never read).
        tokens_NxT: sampled response tokens.
        m_NxT: response mask (through EOS).
        form, transform, gamma, temperature, eta: see `credit.step_returns`;
            applied to r = 2p - 1.
        delimiter_ids, max_steps, eos_id: as in `segment_steps`.

    Returns:
        (r'_NxT on step ends, 0 elsewhere: sum_{t' >= t} r'_t' = G_s on the
        tokens of step s; per-row stats: num_steps_N, overflow_N, return_N =
        G of the first step, score_sum_N and score_min_N of p, as GRPO's).
    """
    seg = core_steps.segment_steps(tokens_NxT, m_NxT, delimiter_ids, max_steps, eos_id)
    mask_NxS = seg.step_mask_NxS
    p_NxS = jnp.where(mask_NxS, scores_NxS.astype(jnp.float32), 0.0)
    r_NxT, G_NxS = credit.step_end_rewards(
        2.0 * p_NxS - 1.0, seg, form, transform, gamma, temperature, eta
    )
    return r_NxT, process_advantages.row_stats(seg, p_NxS, G_NxS[:, 0])


def response_hidden(params: Params, model_cfg: ModelConfig, batch: dict[str, jax.Array]):
    """Hidden states [N,R,D] that predict each response token (the state before it).

    The batch's prompts are per row (already repeated G times, as the sampler
    returns them); the response attends with batch["attention_mask"] where there
    is one (an episode's observations are seen, not scored), else batch["mask"].
    """
    p, r = batch["prompt"].shape[1], batch["response"].shape[1]
    tokens_NxT = jnp.concatenate([batch["prompt"], batch["response"]], axis=1)
    seen_NxR = batch.get("attention_mask", batch["mask"])
    mask_NxT = jnp.concatenate([batch["prompt_mask"], seen_NxR], axis=1)
    hidden_NxTxD, _ = forward(params, tokens_NxT, model_cfg, mask_NxT=mask_NxT.astype(bool))
    return hidden_NxTxD[:, p - 1 : p + r - 1]


def response_outputs(
    params: dict[str, Params],
    batch: dict[str, jax.Array],
    policy_cfg: ModelConfig,
    cfg: Any,
    critic_cfg: ModelConfig | None = None,
    with_entropy: bool = True,
) -> tuple[jax.Array, ...]:
    """Token log-probs, (entropies) and values of the batch's responses.

    Args:
      params: {"policy": ...} (with the value head, "score", when critic_cfg is
        None) and {"critic": ...} for a separate critic.
      batch: prompt [N,P], prompt_mask [N,P], response [N,R], mask [N,R], and
        attention_mask [N,R] for episodes (`response_hidden`).
      policy_cfg: the policy's model config.
      cfg: the `ppo` config section (temperature, logprob_chunk).
      critic_cfg: the separate critic's model config; None for a value head.
      with_entropy: also return the per-token entropy (computed chunk by chunk
        with the log-probs: no [N,R,V] array is held, see `hidden_logprobs`).

    Returns:
      (lp_NxR, entropy_NxR, values_NxR) or (lp_NxR, values_NxR), float32 and 0
      off the response mask.
    """
    on_NxR = batch["mask"] > 0
    h_NxRxD = response_hidden(params["policy"], policy_cfg, batch)
    out = hidden_logprobs(
        params["policy"],
        policy_cfg,
        h_NxRxD,
        batch["response"],
        chunk_size=cfg.logprob_chunk,
        temperature=cfg.temperature,
        with_entropy=with_entropy,
    )
    out = out if with_entropy else (out,)
    if critic_cfg is None:
        values_NxR = scalar(params["policy"], h_NxRxD)
    else:
        values_NxR = scalar(params["critic"], response_hidden(params["critic"], critic_cfg, batch))
    return tuple(jnp.where(on_NxR, x, 0.0) for x in (*out, values_NxR))


def loss_fn(
    params: dict[str, Params],
    batch: dict[str, jax.Array],
    policy_cfg: ModelConfig,
    cfg: Any,
    critic_cfg: ModelConfig | None = None,
) -> tuple[tuple[jax.Array, jax.Array], dict[str, tuple[jax.Array, jax.Array]]]:
    """PPO loss of one (micro)batch: agg(l_clip + vf_coef * l_value - ent_coef * entropy).

    Args:
      params: see `response_outputs`.
      batch: `response_outputs`'s fields plus, from the rollout, lp_old [N,R],
        values [N,R] (V_old), adv [N,R] and returns [N,R].
      policy_cfg: the policy's model config.
      cfg: the `ppo` config section.
      critic_cfg: the separate critic's model config; None for a value head.

    Returns:
      ((numerator, denominator), metrics) as `common.make_update` expects; every
      metric is a (sum over response tokens, token count) pair: pg_loss,
      vf_loss, entropy, clipfrac (policy clip active), vf_clipfrac, ratio,
      approx_kl (k3 estimate of KL(pi_old || pi)), value.
    """
    m = batch["mask"].astype(jnp.float32)
    lp, ent, values = response_outputs(params, batch, policy_cfg, cfg, critic_cfg)
    pg, ind = losses.clipped_surrogate(
        lp, batch["lp_old"], batch["adv"], cfg.clip_eps, cfg.clip_eps
    )
    vf, vind = losses.clipped_value_loss(
        values, batch["values"], batch["returns"], cfg.value_clip_eps
    )
    l = pg + cfg.vf_coef * vf - cfg.ent_coef * ent
    num = aggregation.aggregation_numerator(l, m, cfg.aggregation)
    den = aggregation.aggregation_denominator(cfg.aggregation, m, cfg.max_new_tokens)
    tokens = jnp.sum(m)
    per_token = {
        "pg_loss": pg,
        "vf_loss": vf,
        "entropy": ent,
        "clipfrac": ind["clipped_low"] + ind["clipped_high"],
        "vf_clipfrac": vind["value_clipped"],
        "ratio": ind["ratio"],
        "approx_kl": kl.k3(batch["lp_old"], lp),
        "value": values,
    }
    metrics = {k: (jnp.sum(sg(v) * m), tokens) for k, v in per_token.items()}
    return (num, den), metrics


def token_rewards(
    score_N: jax.Array, kl_NxT: jax.Array, m_NxT: jax.Array, kl_coef: jax.Array | float
) -> jax.Array:
    """r_t = -kl_coef * kl_t on response tokens, plus score_N on each row's last one.

    The last response token is the one where the running count of the mask
    reaches the row's total (so any mask shape works); a row with an empty
    mask gets no reward at all.
    """
    on = m_NxT > 0
    count = jnp.cumsum(on, axis=1)
    last = on & (count == count[:, -1:])
    return jnp.where(on, -kl_coef * kl_NxT, 0.0) + jnp.where(last, score_N[:, None], 0.0)


def rollout_targets(
    score_N: jax.Array,
    lp_NxT: jax.Array,
    lp_ref_NxT: jax.Array,
    values_NxT: jax.Array,
    m_NxT: jax.Array,
    kl_coef: jax.Array | float,
    cfg: Any,
    process_NxT: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Advantages and returns of one rollout, before any update.

    Mask-0 positions inside a response (an episode's observations) are not
    actions: their rewards and values are ignored and GAE bridges them, so the
    value at the token before an observation bootstraps from the value at the
    next action token. Advantages and returns at the action tokens equal those
    of the same rows with the observation tokens deleted.

    Args:
      score_N: sequence scores (normalized and clipped already).
      lp_NxT: log-probs of the sampled tokens under the sampling policy.
      lp_ref_NxT: the same under the reference.
      values_NxT: the critic's values at sampling time.
      m_NxT: response mask.
      kl_coef: beta.
      cfg: the `ppo` config section (kl.estimator, gamma, lam, whiten_advantages,
        and process.outcome_weight, process.process_weight with process_NxT).
      process_NxT: process token rewards (`process_token_rewards`), or None;
        with them r_t = -beta KL_t + outcome_weight * score (last token)
        + process_weight * process_t.

    Returns:
      ({"adv", "returns"} [N,T], 0 off the mask; adv whitened over the whole
      batch under the mask when cfg.whiten_advantages), and scalar statistics:
      "kl" (mean over rows of the summed per-token estimate, what the adaptive
      controller reads), "explained_variance" of the returns by the values,
      "returns", "adv" (before whitening) and "token_reward" (means under the mask).
    """
    m = m_NxT.astype(jnp.float32)
    kl_NxT = kl.kl_estimate(cfg.kl.estimator, lp_NxT, lp_ref_NxT) * m
    if process_NxT is None:
        r_NxT = token_rewards(score_N, kl_NxT, m, kl_coef)
    else:
        r_NxT = token_rewards(cfg.process.outcome_weight * score_N, kl_NxT, m, kl_coef)
        r_NxT = r_NxT + cfg.process.process_weight * jnp.where(m > 0, process_NxT, 0.0)
    adv_NxT, returns_NxT = gae.gae(r_NxT, values_NxT, m, cfg.gamma, cfg.lam)
    resid_var = masks.masked_var(returns_NxT - values_NxT, m)
    stats = {
        "kl": jnp.mean(jnp.sum(kl_NxT, axis=1)),
        "explained_variance": 1.0
        - resid_var / masks.safe_denominator(masks.masked_var(returns_NxT, m)),
        "returns": masks.masked_mean(returns_NxT, m),
        "adv": masks.masked_mean(adv_NxT, m),
        "token_reward": masks.masked_mean(r_NxT, m),
    }
    if cfg.whiten_advantages:
        adv_NxT = masks.masked_whiten(adv_NxT, m)
    return {"adv": adv_NxT, "returns": returns_NxT}, stats


def init_reward_stats() -> dict[str, jax.Array]:
    """Running reward statistics of an empty history: count, mean, (population) var."""
    return {
        "count": jnp.zeros((), jnp.float32),
        "mean": jnp.zeros((), jnp.float32),
        "var": jnp.ones((), jnp.float32),
    }


def normalize_rewards(
    r_N: np.ndarray, stats: dict[str, Any], mode: str, clip: float, eps: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Normalizes and clips sequence scores on the host.

    "batch" standardizes with this batch's mean and std; "running" first merges
    the batch into the running statistics (Chan et al.'s parallel update) and
    standardizes with those; "none" leaves the scores. Then, with clip > 0,
    scores are clipped to [-clip, clip].

    Args:
      r_N: raw scores.
      stats: running statistics (`init_reward_stats`), host or device scalars.
      mode: one of `REWARD_NORMALIZATIONS`.
      clip: the clip range; 0 disables.
      eps: added to the std.

    Returns:
      (scores float32 [N], new running statistics as float32 numpy scalars;
      unchanged unless mode is "running").
    """
    r = np.asarray(r_N, np.float64)
    stats = {k: np.float32(np.asarray(v)) for k, v in stats.items()}
    if mode == "batch":
        r = (r - r.mean()) / (r.std() + eps)
    elif mode == "running":
        n_a, mean_a, var_a = (float(stats[k]) for k in ("count", "mean", "var"))
        n_b, mean_b, var_b = len(r), r.mean(), r.var()
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n
        var = (var_a * n_a + var_b * n_b + delta**2 * n_a * n_b / n) / n
        stats = {"count": np.float32(n), "mean": np.float32(mean), "var": np.float32(var)}
        r = (r - mean) / (np.sqrt(var) + eps)
    elif mode != "none":
        raise ValueError(f"reward normalization {mode!r} is not one of {REWARD_NORMALIZATIONS}.")
    if clip > 0:
        r = np.clip(r, -clip, clip)
    return r.astype(np.float32), stats
