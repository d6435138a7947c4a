"""Multi-turn rollout throughput against single-turn sampling, same model and shapes.

Workload: bench model B (random weights, fp32), 8 prompts of 32 tokens x 8
samples, temperature 1, EOS disabled. Multi-turn: 3 turns of 16 sampled tokens;
after each of the first two the calculator runs (a real `ToolEnv` step on a fixed
call, so the tool's own time is in the figures) and its observation,
`<result>56088</result>` (21 byte ids), is appended through the decode cache.
Single-turn: one call of `sampler.sample` with the same number of response
tokens per row (3 * 16 + 2 * 21 = 90). Figures are medians over repeats; the
multi-turn line also splits off the time spent in the callback (tools and
tokenization) and counts host round trips.

    python -m bench.multiturn --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rl_lm.envs.tool_env import ToolEnv
from rl_lm.models.config import get_model_config
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.models.transformer import init_params
from rl_lm.sampling.multiturn import sample_multiturn
from rl_lm.sampling.sampler import make_sampler
from rl_lm.tools.calculator import calculator

CALL = "<call>calculator(expression='123*456')</call>"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--turn_tokens", type=int, default=16)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    cfg = get_model_config("bench_b")
    tok = ByteTokenizer()
    env = ToolEnv({"calculator": calculator})
    obs_len = len(tok.encode(env.step(env.reset({"prompt": ""})[1], CALL).observation))
    r = args.turns * args.turn_tokens + (args.turns - 1) * obs_len
    n = args.prompts * args.samples
    print(f"{len(jax.devices())} CPU device(s); model bench_b, {cfg.num_params():,} params, fp32")
    print(
        f"workload: {args.prompts} prompts x {args.samples} samples, {args.prompt_len}-token "
        f"prompts; {args.turns} turns x {args.turn_tokens} sampled + {args.turns - 1} "
        f"observations x {obs_len} = {r} response tokens per row; median of {args.repeats}"
    )
    params = init_params(cfg, jax.random.key(0))
    prompt = jax.random.randint(
        jax.random.key(1), (args.prompts, args.prompt_len), 0, 256, jnp.int32
    )
    mask = jnp.ones_like(prompt)
    tool_time = []

    def on_turns(rows, actions, final):
        start = time.perf_counter()
        out = []
        for i, f in zip(rows, final, strict=True):
            turns[i] += 1
            if f or turns[i] >= args.turns:
                out.append(None)
                continue
            step = env.step(env.reset({"prompt": ""})[1], CALL)
            out.append(np.asarray(tok.encode(step.observation), np.int32))
        tool_time[-1] += time.perf_counter() - start
        return out

    def multi(i):
        nonlocal turns
        turns = np.zeros(n, np.int32)
        tool_time.append(0.0)
        return sample_multiturn(
            params, cfg, prompt, mask, jax.random.key(i), on_turns, max_tokens=r,
            max_turn_tokens=args.turn_tokens, max_observation_tokens=obs_len,
            num_samples=args.samples, eos_ids=(), pad_id=0,
        )  # fmt: skip

    turns = np.zeros(n, np.int32)
    single_fn = make_sampler(cfg, max_new_tokens=r, num_samples=args.samples, eos_ids=(), pad_id=0)

    def single(i):
        return single_fn(params, prompt, mask, jax.random.key(i)).tokens.block_until_ready()

    for name, fn in (("single-turn", single), ("multi-turn", multi)):
        start = time.perf_counter()
        out = fn(0)  # compile and warm up
        print(f"{name}: first call (compiles) {time.perf_counter() - start:.2f} s")
        walls = []
        for i in range(args.repeats):
            start = time.perf_counter()
            out = fn(i + 1)
            walls.append(time.perf_counter() - start)
        wall = statistics.median(walls)
        line = f"{name}: {wall * 1e3:.0f} ms per rollout, {n * r / wall:,.0f} response tokens/s"
        if name == "multi-turn":
            assert (out.lengths == r).all(), "every row should run its full episode"
            sampled = int(out.mask.sum())
            tools = statistics.median(tool_time[-args.repeats :])
            line += (
                f" ({sampled / wall:,.0f} sampled tokens/s), {out.segments} host round trips, "
                f"{tools * 1e3:.1f} ms in tools and tokenization"
            )
            multi_rate = n * r / wall
        else:
            single_rate = n * r / wall
        print(line)
    print(f"ratio multi-turn / single-turn response tokens/s: {multi_rate / single_rate:.2f}x")


if __name__ == "__main__":
    main()
