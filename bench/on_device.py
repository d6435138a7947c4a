"""Steps/s of GRPO's host loop against its on-device loop, and seeds vmapped on device.

Workload: the default experiment's GRPO stage (configs/grpo_arith.py: the ~0.19M
parameter "cpu" model, 32 prompts x 8 completions of at most 6 new tokens, beta
0.04 with a reference, one update per rollout), from a random initialization
instead of the SFT warm start (the bench trains no SFT stage first; a random
policy's completions run to the 6-token budget, the warm start's end earlier,
on both loops alike). The host loop is `rl_lm.algos.grpo.make_trainer`'s step
(decode to text, score on the host, jitted sampler / log-probs / update); the
device loop is `rl_lm.algos.grpo_device.make_trainer`'s `run_chunk`, a
lax.scan of `--chunk` steps per call. Compilation (the first call of each) is
timed apart; figures are medians over `--repeats`, each of `--steps` steps.

With `--seeds S` (default 8), the device loop's chunk function is also vmapped
over S seeds (S policies, S prompt streams, S rollout key streams) and its wall
time per chunk is printed against one seed's.

    python -m bench.on_device [--steps 40] [--chunk 10] [--repeats 3] [--seeds 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import grpo_arith
from rl_lm import parallel
from rl_lm.algos import grpo, grpo_device
from rl_lm.data import load_source, prompt_batches
from rl_lm.models.tokenizer import load_tokenizer


def _config(args):
    config = grpo_arith.get_config()
    config.unlock()
    config.train.num_steps = 100_000  # a long schedule: every timed step has lr > 0
    config.train.chunk_steps = args.chunk
    return config


def _median_seconds(run, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def host_loop(config, mesh, args):
    """(compile seconds, steps/s) of the host loop."""
    trainer = grpo.make_trainer(config, mesh)
    state = {"s": trainer.init_state(jax.random.PRNGKey(config.seed))}
    batches = trainer.batches(0)

    def steps(k):
        for _ in range(k):
            state["s"], metrics = trainer.step(state["s"], next(batches))
        jax.block_until_ready(state["s"]["params"])

    t0 = time.perf_counter()
    steps(2)
    compile_s = time.perf_counter() - t0
    return compile_s, args.steps / _median_seconds(lambda: steps(args.steps), args.repeats)


def device_loop(config, mesh, args):
    """(compile seconds, steps/s, trainer) of the on-device loop."""
    trainer = grpo_device.make_trainer(config, mesh)
    state = {"s": trainer.init_state(jax.random.PRNGKey(config.seed))}
    batches = trainer.batches(0)

    def steps(k):
        for _ in range(k // args.chunk):
            chunk = [next(batches) for _ in range(args.chunk)]
            state["s"], _ = trainer.run_chunk(state["s"], chunk)

    t0 = time.perf_counter()
    steps(args.chunk)
    compile_s = time.perf_counter() - t0
    return compile_s, args.steps / _median_seconds(lambda: steps(args.steps), args.repeats), trainer


def vmapped_seeds(config, trainer, args):
    """(seconds per chunk of one seed, of args.seeds seeds vmapped), compile excluded."""
    tokenizer = load_tokenizer(config.tokenizer)
    source = load_source(config.data.name, "train", data_dir=config.data.data_dir)
    seeds = list(range(config.seed, config.seed + args.seeds))
    streams = [
        prompt_batches(
            source,
            tokenizer,
            batch_size=config.data.batch_size,
            max_prompt_len=config.data.max_prompt_len,
            seed=s,
        )
        for s in seeds
    ]

    def inputs(count):
        per_seed = []
        for s, stream in zip(seeds[:count], streams, strict=False):
            per_seed.append(trainer.chunk_inputs(0, [next(stream) for _ in range(args.chunk)], s))
        return jax.tree.map(lambda *x: np.stack(x), *per_seed)

    states = [trainer.init_state(jax.random.PRNGKey(s)) for s in seeds]
    one = jax.jit(trainer.chunk_fn, donate_argnums=0)
    many = jax.jit(jax.vmap(trainer.chunk_fn), donate_argnums=0)
    result = []
    for count, fn in ((1, one), (args.seeds, many)):
        state = jax.tree.map(lambda *x: jnp.stack(x), *states[:count])
        seed_ids = jnp.asarray(seeds[:count], jnp.int32)
        if count == 1:
            state, seed_ids = jax.tree.map(lambda x: x[0], state), seed_ids[0]
        box = {"s": state}

        def run(fn=fn, count=count, seed_ids=seed_ids, box=box):
            xs = inputs(count)
            if count == 1:
                xs = jax.tree.map(lambda x: x[0], xs)
            box["s"], metrics = fn(box["s"], xs, seed_ids)
            jax.block_until_ready(metrics)

        run()  # compiles
        result.append(_median_seconds(run, args.repeats))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed repeat")
    parser.add_argument("--chunk", type=int, default=10, help="device steps per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=8, help="0 skips the vmapped seeds")
    args = parser.parse_args()
    if args.steps % args.chunk:
        parser.error(f"--steps={args.steps} must be a multiple of --chunk={args.chunk}")
    config = _config(args)
    mesh = parallel.make_mesh(config.mesh)
    print(f"devices: {jax.devices()}; default GRPO stage, random init, chunk {args.chunk}")
    host_compile, host_rate = host_loop(config, mesh, args)
    print(f"host loop:   {host_rate:.2f} steps/s (first 2 steps, compiling: {host_compile:.1f} s)")
    dev_compile, dev_rate, trainer = device_loop(config, mesh, args)
    print(f"device loop: {dev_rate:.2f} steps/s (first chunk, compiling: {dev_compile:.1f} s)")
    print(f"ratio: {dev_rate / host_rate:.2f}x (device over host steps/s; goal 3x)")
    if args.seeds > 0:
        one, many = vmapped_seeds(config, trainer, args)
        print(
            f"vmapped seeds: {args.seeds} seeds {many:.2f} s per {args.chunk}-step chunk, "
            f"1 seed {one:.2f} s: {many / one:.2f}x the time for {args.seeds}x the runs "
            f"({args.seeds * args.chunk / many:.1f} seed-steps/s)"
        )


if __name__ == "__main__":
    main()
