"""PPO with a critic and GAE for language models (InstructGPT; "Secrets of RLHF").

One step is one rollout, then num_epochs x num_minibatches optimizer steps:
1. sample G completions of each of B prompts with the KV-cache sampler;
2. score them with the config's reward sources (`rl_lm.algos.reward_sources`,
   as GRPO: the learned reward model's scalar at the last response token,
   verifiable rewards, or their sum); normalize (batch or running statistics)
   and clip;
3. before any update, take the sampling policy's log-probs (lp_old), the
   reference's (lp_ref) and the critic's values;
4. token rewards -beta * KL_t plus the score on the last token (and, with
   process rewards, step rewards on step ends), GAE, advantage whitening
   (`ppo_loss.rollout_targets`, jitted on the sharded rollout);
5. optimizer steps on `ppo_loss.loss_fn` with lp_old, V_old, A and returns fixed;
6. the adaptive KL controller moves beta.

The train state holds params = {"policy": the policy (plus its value head when
ppo.critic = "value_head"), "critic": the separate critic}, ref_params,
rm_params (when rewards come from the reward model), kl_coef (beta) and
reward_stats (running reward statistics), so a resumed run continues exactly.

The reward model comes from `config.reward_model` (`rl_lm.algos.rm_rewards`):
`workdir`, a finished reward-model run (its latest checkpoint), or else `stage`,
a reward-model experiment trained here on a fresh start, from the policy's
starting trunk (the SFT warm start), before the first PPO step. The stage is not
checkpointed on its own; its result is in every PPO checkpoint.

With `ppo.process.source` set (configs/ppo_chain.py), step scores p in [0, 1]
come from a chain checker (computed on the host in the rollout) or a frozen
learned PRM (`process_rewards.make`), as in GRPO. Their credit form's returns
G_s (of r = 2p - 1, after the transform) become token rewards on step ends
whose undiscounted sum from step s on is G_s (`ppo_loss.process_token_rewards`),
weighted by process_weight and added to the KL and outcome_weight * score
rewards before GAE; the critic learns the resulting returns. There is no group
baseline (ppo.process.baseline must be "none"), and ppo.gamma < 1 is allowed
only with plain sum-form step rewards (`ppo_loss.process_problems`). The logged
steps_per_response, process_return (G of the first step), process_score_sum /
_min, step_overflow and step_mismatch are GRPO's.

With `ppo.env.name` set (configs/ppo_tool_arith.py), each row is a multi-turn
tool episode (`rl_lm.algos.ppo_episodes`): every forward attends to the
observations, the rewards, GAE and the loss skip them, and the held-out
evaluation runs greedy episodes with the same tools; the tool metrics are
GRPO's.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel, tasks
from rl_lm.algos import (
    common,
    episodes,
    ppo_episodes,
    ppo_loss,
    process_rewards,
    reward_model,
    reward_sources,
    rm_rewards,
    rollout,
)
from rl_lm.core.kl import adaptive_kl_update
from rl_lm.data import load_source, prompt_batches
from rl_lm.models.config import ModelConfig
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import Params, init_params, partition_specs
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import make_sampler


def _models(config: Any) -> tuple[ModelConfig, ModelConfig | None, ModelConfig | None]:
    """(policy, separate critic or None, reward model or None) model configs."""
    cfg = config.ppo
    base = common.model_config(config.model)
    policy_cfg = base.replace(scalar_head=cfg.critic == "value_head")
    rm_cfg = reward_sources.reward_model_config(config, "ppo")
    critic_cfg = None
    if cfg.critic == "separate":
        critic_cfg = rm_cfg or base.replace(lm_head=False, scalar_head=True, tie_embeddings=False)
    return policy_cfg, critic_cfg, rm_cfg


def make_trainer(config: Any, mesh: Mesh, init_from: Params | None = None) -> common.Trainer:
    """The PPO trainer of `config` (fields: see configs/ppo_synthetic.py and ppo_arith.py).

    Args:
      config: the experiment config; its `ppo` section is `ppo_loss.default_config()`.
      mesh: the device mesh.
      init_from: starting policy parameters (the SFT warm start), also the
        reference; None initializes from scratch.
    """
    cfg, data, train = config.ppo, config.data, config.train
    ppo_loss.validate(cfg)
    policy_cfg, critic_cfg, rm_cfg = _models(config)
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, policy_cfg.vocab_size)
    g, b = cfg.num_generations, data.batch_size
    n = b * g
    updates_per_rollout = cfg.num_epochs * cfg.num_minibatches
    if n % cfg.num_minibatches:
        raise ValueError(
            f"data.batch_size*ppo.num_generations={n} rows must split into "
            f"ppo.num_minibatches={cfg.num_minibatches} equal minibatches."
        )
    common.check_batch_size(
        n // cfg.num_minibatches, mesh, cfg.num_microbatches, "data.batch_size*ppo.num_generations"
    )
    common.check_batch_size(b, mesh, 1, "data.batch_size")
    if data.max_prompt_len + cfg.max_new_tokens > policy_cfg.max_seq_len:
        raise ValueError(
            f"data.max_prompt_len={data.max_prompt_len} + ppo.max_new_tokens="
            f"{cfg.max_new_tokens} exceeds model.max_seq_len={policy_cfg.max_seq_len}; "
            "shorten one of them or raise model.max_seq_len."
        )
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)
    task = tasks.for_config(config)
    sources = reward_sources.from_config(config, "ppo", mesh=mesh, init_from=init_from, task=task)
    proc = cfg.get("process")
    process = process_rewards.make(proc, g, config.model, tokenizer, mesh, "ppo.process")

    num_updates = train.num_steps * updates_per_rollout
    optimizer = common.make_optimizer(config.optim, num_updates)
    policy_specs = partition_specs(policy_cfg, config.rules)
    param_specs = {"policy": policy_specs}
    if critic_cfg is not None:
        param_specs["critic"] = partition_specs(critic_cfg, config.rules)

    def init_fn(rng, rm_params):
        k_policy, k_critic = jax.random.split(jax.random.fold_in(rng, 1))
        if init_from is None:
            policy = init_params(policy_cfg, k_policy)
        else:  # Copies the SFT weights; the value head (if any) is fresh.
            policy = reward_model.init_from_trunk(init_from, policy_cfg, k_policy)
        params = {"policy": policy}
        if critic_cfg is not None:
            if rm_params is not None:
                params["critic"] = rm_params
            elif init_from is not None:
                params["critic"] = reward_model.init_from_trunk(init_from, critic_cfg, k_critic)
            else:
                params["critic"] = init_params(critic_cfg, k_critic)
        extras = {
            "ref_params": policy,
            "kl_coef": jnp.asarray(cfg.kl.coef, jnp.float32),
            "reward_stats": ppo_loss.init_reward_stats(),
        }
        if rm_params is not None:
            extras["rm_params"] = rm_params
        return common.new_state(params, optimizer, rng, **extras)

    def specs_fn(abstract):
        specs = common.state_specs(abstract, param_specs, optimizer)
        specs["ref_params"] = policy_specs
        return specs

    init_state, abstract_state, shardings = rm_rewards.sharded_init(
        config, mesh, init_fn, specs_fn, rm_cfg, reward_sources.state_init(sources, "rm_params")
    )
    loss = functools.partial(
        ppo_loss.loss_fn, policy_cfg=policy_cfg, cfg=cfg, critic_cfg=critic_cfg
    )
    schedule = common.learning_rate_schedule(config.optim, num_updates)
    update = common.jit_step(
        common.make_update(loss, optimizer, cfg.num_microbatches, schedule), mesh, shardings
    )
    sampler = make_sampler(
        policy_cfg,
        max_new_tokens=cfg.max_new_tokens,
        num_samples=g,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        eos_ids=tuple(tokenizer.eos_ids),
        pad_id=tokenizer.pad_id,
    )
    rows = parallel.batch_sharding(mesh)
    old_outputs = jax.jit(
        lambda params, batch: ppo_loss.response_outputs(
            params, batch, policy_cfg, cfg, critic_cfg, with_entropy=False
        ),
        out_shardings=rows,
    )
    ref_logprobs = jax.jit(
        lambda params, batch: response_logprobs(
            params,
            policy_cfg,
            *(batch[k] for k in rollout.ROW_KEYS),
            chunk_size=cfg.logprob_chunk,
            temperature=cfg.temperature,
            attention_mask_NxR=batch.get("attention_mask"),
        ),
        out_shardings=rows,
    )
    targets = jax.jit(
        lambda score, lp, lp_ref, values, m, beta, process_NxT=None: ppo_loss.rollout_targets(
            score, lp, lp_ref, values, m, beta, cfg, process_NxT
        ),
        out_shardings=(rows, parallel.replicated(mesh)),
    )
    if process is not None:
        step_end_rewards = jax.jit(
            functools.partial(
                ppo_loss.process_token_rewards,
                **{k: proc[k] for k in ("form", "transform", "gamma", "temperature", "eta")},
                **process["step_args"],
            ),
            out_shardings=rows,
        )

        def process_token_rewards(host, arrays):
            """Process token rewards [N, T] of the sharded rollout and their metrics."""
            scores_NxS, host_mask_NxS = process_rewards.step_scores(process, host, arrays)
            lo, hi = parallel.process_rows(mesh, n)
            p_NxS = parallel.shard_batch({"p": scores_NxS[lo:hi].astype(np.float32)}, mesh, n)
            r_NxT, stats = step_end_rewards(p_NxS["p"], arrays["response"], arrays["mask"])
            stats = {k: parallel.to_host(v) for k, v in stats.items()}
            return r_NxT, process_rewards.metrics(stats, scores_NxS, host_mask_NxS)

    def batches(start_step: int):
        # Every process reads the whole global batch (cheap: prompts only).
        return prompt_batches(
            train_source,
            tokenizer,
            batch_size=b,
            max_prompt_len=data.max_prompt_len,
            seed=config.seed,
            start_step=start_step,
        )

    collect_args = dict(mesh=mesh, tokenizer=tokenizer, num_generations=g)
    collect_rollout = episodes.collector(cfg, policy_cfg, sampler, data.name)

    def score_rollout(state, prompts, key):
        """Samples and scores one global prompt batch; the host part is global."""
        r = collect_rollout(state["params"]["policy"], prompts, key, **collect_args)
        host = {"response": r.host_response, "mask": r.host_mask}
        if process is not None:
            prompt_texts = tokenizer.decode_batch(prompts["prompt"], prompts["prompt_mask"])
            process_rewards.score_on_host(process, host, prompt_texts, r.texts, g)
        prompts_N = reward_sources.prompt_texts(tokenizer, prompts, g)
        updates, score, stats = reward_sources.score(sources, state, r, prompts_N)
        if r.episode is not None:  # tool metrics, per episode
            stats.update({k: float(np.mean(v)) for k, v in r.episode.items()})
        return {**state, **updates}, r.rows(), score, stats, host

    def step(state, prompts):
        t0 = time.perf_counter()
        rollout_index = int(state["step"]) // updates_per_rollout
        key = jax.random.fold_in(jax.random.key(config.seed), rollout_index)
        state, arrays, score, metrics, host = score_rollout(state, prompts, key)
        mask = host["mask"]
        score, reward_stats = ppo_loss.normalize_rewards(
            score, state["reward_stats"], cfg.reward.normalize, cfg.reward.clip, cfg.reward.eps
        )
        t1 = time.perf_counter()
        lo, hi = parallel.process_rows(mesh, n)
        score_N = parallel.shard_batch({"score": score[lo:hi]}, mesh, n)["score"]
        arrays["lp_old"], arrays["values"] = old_outputs(state["params"], arrays)
        lp_ref = ref_logprobs(state["ref_params"], arrays)
        beta = state["kl_coef"]
        process_NxT = None
        if process is not None:
            process_NxT, process_metrics = process_token_rewards(host, arrays)
            metrics.update(process_metrics)
        adv_returns, rollout_stats = targets(
            score_N, arrays["lp_old"], lp_ref, arrays["values"], arrays["mask"], beta, process_NxT
        )
        arrays.update(adv_returns)
        rollout_stats = common.host_scalars({**rollout_stats, "kl_coef": beta})
        t2 = time.perf_counter()
        for epoch in range(cfg.num_epochs):
            order = common.minibatch_order(
                config.seed, rollout_index, epoch, n, cfg.num_minibatches
            )
            for mb in np.array_split(order, cfg.num_minibatches):
                state, update_metrics = update(state, common.gather_rows(arrays, mb, mesh))
        new_beta = rollout_stats["kl_coef"]
        if cfg.kl.adaptive:
            new_beta = float(
                adaptive_kl_update(
                    np.float32(new_beta), rollout_stats["kl"], cfg.kl.target, n, cfg.kl.horizon
                )
            )
        replicated = parallel.replicated(mesh)
        state = {
            **state,
            "kl_coef": jax.device_put(np.float32(new_beta), replicated),
            "reward_stats": jax.device_put(reward_stats, replicated),
        }
        metrics.update(common.host_scalars(update_metrics))
        metrics.update(rollout_stats)
        metrics.update(
            score=float(score.mean()),
            response_len=float(mask.sum(1).mean()),
            time_rollout=t1 - t0,
            time_targets=t2 - t1,
            time_update=time.perf_counter() - t2,
            tokens=float(mask.sum()),
        )
        return state, metrics

    policy_eval = ppo_episodes.make_eval(config, mesh, policy_cfg, tokenizer, test_source, task)
    return common.Trainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=batches,
        step=step,
        evaluate=lambda state: policy_eval(state["params"]["policy"], state["ref_params"]),
    )
