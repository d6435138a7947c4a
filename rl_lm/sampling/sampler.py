"""Autoregressive sampling with a preallocated KV cache.

Each prompt is prefilled once, its cache is repeated for its G samples, and the
decode loop runs inside one `lax.while_loop` that stops as soon as every row has
finished, so a whole rollout is a single compiled call with no host round trips.

Randomness does not depend on the batch: sample g of a prompt whose key is k
draws step t from fold_in(fold_in(k, g), t). Sampling one prompt alone with its
key therefore gives the same tokens as sampling it inside any batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params
from rl_lm.sampling.decode import decode_step, prefill, unstack_layers


class SampleOutput(NamedTuple):
    """A batch of completions, N = B * G rows, prompt-major (row b * G + g).

    Attributes:
        tokens: [N, R] generated ids, pad_id after a row's first EOS.
        logprobs: [N, R] float32 log-probs of the sampled tokens under
            log_softmax(logits / temperature) of the full vocabulary (temperature 1
            when greedy), 0 where `mask` is 0.
        mask: [N, R] int32, 1 on generated tokens up to and including the first EOS.
        lengths: [N] int32, number of generated tokens (the sum of `mask`).
        prompt: [N, P] the prompts, repeated G times.
        prompt_mask: [N, P] their masks.
    """

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    prompt: jax.Array
    prompt_mask: jax.Array


def cut_by_budget(tokens_NxR, mask_NxR, eos_ids: Sequence[int]) -> np.ndarray:
    """[N] bool, on the host: rows the budget cut, their mask running to the last
    column with no EOS in it (a `SampleOutput`'s tokens and mask)."""
    tokens_NxR, mask_NxR = np.asarray(tokens_NxR), np.asarray(mask_NxR)
    ended_N = np.any(np.isin(tokens_NxR, np.asarray(eos_ids)) & (mask_NxR > 0), axis=1)
    return (mask_NxR[:, -1] > 0) & ~ended_N


def filter_logits(logits_NxV: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets logits outside the top-k / top-p support to -inf.

    Top-k applies first; top-p then keeps the smallest set of most likely tokens
    whose probability (renormalized after top-k) reaches top_p, and always the most
    likely token. Ties at the boundary are all kept.

    Args:
        logits_NxV: logits, already divided by the temperature.
        top_k: keep the k largest logits; 0 keeps all.
        top_p: nucleus mass in (0, 1]; 1 keeps all.

    Returns:
        The filtered logits.
    """
    neg_inf = jnp.array(-jnp.inf, logits_NxV.dtype)
    if top_k:
        # Sorted descending; top-p below only needs these k, not the whole vocabulary.
        sorted_NxK = jax.lax.top_k(logits_NxV, top_k)[0]
        logits_NxV = jnp.where(logits_NxV < sorted_NxK[:, -1:], neg_inf, logits_NxV)
    else:
        sorted_NxK = jnp.sort(logits_NxV, axis=-1)[:, ::-1] if top_p < 1.0 else None
    if top_p < 1.0:
        probs_NxK = jax.nn.softmax(sorted_NxK, axis=-1)
        mass_before_NxK = jnp.cumsum(probs_NxK, axis=-1) - probs_NxK
        # The kept set is a prefix of the sorted logits; its last entry is the cutoff.
        kept_N = jnp.sum(mass_before_NxK < top_p, axis=-1, keepdims=True)
        cutoff_N = jnp.take_along_axis(sorted_NxK, kept_N - 1, axis=-1)
        logits_NxV = jnp.where(logits_NxV < cutoff_N, neg_inf, logits_NxV)
    return logits_NxV


def inverse_cdf_sample(logits_NxV: jax.Array, u_N: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits), given one uniform in (0, 1] per row.

    Inverting the CDF needs one random number per row where Gumbel-max
    (`jax.random.categorical`) needs V; on CPU the V random bits and the argmax
    were a sixth of the decode time.

    Args:
        logits_NxV: logits; -inf entries are never drawn.
        u_N: uniforms in (0, 1] (with u in (0, 1], a token of probability 0 is
            never the first whose CDF reaches u).

    Returns:
        int32 token ids [N].
    """
    probs_NxV = jnp.exp(logits_NxV - jnp.max(logits_NxV, axis=-1, keepdims=True))
    cdf_NxV = jnp.cumsum(probs_NxV, axis=-1)
    tok_N = jnp.sum(cdf_NxV < (u_N * cdf_NxV[:, -1])[:, None], axis=-1)
    return jnp.minimum(tok_N, logits_NxV.shape[-1] - 1).astype(jnp.int32)


def pick_tokens(
    z_NxV: jax.Array,
    u_N: jax.Array | None,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """The next token of each row and its log-prob, from next-token logits.

    The one token choice of single-turn (`sample`) and multi-turn
    (`multiturn.sample_multiturn`) sampling; the caller picks each row's uniform,
    so the RNG indexing stays its own.

    Args:
        z_NxV: next-token logits [N, V].
        u_N: one uniform in (0, 1] per row [N] (`_uniforms`); ignored, and may be
            None, when greedy.
        temperature: softmax temperature (static); 0 takes the argmax.
        top_k, top_p: the sampling support, as `filter_logits` (ignored when greedy).

    Returns:
        (tokens [N] int32, log-probs [N] float32 of those tokens under
        log_softmax(z_NxV / temperature) of the full vocabulary, before top-k /
        top-p; temperature 1 when greedy).
    """
    if temperature == 0:
        tok_N = jnp.argmax(z_NxV, axis=-1)
        logp_NxV = jax.nn.log_softmax(z_NxV, axis=-1)
    else:
        z_NxV = z_NxV / temperature
        logp_NxV = jax.nn.log_softmax(z_NxV, axis=-1)
        tok_N = inverse_cdf_sample(filter_logits(z_NxV, top_k=top_k, top_p=top_p), u_N)
    tok_N = tok_N.astype(jnp.int32)
    return tok_N, jnp.take_along_axis(logp_NxV, tok_N[:, None], axis=-1)[:, 0]


def _uniforms(keys_B: jax.Array, g: int, r: int) -> jax.Array:
    """u[b * G + g, t] in (0, 1] drawn with key fold_in(fold_in(keys_B[b], g), t)."""
    b = keys_B.shape[0]
    row_keys_N = jax.vmap(jax.random.fold_in)(jnp.repeat(keys_B, g), jnp.tile(jnp.arange(g), b))
    step = jax.vmap(jax.random.fold_in, in_axes=(None, 0))
    step_keys_NxR = jax.vmap(step, in_axes=(0, None))(row_keys_N, jnp.arange(r))
    return 1.0 - jax.vmap(jax.vmap(jax.random.uniform))(step_keys_NxR)


def _prompt_keys(rng: jax.Array, b: int) -> jax.Array:
    """Typed keys [B], one per prompt, from one key or a batch of B keys."""
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    if rng.ndim == 0:
        return jax.random.split(rng, b)
    if rng.shape != (b,):
        raise ValueError(
            f"rng must be one key or a batch of {b} keys (one per prompt), got key "
            f"array of shape {rng.shape}."
        )
    return rng


def _check_inputs(
    cfg,
    prompt_BxP,
    prompt_mask_BxP,
    max_new_tokens,
    num_samples,
    temperature,
    top_k,
    top_p,
    eos_ids,
    pad_id,
    params,
    mix_params,
    mix_coef,
):
    if not cfg.lm_head:
        raise ValueError("cannot sample from a model without lm_head (a scalar-head model).")
    if prompt_BxP.ndim != 2:
        raise ValueError(f"prompt must be [B, P], got shape {prompt_BxP.shape}.")
    if prompt_mask_BxP.shape != prompt_BxP.shape:
        raise ValueError(
            f"prompt_mask shape {prompt_mask_BxP.shape} does not match prompt shape "
            f"{prompt_BxP.shape}."
        )
    if not jnp.issubdtype(prompt_BxP.dtype, jnp.integer):
        raise TypeError(f"prompt must hold integer token ids, got dtype {prompt_BxP.dtype}.")
    p = prompt_BxP.shape[1]
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} and num_samples={num_samples} must be >= 1."
        )
    if p + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt length P={p} + max_new_tokens={max_new_tokens} = {p + max_new_tokens} "
            f"exceeds cfg.max_seq_len={cfg.max_seq_len}; shorten the prompts, lower "
            "max_new_tokens, or raise max_seq_len in the model config."
        )
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy).")
    if not 0 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k={top_k} must be in [0, vocab_size={cfg.vocab_size}].")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1].")
    bad = [i for i in (*eos_ids, pad_id) if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ValueError(f"eos_ids / pad_id {bad} lie outside [0, vocab_size={cfg.vocab_size}).")
    if isinstance(mix_coef, int | float) and not 0 <= mix_coef <= 1:
        raise ValueError(f"mix_coef={mix_coef} must be in [0, 1].")
    if mix_params is not None:
        shapes = lambda tree: jax.tree.map(jnp.shape, tree)
        if shapes(mix_params) != shapes(params):
            raise ValueError(
                "mix_params must have the same structure and shapes as params (the mixture "
                "runs both models with the same cfg)."
            )


def sample(
    params: Params,
    cfg: ModelConfig,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: Sequence[int] = (258,),
    pad_id: int = 256,
    mix_params: Params | None = None,
    mix_coef: float | jax.Array = 0.0,
) -> SampleOutput:
    """Samples `num_samples` completions of each prompt.

    Pure; jit it with everything but params, prompts, rng, mix_params and mix_coef
    static, or use `make_sampler`.

    Args:
        params: model parameters.
        cfg: the model config.
        prompt_BxP: LEFT-padded prompt ids; every prompt needs at least one real token.
        prompt_mask_BxP: 1 on real prompt tokens, 0 on the left padding.
        rng: one key (split into B per-prompt keys) or B keys, typed or raw.
        max_new_tokens: R, the number of decode steps at most.
        num_samples: G completions per prompt.
        temperature: softmax temperature; 0 samples greedily.
        top_k: restrict sampling to the k most likely tokens (0: no restriction).
        top_p: restrict sampling to the nucleus of this mass (1: no restriction).
        eos_ids: ids that end a completion; () never stops early.
        pad_id: id written after a completion's end.
        mix_params: optional second model (same cfg); sampling then uses the
            geometric mixture logits (1 - mix_coef) * z_params + mix_coef * z_mix.
        mix_coef: mixture weight in [0, 1] (may be traced).

    Returns:
        A `SampleOutput`.
    """
    eos_ids = tuple(int(i) for i in eos_ids)
    _check_inputs(
        cfg,
        prompt_BxP,
        prompt_mask_BxP,
        max_new_tokens,
        num_samples,
        temperature,
        top_k,
        top_p,
        eos_ids,
        pad_id,
        params,
        mix_params,
        mix_coef,
    )
    b, p = prompt_BxP.shape
    g, r = num_samples, max_new_tokens
    n = b * g
    # All the randomness up front: the decode loop then holds no RNG code.
    u_NxR = None if temperature == 0 else _uniforms(_prompt_keys(rng, b), g, r)
    models = [params] if mix_params is None else [params, mix_params]

    def mixed(z_list):
        if len(z_list) == 1:
            return z_list[0]
        return (1 - mix_coef) * z_list[0] + mix_coef * z_list[1]

    # Prefill once per prompt; its cache is repeated for the G samples. The last
    # generated token is never fed back, so P + R - 1 slots suffice.
    prompt_mask_BxP = prompt_mask_BxP.astype(jnp.bool_)
    z_prefill, caches = [], []
    for m in models:
        z_NxV, cache = prefill(m, cfg, prompt_BxP, prompt_mask_BxP, p + r - 1, repeats=g)
        z_prefill.append(z_NxV)
        caches.append(cache)
    # Sliced once here: inside the loop they are loop-invariant inputs, never copied.
    layers = [unstack_layers(m, cfg) for m in models]
    length_N = jnp.repeat(jnp.sum(prompt_mask_BxP, axis=1, dtype=jnp.int32), g)

    eos = np.asarray(eos_ids, np.int32)

    def record(state, t, z_NxV):
        tokens, logprobs, mask, done_N = state
        # Step t of every row draws column t of its uniforms.
        u_N = None if u_NxR is None else jax.lax.dynamic_index_in_dim(u_NxR, t, 1, False)
        tok_N, logp_N = pick_tokens(z_NxV, u_N, temperature=temperature, top_k=top_k, top_p=top_p)
        live_N = ~done_N
        tokens = tokens.at[:, t].set(jnp.where(live_N, tok_N, pad_id))
        logprobs = logprobs.at[:, t].set(jnp.where(live_N, logp_N, 0.0))
        mask = mask.at[:, t].set(live_N.astype(jnp.int32))
        done_N = done_N | (live_N & jnp.isin(tok_N, eos))
        # Finished rows keep decoding their own (ignored) samples: batch-uniform work.
        return (tokens, logprobs, mask, done_N), tok_N

    state = (
        jnp.full((n, r), pad_id, jnp.int32),
        jnp.zeros((n, r), jnp.float32),
        jnp.zeros((n, r), jnp.int32),
        jnp.zeros((n,), jnp.bool_),
    )
    state, tok_N = record(state, 0, mixed(z_prefill))

    def cond(carry):
        t, _, _, state = carry
        return (t < r) & ~jnp.all(state[-1])

    def body(carry):
        t, tok_N, caches, state = carry
        z_list, new_caches = [], []
        for m, m_layers, cache in zip(models, layers, caches, strict=True):
            z_NxV, cache = decode_step(m, m_layers, cfg, tok_N, length_N + t - 1, cache, p + t - 1)
            z_list.append(z_NxV)
            new_caches.append(cache)
        state, tok_N = record(state, t, mixed(z_list))
        return t + 1, tok_N, new_caches, state

    _, _, _, state = jax.lax.while_loop(cond, body, (jnp.int32(1), tok_N, caches, state))
    tokens, logprobs, mask, _ = state
    return SampleOutput(
        tokens=tokens,
        logprobs=logprobs,
        mask=mask,
        lengths=jnp.sum(mask, axis=1),
        prompt=jnp.repeat(prompt_BxP, g, axis=0),
        prompt_mask=jnp.repeat(prompt_mask_BxP.astype(jnp.int32), g, axis=0),
    )


def make_sampler(
    cfg: ModelConfig,
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: Sequence[int] = (258,),
    pad_id: int = 256,
) -> Callable[..., SampleOutput]:
    """A jitted `sample` with these static settings bound; one per distinct settings.

    Returns:
        fn(params, prompt_BxP, prompt_mask_BxP, rng, mix_params=None, mix_coef=0.0)
        -> SampleOutput. The same settings return the same function, which retraces
        only for new shapes (or for mix_params given vs not).
    """
    settings = (max_new_tokens, num_samples, temperature, top_k, top_p, tuple(eos_ids), pad_id)
    return _jitted_sampler(cfg, settings)


@functools.lru_cache(maxsize=32)
def _jitted_sampler(cfg: ModelConfig, settings: tuple) -> Callable[..., SampleOutput]:
    names = ("max_new_tokens", "num_samples", "temperature", "top_k", "top_p", "eos_ids", "pad_id")
    static = dict(zip(names, settings, strict=True))

    @jax.jit
    def fn(params, prompt_BxP, prompt_mask_BxP, rng, mix_params=None, mix_coef=0.0):
        return sample(
            params,
            cfg,
            prompt_BxP,
            prompt_mask_BxP,
            rng,
            mix_params=mix_params,
            mix_coef=mix_coef,
            **static,
        )

    return fn
