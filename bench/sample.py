"""Sampling throughput of bench model B, side by side with Hugging Face `generate`.

Workload: 8 prompts of 32 tokens, 8 completions each, exactly
64 new tokens per completion (EOS disabled), fp32, temperature 1. Compilation is
timed separately; figures are medians over repeats. When torch and transformers
import, the same weights run as a `LlamaForCausalLM` in the same process and a
`ratio` line compares the two.

    python -m bench.sample --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rl_lm.models.config import ModelConfig, get_model_config
from rl_lm.models.transformer import init_params, jit_logits
from rl_lm.sampling.sampler import make_sampler


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of fn(i) over `repeats` calls.

    CPU time (all threads of this process) tells a busy machine from a slow program:
    when other processes hold the cores, wall time grows and CPU time does not.
    """
    walls, cpus = [], []
    for i in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn(i)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def bench_ours(params, cfg, prompt_BxP, args, num_devices: int) -> float:
    """Prints compile time and tokens/s of our sampler with the rows split over
    `num_devices` CPU devices (data parallel, one device per core); returns tokens/s."""
    mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    params = jax.device_put(params, replicated)
    prompt_BxP = jax.device_put(prompt_BxP, rows)
    mask_BxP = jax.device_put(jnp.ones_like(prompt_BxP), rows)
    keys = lambda i: jax.device_put(jax.random.split(jax.random.key(i), len(prompt_BxP)), rows)
    fn = make_sampler(
        cfg, max_new_tokens=args.new_tokens, num_samples=args.samples, eos_ids=(), pad_id=0
    )
    name = f"ours ({num_devices} device{'s' if num_devices > 1 else ''})"
    start = time.perf_counter()
    compiled = fn.lower(params, prompt_BxP, mask_BxP, keys(0)).compile()
    print(f"{name}: compile {time.perf_counter() - start:.2f} s")
    compiled(params, prompt_BxP, mask_BxP, keys(0)).tokens.block_until_ready()

    def run(i):
        compiled(params, prompt_BxP, mask_BxP, keys(i + 1)).tokens.block_until_ready()

    seconds, cpu = _median_time(run, args.repeats)
    tokens = prompt_BxP.shape[0] * args.samples * args.new_tokens
    print(
        f"{name}: {seconds * 1e3:.1f} ms per call ({cpu * 1e3:.0f} ms CPU), "
        f"{tokens / seconds:,.0f} tokens/s"
    )
    return tokens / seconds


def hf_model(params, cfg: ModelConfig):
    """The same model as a transformers LlamaForCausalLM (fp32, eval mode)."""
    import tempfile

    import transformers

    from rl_lm.models import hf

    with tempfile.TemporaryDirectory() as path:
        hf.save_hf_checkpoint(params, cfg, path, model_type="llama")
        model = transformers.LlamaForCausalLM.from_pretrained(path, dtype="float32")
    return model.eval()


def bench_hf(params, cfg, prompt_BxP, args) -> float:
    """Prints tokens/s of transformers' generate on the same weights, for each torch
    thread count in args.hf_threads; returns the best."""
    import torch

    model = hf_model(params, cfg)
    ids = torch.from_numpy(np.asarray(prompt_BxP, np.int64))
    with torch.no_grad():
        ours_logits = np.asarray(jit_logits(params, prompt_BxP, cfg))
        diff = np.abs(model(ids).logits.numpy() - ours_logits).max()
    print(f"hf: max |logits - ours| = {diff:.2e} (same weights)")

    def run(i):
        torch.manual_seed(i)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=args.samples,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=0,
                eos_token_id=cfg.vocab_size - 1,
            )
        assert out.shape == (ids.shape[0] * args.samples, ids.shape[1] + args.new_tokens)

    tokens = prompt_BxP.shape[0] * args.samples * args.new_tokens
    best = 0.0
    for threads in args.hf_threads:
        torch.set_num_threads(threads)
        run(0)  # Warm-up.
        seconds, cpu = _median_time(run, args.repeats)
        print(
            f"hf ({threads} torch threads): {seconds * 1e3:.1f} ms per call "
            f"({cpu * 1e3:.0f} ms CPU), {tokens / seconds:,.0f} tokens/s"
        )
        best = max(best, tokens / seconds)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--no_hf", action="store_true", help="skip the transformers peer")
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--hf_threads",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[cores, 1] if cores > 1 else [1],
        help="torch thread counts to time generate with; the ratio uses the fastest "
        "(on a busy machine one thread can beat all cores by far)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=cores,
        help="CPU devices for our data-parallel run (also timed on one device)",
    )
    args = parser.parse_args()
    # One XLA CPU device per core, so our sampler can use the cores HF's threads use.
    jax.config.update("jax_num_cpu_devices", args.devices)

    cfg = get_model_config("bench_b")
    print(f"{len(jax.devices())} CPU devices; model bench_b, {cfg.num_params():,} params, fp32")
    print(
        f"workload: {args.prompts} prompts x {args.samples} samples, {args.prompt_len}-token "
        f"prompts, {args.new_tokens} new tokens; median of {args.repeats}"
    )
    params = init_params(cfg, jax.random.key(0))
    prompt_BxP = jax.random.randint(
        jax.random.key(1), (args.prompts, args.prompt_len), 0, cfg.vocab_size, jnp.int32
    )
    ours = max(bench_ours(params, cfg, prompt_BxP, args, n) for n in sorted({1, args.devices}))
    if args.no_hf:
        return
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("hf: torch / transformers not importable; skipped")
        return
    theirs = bench_hf(params, cfg, prompt_BxP, args)
    print(f"ratio ours / hf tokens/s (fastest setting of each): {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
