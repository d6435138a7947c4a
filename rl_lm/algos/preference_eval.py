"""Held-out evaluation for preference learning (DPO, reward models, and later PPO/Nash).

Two fixed held-out sets, identical on every process and every call:
- pairs: the first `num_examples` pairs of the `seed` shuffle of the test split,
  scored by any per-pair function (summed log-probs, reward-model scores);
- prompts: the first `num_examples` prompts of that shuffle, for sampling. On
  tasks with a judge (`rl_lm.tasks.Task.judge`), the policy's samples are
  judged against the reference's samples on the same prompts with the same
  random keys (common random numbers: at pi = ref every comparison is a tie and
  the win rate is exactly 1/2).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel, tasks
from rl_lm.data import preference_batches, prompt_batches
from rl_lm.models.config import ModelConfig
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import make_sampler


def _check_sizes(mesh: Mesh, num_examples: int, batch_size: int, size: int) -> int:
    if not 0 < num_examples <= size:
        raise ValueError(
            f"eval.num_examples={num_examples} must be in [1, {size}] (the test split's size)."
        )
    batch_size = min(batch_size, num_examples)
    if batch_size % parallel.batch_divisor(mesh):
        raise ValueError(
            f"eval.batch_size={batch_size} (capped at eval.num_examples) must be a multiple "
            f"of the mesh's {parallel.batch_divisor(mesh)} batch shards."
        )
    return batch_size


def make_pair_eval(
    mesh: Mesh,
    tokenizer: Any,
    source: Any,
    fn: Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, ...]],
    *,
    num_examples: int,
    batch_size: int,
    max_len: int,
    truncate: bool = False,
    seed: int = 0,
) -> Callable[[Any], tuple[np.ndarray, ...]]:
    """Builds params -> fn's per-pair outputs over the fixed held-out pairs.

    Args:
      mesh: the mesh the params live on.
      tokenizer: the tokenizer.
      source: the test split (prompt, chosen, rejected).
      fn: (params, pair batch of `preference_batches` arrays) -> tuple of [B]
        arrays; jitted here.
      num_examples: held-out pairs.
      batch_size: pairs per call (a multiple of the mesh's batch shards).
      max_len: row length, as in training.
      truncate: cut rows longer than max_len, as in training.
      seed: which fixed subset.

    Returns:
      evaluate(params) -> tuple of numpy arrays [num_examples].
    """
    batch_size = _check_sizes(mesh, num_examples, batch_size, len(source))
    stream = preference_batches(
        source, tokenizer, batch_size=batch_size, max_len=max_len, seed=seed, truncate=truncate
    )
    batches = list(itertools.islice(stream, math.ceil(num_examples / batch_size)))
    jitted = jax.jit(fn, out_shardings=parallel.batch_sharding(mesh))
    lo, hi = parallel.process_rows(mesh, batch_size)

    def evaluate(params) -> tuple[np.ndarray, ...]:
        outs = []
        for batch in batches:
            local = {k: v[lo:hi] for k, v in batch.items()}
            arrays = parallel.shard_batch(local, mesh, batch_size)
            outs.append([parallel.to_host(x) for x in jitted(params, arrays)])
        return tuple(np.concatenate(parts)[:num_examples] for parts in zip(*outs, strict=True))

    return evaluate


def make_sample_eval(
    mesh: Mesh,
    model_cfg: ModelConfig,
    tokenizer: Any,
    source: Any,
    task: tasks.Task,
    *,
    num_examples: int,
    batch_size: int,
    max_prompt_len: int,
    max_new_tokens: int,
    truncate: bool = False,
    greedy: bool = True,
    seed: int = 0,
) -> Callable[[Any, Any], dict[str, float]] | None:
    """Builds (params, ref_params) -> win rate over the reference, true reward, KL.

    `task` is the run's Task (`tasks.for_config`). None when the
    task has no win-rate evaluation (no judge). Otherwise, on the
    fixed held-out prompts, with temperature-1 samples:
      "win_rate": mean judge P(policy sample > reference sample);
      "reward", "ref_reward": mean true reward of each (tasks with a true reward);
      "kl": mean over samples of sum_t (log pi - log ref), an unbiased estimate
        of the sequence KL(pi || ref);
    and with `greedy`, the same comparisons of greedy decodes ("*_greedy").
    The reference's samples are drawn once and reused.
    """
    if tasks.WIN_RATE not in task.evals:
        return None
    judge, reward_fn = task.judge, task.true_reward
    batch_size = _check_sizes(mesh, num_examples, batch_size, len(source))
    stream = prompt_batches(
        source,
        tokenizer,
        batch_size=batch_size,
        max_prompt_len=max_prompt_len,
        seed=seed,
        truncate=truncate,
    )
    batches = list(itertools.islice(stream, math.ceil(num_examples / batch_size)))
    prompts = [
        t
        for b in batches
        for t in tokenizer.decode_batch(b["prompt"], b["prompt_mask"], stop_at_eos=False)
    ][:num_examples]
    temperatures = {"": 1.0, "_greedy": 0.0} if greedy else {"": 1.0}
    samplers = {
        suffix: make_sampler(
            model_cfg,
            max_new_tokens=max_new_tokens,
            temperature=t,
            eos_ids=tuple(tokenizer.eos_ids),
            pad_id=tokenizer.pad_id,
        )
        for suffix, t in temperatures.items()
    }
    ref_logprobs = jax.jit(
        lambda p, o: response_logprobs(p, model_cfg, o.prompt, o.prompt_mask, o.tokens, o.mask),
        out_shardings=parallel.batch_sharding(mesh),
    )
    lo, hi = parallel.process_rows(mesh, batch_size)
    ref_texts: dict[str, list[str]] = {}

    def sample(params, suffix, with_kl_to=None):
        texts, kl = [], []
        for i, batch in enumerate(batches):
            local = {k: batch[k][lo:hi] for k in ("prompt", "prompt_mask")}
            arrays = parallel.shard_batch(local, mesh, batch_size)
            key = jax.random.fold_in(jax.random.key(seed), i)
            out = samplers[suffix](params, arrays["prompt"], arrays["prompt_mask"], key)
            texts += tokenizer.decode_batch(
                parallel.to_host(out.tokens), parallel.to_host(out.mask)
            )
            if with_kl_to is not None:
                lp_ref = parallel.to_host(ref_logprobs(with_kl_to, out))
                lp = parallel.to_host(out.logprobs)
                kl.append((lp - lp_ref).sum(axis=1))
        kl_mean = float(np.concatenate(kl)[:num_examples].mean()) if kl else None
        return texts[:num_examples], kl_mean

    def evaluate(params, ref_params) -> dict[str, float]:
        out = {}
        for suffix in samplers:
            if suffix not in ref_texts:
                ref_texts[suffix] = sample(ref_params, suffix)[0]
            texts, kl = sample(params, suffix, ref_params if suffix == "" else None)
            out[f"win_rate{suffix}"] = float(np.mean(judge(prompts, texts, ref_texts[suffix])))
            if reward_fn is not None:
                out[f"reward{suffix}"] = float(np.mean(reward_fn(prompts, texts)))
                out[f"ref_reward{suffix}"] = float(np.mean(reward_fn(prompts, ref_texts[suffix])))
            if kl is not None:
                out["kl"] = kl
        return out

    return evaluate
