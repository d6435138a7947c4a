"""PRIME's implicit process reward model, trained online beside GRPO (arXiv 2502.01456).

The PRM phi is a full language model, started from the policy's starting
params (the SFT warm start) and scored against the frozen reference (the
GRPO reference, also the starting params): token rewards
r_t = beta_p (lp_phi - lp_ref), so phi = ref pays nothing. Each GRPO step,
following PRIME's Algorithm 1:

1. phi takes `prime_steps` optimizer steps (its own AdamW: the policy's
   `optim` section with lr = `prime_lr`) on the fresh rollout with the outcome
   loss BCE(sigmoid(sum_t r_t), correct), the labels being exact-match
   correctness of the verifiable reward (`credit.implicit_prm_bce_loss`);
2. the updated phi scores the rollout;
3. advantages: leave-one-out per reward source (token rewards weighted by
   `process_weight`, the outcome reward by `outcome_weight` at the last
   token), reverse cumulative sum over tokens (`credit.prime_advantages`),
   then whitened over the batch's response tokens, as verl's PRIME does.

phi lives in the train state as state["prime"] = {"step", "params",
"opt_state"}, sharded like the policy, so checkpoints hold it and a resumed
run continues exactly. Log-probs of phi and of its reference are taken at
temperature 1 (the PRM's own distribution, whatever the sampling temperature).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel
from rl_lm.algos import common
from rl_lm.core import credit, masks
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params, init_params
from rl_lm.sampling.logprobs import response_logprobs

_ROWS = ("prompt", "prompt_mask", "response", "mask")


def sign_accuracy(z_N: np.ndarray, labels_N: np.ndarray) -> float:
    """How often the implicit sequence reward z has the label's sign: z > 0 for a correct
    response, z < 0 for a wrong one; a tie z = 0 (phi = ref) counts 1/2."""
    z_N = np.asarray(z_N)
    right_N = (z_N > 0) == (np.asarray(labels_N) > 0.5)
    return float(np.where(z_N == 0, 0.5, right_N).mean())


def rank_accuracy(z_N: np.ndarray, labels_N: np.ndarray, group_size: int) -> float:
    """How often phi ranks a correct response above a wrong one of the same prompt.

    Over every pair (correct i, wrong j) within a group: 1 where z_i > z_j, 1/2 at
    a tie; 1/2 (chance) when no group mixes outcomes. Unlike `sign_accuracy` it
    ignores a shift of all z, which the outcome's leave-one-out baseline removes
    anyway.
    """
    z_BxG = np.asarray(z_N, np.float64).reshape(-1, group_size)
    right_BxG = np.asarray(labels_N).reshape(-1, group_size) > 0.5
    pairs_BxGxG = right_BxG[:, :, None] & ~right_BxG[:, None, :]
    diff_BxGxG = z_BxG[:, :, None] - z_BxG[:, None, :]
    won_BxGxG = np.where(diff_BxGxG > 0, 1.0, np.where(diff_BxGxG == 0, 0.5, 0.0))
    count = pairs_BxGxG.sum()
    return float((won_BxGxG * pairs_BxGxG).sum() / count) if count else 0.5


def loss_fn(
    params: Params, batch: dict[str, jax.Array], model_cfg: ModelConfig, beta: float, chunk: int
) -> tuple[common.Ratio, dict[str, common.Ratio]]:
    """The implicit PRM's outcome BCE on one (micro)batch, as `common.make_update` takes it.

    Args:
      params: phi.
      batch: the rollout rows (prompt, prompt_mask, response, mask), lp_ref [N,T]
        (the reference at temperature 1) and label [N] (1 = correct).
      model_cfg: the policy's model config (phi has the policy's shape).
      beta: beta_p.
      chunk: log-prob time chunk.

    Returns:
      ((summed BCE, rows), {}).
    """
    lp_NxT = response_logprobs(params, model_cfg, *(batch[k] for k in _ROWS), chunk_size=chunk)
    loss = credit.implicit_prm_bce_loss(
        lp_NxT, batch["lp_ref"], batch["mask"], batch["label"], beta
    )
    return loss, {}


def whitened_advantages(
    token_rewards_NxT: jax.Array,
    outcome_N: jax.Array,
    m_NxT: jax.Array,
    *,
    group_size: int,
    gamma: float = 1.0,
    process_weight: float = 1.0,
    outcome_weight: float = 1.0,
) -> jax.Array:
    """`credit.prime_advantages` whitened over every response token of the batch (verl's PRIME)."""
    adv_NxT = credit.prime_advantages(
        token_rewards_NxT, outcome_N, m_NxT, group_size, gamma, process_weight, outcome_weight
    )
    return masks.masked_whiten(adv_NxT, m_NxT)


def make(
    proc: Any,
    model_cfg: ModelConfig,
    optim: Any,
    num_rollouts: int,
    group_size: int,
    num_microbatches: int,
    chunk: int,
    param_specs: Any,
    mesh: Mesh,
) -> dict[str, Any]:
    """The jitted pieces of the online implicit PRM.

    Args:
      proc: the `grpo.process` section (source="prime"; prime_beta, prime_lr,
        prime_steps, gamma, process_weight, outcome_weight).
      model_cfg: the policy's model config.
      optim: the policy's `optim` section; phi's AdamW takes it with lr = prime_lr.
      num_rollouts: GRPO steps of the run (phi's schedule spans prime_steps of each).
      group_size: G completions per prompt.
      num_microbatches: gradient accumulation of phi's update.
      chunk: log-prob time chunk.
      param_specs: the policy's parameter PartitionSpecs (phi's too).
      mesh: the device mesh.

    Returns:
      {"init": params -> phi's state, "specs": that state's PartitionSpecs,
      "update", "logprobs", "advantages"}; pass it to `step`.
    """
    optimizer = common.make_optimizer(
        {**optim.to_dict(), "lr": proc.prime_lr}, num_rollouts * proc.prime_steps
    )

    def init(params):
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": optimizer.init(params),
        }

    abstract = jax.eval_shape(lambda: init(init_params(model_cfg, jax.random.key(0))))
    specs = common.state_specs(abstract, param_specs, optimizer)
    loss = functools.partial(loss_fn, model_cfg=model_cfg, beta=proc.prime_beta, chunk=chunk)
    update = common.make_update(loss, optimizer, num_microbatches)
    return {
        "init": init,
        "specs": specs,
        "update": common.jit_step(update, mesh, parallel.named(mesh, specs)),
        "logprobs": jax.jit(
            lambda params, *rows: response_logprobs(params, model_cfg, *rows, chunk_size=chunk),
            out_shardings=parallel.batch_sharding(mesh),
        ),
        "advantages": jax.jit(
            functools.partial(
                whitened_advantages,
                group_size=group_size,
                gamma=proc.gamma,
                process_weight=proc.process_weight,
                outcome_weight=proc.outcome_weight,
            )
        ),
        "beta": proc.prime_beta,
        "steps": proc.prime_steps,
        "group_size": group_size,
    }


def step(
    prime: dict[str, Any],
    prime_state: common.State,
    ref_params: Params,
    arrays: dict[str, jax.Array],
    host: dict[str, np.ndarray],
    outcome_N: np.ndarray,
    mesh: Mesh,
    lp_ref: jax.Array | None = None,
) -> tuple[common.State, np.ndarray, dict[str, float]]:
    """Updates phi on a rollout, scores it with the updated phi, and returns its advantages.

    Args:
      prime: `make`'s pieces.
      prime_state: phi's state (donated).
      ref_params: the frozen reference.
      arrays: this process's rollout rows, batch-sharded (prompt, prompt_mask,
        response, mask).
      host: the global rollout on the host (mask, correct).
      outcome_N: the global outcome rewards (the verifiable reward).
      mesh: the device mesh.
      lp_ref: the reference's temperature-1 log-probs of the rollout when
        already taken (the GRPO KL's, at sampling temperature 1); else taken here.

    Returns:
      (phi's new state, global token advantages adv_NxT, metrics: prime_loss,
      prime_accuracy (`sign_accuracy`) and prime_rank_accuracy (`rank_accuracy`)
      of phi before this rollout's update, the two *_updated after it, and
      process_return, the mean implicit sequence reward sum_t r_t after it).
    """
    rows = [arrays[k] for k in _ROWS]
    if lp_ref is None:
        lp_ref = prime["logprobs"](ref_params, *rows)
    n = host["mask"].shape[0]
    lo, hi = parallel.process_rows(mesh, n)
    labels = parallel.shard_batch({"label": host["correct"][lo:hi].astype(np.float32)}, mesh, n)
    batch = {**{k: arrays[k] for k in _ROWS}, "lp_ref": lp_ref, **labels}
    lp_ref_NxT, m_NxT = jnp.asarray(parallel.to_host(lp_ref)), jnp.asarray(host["mask"])

    def implicit_rewards(params):
        lp_NxT = jnp.asarray(parallel.to_host(prime["logprobs"](params, *rows)))
        return credit.implicit_process_rewards(lp_NxT, lp_ref_NxT, m_NxT, prime["beta"])

    # phi's view of the fresh rollout before it trains on it: a held-out measure.
    z_before_N = np.asarray(jnp.sum(implicit_rewards(prime_state["params"]), axis=1))
    prime_state, first = prime["update"](prime_state, batch)
    for _ in range(prime["steps"] - 1):
        prime_state, _ = prime["update"](prime_state, batch)
    first = common.host_scalars(first)
    r_NxT = implicit_rewards(prime_state["params"])
    adv_NxT = prime["advantages"](r_NxT, jnp.asarray(outcome_N, jnp.float32), m_NxT)
    z_N = np.asarray(jnp.sum(r_NxT, axis=1))
    correct_N, g = host["correct"], prime["group_size"]
    metrics = {
        "prime_loss": first["loss"],
        "prime_grad_norm": first["grad_norm"],
        "prime_accuracy": sign_accuracy(z_before_N, correct_N),
        "prime_rank_accuracy": rank_accuracy(z_before_N, correct_N, g),
        "prime_accuracy_updated": sign_accuracy(z_N, correct_N),
        "prime_rank_accuracy_updated": rank_accuracy(z_N, correct_N, g),
        "process_return": float(z_N.mean()),
    }
    return prime_state, np.asarray(adv_NxT), metrics
