"""SFT training throughput and model FLOPs utilization.

    python -m bench.sft_step [--batch=64] [--seq=128] [--repeats=5]
    python -m bench.sft_step --pack [--pack_len=48] [--pack_rows=32] [--repeats=5]

For bench model B and the `small` preset: one jitted SFT step (forward,
backward, AdamW) on random tokens, compilation timed separately, median over
repeats, printed as training tokens/s and MFU. MFU is the model's training
FLOPs (6 x matmul FLOPs per token, attention included) per second over the
peak matmul FLOP/s of this machine, measured here with a large float32 matmul.

With --pack: the SFT step of configs/sft_arith.py on its arithmetic data, each
step's 128 examples as 128 rows of 12 tokens and packed (`rl_lm.data.packing`)
into pack_rows rows of pack_len, printed as real (non-padding) tokens/s and the
fraction of padding slots. Both layouts hold the same examples, so they take the
same optimizer step.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from configs import sft_arith
from rl_lm.algos import common, sft
from rl_lm.data import arithmetic, sft_batches
from rl_lm.models.config import get_model_config
from rl_lm.models.tokenizer import load_tokenizer
from rl_lm.models.transformer import init_params


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    return 2 * n**3 / _timed(lambda: mm(a), repeats)


def bench_model(name: str, batch: int, seq: int, repeats: int, peak: float) -> None:
    cfg = get_model_config(name, max_seq_len=seq)
    optimizer = optax.adamw(1e-4)
    state = common.new_state(init_params(cfg, jax.random.key(0)), optimizer, jax.random.key(1))
    loss = functools.partial(sft.loss_fn, cfg=cfg, chunk_size=min(128, seq))
    update = jax.jit(common.make_update(loss, optimizer), donate_argnums=0)
    tokens = jax.random.randint(jax.random.key(2), (batch, seq), 0, cfg.vocab_size)
    batch_ = {"tokens": tokens, "loss_mask": jnp.ones_like(tokens)}
    t0 = time.perf_counter()
    state, _ = update(state, batch_)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def step():
        holder["state"], metrics = update(holder["state"], batch_)
        return metrics["loss"]

    seconds = _timed(step, repeats)
    tok_s = batch * seq / seconds
    flops = 3 * cfg.flops_per_token(seq / 2) * tok_s  # fwd + 2x bwd; causal: mean context seq/2
    print(
        f"{name:>8}: {cfg.num_params() / 1e6:.2f}M params, batch {batch} x {seq}: "
        f"{seconds * 1e3:.1f} ms/step, {tok_s:,.0f} tokens/s, {flops / 1e9:.2f} GFLOP/s, "
        f"MFU {flops / peak:.1%} (compile {compile_s:.1f} s)"
    )


def bench_packing(pack_len: int, pack_rows: int, repeats: int, num_batches: int = 8) -> None:
    config = sft_arith.get_config()
    cfg = common.model_config(config.model)
    tokenizer = load_tokenizer(config.tokenizer)
    train = arithmetic.make_problems(arithmetic.config_from_name("add2"))["train"]
    source = [{"prompt": p, "response": r} for p, r, _ in train]
    optimizer = optax.adamw(1e-3)
    loss = functools.partial(sft.loss_fn, cfg=cfg, chunk_size=config.sft.chunk_size)
    layouts = {
        "unpacked": dict(max_len=config.data.max_len),
        "packed": dict(max_len=pack_len, pack_rows=pack_rows),
    }
    for name, layout in layouts.items():
        stream = sft_batches(source, tokenizer, batch_size=config.data.batch_size, seed=0, **layout)
        batches = [jax.tree.map(jnp.asarray, next(stream)) for _ in range(num_batches)]
        real = sum(int(jnp.sum(b["tokens"] != tokenizer.pad_id)) for b in batches)
        slots = sum(b["tokens"].size for b in batches)
        update = jax.jit(common.make_update(loss, optimizer), donate_argnums=0)
        state = common.new_state(init_params(cfg, jax.random.key(0)), optimizer, jax.random.key(1))
        t0 = time.perf_counter()
        state, _ = update(state, batches[0])
        jax.block_until_ready(state)
        compile_s = time.perf_counter() - t0
        holder = {"state": state}

        def epoch(holder=holder, batches=batches, update=update):
            for b in batches:
                holder["state"], metrics = update(holder["state"], b)
            return metrics["loss"]

        seconds = _timed(epoch, repeats) / num_batches
        rows, length = batches[0]["tokens"].shape
        print(
            f"{name:>9}: {config.data.batch_size} examples as {rows} x {length}: "
            f"{seconds * 1e3:.1f} ms/step, {real / num_batches / seconds:,.0f} real tokens/s, "
            f"padding {1 - real / slots:.1%} (compile {compile_s:.1f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="bench_b,small")
    parser.add_argument("--pack", action="store_true", help="packed vs unpacked arithmetic SFT")
    parser.add_argument("--pack_len", type=int, default=48)
    parser.add_argument("--pack_rows", type=int, default=32)
    args = parser.parse_args()
    if args.pack:
        print(f"devices: {jax.devices()}")
        bench_packing(args.pack_len, args.pack_rows, args.repeats)
        return
    peak = peak_matmul_flops()
    print(f"devices: {jax.devices()}; measured peak matmul: {peak / 1e9:.1f} GFLOP/s (fp32)")
    for name in args.models.split(","):
        bench_model(name, args.batch, args.seq, args.repeats, peak)


if __name__ == "__main__":
    main()
