"""Completions of text prompts from a run's checkpoint, through the project's sampler."""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import ml_collections

from rl_lm.analysis.runs import Workdir, load_config, load_params, model_config
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.sampling.sampler import make_sampler


def sample(
    run,
    prompts: Sequence[str],
    *,
    step: int | None = None,
    config: Workdir | ml_collections.ConfigDict | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[list[str]]:
    """Samples completions of text prompts, tokenized as the run's training prompts.

    Each prompt becomes [BOS] + prompt (when the tokenizer has a BOS), left-padded
    to the run's `data.max_prompt_len` (or the longest prompt, if longer), so the
    shapes are those of the run's held-out evaluation.

    Args:
      run: a run directory, or a parameter pytree (e.g. from `load_params`; then
        `config` says which model and tokenizer it belongs to). Passing params
        avoids reloading the checkpoint on every call.
      prompts: the prompt texts, e.g. ["17+25="].
      step: with a run directory, the checkpoint step (the latest when None).
      config: with params, the run directory or experiment config they come from.
      num_samples: completions per prompt.
      temperature: 0 decodes greedily (as the held-out accuracy does).
      max_new_tokens: decode steps at most; the run's `eval.max_new_tokens` when None.
      top_k: sample among the k most likely tokens (0: all).
      top_p: sample within the nucleus of this mass (1: all).
      seed: the same seed, prompts and settings give the same completions.

    Returns:
      One list per prompt of its `num_samples` completions (text after the
      prompt, up to the first EOS).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of texts, got a single str; wrap it in [...].")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt.")
    if isinstance(run, str | os.PathLike):
        if config is not None:
            raise ValueError("config is for params; a run directory brings its own config.")
        config = load_config(run)
        params = load_params(run, step)
    else:
        if config is None:
            raise ValueError(
                "sampling from params needs config=<the run directory or its config> to know "
                "the model and tokenizer."
            )
        if step is not None:
            raise ValueError("step selects a checkpoint of a run directory; params are given.")
        params = run
        if isinstance(config, str | os.PathLike):
            config = load_config(config)
    cfg = model_config(config)
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, cfg.vocab_size)
    if max_new_tokens is None:
        max_new_tokens = config.get("eval", {}).get("max_new_tokens")
        if max_new_tokens is None:
            raise ValueError("the run's config has no eval.max_new_tokens; pass max_new_tokens.")

    add_bos = tokenizer.bos_id is not None
    lengths = [len(tokenizer.encode(p, add_bos=add_bos)) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty and the tokenizer has no BOS.")
    width = max(max(lengths), config.get("data", {}).get("max_prompt_len") or 0)
    prompt_BxP, mask_BxP = tokenizer.encode_batch(
        prompts, max_len=width, pad_side="left", add_bos=add_bos
    )
    sampler = make_sampler(
        cfg,
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_ids=tuple(tokenizer.eos_ids),
        pad_id=tokenizer.pad_id,
    )
    out = sampler(params, prompt_BxP, mask_BxP, jax.random.PRNGKey(seed))
    texts = tokenizer.decode_batch(jax.device_get(out.tokens), jax.device_get(out.mask))
    return [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]
