"""GRPO's on-policy loop on the device: K steps in one compiled call (`train.on_device=True`).

The host loop (`rl_lm.algos.grpo`) decodes every rollout to text and scores it
on the host; here a step's sampling (`make_sampler`'s sampler), its exact-match
reward (`rl_lm.rewards.token_match`, on the token ids), group advantages,
reference log-probs and updates (`common.make_update` of `grpo_loss.loss_fn`)
run inside one `jax.lax.scan` over the steps of a chunk. Between chunks the
loop (`rl_lm.train.loop`) logs, evaluates, checkpoints and resumes as for any
trainer: the trainer's `run_chunk` takes the chunk's host prompt batches (the
same `prompt_batches` the host loop reads) and returns one metrics row per step.

The host supplies what the host loop draws with numpy: the prompts, their
normalized answers as bytes, and DAPO-style minibatch orders
(`common.minibatch_order`); the rollout key is the host loop's,
fold_in(fold_in(key(seed), rollout index), 0), computed on the device. So one
seed through this loop gives the host loop's metrics and parameters up to float
rounding (tests/algos/test_grpo_device.py).

`chunk_fn(state, xs, seed)` is pure, so `jax.vmap` runs several seeds at once
(bench/on_device.py). Configs it cannot run fail at construction with one line
naming the fields (`unsupported`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel, tasks
from rl_lm.algos import common, grpo_loss, process_rewards, rm_rewards
from rl_lm.core import advantages
from rl_lm.data import load_source, prompt_batches
from rl_lm.models.tokenizer import ByteTokenizer, check_vocab, load_tokenizer
from rl_lm.models.transformer import Params, init_params, partition_specs
from rl_lm.rewards import token_match
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import make_sampler

# The built-in rewards that read token ids, and the answer format each checks.
DEVICE_REWARDS = {"exact_match": "any", "marked_match": "marked"}


@dataclasses.dataclass(frozen=True)
class ChunkedTrainer(common.Trainer):
    """A Trainer that also runs several steps per call (the loop uses it when present).

    Attributes:
      chunk_steps: the most steps one `run_chunk` call runs.
      run_chunk: (state, [host batch] * k) -> (state after k steps, k metrics rows
        of python floats); the state argument is donated.
      chunk_fn: (state, xs, seed) -> (state, stacked metrics), pure: the compiled body.
      chunk_inputs: (first rollout index, [host batch] * k, seed) -> xs of chunk_fn.
    """

    chunk_steps: int = 1
    run_chunk: Callable[[common.State, Sequence[common.Batch]], Any] | None = None
    chunk_fn: Callable[..., Any] | None = None
    chunk_inputs: Callable[..., Any] | None = None


def unsupported(config: Any) -> list[str]:
    """What in `config` the on-device loop cannot run (empty when it can)."""
    cfg, problems = config.grpo, []
    if config.algo != "grpo":
        problems.append(f"config.algo={config.algo!r} (only grpo runs on device)")
        return problems
    task = tasks.for_config(config)
    if task.true_reward is not None or tuple(task.evals) != (tasks.EXACT_MATCH,):
        problems.append(f"task {task.name!r} (its rewards are host functions)")
    if config.tokenizer != "byte":
        problems.append(f"tokenizer={config.tokenizer!r} (the device reward reads byte ids)")
    if cfg.reward_source != "verifiable":
        problems.append(f"grpo.reward_source={cfg.reward_source!r} (reward models)")
    if process_rewards.enabled(cfg.get("process")):
        problems.append(f"grpo.process.source={cfg.process.source!r} (process rewards)")
    if cfg.dynamic_sampling:
        problems.append("grpo.dynamic_sampling=True (refills are host decisions)")
    if cfg.overlong_cache:
        problems.append(f"grpo.overlong_cache={cfg.overlong_cache} (host numpy shaping)")
    if cfg.get("reward_sources"):
        problems.append("grpo.reward_sources (reward sources are host functions)")
    env = cfg.get("env")
    if env is not None and env.get("name"):
        problems.append(f"grpo.env.name={env.name!r} (tool calls run on the host)")
    if cfg.get("reward_fns", ""):
        problems.append(f"grpo.reward_fns={cfg.reward_fns!r} (user functions read text)")
    extra = sorted(set(cfg.rewards) - set(DEVICE_REWARDS))
    if extra:
        problems.append(f"grpo.rewards {extra} (device rewards: {sorted(DEVICE_REWARDS)})")
    answer = config.eval.get("answer", task.answer)
    if answer not in token_match.FORMATS:
        problems.append(f"eval.answer={answer!r} (device formats: {token_match.FORMATS})")
    lora = config.get("lora")
    if lora is not None and lora.get("rank"):
        problems.append(f"lora.rank={lora.rank} (LoRA adapters)")
    if jax.process_count() > 1:
        problems.append(f"{jax.process_count()} processes (single-process only)")
    if config.train.get("chunk_steps", 1) < 1:
        problems.append(f"train.chunk_steps={config.train.chunk_steps} must be >= 1")
    return problems


def make_trainer(config: Any, mesh: Mesh, init_from: Params | None = None) -> ChunkedTrainer:
    """The on-device GRPO trainer of `config` (as `grpo.make_trainer`, plus `run_chunk`).

    Raises:
      ValueError: one line naming what the on-device loop cannot run.
    """
    problems = unsupported(config)
    if problems:
        raise ValueError(
            "train.on_device=True cannot run " + "; ".join(problems) + ": it runs GRPO with "
            "exact-match rewards on byte-level tasks; set train.on_device=False."
        )
    cfg, data, train = config.grpo, config.data, config.train
    grpo_loss.validate(cfg)
    model_cfg = common.model_config(config.model)
    tokenizer = load_tokenizer(config.tokenizer)
    assert isinstance(tokenizer, ByteTokenizer)
    check_vocab(tokenizer, model_cfg.vocab_size)
    g, b = cfg.num_generations, data.batch_size
    n = b * g
    epochs, minibatches = cfg.num_epochs, cfg.num_minibatches
    updates_per_rollout = epochs * minibatches
    common.check_batch_size(
        n // minibatches, mesh, cfg.num_microbatches, "data.batch_size*grpo.num_generations"
    )
    common.check_batch_size(b, mesh, 1, "data.batch_size")
    if data.max_prompt_len + cfg.max_new_tokens > model_cfg.max_seq_len:
        raise ValueError(
            f"data.max_prompt_len={data.max_prompt_len} + grpo.max_new_tokens="
            f"{cfg.max_new_tokens} exceeds model.max_seq_len={model_cfg.max_seq_len}."
        )
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)
    task = tasks.for_config(config)
    answer_format = config.eval.get("answer", task.answer)
    use_ref = cfg.beta > 0 and cfg.kl_placement != "none"
    num_updates = train.num_steps * updates_per_rollout
    optimizer = common.make_optimizer(config.optim, num_updates)
    param_specs = partition_specs(model_cfg, config.rules)

    def init_fn(rng):
        params = init_from if init_from is not None else init_params(model_cfg, rng)
        return common.new_state(
            params, optimizer, rng, **({"ref_params": params} if use_ref else {})
        )

    def specs_fn(abstract):
        return common.state_specs(abstract, param_specs, optimizer, ("params", "ref_params"))

    init_state, abstract_state, shardings = common.sharded_init(mesh, init_fn, specs_fn)
    loss = functools.partial(grpo_loss.loss_fn, model_cfg=model_cfg, cfg=cfg)
    schedule = common.learning_rate_schedule(config.optim, num_updates)
    update = common.make_update(loss, optimizer, cfg.num_microbatches, schedule)
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
    rows_sharding = parallel.batch_sharding(mesh)
    # np.array_split's minibatch slices, as the host loop cuts each epoch's order.
    slices = [(int(s[0]), int(s[-1]) + 1) for s in np.array_split(np.arange(n), minibatches)]
    match = functools.partial(
        token_match.exact_match,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_ids=tuple(tokenizer.eos_ids),
    )

    def logprobs(params, rows):
        lp = response_logprobs(
            params,
            model_cfg,
            rows["prompt"],
            rows["prompt_mask"],
            rows["response"],
            rows["mask"],
            chunk_size=cfg.logprob_chunk,
            temperature=lp_temperature,
        )
        return jax.lax.with_sharding_constraint(lp, rows_sharding)

    def one_step(seed, state, xs):
        """One GRPO step, as `grpo.make_trainer`'s step computes it."""
        rollout_index = state["step"] // updates_per_rollout
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), rollout_index), 0)
        prompt = jax.lax.with_sharding_constraint(xs["prompt"], rows_sharding)
        prompt_mask = jax.lax.with_sharding_constraint(xs["prompt_mask"], rows_sharding)
        out = sampler(state["params"], prompt, prompt_mask, key)
        rows = {
            "prompt": out.prompt,
            "prompt_mask": out.prompt_mask,
            "response": out.tokens,
            "mask": out.mask,
        }
        rows = jax.lax.with_sharding_constraint(rows, rows_sharding)
        answer = jnp.repeat(xs["answer"], g, axis=0)
        answer_len = jnp.repeat(xs["answer_len"], g)
        checks = {fmt: match(out.tokens, out.mask, answer, answer_len, answer=fmt) for fmt in
                  {*(DEVICE_REWARDS[k] for k in cfg.rewards), answer_format}}  # fmt: skip
        reward = jnp.zeros((n,), jnp.float32)
        for name, weight in cfg.rewards.items():
            reward = reward + jnp.float32(weight) * checks[DEVICE_REWARDS[name]]
        lengths = jnp.sum(out.mask, axis=1)
        metrics = {}
        rewards = reward
        ref_lp = logprobs(state["ref_params"], rows) if use_ref else None
        if use_ref and cfg.kl_placement == "reward":
            seq_kl = grpo_loss.sequence_kl(out.logprobs, ref_lp, rows["mask"])
            rewards = rewards - cfg.beta * seq_kl
            metrics["seq_kl"] = jnp.mean(seq_kl)
        adv = advantages.group_advantages(rewards.reshape(-1, g), cfg.advantage, cfg.adv_eps)
        batch = {**rows, "adv": adv.reshape(-1) * (lengths > 0)}
        if use_ref:
            batch["lp_ref"] = ref_lp
        if updates_per_rollout > 1:
            batch["lp_old"] = logprobs(state["params"], rows)
        for epoch in range(epochs):
            for lo, hi in slices:
                if minibatches == 1:
                    part = batch
                else:
                    rows_idx = xs["order"][epoch, lo:hi]
                    part = jax.tree.map(lambda x, i=rows_idx: x[i], batch)
                    part = jax.lax.with_sharding_constraint(part, rows_sharding)
                state, update_metrics = update(state, part)
        metrics.update(update_metrics)
        metrics.update(
            reward=jnp.mean(reward),
            train_accuracy=jnp.mean(checks[answer_format]),
            response_len=jnp.mean(lengths.astype(jnp.float32)),
            tokens=jnp.sum(lengths).astype(jnp.float32),
        )
        return state, metrics

    def chunk_fn(state, xs, seed):
        """K steps: xs holds [K, ...] inputs (see `chunk_inputs`); metrics come back [K]."""
        return jax.lax.scan(functools.partial(one_step, seed), state, xs)

    def chunk_inputs(first_rollout: int, prompts: Sequence[common.Batch], seed: int):
        xs = {k: np.stack([p[k] for p in prompts]) for k in ("prompt", "prompt_mask")}
        encoded = [token_match.encode_answers(p["answer"], cfg.max_new_tokens) for p in prompts]
        xs["answer"] = np.stack([a for a, _ in encoded])
        xs["answer_len"] = np.stack([length for _, length in encoded])
        if minibatches > 1:
            xs["order"] = np.stack(
                [
                    [
                        common.minibatch_order(seed, first_rollout + i, e, n, minibatches)
                        for e in range(epochs)
                    ]  # fmt: skip
                    for i in range(len(prompts))
                ]
            ).astype(np.int32)
        return xs

    replicated = parallel.replicated(mesh)
    compiled = jax.jit(
        chunk_fn,
        in_shardings=(shardings, replicated, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )

    def run_chunk(state, prompts):
        first = int(state["step"]) // updates_per_rollout
        xs = chunk_inputs(first, prompts, config.seed)
        t0 = time.perf_counter()
        state, stacked = compiled(state, xs, jnp.int32(config.seed))
        stacked = jax.device_get(stacked)
        seconds = (time.perf_counter() - t0) / len(prompts)
        rows = [{k: float(v[i]) for k, v in stacked.items()} for i in range(len(prompts))]
        for row in rows:
            row["time_step"] = seconds
        return state, rows

    def step(state, prompts):
        state, rows = run_chunk(state, [prompts])
        return state, rows[0]

    def batches(start_step: int):
        return prompt_batches(
            train_source,
            tokenizer,
            batch_size=b,
            max_prompt_len=data.max_prompt_len,
            seed=config.seed,
            start_step=start_step,
        )

    policy_eval = rm_rewards.make_policy_eval(config, mesh, model_cfg, tokenizer, test_source, task)
    return ChunkedTrainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=batches,
        step=step,
        evaluate=lambda state: policy_eval(state["params"], state.get("ref_params")),
        chunk_steps=int(train.get("chunk_steps", 1)),
        run_chunk=run_chunk,
        chunk_fn=chunk_fn,
        chunk_inputs=chunk_inputs,
    )
