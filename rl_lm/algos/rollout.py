"""The on-policy rollout as a value: one sampled global batch, made by `collect`.

GRPO and PPO sample the same way: the global prompt batch (every process reads
all B rows) goes to the devices, the sampler draws G completions of each, and
the response tokens cross to the host once, for decoding. The device arrays
stay on the devices, sharded by rows, for the log-probs, the reward model and
the updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel

# The device fields, as the loss batches and the reward model name them.
ROW_KEYS = ("prompt", "prompt_mask", "response", "mask")


class Rollout(NamedTuple):
    """N = B * G sampled rows, prompt-major (row b * G + g).

    Attributes:
      prompt: [N, P] prompt ids (each prompt G times), sharded by rows.
      prompt_mask: [N, P] their masks.
      response: [N, T] sampled ids.
      mask: [N, T] the loss mask, 1 on generated tokens up to the first EOS.
      lp_sample: [N, T] the sampler's log-probs of its tokens.
      host_response: [N, T] the response ids on the host (the one copy, for decoding).
      host_mask: [N, T] the loss mask on the host.
      texts: the N decoded responses.
      answers: the N reference answers ("" where the data has none).
      attention_mask: [N, T] for multi-turn episodes (`rl_lm.algos.episodes`): 1 on
        every response token the model sees, observations included; None when it is
        the loss mask.
      episode: per-row environment reward terms and tool metrics ([N] each), and
        "time_tools" (seconds); None for single-turn rollouts.
    """

    prompt: jax.Array
    prompt_mask: jax.Array
    response: jax.Array
    mask: jax.Array
    lp_sample: jax.Array
    host_response: np.ndarray
    host_mask: np.ndarray
    texts: list[str]
    answers: list[str]
    attention_mask: jax.Array | None = None
    episode: dict[str, np.ndarray] | None = None

    def rows(self) -> dict[str, jax.Array]:
        """The device fields of ROW_KEYS (and the attention mask where there is one)."""
        out = {k: getattr(self, k) for k in ROW_KEYS}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        return out


def collect(
    sampler: Callable[..., Any],
    params: Any,
    prompts: dict[str, np.ndarray],
    key: jax.Array,
    *,
    mesh: Mesh,
    tokenizer: Any,
    num_generations: int,
) -> Rollout:
    """Samples G completions of each prompt of one global prompt batch.

    Args:
      sampler: `rl_lm.sampling.sampler.make_sampler`'s (params, prompt, mask, key).
      params: the sampling policy's params.
      prompts: the global prompt batch (`rl_lm.data.prompt_batches`), B rows.
      key: the sampling key.
      mesh: the mesh.
      tokenizer: decodes the responses.
      num_generations: G.

    Returns:
      The Rollout of the B * G samples.
    """
    b = len(prompts["prompt"])
    lo, hi = parallel.process_rows(mesh, b)
    local = {k: prompts[k][lo:hi] for k in ("prompt", "prompt_mask")}
    arrays = parallel.shard_batch(local, mesh, b)
    out = sampler(params, arrays["prompt"], arrays["prompt_mask"], key)
    return from_samples(
        out, prompts, mesh=mesh, tokenizer=tokenizer, num_generations=num_generations
    )


def from_samples(
    out: Any,
    prompts: dict[str, np.ndarray],
    *,
    mesh: Mesh,
    tokenizer: Any,
    num_generations: int,
    attention_mask: Any = None,
    episode: dict[str, np.ndarray] | None = None,
) -> Rollout:
    """The Rollout of a sampler's output `out` (prompt, prompt_mask, tokens, mask, logprobs;
    global device or host arrays) for the prompt batch `prompts`, G samples per prompt."""
    rows = parallel.batch_sharding(mesh)
    put = lambda x: jax.device_put(x, rows)
    host = lambda x: x if isinstance(x, np.ndarray) else parallel.to_host(x)
    response, mask = put(out.tokens), put(out.mask)
    host_response, host_mask = host(out.tokens), host(out.mask)
    answers = np.repeat(np.asarray(prompts["answer"], dtype=object), num_generations)
    return Rollout(
        prompt=put(out.prompt),
        prompt_mask=put(out.prompt_mask),
        response=response,
        mask=mask,
        lp_sample=put(out.logprobs),
        host_response=host_response,
        host_mask=host_mask,
        texts=tokenizer.decode_batch(host_response, host_mask),
        answers=list(answers),
        attention_mask=None if attention_mask is None else put(attention_mask),
        episode=episode,
    )


def take_rows(rollouts: Sequence[Rollout], rows: Sequence[np.ndarray], n: int, mesh: Mesh):
    """Rows `rows[i]` of `rollouts[i]`, concatenated, then cut or zero-padded to n rows.

    A padded row has an empty mask: no loss, no denominator.
    """

    def merge(parts, pad):
        have = sum(len(p) for p in parts)
        if have < n:
            parts.append(pad(n - have, parts[0]))
        return parts

    def device(field):
        parts = [getattr(r, field)[jnp.asarray(i)] for r, i in zip(rollouts, rows, strict=True)]
        pad = lambda k, x: jnp.zeros((k, *x.shape[1:]), x.dtype)
        merged = jnp.concatenate(merge(parts, pad))[:n]
        return jax.device_put(merged, parallel.batch_sharding(mesh))

    def host(field):
        parts = [getattr(r, field)[i] for r, i in zip(rollouts, rows, strict=True)]
        pad = lambda k, x: np.zeros((k, *x.shape[1:]), x.dtype)
        return np.concatenate(merge(parts, pad))[:n]

    def texts(field):
        merged = [getattr(r, field)[j] for r, i in zip(rollouts, rows, strict=True) for j in i]
        return (merged + [""] * n)[:n]

    multiturn = rollouts[0].attention_mask is not None
    episode = None
    if multiturn:
        episode = {
            k: np.concatenate(merge([r.episode[k][i] for r, i in zip(rollouts, rows, strict=True)],
                                    lambda k_, x: np.zeros((k_,), x.dtype)))[:n]
            for k in rollouts[0].episode if k != "time_tools"
        }  # fmt: skip
        episode["time_tools"] = np.float32(sum(r.episode["time_tools"] for r in rollouts))
    return Rollout(
        **{k: device(k) for k in (*ROW_KEYS, "lp_sample")},
        host_response=host("host_response"),
        host_mask=host("host_mask"),
        texts=texts("texts"),
        answers=texts("answers"),
        attention_mask=device("attention_mask") if multiturn else None,
        episode=episode,
    )
