"""Seconds per approximate Nash-MP iteration on bench model B.

Workload: bench model B (fp32, ~3.3M parameters), 8
prompts of 32 tokens (left-padded rps_pref prompts), 8 completions each, 64
new tokens (an untrained model rarely emits EOS, so rollouts run the full 64
steps). One iteration is the whole Nash-MP step of `rl_lm.algos.nash`: per
half step one rollout (policy and opponent samples, the preference, the
reference / old / anchor log-probs, the baseline) and M optimizer updates,
plus the bookkeeping. It runs through the real Trainer with a token-level
judge (the response with the larger first token wins), so preferences cost
nothing and every update has a gradient. Compilation (the first iteration) is
reported separately; figures are medians over repeats. Two values of M
separate the cost of an update from that of a rollout.

    python -m bench.nash_step --repeats 3 --inner_steps 1,4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np

from configs import base, nash_rps
from rl_lm import parallel
from rl_lm.algos import nash


def _first_token_judge(pairs) -> np.ndarray:
    return 0.5 + 0.5 * np.sign(pairs.a[:, 0].astype(np.float32) - pairs.b[:, 0])


def iteration_seconds(inner_steps: int, args, data_dir: str) -> tuple[float, float]:
    """(compile + first iteration, median seconds per iteration) at M = inner_steps."""
    config = nash_rps.get_config("algo=nash_mp")
    config.unlock()
    config.model = base.model("bench_b", max_seq_len=32 + args.new_tokens)
    config.data.update(
        name="rps_pref/sft_train256_test32", data_dir=data_dir, batch_size=args.prompts,
        max_prompt_len=32,
    )  # fmt: skip
    config.eval.update(num_examples=32, batch_size=32)  # the test split's size; not run
    config.nash.update(
        num_generations=args.samples, max_new_tokens=args.new_tokens,
        num_inner_steps=inner_steps, inner_rollouts=1,
    )  # fmt: skip
    config.lock()
    mesh = parallel.make_mesh(config.mesh)
    trainer = nash.make_trainer(config, mesh, preference=_first_token_judge)
    state, batches = trainer.init_state(jax.random.PRNGKey(0)), trainer.batches(0)
    start = time.perf_counter()
    state, _ = trainer.step(state, next(batches))
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = trainer.step(state, next(batches))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inner_steps", default="1,4", help="values of M, comma-separated")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=64)
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    results = {}
    with tempfile.TemporaryDirectory() as data_dir:
        for m in (int(x) for x in args.inner_steps.split(",")):
            first, seconds = iteration_seconds(m, args, data_dir)
            results[m] = seconds
            print(f"M={m}: {seconds:.3f} s per Nash-MP iteration (median of {args.repeats}; "
                  f"first iteration with compilation {first:.1f} s)")  # fmt: skip
    if len(results) > 1:
        (m0, t0), (m1, t1) = sorted(results.items())[0], sorted(results.items())[-1]
        update = (t1 - t0) / (2 * (m1 - m0))
        print(f"per optimizer update: {update:.3f} s; two rollouts and bookkeeping: "
              f"{t0 - 2 * m0 * update:.3f} s per iteration")  # fmt: skip


if __name__ == "__main__":
    main()
