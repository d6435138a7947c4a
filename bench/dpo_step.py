"""Seconds per DPO optimizer step on bench model B, side by side with TRL's DPOTrainer.

Workload: 64 preference pairs; every row is a 32-token
prompt then a 64-token response (63 random tokens and EOS), fp32; sigmoid loss,
beta 0.1, AdamW with constant lr and global-norm clipping 1.0. Reference
log-probs are precomputed on both sides (ours: one jitted pass whose results
ride in the batch, as `dpo.reference="precompute"` does; TRL:
precompute_ref_log_probs=True), so a step is one forward and backward pass of
the policy over 128 rows of 96 tokens. Compilation (ours) and the reference
pass are timed separately; step times are medians over repeats. When trl,
transformers and torch import, TRL runs the same weights as a LlamaForCausalLM
(gradient checkpointing off, as ours) in the same process, and a `ratio` line
compares the two.

    python -m bench.dpo_step --repeats 5
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from rl_lm import parallel
from rl_lm.algos import common, dpo_loss
from rl_lm.models.config import ModelConfig, get_model_config
from rl_lm.models.transformer import init_params

PAD, UNK, EOS = 0, 1, 2  # ids of the word-level tokenizer TRL needs; content ids are >= 3
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


def make_pairs(args, vocab: int) -> dict[str, np.ndarray]:
    """Pairs sharing a random prompt, with random responses ending in EOS."""
    rng = np.random.default_rng(0)
    n, p, r = args.pairs, args.prompt_len, args.response_len
    prompt = rng.integers(3, vocab, (n, p))
    out = {}
    for side in ("chosen", "rejected"):
        response = np.concatenate([rng.integers(3, vocab, (n, r - 1)), np.full((n, 1), EOS)], 1)
        out[side] = np.concatenate([prompt, response], 1).astype(np.int32)
        out[f"{side}_mask"] = np.concatenate([np.zeros((n, p)), np.ones((n, r))], 1).astype(
            np.int32
        )
    return out


def bench_ours(params, cfg: ModelConfig, pairs, args) -> tuple[float, np.ndarray]:
    """Prints compile time and seconds per step; returns them and the reference log-probs."""
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    batch = parallel.shard_batch(pairs, mesh, args.pairs)
    dpo_cfg = dpo_loss.default_config()
    ref_fn = jax.jit(functools.partial(dpo_loss.pair_logprobs, cfg=cfg))
    start = time.perf_counter()
    lp_w, lp_l, _, _ = jax.block_until_ready(ref_fn(params, batch))
    print(f"ours: reference pass (compile included) {time.perf_counter() - start:.2f} s")
    batch = {**batch, "ref_chosen": lp_w, "ref_rejected": lp_l}

    optimizer = common.make_optimizer(OPTIM, 1000)
    init, _, shardings = common.sharded_init(
        mesh,
        lambda rng: common.new_state(params, optimizer, rng),
        lambda a: common.state_specs(
            a, jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params), optimizer
        ),
    )
    loss = functools.partial(dpo_loss.loss_fn, model_cfg=cfg, cfg=dpo_cfg)
    step = common.jit_step(common.make_update(loss, optimizer), mesh, shardings)
    state = init(jax.random.key(0))
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    print(f"ours: compile {time.perf_counter() - start:.2f} s")
    state, metrics = compiled(state, batch)
    print(f"ours: first-step loss {float(metrics['loss']):.6f} (log 2 = {np.log(2):.6f})")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(f"ours: {seconds:.3f} s per step (median of {args.repeats})")
    return seconds, np.asarray(lp_w)


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


def _text(ids) -> str:
    return " ".join("</s>" if i == EOS else f"t{i}" for i in ids)


def bench_trl(params, cfg: ModelConfig, pairs, args, ref_chosen: np.ndarray) -> float:
    """Prints TRL DPOTrainer's seconds per step on the same weights and pairs; returns them."""
    import datasets
    import torch
    import transformers
    import trl

    from rl_lm.models import hf

    torch.set_num_threads(os.cpu_count() or 1)
    p = args.prompt_len
    rows = {
        "prompt": [_text(x[:p]) for x in pairs["chosen"]],
        "chosen": [" " + _text(x[p:]) for x in pairs["chosen"]],
        "rejected": [" " + _text(x[p:]) for x in pairs["rejected"]],
    }
    times, marks = [], {}

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            marks["start"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - marks["start"])

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_hf_checkpoint(params, cfg, os.path.join(tmp, "model"))
        model = transformers.LlamaForCausalLM.from_pretrained(
            os.path.join(tmp, "model"), dtype=torch.float32
        )
        config = trl.DPOConfig(
            output_dir=os.path.join(tmp, "out"),
            per_device_train_batch_size=args.pairs,
            max_steps=args.repeats + 1,
            learning_rate=OPTIM["lr"],
            lr_scheduler_type="constant",
            max_grad_norm=OPTIM["grad_clip"],
            beta=0.1,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=True,
            gradient_checkpointing=False,
            bf16=False,
            use_cpu=True,
            max_length=None,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
        )
        start = time.perf_counter()
        trainer = trl.DPOTrainer(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_dict(rows),
            processing_class=_word_tokenizer(cfg.vocab_size),
            callbacks=[Timer()],
        )
        print(f"trl: setup with reference pass {time.perf_counter() - start:.2f} s")
        trl_ref = np.asarray(trainer.train_dataset["ref_chosen_logps"], np.float32)
        print(f"trl: max |reference log-prob - ours| = {np.abs(trl_ref - ref_chosen).max():.2e}")
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"trl: first-step loss {losses[0]:.6f}")
    seconds = statistics.median(times[1:])  # the first step warms up
    print(f"trl: {seconds:.3f} s per step (median of {len(times) - 1})")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--response_len", type=int, default=64)
    parser.add_argument("--no_trl", action="store_true", help="skip the TRL peer")
    args = parser.parse_args()

    cfg = get_model_config("bench_b")
    print(f"devices: {jax.devices()}; model bench_b, {cfg.num_params():,} params, fp32")
    print(
        f"workload: {args.pairs} pairs, {args.prompt_len}-token prompts, "
        f"{args.response_len}-token responses, reference log-probs precomputed; "
        f"median of {args.repeats}"
    )
    params = init_params(cfg, jax.random.key(0))
    pairs = make_pairs(args, cfg.vocab_size)
    ours, ref_chosen = bench_ours(params, cfg, pairs, args)
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
        theirs = bench_trl(params, cfg, pairs, args, ref_chosen)
    except Exception as e:  # noqa: BLE001 -- report any peer failure and keep our figures.
        print(f"trl: skipped (it failed: {type(e).__name__}: {str(e)[:300]})")
        return
    print(f"ratio trl / ours seconds per step: {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
