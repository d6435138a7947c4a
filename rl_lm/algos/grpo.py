"""GRPO and its variants (Dr.GRPO, DAPO, RLOO, GSPO): the on-policy loop.

One step: sample G completions of each of B prompts with the KV-cache sampler,
score them with the config's reward sources (`rl_lm.algos.reward_sources`:
verifiable rewards by default), turn rewards into group advantages, take
reference (and, for several updates per rollout, old-policy) log-probs, then
run num_epochs x num_minibatches jitted optimizer steps on the rollout with
lp_old fixed. The loss itself is `rl_lm.algos.grpo_loss.loss_fn`.

With `grpo.reward_source` = "reward_model" the sequence reward is a learned
Bradley-Terry reward model's score (`config.reward_model`, as PPO's; see
`rl_lm.algos.rm_rewards`), with "both" the sum of that score and the verifiable
rewards (`rl_lm.algos.reward_sources` builds and sums the sources, as for PPO);
the reward model's params ride in the state as `rm_params`. On tasks
with a hidden true reward (`rl_lm.tasks`) each rollout's true reward is logged
next to the learned one; a task that names the win-rate evaluation is evaluated
by win rate over the reference (kept in the state for it) instead of exact match.

With `grpo.process.source` set, the advantages are per token instead: step
scores (a programmatic checker or a frozen learned PRM) go through a credit
form (sum / min / soft-min) to token advantages, plus a weighted outcome
advantage (`rl_lm.algos.process_rewards`); or, with source "prime", PRIME's
implicit PRM, a language model trained online on each rollout's outcome labels
and riding in the state as `prime` with its own optimizer, gives token rewards
beta_p (lp_phi - lp_ref) (`rl_lm.algos.prime`).

With `grpo.off_policy.steps` = 1, rollout k+1 is sampled with theta_k while
update k runs, and truncated importance weights correct the staleness
(`rl_lm.algos.off_policy`). Host-side work (decoding, rewards, advantages)
runs on the global batch, identically on every process.
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
    grpo_loss,
    off_policy,
    prime,
    process_rewards,
    reward_sources,
    rm_rewards,
    rollout,
)
from rl_lm.core import advantages
from rl_lm.data import load_source, prompt_batches
from rl_lm.models import lora
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import Params, init_params, partition_specs
from rl_lm.rewards import verifiable
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import make_sampler


def make_trainer(config: Any, mesh: Mesh, init_from: Params | None = None) -> common.Trainer:
    """The GRPO trainer of `config` (fields: see configs/grpo_arith.py).

    Args:
      config: the experiment config; its `grpo` section is `grpo_loss.default_config()`.
      mesh: the device mesh.
      init_from: starting policy parameters (e.g. the SFT warm start); also the
        reference. None initializes from scratch.
    """
    cfg, data, train = config.grpo, config.data, config.train
    grpo_loss.validate(cfg)
    model_cfg = common.model_config(config.model)
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, model_cfg.vocab_size)
    g, b = cfg.num_generations, data.batch_size
    n = b * g
    off = cfg.get("off_policy")
    pipelined = off_policy.enabled(off)
    # With off_policy.sampler_devices the trainer keeps the first devices, the sampler the rest.
    mesh, sample_mesh = off_policy.split_mesh(mesh, off.get("sampler_devices", 0) if off else 0)
    updates_per_rollout = cfg.num_epochs * cfg.num_minibatches
    common.check_batch_size(
        n // cfg.num_minibatches, mesh, cfg.num_microbatches, "data.batch_size*grpo.num_generations"
    )
    common.check_batch_size(b, mesh, 1, "data.batch_size")
    common.check_batch_size(b, sample_mesh, 1, "data.batch_size")
    if data.max_prompt_len + cfg.max_new_tokens > model_cfg.max_seq_len:
        raise ValueError(
            f"data.max_prompt_len={data.max_prompt_len} + grpo.max_new_tokens="
            f"{cfg.max_new_tokens} exceeds model.max_seq_len={model_cfg.max_seq_len}; "
            "shorten one of them or raise model.max_seq_len."
        )
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)
    task = tasks.for_config(config)
    # What train_accuracy counts as an answer.
    answer_format = config.eval.get("answer", task.answer)
    rm_cfg = reward_sources.reward_model_config(config, "grpo")
    sources = reward_sources.from_config(config, "grpo", mesh=mesh, init_from=init_from, task=task)
    use_ref = cfg.beta > 0 and cfg.kl_placement != "none"
    use_prime = process_rewards.enabled(cfg.get("process")) and cfg.process.source == "prime"
    # The preference evaluation compares with the reference, whatever the loss does;
    # PRIME's implicit rewards are log-ratios to it.
    keep_ref = use_ref or use_prime or tasks.WIN_RATE in task.evals
    num_updates = train.num_steps * updates_per_rollout
    optimizer = common.make_optimizer(config.optim, num_updates)
    param_specs = partition_specs(model_cfg, config.rules)
    lora_cfg = lora.from_config(config.get("lora"))
    adapter_specs = lora_cfg and lora.partition_specs(lora_cfg, model_cfg, config.rules)
    if lora_cfg is not None and use_prime:
        raise ValueError("grpo.process.source='prime' does not take LoRA yet; set lora.rank=0.")
    # With LoRA the frozen base is the reference: one copy of the weights.
    ref_key = "ref_params" if lora_cfg is None else lora.BASE
    policy = common.jit_policy_params(mesh, param_specs, lora_cfg)
    process, implicit_prm = None, None
    if use_prime:
        implicit_prm = prime.make(
            cfg.process,
            model_cfg,
            config.optim,
            train.num_steps,
            g,
            cfg.num_microbatches,
            cfg.logprob_chunk,
            param_specs,
            mesh,
        )
    else:
        process = process_rewards.make(cfg.get("process"), g, config.model, tokenizer, mesh)

    def init_fn(rng, rm_params):
        params = init_from if init_from is not None else init_params(model_cfg, rng)
        extras = {"ref_params": params} if keep_ref and lora_cfg is None else {}
        if rm_params is not None:
            extras["rm_params"] = rm_params
        if implicit_prm is not None:
            extras["prime"] = implicit_prm["init"](params)
        state = common.new_policy_state(params, optimizer, rng, lora_cfg, **extras)
        # Off-policy: the trainable params that sample the next rollout (theta_0 at first).
        return {**state, off_policy.BEHAVIOR: state["params"]} if pipelined else state

    def specs_fn(abstract):
        specs = common.state_specs(
            abstract, param_specs, optimizer, ("params", "ref_params"), adapter_specs
        )
        if implicit_prm is not None:
            specs["prime"] = implicit_prm["specs"]
        if pipelined:
            specs[off_policy.BEHAVIOR] = specs["params"]
        return specs

    init_state, abstract_state, shardings = rm_rewards.sharded_init(
        config, mesh, init_fn, specs_fn, rm_cfg, reward_sources.state_init(sources, "rm_params")
    )
    loss = functools.partial(grpo_loss.loss_fn, model_cfg=model_cfg, cfg=cfg)
    schedule = common.learning_rate_schedule(config.optim, num_updates)
    update = common.jit_step(
        common.make_update(loss, optimizer, cfg.num_microbatches, schedule, lora_cfg),
        mesh,
        shardings,
    )
    sampler = make_sampler(
        model_cfg,
        max_new_tokens=cfg.max_new_tokens,
        num_samples=g,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        eos_ids=tuple(tokenizer.eos_ids),
        pad_id=tokenizer.pad_id,
    )
    lp_temperature = cfg.temperature if cfg.temperature > 0 else 1.0
    env_cfg = cfg.get("env")
    collect_rollout = episodes.collector(cfg, model_cfg, sampler, data.name)

    def lp_fn(params, prompt, prompt_mask, response, mask, attention_mask=None):
        return response_logprobs(
            params,
            model_cfg,
            prompt,
            prompt_mask,
            response,
            mask,
            chunk_size=cfg.logprob_chunk,
            temperature=lp_temperature,
            attention_mask_NxR=attention_mask,
        )

    logprobs = jax.jit(lp_fn, out_shardings=parallel.batch_sharding(mesh))

    def global_prompts(seed_offset: int, start_step: int):
        return prompt_batches(
            train_source,
            tokenizer,
            batch_size=b,
            max_prompt_len=data.max_prompt_len,
            seed=config.seed + seed_offset,
            start_step=start_step,
        )

    def batches(start_step: int):
        # Every process reads the whole global batch (cheap: prompts only); off-policy
        # steps also take the next one, to dispatch its sampling.
        prompts = global_prompts(0, start_step)
        return off_policy.pairs(prompts) if pipelined else prompts

    collect_args = dict(mesh=mesh, tokenizer=tokenizer, num_generations=g)
    rollout_key = lambda index: jax.random.fold_in(jax.random.key(config.seed), index)
    pipeline = None
    if pipelined:
        pipeline = off_policy.Pipeline(
            sampler,
            sample_mesh,
            mesh,
            parallel.named(sample_mesh, param_specs),
            lambda index: jax.random.fold_in(rollout_key(index), 0),
            dict(tokenizer=tokenizer, num_generations=g),
        )

    def score(state, prompts, key, r=None):
        """Samples (unless given rollout `r`) and scores one global prompt batch: (state,
        Rollout, host per-row values, the reward sources' metrics)."""
        if r is None:
            r = collect_rollout(policy(state), prompts, key, **collect_args)
        host = {"response": r.host_response, "mask": r.host_mask}
        host["correct"] = verifiable.exact_match(r.texts, r.answers, answer_format)
        if process is not None:
            prompt_texts = tokenizer.decode_batch(prompts["prompt"], prompts["prompt_mask"])
            process_rewards.score_on_host(process, host, prompt_texts, r.texts, g)
        prompts_N = reward_sources.prompt_texts(tokenizer, prompts, g)
        updates, host["reward"], terms = reward_sources.score(sources, state, r, prompts_N)
        if "reward_learned" not in terms:  # Alone, the verifiable rewards are the reward.
            terms.pop("reward_verifiable", None)
        return {**state, **updates}, r, host, terms

    def collect(state, prompts, rollout_index):
        """One rollout, refilled with fresh prompts under DAPO dynamic sampling."""
        key = rollout_key(rollout_index)
        state, r, host, terms = score(state, prompts, jax.random.fold_in(key, 0))
        stats = {"reward": host["reward"].mean(), "correct": host["correct"].mean()}
        if not cfg.dynamic_sampling:
            return state, r, host, stats, terms
        scored, kept = [(r, host)], [_kept_rows(host, g)]
        for attempt in range(1, cfg.max_refills + 1):
            if sum(len(x) for x in kept) >= n:
                break
            extra_prompts = next(global_prompts(attempt, rollout_index))
            state, *extra, _ = score(state, extra_prompts, jax.random.fold_in(key, attempt))
            scored.append(tuple(extra))
            kept.append(_kept_rows(scored[-1][1], g))
        filled = min(sum(len(x) for x in kept), n)
        stats["kept_groups"] = filled / g
        merged = {
            k: np.concatenate([h[k][i] for (_, h), i in zip(scored, kept, strict=True)])[:n]
            for k in host
        }
        if filled < n:  # Not enough informative groups: pad with zero-weight rows.
            merged = {k: _pad_rows(v, n) for k, v in merged.items()}
        return state, rollout.take_rows([x for x, _ in scored], kept, n, mesh), merged, stats, terms

    def collect_stale(state, prompts, rollout_index):
        """Rollout k (sampled with theta_{k-1}, the state's behavior params), scored; rollout
        k+1 dispatched with theta_k first. Returns collect's values and theta_k."""
        prompts, following = prompts
        behavior = lambda: policy({**state, "params": state[off_policy.BEHAVIOR]})
        r = pipeline.take(behavior, prompts, rollout_index)
        theta = off_policy.snapshot(state["params"])  # the update donates state["params"]
        if rollout_index + 1 < train.num_steps:
            pipeline.start(policy({**state, "params": theta}), following, rollout_index + 1)
        state, r, host, terms = score(state, prompts, None, r)
        stats = {"reward": host["reward"].mean(), "correct": host["correct"].mean()}
        return state, r, host, stats, terms, theta

    def step(state, prompts):
        t0 = time.perf_counter()
        rollout_index = int(state["step"]) // updates_per_rollout
        theta = None
        if pipeline is None:
            state, r, host, stats, terms = collect(state, prompts, rollout_index)
        else:
            state, r, host, stats, terms, theta = collect_stale(state, prompts, rollout_index)
        t1 = time.perf_counter()
        lo, hi = parallel.process_rows(mesh, n)
        arrays = r.rows()
        ref_lp = None
        if use_ref or (use_prime and lp_temperature == 1.0):
            ref_lp = logprobs(
                state[ref_key],
                arrays["prompt"],
                arrays["prompt_mask"],
                arrays["response"],
                arrays["mask"],
                arrays.get("attention_mask"),
            )
        rewards = host["reward"].astype(np.float32)
        metrics = {}
        if use_ref and cfg.kl_placement == "reward":
            seq_kl = parallel.to_host(grpo_loss.sequence_kl(r.lp_sample, ref_lp, arrays["mask"]))
            rewards = rewards - cfg.beta * seq_kl
            metrics["seq_kl"] = float(seq_kl.mean())
        adv = np.asarray(
            advantages.group_advantages(
                jnp.asarray(rewards.reshape(-1, g)), cfg.advantage, cfg.adv_eps
            )
        ).reshape(-1)
        adv = adv * (host["mask"].sum(1) > 0)
        if process is not None:
            adv, process_metrics = process_rewards.advantages(process, host, arrays, adv)
            metrics.update(process_metrics)
        if implicit_prm is not None:
            prime_state, adv, prime_metrics = prime.step(
                implicit_prm,
                state["prime"],
                state["ref_params"],
                arrays,
                host,
                rewards,
                mesh,
                lp_ref=ref_lp if lp_temperature == 1.0 else None,
            )
            state = {**state, "prime": prime_state}
            metrics.update(prime_metrics)
        arrays["adv"] = parallel.shard_batch({"adv": adv[lo:hi].astype(np.float32)}, mesh, n)["adv"]
        if use_ref:
            arrays["lp_ref"] = ref_lp
        if updates_per_rollout > 1 or pipeline is not None:  # theta_k's log-probs
            lp_now = logprobs(
                policy(state),
                arrays["prompt"],
                arrays["prompt_mask"],
                arrays["response"],
                arrays["mask"],
                arrays.get("attention_mask"),
            )
            if updates_per_rollout > 1:
                arrays["lp_old"] = lp_now
            if pipeline is not None:
                arrays["is_weight"], is_metrics = off_policy.weights(off, lp_now, r)
                metrics.update(is_metrics)
        jax.block_until_ready(arrays)
        t2 = time.perf_counter()
        for epoch in range(cfg.num_epochs):
            order = common.minibatch_order(
                config.seed, rollout_index, epoch, n, cfg.num_minibatches
            )
            for mb in np.array_split(order, cfg.num_minibatches):
                state, update_metrics = update(state, common.gather_rows(arrays, mb, mesh))
        update_metrics = common.host_scalars(update_metrics)
        t3 = time.perf_counter()
        if theta is not None:
            state = {**state, off_policy.BEHAVIOR: theta}
        metrics.update(update_metrics)
        metrics.update(
            reward=float(stats["reward"]),
            train_accuracy=float(stats["correct"]),
            response_len=float(host["mask"].sum(1).mean()),
            time_rollout=t1 - t0,
            time_reference=t2 - t1,
            time_update=t3 - t2,
            tokens=float(host["mask"].sum()),
        )
        if r.episode is not None:  # tool metrics, per episode
            metrics.update({k: float(np.mean(v)) for k, v in r.episode.items()})
        if "kept_groups" in stats:
            metrics["kept_groups"] = float(stats["kept_groups"])
        metrics.update(terms)
        return state, metrics

    if episodes.enabled(env_cfg):  # held-out episodes, greedy, with the same tools
        policy_eval = episodes.make_eval(
            config, env_cfg, mesh, model_cfg, tokenizer, test_source, answer_format
        )
    else:
        policy_eval = rm_rewards.make_policy_eval(
            config, mesh, model_cfg, tokenizer, test_source, task
        )
    return common.Trainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=batches,
        step=step,
        evaluate=lambda state: policy_eval(policy(state), state.get(ref_key)),
    )


def _kept_rows(host: dict[str, np.ndarray], g: int) -> np.ndarray:
    """The row indices of the groups whose rewards differ (DAPO's dynamic sampling)."""
    keep_B = grpo_loss.group_has_spread(host["reward"].reshape(-1, g))
    return np.flatnonzero(np.repeat(keep_B, g))


def _pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    """Pads with zero rows (an empty response mask: no loss, no denominator)."""
    pad = np.zeros((n - len(x), *x.shape[1:]), x.dtype)
    return np.concatenate([x, pad])
