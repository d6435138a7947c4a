"""Seconds per PPO step on bench model B, by phase (the PPO counterpart of bench.grpo_step).

Workload: 8 prompts of 32 random tokens, 8 completions
each of exactly 64 new tokens (EOS disabled), fp32, temperature 1. The policy is
bench model B with a value head on its trunk (ppo.critic="value_head"), the
reference is its copy, and the reward model is a scalar-head model of the same
shape (no LM head, random weights) giving one score per response, read at its
last token. PPO settings are ppo_loss.default_config()'s InstructGPT-like ones:
a per-token k1 KL penalty in the reward with a fixed beta 0.05, gamma 1,
lambda 0.95, clip 0.2, value clip 0.2, vf_coef 0.1, no entropy bonus,
token-mean aggregation, whitened advantages, raw scores (no normalization or
clipping), and 4 epochs x 1 minibatch = 4 jitted updates of policy and value
head per rollout (--epochs, --minibatches); AdamW as bench.grpo_step has it
(constant lr 1e-6, global-norm clipping 1.0).

A step has five phases: sampling; scoring (the reward model's forward, then
the per-token KL penalty that makes the token rewards); logprobs (the
sampling policy's log-probs and values from one forward, and the reference's
log-probs, before any update); gae (GAE and advantage whitening); update.
They are built from the calls of `rl_lm.algos.ppo.make_trainer`'s step
(make_sampler, reward_model.score_responses, ppo_loss.response_outputs,
response_logprobs, ppo_loss.loss_fn through common.make_update / jit_step,
grpo's minibatch permutation), because the trainer reads tfds prompts through a
tokenizer; only its one jitted `ppo_loss.rollout_targets` is split in two
(token_rewards, then core.gae and whitening) to time the KL penalty apart, and
the first step checks the split against it. Rows are split over the CPU
devices (data parallel) and timed on one device too. The first step, which
compiles, is reported separately; figures are medians over repeats. The
installed TRL is probed for a PPOTrainer; no side-by-side run exists, so no
peer ratio is printed. As an in-process reference, the phase shares and, with
--with_grpo, the ratio to bench.grpo_step's GRPO step on the same workload.

    python -m bench.ppo_step --repeats 3 --with_grpo
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from bench import grpo_step
from bench.grpo_step import _phase_text
from rl_lm import parallel
from rl_lm.algos import common, ppo_loss, reward_model
from rl_lm.core import gae, kl, masks
from rl_lm.models.config import ModelConfig, get_model_config
from rl_lm.models.transformer import init_params
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import make_sampler

ROLLOUT_KEYS = ("prompt", "prompt_mask", "response", "mask")
PHASES = ("sampling", "scoring", "logprobs", "gae", "update")


def _ppo_config(args):
    cfg = ppo_loss.default_config()
    cfg.update(
        num_generations=args.samples, max_new_tokens=args.new_tokens,
        num_epochs=args.epochs, num_minibatches=args.minibatches,
    )  # fmt: skip
    ppo_loss.validate(cfg)
    return cfg


def model_configs(cfg: ModelConfig) -> tuple[ModelConfig, ModelConfig]:
    """(policy with a value head, reward model) configs of bench model `cfg`'s shape."""
    return cfg.replace(scalar_head=True), cfg.replace(lm_head=False, scalar_head=True)


def make_ppo_step(policy, rm, cfg: ModelConfig, mesh: Mesh, args):
    """(init_state(rng), step(state, prompt_BxP, key, check) -> (state, metrics, phase seconds))."""
    pcfg = _ppo_config(args)
    policy_cfg, rm_cfg = model_configs(cfg)
    b, g = args.prompts, pcfg.num_generations
    n = b * g
    if n % pcfg.num_minibatches:
        raise ValueError(f"{n} rows do not split into {pcfg.num_minibatches} equal minibatches.")
    common.check_batch_size(n // pcfg.num_minibatches, mesh, 1, "rows per minibatch")
    optimizer = common.make_optimizer(grpo_step.OPTIM, 1000)
    init_state, _, shardings = common.sharded_init(
        mesh,
        lambda rng: common.new_state(
            {"policy": policy},
            optimizer,
            rng,
            ref_params=policy,
            rm_params=rm,
            kl_coef=jnp.asarray(pcfg.kl.coef, jnp.float32),
            reward_stats=ppo_loss.init_reward_stats(),
        ),  # fmt: skip
        lambda abstract: jax.tree.map(lambda _: P(), abstract),
    )
    loss = functools.partial(ppo_loss.loss_fn, policy_cfg=policy_cfg, cfg=pcfg)
    update = common.jit_step(
        common.make_update(loss, optimizer, pcfg.num_microbatches), mesh, shardings
    )
    sampler = make_sampler(
        policy_cfg,
        max_new_tokens=pcfg.max_new_tokens,
        num_samples=g,
        temperature=pcfg.temperature,
        top_k=pcfg.top_k,
        top_p=pcfg.top_p,
        eos_ids=(),
        pad_id=grpo_step.PAD,
    )
    rows = parallel.batch_sharding(mesh)
    rm_scores = jax.jit(
        lambda p, batch: reward_model.score_responses(p, rm_cfg, *(batch[k] for k in ROLLOUT_KEYS)),
        out_shardings=rows,
    )
    old_outputs = jax.jit(
        lambda p, batch: ppo_loss.response_outputs(p, batch, policy_cfg, pcfg, with_entropy=False),
        out_shardings=rows,
    )
    ref_logprobs = jax.jit(
        lambda p, batch: response_logprobs(
            p,
            policy_cfg,
            *(batch[k] for k in ROLLOUT_KEYS),
            chunk_size=pcfg.logprob_chunk,
            temperature=pcfg.temperature,
        ),
        out_shardings=rows,
    )

    @functools.partial(jax.jit, out_shardings=rows)
    def kl_rewards(score_N, lp_NxR, lp_ref_NxR, mask_NxR, beta):
        m = mask_NxR.astype(jnp.float32)
        kl_NxR = kl.kl_estimate(pcfg.kl.estimator, lp_NxR, lp_ref_NxR) * m
        return ppo_loss.token_rewards(score_N, kl_NxR, m, beta)

    @functools.partial(jax.jit, out_shardings=rows)
    def advantages(r_NxR, values_NxR, mask_NxR):
        m = mask_NxR.astype(jnp.float32)
        adv_NxR, returns_NxR = gae.gae(r_NxR, values_NxR, m, pcfg.gamma, pcfg.lam)
        if pcfg.whiten_advantages:
            adv_NxR = masks.masked_whiten(adv_NxR, m)
        return {"adv": adv_NxR, "returns": returns_NxR}

    targets = jax.jit(lambda *a: ppo_loss.rollout_targets(*a, pcfg))

    def step(state, prompt_BxP, key, check=False):
        t0 = time.perf_counter()
        arrays = parallel.shard_batch(
            {"prompt": prompt_BxP, "prompt_mask": np.ones_like(prompt_BxP)}, mesh, b
        )
        out = sampler(state["params"]["policy"], arrays["prompt"], arrays["prompt_mask"], key)
        outs = (out.prompt, out.prompt_mask, out.tokens, out.mask)
        host = {k: parallel.to_host(x) for k, x in zip(ROLLOUT_KEYS, outs, strict=True)}
        arrays = parallel.shard_batch(host, mesh, n)
        t1 = time.perf_counter()
        score, _ = ppo_loss.normalize_rewards(
            parallel.to_host(rm_scores(state["rm_params"], arrays)),
            state["reward_stats"],
            pcfg.reward.normalize,
            pcfg.reward.clip,
            pcfg.reward.eps,
        )
        score_N = jax.block_until_ready(parallel.shard_batch({"s": score}, mesh, n)["s"])
        t2 = time.perf_counter()
        arrays["lp_old"], arrays["values"] = old_outputs(state["params"], arrays)
        lp_ref = jax.block_until_ready(ref_logprobs(state["ref_params"], arrays))
        t3 = time.perf_counter()
        beta = state["kl_coef"]
        r_NxR = jax.block_until_ready(
            kl_rewards(score_N, arrays["lp_old"], lp_ref, arrays["mask"], beta)
        )
        t4 = time.perf_counter()
        arrays.update(advantages(r_NxR, arrays["values"], arrays["mask"]))
        jax.block_until_ready(arrays)
        t5 = time.perf_counter()
        for epoch in range(pcfg.num_epochs):
            order = common.minibatch_order(0, 0, epoch, n, pcfg.num_minibatches)
            for mb in np.array_split(order, pcfg.num_minibatches):
                state, metrics = update(state, common.gather_rows(arrays, mb, mesh))
        metrics = common.host_scalars(metrics)
        t6 = time.perf_counter()
        metrics.update(score=float(score.mean()), tokens=float(host["mask"].sum()))
        if check:  # The trainer's one jitted call against our split (beta was donated: reread).
            want, stats = targets(
                score_N,
                arrays["lp_old"],
                lp_ref,
                arrays["values"],
                arrays["mask"],
                state["kl_coef"],
            )
            metrics["targets_diff"] = max(
                float(jnp.max(jnp.abs(want[k] - arrays[k]))) for k in ("adv", "returns")
            )
            metrics["kl"] = float(stats["kl"])
        seconds = (t1 - t0, (t2 - t1) + (t4 - t3), t3 - t2, t5 - t4, t6 - t5)
        return state, metrics, dict(zip(PHASES, seconds, strict=True))

    return init_state, step


def bench_ppo(policy, rm, cfg: ModelConfig, prompts, args, num_devices: int) -> tuple:
    """Prints our PPO first-step and median per-phase seconds on `num_devices`.

    Returns:
      (wall, CPU) seconds per step and seconds by phase, medians.
    """
    mesh = parallel.make_mesh(
        {"data": num_devices, "fsdp": 1, "tensor": 1}, jax.devices()[:num_devices]
    )
    name = f"ppo ({num_devices} device{'s' if num_devices > 1 else ''})"
    init_state, step = make_ppo_step(policy, rm, cfg, mesh, args)
    state = init_state(jax.random.key(0))
    start = time.perf_counter()
    state, m, phases = step(state, prompts, jax.random.key(1), check=True)
    print(
        f"{name}: first step (compilation included) {time.perf_counter() - start:.2f} s "
        f"({_phase_text(phases)}); loss {m['loss']:.4f}, vf_loss {m['vf_loss']:.4f}, "
        f"approx_kl {m['approx_kl']:.2e}, clipfrac {m['clipfrac']:.3f}, score {m['score']:.3f}, "
        f"kl {m['kl']:.2e}, {m['tokens'] / len(prompts) / args.samples:.0f} tokens per "
        f"completion; max |adv, returns - rollout_targets'| = {m['targets_diff']:.1e}"
    )
    return grpo_step.time_repeats(name, step, state, prompts, args.repeats)


def trl_ppo_line() -> str:
    """What the installed TRL offers as a PPO peer, in one line."""
    try:
        import trl
    except ImportError as e:
        return f"trl: not installed ({e}): no ratio"
    for where in ("trl", "trl.experimental.ppo"):
        try:
            with warnings.catch_warnings():  # trl.experimental warns on import.
                warnings.simplefilter("ignore")
                found = importlib.import_module(where).PPOTrainer
        except (ImportError, AttributeError, RuntimeError):
            continue
        return (
            f"TRL {trl.__version__} has {where}.PPOTrainer ({found.__module__}), but running it "
            "side by side is not implemented for this version: no ratio"
        )
    return f"TRL {trl.__version__} has no PPOTrainer: no ratio"


def main():
    defaults = ppo_loss.default_config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=defaults.num_epochs)
    parser.add_argument("--minibatches", type=int, default=defaults.num_minibatches)
    parser.add_argument(
        "--devices",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU devices for our data-parallel run (also timed on one device)",
    )
    parser.add_argument(
        "--with_grpo",
        action="store_true",
        help="also time bench.grpo_step's GRPO step on the same workload and give the ratio",
    )
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.devices)

    cfg = get_model_config("bench_b")
    policy_cfg, rm_cfg = model_configs(cfg)
    print(
        f"{len(jax.devices())} CPU devices; model bench_b, policy with value head "
        f"{policy_cfg.num_params():,} params, reward model {rm_cfg.num_params():,} params, fp32"
    )
    print(
        f"workload: {args.prompts} prompts x {args.samples} completions, {args.prompt_len}-token "
        f"prompts, {args.new_tokens} new tokens; beta {defaults.kl.coef} (k1 in the reward), "
        f"{args.epochs} epochs x {args.minibatches} minibatches; median of {args.repeats}"
    )
    policy = init_params(policy_cfg, jax.random.key(0))
    rm = init_params(rm_cfg, jax.random.key(1))
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (args.prompts, args.prompt_len))
    prompts = prompts.astype(np.int32)
    counts = sorted({1, args.devices})
    ours = min((bench_ppo(policy, rm, cfg, prompts, args, n) for n in counts), key=lambda r: r[0])
    total = sum(ours[2].values())
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in ours[2].items())
    print(f"ppo phase shares (fastest setting; of the summed phase medians): {shares}")
    if args.with_grpo:
        trunk = {k: v for k, v in policy.items() if k != "score"}  # Same weights, no value head.
        print("grpo on the same workload (bench.grpo_step.bench_ours; its lines say 'ours'):")
        theirs = min(
            (grpo_step.bench_ours(trunk, cfg, prompts, args, n) for n in counts),
            key=lambda r: r[0],
        )
        print(
            f"ratio ppo / grpo seconds per step (fastest setting of each): "
            f"{ours[0] / theirs[0]:.2f}x (CPU seconds: {ours[1] / theirs[1]:.2f}x; "
            f"sampling {ours[2]['sampling'] / theirs[2]['sampling']:.2f}x, update "
            f"{ours[2]['update'] / theirs[2]['update']:.2f}x)"
        )
    print(trl_ppo_line())


if __name__ == "__main__":
    main()
