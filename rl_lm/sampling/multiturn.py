"""Multi-turn sampling: decode, hand a finished turn to the host, append its observation.

Token in, token out. A row's response is exactly the ids it sampled and the ids
of the observations it was given, in order, never a re-rendered conversation:
the trainer scores the very sequence the sampler produced. Observation tokens
are attended to like any other but carry loss mask 0 and log-prob 0.

The loop runs on the device in segments. Every step each live row feeds one
token into the decode cache: the next id of a pending observation, or a token
sampled from the logits its previous token produced (`decode.decode_step`, so
the prefix is never recomputed). A segment ends as soon as some row's turn ends
by a stop sequence (a tool-call closer) or its per-turn budget. The host then
calls `on_turns` with the ended turns' ids, which returns each row's
observation ids (or None: the episode is over), and the next segment goes on.

Slots and costs. Every row has its own position counter, so a row's RoPE
positions and log-probs are those of its sequence alone. Because a segment ends
at the step a row starts waiting, no live row ever skips a step: the cache
needs P + R slots for R response tokens. A row that has finished (EOS, the
total budget, or an episode over) keeps its place in the batch and costs one
row of decode work per step until every row has finished, as in the
single-turn sampler; what multi-turn adds is one host round trip per segment
(a few small transfers) plus the tools' own time. Observations are fed one
token per step rather than prefilled in one pass, which keeps the shapes fixed
and costs a decode step per observation token.

Multi-process runs: the host reads gather the global arrays (`to_host`), so every
process sees the whole batch and makes the same host decisions; `on_turns` is
called on every process with all ended rows and must return the same
observations everywhere (`rl_lm.algos.episodes` steps each process's own rows'
environments and exchanges the observations), so the next segment's inputs are
the same on every process.

Randomness depends on the row only: the k-th generated token of sample g of a
prompt with key K uses the uniform drawn from fold_in(fold_in(K, g), k), as in
`sampler.sample`, so a row samples the same whether alone or in any batch.
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
from rl_lm.parallel.sharding import to_host
from rl_lm.sampling.decode import DecodeCache, decode_step, prefill, unstack_layers
from rl_lm.sampling.sampler import _check_inputs, _prompt_keys, _uniforms, pick_tokens

# on_turns(rows [M], actions: M id arrays, final [M] bool) -> M observations (ids or None).
OnTurns = Callable[[np.ndarray, list[np.ndarray], np.ndarray], list]


class MultiTurnOutput(NamedTuple):
    """N = B * G multi-turn rows, prompt-major (row b * G + g).

    Attributes:
        tokens: [N, R] response ids (sampled and observation tokens, in order), pad after.
        logprobs: [N, R] float32 sampler log-probs of the sampled tokens, 0 elsewhere.
        mask: [N, R] int32 loss mask, 1 on sampled tokens only.
        attention_mask: [N, R] int32, 1 on every response token (sampled or observed).
        lengths: [N] response tokens (the sum of `attention_mask`).
        prompt: [N, P] the prompts, repeated G times.
        prompt_mask: [N, P] their masks.
        turns: [N] turns each row ended (a turn ends at a stop, its budget, EOS or the end).
        observation_tokens: [N] observation tokens appended.
        truncated: [N] bool, rows the total budget cut (an observation that did not fit
            ends the row too).
        segments: device segments run (host round trips).
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    mask: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    prompt: np.ndarray
    prompt_mask: np.ndarray
    turns: np.ndarray
    observation_tokens: np.ndarray
    truncated: np.ndarray
    segments: int


class _Carry(NamedTuple):
    t: jax.Array  # global step = cache slot P + t
    cache: DecodeCache
    logits: jax.Array  # [N, V] next-token logits of each row's last fed token
    tokens: jax.Array  # [N, R + 1]; column R takes the writes of idle rows
    logprobs: jax.Array
    loss: jax.Array
    valid: jax.Array
    count: jax.Array  # [N] response tokens so far
    generated: jax.Array  # [N] sampled tokens so far (the RNG index)
    turn_start: jax.Array  # [N] column where the current turn's action began
    window: jax.Array  # [N, W] the last W sampled ids of the turn (stop detection)
    forced: jax.Array  # [N, F] the pending observation
    forced_len: jax.Array
    forced_pos: jax.Array
    done: jax.Array  # [N] bool: finished
    wait: jax.Array  # [N] bool: a turn ended, the host owes an observation
    final: jax.Array  # [N] bool: ended by EOS or the budget, the host has not seen it


def _stop_table(stop_sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Stop sequences right-aligned in a [S, W] table, their lengths, and W."""
    w = max([len(s) for s in stop_sequences], default=1)
    table = np.full((max(len(stop_sequences), 1), w), -1, np.int32)
    lengths = np.zeros(len(table), np.int32)
    for i, s in enumerate(stop_sequences):
        table[i, w - len(s) :] = s
        lengths[i] = len(s)
    return table, lengths, w


def _segment(params, carry: _Carry, u_NxR, *, cfg, settings) -> _Carry:
    """Runs decode steps until some row waits, every row is done, or the slots run out.

    The layers are sliced here, inside the jit, not once per rollout: a jit that
    returned the slices would keep a second copy of every layer's weights alive
    for the whole rollout.
    """
    (r, p, temperature, top_k, top_p, eos, pad_id, turn_budget, stops) = settings
    layers = unstack_layers(params, cfg)
    table, stop_len, _ = _stop_table(stops)
    n = carry.count.shape[0]
    rows = jnp.arange(n)
    prompt_len_N = jnp.sum(carry.cache.mask[:, :p], axis=1, dtype=jnp.int32)
    eos = np.asarray(eos, np.int32)

    def pick(z_NxV, k_N):
        # A row's k-th sampled token draws its column k (a row's own count, not the step).
        u_N = None if u_NxR is None else u_NxR[rows, jnp.minimum(k_N, r - 1)]
        return pick_tokens(z_NxV, u_N, temperature=temperature, top_k=top_k, top_p=top_p)

    def cond(c: _Carry):
        return (c.t < r) & ~jnp.all(c.done) & ~jnp.any(c.wait)

    def body(c: _Carry):
        forcing_N = ~c.done & (c.forced_pos < c.forced_len)
        sampling_N = ~c.done & ~forcing_N
        sampled_N, logp_N = pick(c.logits, c.generated)
        forced_N = c.forced[rows, jnp.minimum(c.forced_pos, c.forced.shape[1] - 1)]
        live_N = forcing_N | sampling_N
        tok_N = jnp.where(forcing_N, forced_N, jnp.where(sampling_N, sampled_N, pad_id))
        col_N = jnp.where(live_N, c.count, r)
        z_NxV, cache = decode_step(
            params, layers, cfg, tok_N, prompt_len_N + c.count, c.cache, p + c.t
        )
        mask = jax.lax.dynamic_update_slice(cache.mask, live_N[:, None], (0, p + c.t))
        count = c.count + live_N
        generated = c.generated + sampling_N
        window = jnp.where(
            sampling_N[:, None],
            jnp.concatenate([c.window[:, 1:], tok_N[:, None]], axis=1),
            c.window,
        )
        turn_len_N = count - c.turn_start
        matched = jnp.all((window[:, None, :] == table[None]) | (table[None] < 0), axis=-1)
        stopped_N = sampling_N & jnp.any(matched & (stop_len[None] > 0), axis=-1)
        eos_N = sampling_N & jnp.isin(tok_N, eos)
        full_N = live_N & (count >= r)
        over_N = sampling_N & (turn_len_N >= turn_budget)
        ending_N = eos_N | full_N
        return _Carry(
            t=c.t + 1,
            cache=DecodeCache(cache.k, cache.v, mask),
            logits=jnp.where(live_N[:, None], z_NxV, c.logits),
            tokens=c.tokens.at[rows, col_N].set(tok_N),
            logprobs=c.logprobs.at[rows, col_N].set(jnp.where(sampling_N, logp_N, 0.0)),
            loss=c.loss.at[rows, col_N].set(sampling_N.astype(jnp.int32)),
            valid=c.valid.at[rows, col_N].set(1),
            count=count,
            generated=generated,
            turn_start=c.turn_start,
            window=window,
            forced=c.forced,
            forced_len=c.forced_len,
            forced_pos=c.forced_pos + forcing_N,
            done=c.done | ending_N,
            wait=c.wait | (~ending_N & (stopped_N | over_N)),
            final=c.final | ending_N,
        )

    return jax.lax.while_loop(cond, body, carry)


@functools.lru_cache(maxsize=16)
def _jitted_segment(cfg: ModelConfig, settings: tuple):
    return jax.jit(functools.partial(_segment, cfg=cfg, settings=settings), donate_argnums=1)


@functools.lru_cache(maxsize=16)
def _jitted_start(cfg: ModelConfig, r: int, g: int, temperature: float):
    @jax.jit
    def start(params, prompt_BxP, prompt_mask_BxP, rng):
        b, p = prompt_BxP.shape
        z_NxV, cache = prefill(params, cfg, prompt_BxP, prompt_mask_BxP.astype(bool), p + r, g)
        u_NxR = None if temperature == 0 else _uniforms(_prompt_keys(rng, b), g, r)
        return z_NxV, cache, u_NxR

    return start


def sample_multiturn(
    params: Params,
    cfg: ModelConfig,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    rng: jax.Array,
    on_turns: OnTurns,
    *,
    max_tokens: int,
    max_turn_tokens: int | None = None,
    max_observation_tokens: int = 64,
    stop_sequences: Sequence[Sequence[int]] = (),
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: Sequence[int] = (258,),
    pad_id: int = 256,
) -> MultiTurnOutput:
    """Samples `num_samples` multi-turn episodes of each prompt.

    Args:
        params: model parameters.
        cfg: the model config.
        prompt_BxP: LEFT-padded prompt ids (at least one real token each).
        prompt_mask_BxP: 1 on real prompt tokens.
        rng: one key or B keys, typed or raw.
        on_turns: called on the host with the rows whose turn just ended, each turn's
            sampled ids, and whether the row already ended (EOS or the budget: its
            answer is ignored). Returns, per row, the observation ids to append (an
            empty array appends nothing and continues) or None to end the episode; in a
            multi-process run, the same on every process.
        max_tokens: R, the response budget of a row, sampled plus observation tokens.
        max_turn_tokens: sampled tokens per turn at most (default R); a turn that
            reaches it ends and goes to `on_turns` as if it had stopped.
        max_observation_tokens: an observation's ids at most; a longer one keeps its
            head and tail.
        stop_sequences: id sequences that end a turn (e.g. a tool-call closer).
        num_samples, temperature, top_k, top_p, eos_ids, pad_id: as `sampler.sample`.

    Returns:
        A `MultiTurnOutput` (host arrays).
    """
    b, p = prompt_BxP.shape
    r, g = max_tokens, num_samples
    if p + r > cfg.max_seq_len:
        raise ValueError(
            f"prompt length P={p} + max_tokens={r} = {p + r} exceeds cfg.max_seq_len="
            f"{cfg.max_seq_len}; shorten the prompts or lower the budget."
        )
    if r < 1 or g < 1 or max_observation_tokens < 1:
        raise ValueError(
            f"max_tokens={r}, num_samples={g} and max_observation_tokens="
            f"{max_observation_tokens} must be >= 1."
        )
    if any(len(s) == 0 for s in stop_sequences):
        raise ValueError("every stop sequence needs at least one id.")
    if max_turn_tokens is not None and max_turn_tokens < 1:
        raise ValueError(f"max_turn_tokens={max_turn_tokens} must be >= 1 (or None: R).")
    _check_inputs(
        cfg, prompt_BxP, prompt_mask_BxP, r, g, temperature, top_k, top_p,
        tuple(eos_ids), pad_id, params, None, 0.0,
    )  # fmt: skip
    stops = tuple(tuple(int(i) for i in s) for s in stop_sequences)
    turn_budget = r if max_turn_tokens is None else int(max_turn_tokens)
    settings = (
        r,
        p,
        temperature,
        top_k,
        top_p,
        tuple(int(i) for i in eos_ids),
        pad_id,
        turn_budget,
        stops,
    )
    z_NxV, cache, u_NxR = _jitted_start(cfg, r, g, temperature)(
        params, prompt_BxP, prompt_mask_BxP, rng
    )
    n, f = b * g, max_observation_tokens
    w = _stop_table(stops)[2]
    zeros = lambda dtype, *shape: jnp.zeros(shape or (n,), dtype)
    carry = _Carry(
        t=jnp.int32(0), cache=cache, logits=z_NxV,
        tokens=jnp.full((n, r + 1), pad_id, jnp.int32), logprobs=zeros(jnp.float32, n, r + 1),
        loss=zeros(jnp.int32, n, r + 1), valid=zeros(jnp.int32, n, r + 1),
        count=zeros(jnp.int32), generated=zeros(jnp.int32), turn_start=zeros(jnp.int32),
        window=jnp.full((n, w), -1, jnp.int32), forced=zeros(jnp.int32, n, f),
        forced_len=zeros(jnp.int32), forced_pos=zeros(jnp.int32),
        done=zeros(jnp.bool_), wait=zeros(jnp.bool_), final=zeros(jnp.bool_),
    )  # fmt: skip
    segment = _jitted_segment(cfg, settings)
    turns, obs_tokens, truncated = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, bool)
    segments = 0
    while True:
        carry = segment(params, carry, u_NxR)
        segments += 1
        host = _host(
            {
                k: getattr(carry, k)
                for k in ("tokens", "count", "turn_start", "done", "wait", "final")
            }
        )
        ended = np.flatnonzero(host["wait"] | host["final"])
        if len(ended):
            final = host["final"][ended]
            actions = [host["tokens"][i, host["turn_start"][i] : host["count"][i]] for i in ended]
            turns[ended] += 1
            observations = on_turns(ended, actions, final)
            carry = _resume(
                carry, host, ended, final, observations, f, r, obs_tokens, truncated, cfg.vocab_size
            )
        host_done, host_t = _host((carry.done, carry.t))
        if host_done.all() or int(host_t) >= r:
            break
    t = _host({k: getattr(carry, k) for k in ("tokens", "logprobs", "loss", "valid", "count")})
    tokens, count = t["tokens"][:, :r], t["count"]
    last_N = tokens[np.arange(n), np.maximum(count - 1, 0)]
    ended_by_eos = np.isin(last_N, np.asarray(eos_ids, np.int32)) & (
        t["loss"][np.arange(n), np.maximum(count - 1, 0)] > 0
    )
    truncated |= (count >= r) & ~ended_by_eos
    return MultiTurnOutput(
        tokens=tokens,
        logprobs=t["logprobs"][:, :r],
        mask=t["loss"][:, :r],
        attention_mask=t["valid"][:, :r],
        lengths=count,
        prompt=np.repeat(_host(prompt_BxP), g, axis=0),
        prompt_mask=np.repeat(np.asarray(_host(prompt_mask_BxP), np.int32), g, axis=0),
        turns=turns,
        observation_tokens=obs_tokens,
        truncated=truncated,
        segments=segments,
    )


def _host(tree):
    """The full values of a tree of arrays on the host, on every process: a multi-process
    global array that no process holds whole is gathered (the same on every process, so
    every host makes the same decisions); the others are read where they are."""

    def gather(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return to_host(x)
        return x

    return jax.device_get(jax.tree.map(gather, tree))


def _head_tail(ids: np.ndarray, limit: int) -> np.ndarray:
    if len(ids) <= limit:
        return ids
    head = limit // 2
    return np.concatenate([ids[:head], ids[len(ids) - (limit - head) :]])


def _resume(carry, host, ended, final, observations, f, r, obs_tokens, truncated, vocab):
    """The carry after the host answered the ended turns (host-side bookkeeping)."""
    if len(observations) != len(ended):
        raise ValueError(
            f"on_turns returned {len(observations)} observations for {len(ended)} rows."
        )
    done, wait, final_all = host["done"].copy(), host["wait"].copy(), host["final"].copy()
    forced, forced_len, forced_pos, window = (
        np.array(x) for x in _host((carry.forced, carry.forced_len, carry.forced_pos, carry.window))
    )
    turn_start = host["turn_start"].copy()
    for i, is_final, obs in zip(ended, final, observations, strict=True):
        wait[i] = final_all[i] = False
        if is_final:
            continue
        if obs is None:
            done[i] = True
            continue
        ids = _head_tail(np.asarray(obs, np.int32).reshape(-1), f)
        if len(ids) and not (0 <= ids.min() and ids.max() < vocab):
            raise ValueError(
                f"observation ids of row {i} lie outside [0, vocab_size={vocab}); encode "
                "observations with the model's own tokenizer."
            )
        if host["count"][i] + len(ids) + 1 > r:  # no room for the observation and a reply
            done[i] = truncated[i] = True
            continue
        forced[i, : len(ids)], forced_len[i], forced_pos[i] = ids, len(ids), 0
        turn_start[i] = host["count"][i] + len(ids)
        window[i] = -1
        obs_tokens[i] += len(ids)
    return carry._replace(
        done=jnp.asarray(done), wait=jnp.asarray(wait), final=jnp.asarray(final_all),
        forced=jnp.asarray(forced), forced_len=jnp.asarray(forced_len),
        forced_pos=jnp.asarray(forced_pos), turn_start=jnp.asarray(turn_start),
        window=jnp.asarray(window),
    )  # fmt: skip
