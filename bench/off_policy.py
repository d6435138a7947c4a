"""Seconds per GRPO step with one-step off-policy sampling overlapped, against on-policy.

Workload: the default experiment's GRPO stage (configs/grpo_arith.py: the ~0.19M
parameter "cpu" model, 32 prompts x 8 completions of at most 6 new tokens, beta
0.04 with a reference), from a random initialization, driven through the
trainer's own step (`rl_lm.algos.grpo.make_trainer`) on 8 CPU devices. Four
settings: on-policy on all 8 devices; one-step off-policy (`grpo.off_policy.steps=1`)
on the same 8 devices, the sampler sharing them; off-policy with the sampler on
its own 4 devices and the trainer on the other 4 (`off_policy.sampler_devices=4`);
and on-policy on 4 devices, the trainer's share alone. Per setting: the median
seconds per step over `--repeats` runs of `--steps` steps (the first 2 steps,
which compile, apart), and the median `time_rollout`, the host's wait for its
rollout: on-policy the whole sampling, off-policy what the overlap did not hide.

    python -m bench.grpo_step --off_policy [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import statistics
import time

import jax

SETTINGS = (  # name, trainer + sampler devices, off_policy section
    ("on-policy, 8 devices", 8, {"steps": 0}),
    ("off-policy, sampler sharing the 8 devices", 8, {"steps": 1}),
    ("off-policy, 4 train + 4 sample devices", 8, {"steps": 1, "sampler_devices": 4}),
    ("on-policy, 4 devices", 4, {"steps": 0}),
)


def _config(args, off):
    from configs import grpo_arith

    config = grpo_arith.get_config()
    config.unlock()
    config.train.num_steps = 100_000  # every timed step has lr > 0 and a rollout dispatched
    config.grpo.off_policy.update(off)
    return config


def _time(config, devices, args):
    """(compile seconds, median seconds per step, median seconds waiting for rollouts)."""
    from rl_lm import parallel
    from rl_lm.algos import grpo

    mesh = parallel.make_mesh(config.mesh, devices=jax.devices()[:devices])
    trainer = grpo.make_trainer(config, mesh)
    box = {"state": trainer.init_state(jax.random.PRNGKey(config.seed))}
    batches = trainer.batches(0)

    def steps(k):
        waits = []
        for _ in range(k):
            box["state"], metrics = trainer.step(box["state"], next(batches))
            waits.append(metrics["time_rollout"])
        jax.block_until_ready(box["state"]["params"])
        return waits

    t0 = time.perf_counter()
    steps(2)
    compile_s = time.perf_counter() - t0
    per_step, waits = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        waits += steps(args.steps)
        per_step.append((time.perf_counter() - t0) / args.steps)
    return compile_s, statistics.median(per_step), statistics.median(waits)


def main(args) -> None:
    jax.config.update("jax_num_cpu_devices", 8)
    print(
        f"{len(jax.devices())} CPU devices; default GRPO stage, random init; "
        f"{args.steps} steps x {args.repeats} repeats"
    )
    results = {}
    for name, devices, off in SETTINGS:
        compile_s, step_s, wait_s = _time(_config(args, off), devices, args)
        results[name] = step_s
        print(
            f"{name}: {step_s * 1e3:.1f} ms per step, waiting {wait_s * 1e3:.1f} ms for the "
            f"rollout (first 2 steps, compiling: {compile_s:.1f} s)"
        )
    on = results[SETTINGS[0][0]]
    for name, _, _ in SETTINGS[1:]:
        print(f"ratio on-policy (8 devices) / {name}: {on / results[name]:.2f}x")
