"""The GRPO family's loss and its reward shaping.

GRPO (DeepSeekMath), Dr.GRPO, DAPO, RLOO and GSPO differ only in options of
this one loss: the advantage estimator, the loss aggregation, the clip range,
the ratio level, where the KL to the reference goes, and the reward shaping.
The on-policy loop that feeds it lives in `rl_lm.algos.grpo`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rl_lm.algos import episodes, off_policy, process_rewards, rm_rewards, source_spec
from rl_lm.core import advantages, aggregation, kl, losses
from rl_lm.models.config import ModelConfig
from rl_lm.sampling.logprobs import response_logprobs

KL_PLACEMENTS = ("loss", "reward", "none")


def default_config() -> ml_collections.ConfigDict:
    """GRPO hyperparameters; DeepSeekMath's values where the paper gives them."""
    return ml_collections.ConfigDict(
        {
            "num_generations": 8,  # G completions per prompt
            "max_new_tokens": 16,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
            "advantage": "grpo",  # grpo | dr_grpo | rloo | batch_std
            "adv_eps": 1e-6,
            "aggregation": "seq-mean-token-mean",  # see core.aggregation
            "eps_lo": 0.2,
            "eps_hi": 0.2,  # DAPO clip-higher: 0.28
            "dual_clip": 0.0,  # > 1 enables the dual clip; 0 disables
            "ratio_level": "token",  # token | sequence (GSPO)
            "beta": 0.04,  # KL coefficient
            "kl_placement": "loss",  # loss (k3) | reward (k1) | none
            "num_epochs": 1,  # mu passes over each rollout with lp_old fixed
            "num_minibatches": 1,  # optimizer steps per epoch
            "num_microbatches": 1,  # gradient accumulation inside a minibatch
            "dynamic_sampling": False,  # DAPO: drop zero-spread groups and refill
            "max_refills": 4,
            "overlong_cache": 0,  # DAPO soft overlong punishment window L_cache; 0 = off
            "reward_source": "verifiable",  # verifiable | reward_model | both (their sum)
            "rewards": {"exact_match": 1.0},  # weights of rl_lm.rewards.verifiable
            "logprob_chunk": 64,
            # Process rewards (token advantages from step scores); off by default.
            "process": process_rewards.default_config(),
            # Off-policy rollouts: steps 0 = on-policy; 1 = the rollout is one update
            # stale, sampled while the previous update runs (rl_lm.algos.off_policy).
            "off_policy": off_policy.default_config(),
            # Multi-turn episodes with tools (rl_lm.algos.episodes); name "" = single-turn.
            # max_new_tokens is then an episode's whole response budget.
            "env": episodes.default_config(),
            # OTC's alpha: weight of the tool-efficiency reward of episodes; 0 = off.
            "tool_efficiency": 0.0,
            # The reward sources summed, "name=weight,..." (rl_lm.algos.source_spec);
            # "" = reward_source / rewards / reward_fns above.
            "reward_sources": "",
        }
    )


def validate(cfg: Any) -> None:
    """Fails early, naming the field, on an inconsistent GRPO config."""
    problems = []
    if cfg.num_generations < 2:
        problems.append("grpo.num_generations must be >= 2 (group advantages need a group)")
    if cfg.advantage not in advantages.ADVANTAGE_ESTIMATORS:
        problems.append(
            f"grpo.advantage={cfg.advantage!r} not in {sorted(advantages.ADVANTAGE_ESTIMATORS)}"
        )
    if cfg.aggregation not in aggregation.AGGREGATION_MODES:
        problems.append(
            f"grpo.aggregation={cfg.aggregation!r} not in {aggregation.AGGREGATION_MODES}"
        )
    if cfg.reward_source not in rm_rewards.SOURCES:
        problems.append(f"grpo.reward_source={cfg.reward_source!r} not in {rm_rewards.SOURCES}")
    if cfg.kl_placement not in KL_PLACEMENTS:
        problems.append(f"grpo.kl_placement={cfg.kl_placement!r} not in {KL_PLACEMENTS}")
    if cfg.ratio_level not in ("token", "sequence"):
        problems.append(f"grpo.ratio_level={cfg.ratio_level!r} not in ('token', 'sequence')")
    if cfg.dual_clip and cfg.dual_clip <= 1:
        problems.append(f"grpo.dual_clip={cfg.dual_clip} must be > 1 (or 0 to disable)")
    if cfg.overlong_cache >= cfg.max_new_tokens:
        problems.append(
            f"grpo.overlong_cache={cfg.overlong_cache} must be < grpo.max_new_tokens="
            f"{cfg.max_new_tokens}"
        )
    if cfg.get("process") is not None:
        problems += process_rewards.validate(cfg.process, cfg)
    problems += off_policy.problems(cfg.get("off_policy"), cfg)
    problems += episodes.problems(cfg.get("env"), "grpo.env")
    if episodes.enabled(cfg.get("env")):
        listed = source_spec.listed(cfg, "grpo")
        uses_rm = "reward_model" in listed if listed else cfg.reward_source != "verifiable"
        field = "grpo.reward_sources" if listed else f"grpo.reward_source={cfg.reward_source!r}"
        problems += episodes.refusals(
            "grpo",
            process=process_rewards.enabled(cfg.get("process")),
            reward_model_field=field if uses_rm else None,
        )
    if episodes.enabled(cfg.get("env")) and cfg.overlong_cache:
        problems.append(
            "grpo.overlong_cache with grpo.env: the overlong shaping counts sampled tokens, "
            "an episode's budget counts observations too; set grpo.overlong_cache=0"
        )
    if problems:
        raise ValueError("Invalid GRPO config: " + "; ".join(problems) + ".")


def overlong_penalty(lengths_N: np.ndarray, max_len: int, cache: int) -> np.ndarray:
    """DAPO's soft overlong punishment.

    0 for responses up to max_len - cache tokens, then (max_len - cache - L) / cache,
    floored at -1 (reached at L = max_len).
    """
    if cache <= 0:
        return np.zeros(lengths_N.shape, np.float32)
    over = (max_len - cache - lengths_N.astype(np.float32)) / cache
    return np.clip(over, -1.0, 0.0).astype(np.float32)


def group_has_spread(rewards_BxG: np.ndarray) -> np.ndarray:
    """DAPO dynamic sampling's filter: groups whose rewards are not all equal."""
    return np.ptp(rewards_BxG, axis=1) > 0


def loss_fn(
    params: Any,
    batch: dict[str, jax.Array],
    model_cfg: ModelConfig,
    cfg: Any,
) -> tuple[tuple[jax.Array, jax.Array], dict[str, tuple[jax.Array, jax.Array]]]:
    """GRPO loss of one (micro)batch: agg(clipped surrogate + beta * k3).

    Args:
      params: policy parameters.
      batch: prompt [N,P], prompt_mask [N,P], response [N,T], mask [N,T],
        adv [N] (sequence advantages) or [N,T] (token advantages, e.g. from
        process rewards), lp_old [N,T] (when absent, the
        stop-gradient of the current log-probs: one update per rollout),
        lp_ref [N,T] (needed when the KL is in the loss), is_weight [N,T]
        (optional truncated importance weights of off-policy rollouts; they
        multiply the policy-gradient term, not the KL), attention_mask [N,T]
        (multi-turn episodes: observation tokens are seen but, with mask 0,
        neither scored nor in any term of the loss).
      model_cfg: the policy's model config.
      cfg: the `grpo` config section.

    Returns:
      ((numerator, denominator), metrics) as `common.make_update` expects: the
      numerator and denominator of `cfg.aggregation` are sums over rows, so
      microbatches and data shards add up to the full-batch loss; metrics are
      (sum over response tokens, token count) pairs.
    """
    m = batch["mask"].astype(jnp.float32)
    lp = response_logprobs(
        params,
        model_cfg,
        batch["prompt"],
        batch["prompt_mask"],
        batch["response"],
        batch["mask"],
        chunk_size=cfg.logprob_chunk,
        temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
        attention_mask_NxR=batch.get("attention_mask"),
    )
    lp_old = batch["lp_old"] if "lp_old" in batch else jax.lax.stop_gradient(lp)
    adv = batch["adv"]
    if adv.ndim not in (1, 2):
        raise ValueError(f"batch['adv'] must be [N] or [N,T] advantages, got shape {adv.shape}.")
    l, ind = losses.clipped_surrogate(
        lp,
        lp_old,
        (adv[:, None] if adv.ndim == 1 else adv).astype(lp.dtype),
        cfg.eps_lo,
        cfg.eps_hi,
        cfg.dual_clip if cfg.dual_clip else None,
        m=m,
        ratio_level=cfg.ratio_level,
    )
    if "is_weight" in batch:  # Off-policy: truncated importance weight on the PG term.
        l = l * batch["is_weight"].astype(l.dtype)
    tokens = jnp.sum(m)
    metrics = {
        name: (jnp.sum(ind[key] * m), tokens)
        for name, key in (
            ("clip_low", "clipped_low"),
            ("clip_high", "clipped_high"),
            ("ratio", "ratio"),
        )
    }
    if "lp_ref" in batch:
        k3 = kl.k3(lp, batch["lp_ref"])
        metrics["kl"] = (jnp.sum(jax.lax.stop_gradient(k3) * m), tokens)
        if cfg.kl_placement == "loss" and cfg.beta > 0:
            l = l + cfg.beta * k3
    num = aggregation.aggregation_numerator(l, m, cfg.aggregation)
    den = aggregation.aggregation_denominator(cfg.aggregation, m, cfg.max_new_tokens)
    return (num, den), metrics


def sequence_kl(lp_NxT: jax.Array, lp_ref_NxT: jax.Array, m_NxT: jax.Array) -> jax.Array:
    """Sum over the response of k1 = lp - lp_ref: the KL penalty put in the reward."""
    return jnp.sum(kl.k1(lp_NxT, lp_ref_NxT) * m_NxT, axis=1)
