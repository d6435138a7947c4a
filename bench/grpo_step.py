"""Seconds per GRPO step on bench model B, by phase, side by side with TRL's GRPOTrainer.

Workload: 8 prompts of 32 random tokens, 8 completions
each of exactly 64 new tokens (EOS disabled on both sides), fp32, temperature 1;
beta 0.04 with a reference model, one update per rollout (num_iterations 1),
the per-sequence token-mean loss (TRL loss_type="grpo"), group-std advantages,
AdamW at a constant lr 1e-6 with global-norm clipping 1.0. The reward, the
fraction of even token ids in a completion, is the same host function on both
sides. A step has four phases: sampling, scoring (reward and advantages),
reference log-probs, and the update (policy forward, backward and optimizer).

Ours runs the phases of `rl_lm.algos.grpo.make_trainer`'s step, built from the
same library calls with the same settings (make_sampler, the jitted
response_logprobs of the reference, group_advantages, grpo_loss.loss_fn through
common.make_update / jit_step), because the trainer reads its prompts from a
tfds dataset through its tokenizer and scores decoded text, which cannot give
32-token prompts of vocab 512, exactly 64 new tokens or an id-level reward. Our
rows are split over the CPU devices (data parallel) and timed on one device too;
the ratio uses the faster. The first step, which compiles, is reported
separately; figures are medians over repeats. When trl imports, GRPOTrainer runs
the same weights as a LlamaForCausalLM (vLLM and gradient checkpointing off,
min_new_tokens=64) on the same ids in the same process, once per torch thread
count (all cores and one: under load one thread can be far faster). Its phases
are timed by wrapping its methods (_generate, _calculate_rewards, the reference
call of _get_per_token_logps_and_entropies); its update is the step less
_generate_and_score_completions, whose remainder is printed as bookkeeping. A
`ratio` line compares the fastest setting of each (wall seconds, then CPU
seconds, which tell a busy machine from a slow program), and a last line gives
TRL's seconds over ours for each phase.

    python -m bench.grpo_step --repeats 3
    python -m bench.grpo_step --off_policy   # off-policy sampling overlapped: bench/off_policy.py
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from bench import off_policy
from rl_lm import parallel
from rl_lm.algos import common, grpo_loss
from rl_lm.core import advantages
from rl_lm.models.config import ModelConfig, get_model_config
from rl_lm.models.transformer import init_params, jit_logits
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import make_sampler

PAD, UNK, EOS = 0, 1, 2  # ids of the word-level tokenizer TRL needs; content ids are >= 3
BETA = 0.04
OPTIM = dict(
    lr=1e-6,
    warmup_steps=0,
    schedule="constant",
    end_lr_ratio=1.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    grad_clip=1.0,
)
PHASES = ("sampling", "scoring", "reference", "update")


def even_fraction(tokens_NxR: np.ndarray, mask_NxR: np.ndarray) -> np.ndarray:
    """The bench reward: the fraction of a completion's tokens whose id is even."""
    even = ((tokens_NxR % 2 == 0) * mask_NxR).sum(1)
    return (even / np.maximum(mask_NxR.sum(1), 1)).astype(np.float32)


def _grpo_config(args):
    cfg = grpo_loss.default_config()
    cfg.update(
        num_generations=args.samples, max_new_tokens=args.new_tokens, temperature=1.0,
        beta=BETA, kl_placement="loss", num_epochs=1, num_minibatches=1,
        aggregation="seq-mean-token-mean", advantage="grpo",
    )  # fmt: skip
    grpo_loss.validate(cfg)
    return cfg


def make_grpo_step(params, cfg: ModelConfig, mesh: Mesh, args):
    """(init_state(rng), step(state, prompt_BxP, key) -> (state, metrics, phase seconds))."""
    gcfg = _grpo_config(args)
    b, g = args.prompts, gcfg.num_generations
    n = b * g
    optimizer = common.make_optimizer(OPTIM, 1000)
    replicated = jax.tree.map(lambda _: P(), params)
    init_state, _, shardings = common.sharded_init(
        mesh,
        lambda rng: common.new_state(params, optimizer, rng, ref_params=params),
        lambda a: common.state_specs(a, replicated, optimizer, ("params", "ref_params")),
    )
    loss = lambda p, batch: grpo_loss.loss_fn(p, batch, model_cfg=cfg, cfg=gcfg)
    update = common.jit_step(common.make_update(loss, optimizer), mesh, shardings)
    sampler = make_sampler(
        cfg,
        max_new_tokens=gcfg.max_new_tokens,
        num_samples=g,
        temperature=gcfg.temperature,
        top_k=gcfg.top_k,
        top_p=gcfg.top_p,
        eos_ids=(),
        pad_id=PAD,
    )

    logprobs = jax.jit(
        lambda p, *rows: response_logprobs(
            p, cfg, *rows, chunk_size=gcfg.logprob_chunk, temperature=gcfg.temperature
        ),
        out_shardings=parallel.batch_sharding(mesh),
    )

    def step(state, prompt_BxP, key):
        t0 = time.perf_counter()
        arrays = parallel.shard_batch(
            {"prompt": prompt_BxP, "prompt_mask": np.ones_like(prompt_BxP)}, mesh, b
        )
        out = sampler(state["params"], arrays["prompt"], arrays["prompt_mask"], key)
        host = {
            "prompt": parallel.to_host(out.prompt),
            "prompt_mask": parallel.to_host(out.prompt_mask),
            "response": parallel.to_host(out.tokens),
            "mask": parallel.to_host(out.mask),
            "lp_sample": parallel.to_host(out.logprobs),
        }
        t1 = time.perf_counter()
        rewards = even_fraction(host["response"], host["mask"])
        adv = np.asarray(
            advantages.group_advantages(
                jnp.asarray(rewards.reshape(b, g)), gcfg.advantage, gcfg.adv_eps
            )
        ).reshape(-1)
        adv = (adv * (host["mask"].sum(1) > 0)).astype(np.float32)
        t2 = time.perf_counter()
        keys = ("prompt", "prompt_mask", "response", "mask")
        arrays = parallel.shard_batch({k: host[k] for k in keys}, mesh, n)
        arrays["lp_ref"] = logprobs(state["ref_params"], *(arrays[k] for k in keys))
        arrays["adv"] = parallel.shard_batch({"adv": adv}, mesh, n)["adv"]
        jax.block_until_ready(arrays)
        t3 = time.perf_counter()
        state, metrics = update(state, arrays)
        metrics = common.host_scalars(metrics)
        t4 = time.perf_counter()
        metrics.update(reward=float(rewards.mean()), tokens=float(host["mask"].sum()))
        return state, metrics, dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True))

    return init_state, step


def _phase_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in phases.items())


def _phases(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in ("total", "cpu")}


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def bench_ours(params, cfg: ModelConfig, prompts, args, num_devices: int) -> tuple:
    """Prints our first-step and median per-phase seconds on `num_devices`.

    Returns:
      (wall, CPU) seconds per step and seconds by phase, medians.
    """
    mesh = parallel.make_mesh(
        {"data": num_devices, "fsdp": 1, "tensor": 1}, jax.devices()[:num_devices]
    )
    name = f"ours ({num_devices} device{'s' if num_devices > 1 else ''})"
    init_state, step = make_grpo_step(params, cfg, mesh, args)
    state = init_state(jax.random.key(0))
    start = time.perf_counter()
    state, metrics, phases = step(state, prompts, jax.random.key(1))
    print(
        f"{name}: first step (compilation included) {time.perf_counter() - start:.2f} s "
        f"({_phase_text(phases)}); loss {metrics['loss']:.4f}, kl {metrics['kl']:.2e}, "
        f"reward {metrics['reward']:.3f}, {metrics['tokens'] / len(prompts) / args.samples:.0f} "
        "tokens per completion"
    )
    return time_repeats(name, step, state, prompts, args.repeats)


def time_repeats(name, step, state, prompts, repeats: int):
    """Median wall and CPU seconds of `repeats` steps after the first, and the phases' medians.

    `step(state, prompts, key)` returns (state, metrics, {phase: seconds}).
    """
    rows, totals = [], []
    for i in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        state, _, phases = step(state, prompts, jax.random.key(i + 2))
        totals.append((time.perf_counter() - start, time.process_time() - cpu))
        rows.append(phases)
    seconds, cpu = (statistics.median(x) for x in zip(*totals, strict=True))
    phases = _medians(rows)
    print(
        f"{name}: {seconds:.3f} s per step ({cpu:.3f} s CPU; median of {repeats}); by "
        f"phase, medians in s: {_phase_text(phases)}"
    )
    return seconds, cpu, phases


def _word_tokenizer(vocab: int):
    """A word-level tokenizer whose word "t<i>" is id i, so TRL sees our exact ids."""
    import tokenizers
    import transformers

    words = {"<pad>": PAD, "<unk>": UNK, "</s>": EOS, **{f"t{i}": i for i in range(3, vocab)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )


def _even_fraction_reward(completion_ids, **_):
    return [
        float(even_fraction(np.asarray([ids]), np.ones((1, len(ids))))[0]) for ids in completion_ids
    ]


def _timed(fn, phases: dict[str, float], name: str, when=lambda *a, **k: True):
    """fn, adding its wall seconds to phases[name] on calls where when(*args) holds."""

    def wrapper(*args, **kwargs):
        if not when(*args, **kwargs):
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[name] += time.perf_counter() - start

    return wrapper


def bench_trl(params, cfg: ModelConfig, prompts, args, threads: int) -> tuple:
    """Prints TRL GRPOTrainer's seconds per step and phase on our weights.

    Returns:
      (wall, CPU) seconds per step and seconds by phase, medians over the steps
      after the first.
    """
    import datasets
    import torch
    import transformers
    import trl

    from rl_lm.models import hf

    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    name = f"trl ({threads} torch thread{'s' if threads > 1 else ''})"
    rows = {"prompt": [" ".join(f"t{i}" for i in p) for p in prompts]}
    steps, marks, phases = [], {}, collections.defaultdict(float)

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            phases.clear()
            marks["start"], marks["cpu"] = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            total = time.perf_counter() - marks["start"]
            rollout = phases.pop("rollout")
            steps.append(
                {
                    **{k: phases[k] for k in PHASES[:3]},
                    "update": total - rollout,
                    "bookkeeping": rollout - sum(phases[k] for k in PHASES[:3]),
                    "total": total,
                    "cpu": time.process_time() - marks["cpu"],
                }
            )

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_hf_checkpoint(params, cfg, os.path.join(tmp, "model"), model_type="llama")
        model = transformers.LlamaForCausalLM.from_pretrained(
            os.path.join(tmp, "model"), dtype=torch.float32
        )
        with torch.no_grad():
            theirs = model(torch.from_numpy(prompts.astype(np.int64))).logits.numpy()
        diff = np.abs(theirs - np.asarray(jit_logits(params, jnp.asarray(prompts), cfg))).max()
        print(f"{name}: max |logits - ours| = {diff:.2e} (same weights)")
        config = trl.GRPOConfig(
            output_dir=os.path.join(tmp, "out"),
            per_device_train_batch_size=args.prompts * args.samples,
            gradient_accumulation_steps=1,
            num_generations=args.samples,
            max_completion_length=args.new_tokens,
            generation_kwargs={"min_new_tokens": args.new_tokens},
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            beta=BETA,
            num_iterations=1,
            loss_type="grpo",
            scale_rewards="group",
            epsilon=0.2,
            max_steps=args.repeats + 1,
            learning_rate=OPTIM["lr"],
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=OPTIM["weight_decay"],
            adam_beta1=OPTIM["b1"],
            adam_beta2=OPTIM["b2"],
            adam_epsilon=OPTIM["eps"],
            max_grad_norm=OPTIM["grad_clip"],
            use_vllm=False,
            gradient_checkpointing=False,
            bf16=False,
            use_cpu=True,
            shuffle_dataset=False,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
        )
        start = time.perf_counter()
        trainer = trl.GRPOTrainer(
            model=model,
            reward_funcs=[_even_fraction_reward],
            args=config,
            train_dataset=datasets.Dataset.from_dict(rows),
            processing_class=_word_tokenizer(cfg.vocab_size),
            callbacks=[Timer()],
        )
        trainer.remove_callback(transformers.PrinterCallback)  # Its per-step dicts drown ours.
        print(f"{name}: setup (reference model loaded) {time.perf_counter() - start:.2f} s")
        # Instance attributes shadow the methods, so the trainer's own calls are timed.
        trainer._generate_and_score_completions = _timed(
            trainer._generate_and_score_completions, phases, "rollout"
        )
        trainer._generate = _timed(trainer._generate, phases, "sampling")
        trainer._calculate_rewards = _timed(trainer._calculate_rewards, phases, "scoring")
        trainer._get_per_token_logps_and_entropies = _timed(
            trainer._get_per_token_logps_and_entropies,
            phases,
            "reference",
            when=lambda m, *_, **__: m is trainer.ref_model,
        )
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lengths = {(h["completions/min_length"], h["completions/max_length"]) for h in logs}
    print(
        f"{name}: first step {steps[0]['total']:.2f} s ({_phase_text(_phases(steps[0]))}); "
        f"loss {logs[0]['loss']:.4f}, (min, max) completion lengths {sorted(lengths)}"
    )
    med = _medians(steps[1:])  # The first step warms up.
    print(
        f"{name}: {med['total']:.3f} s per step ({med['cpu']:.3f} s CPU; median of "
        f"{len(steps) - 1}); by phase, medians in s: {_phase_text(_phases(med))}"
    )
    return med["total"], med["cpu"], _phases(med)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--no_trl", action="store_true", help="skip the TRL peer")
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--trl_threads",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[cores, 1] if cores > 1 else [1],
        help="torch thread counts to run TRL with; the ratio uses the fastest (on a busy "
        "machine one thread can beat all cores by far)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=cores,
        help="CPU devices for our data-parallel run (also timed on one device)",
    )
    parser.add_argument("--off_policy", action="store_true", help="bench/off_policy.py instead")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (--off_policy)")
    args = parser.parse_args()
    if args.off_policy:
        return off_policy.main(args)
    # One XLA CPU device per core, so our steps can use the cores torch's threads use.
    jax.config.update("jax_num_cpu_devices", args.devices)

    cfg = get_model_config("bench_b")
    print(f"{len(jax.devices())} CPU devices; model bench_b, {cfg.num_params():,} params, fp32")
    print(
        f"workload: {args.prompts} prompts x {args.samples} completions, {args.prompt_len}-token "
        f"prompts, {args.new_tokens} new tokens, beta {BETA}; median of {args.repeats}"
    )
    params = init_params(cfg, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (args.prompts, args.prompt_len))
    prompts = prompts.astype(np.int32)
    ours = min(
        (bench_ours(params, cfg, prompts, args, n) for n in sorted({1, args.devices})),
        key=lambda r: r[0],
    )
    if args.no_trl:
        return
    try:
        import datasets  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        print(f"trl: skipped ({e}; pip install trl to compare)")
        return
    try:
        theirs = min(
            (bench_trl(params, cfg, prompts, args, t) for t in args.trl_threads), key=lambda r: r[0]
        )
    except Exception as e:  # noqa: BLE001 -- report any peer failure and keep our figures.
        print(f"trl: skipped (it failed: {type(e).__name__}: {str(e)[:300]})")
        return
    print(
        f"ratio trl / ours seconds per step (fastest setting of each): {theirs[0] / ours[0]:.2f}x "
        f"(CPU seconds of the same settings: {theirs[1] / ours[1]:.2f}x)"
    )
    by_phase = ", ".join(f"{k} {theirs[2][k] / max(ours[2][k], 1e-9):.2f}x" for k in PHASES)
    print(f"trl / ours seconds by phase, same settings: {by_phase}")


if __name__ == "__main__":
    main()
