"""Held-out exact-match accuracy with greedy decoding, shared by all algorithms."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
from absl import logging
from jax.sharding import Mesh

from rl_lm import parallel
from rl_lm.data import prompt_batches
from rl_lm.models.config import ModelConfig
from rl_lm.rewards import verifiable
from rl_lm.sampling.sampler import cut_by_budget, make_sampler


def held_out_batches(
    source: Any,
    tokenizer: Any,
    *,
    num_examples: int,
    batch_size: int,
    max_prompt_len: int,
    seed: int = 0,
    batch_divisor: int = 1,
) -> tuple[list[dict[str, Any]], int]:
    """The fixed held-out prompt batches of an evaluation and their batch size.

    The first `num_examples` rows of the `seed` shuffle of `source`, in batches
    of min(batch_size, num_examples) (the last one padded by the stream).

    Raises:
      ValueError: one line naming eval.num_examples or eval.batch_size.
    """
    if not 0 < num_examples <= len(source):
        raise ValueError(
            f"eval.num_examples={num_examples} must be in [1, {len(source)}] (the held-out "
            "split's size)."
        )
    batch_size = min(batch_size, num_examples)
    if batch_size % batch_divisor:
        raise ValueError(
            f"eval.batch_size={batch_size} must be a multiple of the mesh's "
            f"{batch_divisor} batch shards."
        )
    stream = prompt_batches(
        source, tokenizer, batch_size=batch_size, max_prompt_len=max_prompt_len, seed=seed
    )
    return list(itertools.islice(stream, math.ceil(num_examples / batch_size))), batch_size


def make_exact_match_eval(
    mesh: Mesh,
    model_cfg: ModelConfig,
    tokenizer: Any,
    source: Any,
    *,
    num_examples: int,
    batch_size: int,
    max_prompt_len: int,
    max_new_tokens: int,
    seed: int = 0,
    answer: str = "any",
) -> Callable[[Any], dict[str, float]]:
    """Builds params -> {"accuracy", "num_examples", "response_len", "cut"} on a fixed held-out set.

    The set is the first `num_examples` rows of the `seed` shuffle of `source`
    (the same on every process and every call). Every process builds the whole
    set, feeds its own rows to the devices and decodes the gathered completions,
    so all processes return the same figures.

    Args:
      mesh: the mesh the params live on.
      model_cfg: the model config.
      tokenizer: the tokenizer the model was trained with.
      source: a held-out data source with "prompt" and "answer" fields.
      num_examples: size of the held-out set (at most len(source)).
      batch_size: prompts per sampler call (a multiple of the mesh's batch shards).
      max_prompt_len: prompt length P ([BOS] + prompt, left-padded).
      max_new_tokens: greedy decode steps at most.
      seed: which fixed subset of the source to use.
      answer: "any" or "marked" (`verifiable.extract_answer`; the config's eval.answer).

    Besides accuracy, the mean greedy response length in tokens ("response_len")
    and the fraction of responses the budget cut before any EOS ("cut") show
    whether a policy's answers still fit.
    """
    verifiable.check_answer_format(answer)  # fail here, not after training
    batches, batch_size = held_out_batches(
        source,
        tokenizer,
        num_examples=num_examples,
        batch_size=batch_size,
        max_prompt_len=max_prompt_len,
        seed=seed,
        batch_divisor=parallel.batch_divisor(mesh),
    )
    sampler = make_sampler(
        model_cfg,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        eos_ids=tuple(tokenizer.eos_ids),
        pad_id=tokenizer.pad_id,
    )
    rng = jax.random.PRNGKey(0)  # Unused by greedy decoding.

    def evaluate(params) -> dict[str, float]:
        correct, seen, shown, length, cut = 0.0, 0, [], 0.0, 0.0
        for batch in batches:
            start, stop = parallel.process_rows(mesh, batch_size)
            local = {k: batch[k][start:stop] for k in ("prompt", "prompt_mask")}
            arrays = parallel.shard_batch(local, mesh, batch_size)
            out = sampler(params, arrays["prompt"], arrays["prompt_mask"], rng)
            tokens, mask = parallel.to_host(out.tokens), parallel.to_host(out.mask)
            texts = tokenizer.decode_batch(tokens, mask)
            take = min(batch_size, num_examples - seen)
            length += float(mask[:take].sum())
            cut += float(cut_by_budget(tokens, mask, tokenizer.eos_ids)[:take].sum())
            answers = list(batch["answer"][:take])
            correct += float(verifiable.exact_match(texts[:take], answers, answer).sum())
            seen += take
            if not shown:
                prompts = tokenizer.decode_batch(
                    batch["prompt"], batch["prompt_mask"], stop_at_eos=False
                )
                shown = list(zip(prompts, texts, batch["answer"], strict=True))[:3]
        for prompt, text, reference in shown:
            logging.info("eval sample: %r -> %r (answer %r)", prompt, text, reference)
        return {
            "accuracy": correct / seen,
            "num_examples": float(seen),
            "response_len": length / seen,
            "cut": cut / seen,
        }

    return evaluate
