"""Tests for rl_lm.sampling.multiturn (tiny preset).

The episodes are token-level toys: turns end by the per-turn budget or a stop
sequence, and the callback answers with observation ids computed from the
turn's own ids, so a row's episode depends on that row alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.models.transformer import forward, logits
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.multiturn import sample_multiturn

R, TURN = 24, 4  # response budget, sampled tokens per turn


def toy_env(max_turns=3, obs_len=lambda action: 1 + int(action[0]) % 4):
    """on_turns answering each turn with ids derived from it; the episode ends after
    `max_turns` turns or when the turn's first id is divisible by 5. Records every call."""
    seen, log = {}, []

    def on_turns(rows, actions, final):
        out = []
        for i, a, f in zip(rows, actions, final, strict=True):
            seen[int(i)] = seen.get(int(i), 0) + 1
            if f or seen[int(i)] >= max_turns or int(a[0]) % 5 == 0:
                obs = None
            else:
                obs = (np.asarray(a[::-1][: obs_len(a)]) + 7) % 250
            log.append((int(i), np.asarray(a).copy(), bool(f), obs))
            out.append(obs)
        return out

    return on_turns, log


@functools.partial(jax.jit, static_argnames="cfg")
def recompute(params, cfg, prompt, prompt_mask, tokens, mask, attention_mask):
    full = jnp.concatenate([prompt, tokens], axis=1)
    full_mask = jnp.concatenate([prompt_mask, attention_mask], axis=1)
    hidden, _ = forward(params, full, cfg, mask_NxT=full_mask)
    lp = response_logprobs(
        params, cfg, prompt, prompt_mask, tokens, mask, attention_mask_NxR=attention_mask
    )
    return logits(params, hidden, cfg), lp


def run(params, cfg, batch, key, on_turns, **kw):
    settings = dict(max_tokens=R, max_turn_tokens=TURN, num_samples=2, eos_ids=()) | kw
    return sample_multiturn(params, cfg, *batch, key, on_turns, **settings)


def test_multiturn_cache_equals_full_recomputation(keys, cfg, params, batch):
    on_turns, log = toy_env()
    out = run(params, cfg, batch, keys(3), on_turns, temperature=0.0)
    p = batch[0].shape[1]
    obs = (out.attention_mask == 1) & (out.mask == 0)
    assert obs.any() and out.observation_tokens.sum() == obs.sum()
    assert (out.turns >= 2).any() and out.segments > 1
    # Observation tokens: attended, not scored, log-prob 0.
    np.testing.assert_array_equal(out.logprobs[obs], 0.0)
    np.testing.assert_array_equal(out.lengths, out.attention_mask.sum(1))
    z, lp = recompute(
        params, cfg, out.prompt, out.prompt_mask, out.tokens, out.mask, out.attention_mask
    )
    # Greedy: each sampled token is the argmax of the uncached logits before it.
    argmax = np.asarray(jnp.argmax(z[:, p - 1 : -1], axis=-1))
    sampled = out.mask == 1
    np.testing.assert_array_equal(out.tokens[sampled], argmax[sampled])
    np.testing.assert_allclose(out.logprobs, np.asarray(lp), atol=1e-5)
    # The sequence is every turn's sampled ids, each followed by its observation.
    for row in range(out.tokens.shape[0]):
        expected = []
        for _, action, _, obs in (e for e in log if e[0] == row):
            expected += list(action) + ([] if obs is None else list(obs))
        assert list(out.tokens[row, : out.lengths[row]]) == expected
        assert out.turns[row] == len([e for e in log if e[0] == row])


def test_sampled_multiturn_logprobs_match_the_trainer(keys, cfg, params, batch):
    on_turns, _ = toy_env()
    out = run(params, cfg, batch, keys(3), on_turns, temperature=1.0)
    _, lp = recompute(
        params, cfg, out.prompt, out.prompt_mask, out.tokens, out.mask, out.attention_mask
    )
    np.testing.assert_allclose(out.logprobs, np.asarray(lp), atol=1e-5)
    assert np.all(out.logprobs[out.mask == 1] < 0)


def test_row_alone_samples_as_in_a_batch(keys, cfg, params, prompts, batch, left_pad):
    k = keys(3)
    on_turns, _ = toy_env()
    out = run(params, cfg, batch, k, on_turns, temperature=1.0)
    assert len(set(out.turns.tolist())) > 1, "rows should finish at different turns"
    for b, prompt in enumerate(prompts):
        alone_turns, _ = toy_env()
        alone = run(params, cfg, left_pad([prompt], batch[0].shape[1]), k[b : b + 1], alone_turns)
        rows = slice(2 * b, 2 * b + 2)
        for field in ("tokens", "mask", "attention_mask", "turns", "observation_tokens"):
            np.testing.assert_array_equal(getattr(alone, field), getattr(out, field)[rows])
        np.testing.assert_allclose(alone.logprobs, out.logprobs[rows], atol=1e-5)


def test_stop_sequence_ends_a_turn(keys, cfg, params, batch):
    greedy = run(params, cfg, batch, keys(3), lambda rows, a, f: [None] * len(rows),
                 temperature=0.0, max_turn_tokens=R)  # fmt: skip
    stop = tuple(int(i) for i in greedy.tokens[0, 2:4])  # what row 0 writes at 3-4
    on_turns, log = toy_env(max_turns=2)
    out = run(params, cfg, batch, keys(3), on_turns, temperature=0.0, max_turn_tokens=R,
              stop_sequences=[stop])  # fmt: skip
    first = [a for i, a, _, _ in log if i == 0][0]
    assert tuple(first[-2:]) == stop and len(first) == 4
    assert out.turns[0] == 2


def test_eos_ends_the_row_and_is_scored(keys, cfg, params, batch):
    greedy = run(params, cfg, batch, keys(3), lambda rows, a, f: [None] * len(rows),
                 temperature=0.0)  # fmt: skip
    eos = int(greedy.tokens[0, 1])
    on_turns, log = toy_env()
    out = run(params, cfg, batch, keys(3), on_turns, temperature=0.0, eos_ids=(eos,))
    row0 = [(a, f) for i, a, f, _ in log if i == 0]
    assert len(row0) == 1 and row0[0][1] and row0[0][0][-1] == eos
    assert out.lengths[0] == out.mask[0].sum() <= 2


def test_observation_that_does_not_fit_ends_the_row(keys, cfg, params, batch):
    long = lambda rows, a, f: [np.arange(R, dtype=np.int32) for _ in rows]
    out = run(params, cfg, batch, keys(3), long, temperature=0.0, max_observation_tokens=R)
    assert out.truncated.all() and (out.lengths == TURN).all()
    assert out.observation_tokens.sum() == 0


def test_long_observation_keeps_head_and_tail(keys, cfg, params, batch):
    calls = {}

    def on_turns(rows, actions, final):
        out = []
        for i in rows:
            calls[int(i)] = calls.get(int(i), 0) + 1
            out.append(np.arange(100, 110, dtype=np.int32) if calls[int(i)] == 1 else None)
        return out

    out = run(params, cfg, batch, keys(3), on_turns, temperature=0.0, max_observation_tokens=4)
    np.testing.assert_array_equal(out.tokens[0, TURN : TURN + 4], [100, 101, 108, 109])
    np.testing.assert_array_equal(out.mask[0, TURN : TURN + 4], 0)


def test_bad_callback_and_budgets_are_refused(keys, cfg, params, batch):
    with pytest.raises(ValueError, match="observations for"):
        run(params, cfg, batch, keys(3), lambda rows, a, f: [], temperature=0.0)
    with pytest.raises(ValueError, match="max_seq_len"):
        run(params, cfg, batch, keys(3), toy_env()[0], max_tokens=cfg.max_seq_len)


def test_randomness_follows_each_rows_own_sampled_count(keys, cfg, params, batch):
    """Sampled token j of a row is the inverse-CDF draw of uniform u[row, j], whatever
    observation tokens came before it (they shift the slot, not the draw)."""
    from rl_lm.sampling.sampler import _prompt_keys, _uniforms, inverse_cdf_sample

    on_turns, _ = toy_env()
    k = keys(3)
    out = run(params, cfg, batch, k, on_turns, temperature=1.0)
    z, _ = recompute(
        params, cfg, out.prompt, out.prompt_mask, out.tokens, out.mask, out.attention_mask
    )
    p = batch[0].shape[1]
    u = np.asarray(_uniforms(_prompt_keys(k, 3), 2, R))
    assert (out.observation_tokens > 0).sum() >= 3, "rows should sample after observations"
    for row in range(out.tokens.shape[0]):
        cols = np.flatnonzero(out.mask[row])
        z_row = z[row, p - 1 + cols]
        drawn = inverse_cdf_sample(z_row, jnp.asarray(u[row, : len(cols)]))
        np.testing.assert_array_equal(np.asarray(drawn), out.tokens[row, cols])


def test_observation_fit_boundary_and_empty_and_eos_observations(keys, cfg, params, batch):
    """An observation that leaves room for one sampled token fits, one more does not; an
    empty observation continues the row; an EOS id inside an observation ends nothing."""

    def answer_with(ids_for_turn):
        calls = {}

        def on_turns(rows, actions, final):
            out = []
            for i, f in zip(rows, final, strict=True):
                calls[int(i)] = calls.get(int(i), 0) + 1
                out.append(None if f else ids_for_turn(calls[int(i)]))
            return out

        return on_turns

    fits = np.full(R - TURN - 1, 65, np.int32)
    out = run(params, cfg, batch, keys(3), answer_with(lambda t: fits if t == 1 else None),
              temperature=0.0, max_observation_tokens=R)  # fmt: skip
    assert (out.lengths == R).all() and (out.mask[:, -1] == 1).all() and (out.turns == 2).all()
    too_long = np.full(R - TURN, 65, np.int32)
    out = run(params, cfg, batch, keys(3), answer_with(lambda t: too_long),
              temperature=0.0, max_observation_tokens=R)  # fmt: skip
    assert out.truncated.all() and (out.lengths == TURN).all()
    empty = answer_with(lambda t: np.zeros(0, np.int32) if t < 3 else None)
    out = run(params, cfg, batch, keys(3), empty, temperature=0.0)
    assert (out.turns == 3).all() and (out.lengths == 3 * TURN).all()
    assert out.observation_tokens.sum() == 0 and (out.mask[:, : 3 * TURN] == 1).all()
    # An id the greedy rows never sample (with this very observation) stands for EOS.
    probe = answer_with(lambda t: np.asarray([0, 66], np.int32) if t == 1 else None)
    free = sorted(
        set(range(1, 256))
        - set(run(params, cfg, batch, keys(3), probe, temperature=0.0).tokens.ravel().tolist())
    )
    eos = free[0]
    with_eos = answer_with(lambda t: np.asarray([eos, 66], np.int32) if t == 1 else None)
    out = run(params, cfg, batch, keys(3), with_eos, temperature=0.0, eos_ids=(eos,))
    assert (out.tokens[:, TURN] == eos).all() and (out.mask[:, TURN] == 0).all()
    assert (out.lengths > TURN + 2).all(), "the row must go on sampling after the observation"
