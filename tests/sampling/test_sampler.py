"""Tests for rl_lm.sampling.sampler (tiny preset).

Each distinct sampler setting costs a compilation, so tests share settings (and
`make_sampler`'s cache) where they can.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.models.transformer import forward, logits
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import _prompt_keys, make_sampler, sample

PAD, EOS = 256, 258  # ByteTokenizer's, the sampler's defaults.
R = 8  # New tokens in most tests.
GREEDY = dict(max_new_tokens=R, temperature=0.0, eos_ids=())
SAMPLED = dict(max_new_tokens=R, num_samples=2)


@functools.partial(jax.jit, static_argnames=("cfg", "temperature"))
def recompute(params, cfg, out, temperature=1.0):
    """Without a cache: logits of the whole sequences (prompt then response) [N, P+R, V],
    and the trainer's response log-probs [N, R]."""
    tokens = jnp.concatenate([out.prompt, out.tokens], axis=1)
    mask = jnp.concatenate([out.prompt_mask, out.mask], axis=1)
    hidden, _ = forward(params, tokens, cfg, mask_NxT=mask)
    lp = response_logprobs(
        params, cfg, out.prompt, out.prompt_mask, out.tokens, out.mask, temperature=temperature
    )
    return logits(params, hidden, cfg), lp


def test_cached_decode_equals_full_recomputation(keys, cfg, params, batch):
    out = make_sampler(cfg, **GREEDY)(params, *batch, keys(3))
    p = batch[0].shape[1]
    assert out.tokens.shape == out.logprobs.shape == out.mask.shape == (3, R)
    np.testing.assert_array_equal(out.mask, 1)
    np.testing.assert_array_equal(out.lengths, R)
    # Greedy: every token is the argmax of the uncached logits at the position before it.
    z, recomputed = recompute(params, cfg, out)
    np.testing.assert_array_equal(out.tokens, jnp.argmax(z[:, p - 1 : -1], axis=-1))
    # Its log-prob is the recomputed one (temperature 1 when greedy).
    np.testing.assert_allclose(out.logprobs, recomputed, atol=1e-5)
    assert np.all(np.asarray(out.logprobs) < 0)


def test_prompt_alone_samples_as_in_a_batch(keys, cfg, params, prompts, batch, left_pad):
    fn = make_sampler(cfg, **SAMPLED)
    k = keys(3)
    out = fn(params, *batch, k)
    # Alone, each prompt gets less (or no) left padding, hence other positions and slots.
    for b, prompt in enumerate(prompts):
        alone = fn(params, *left_pad([prompt], 7), k[b : b + 1])
        rows = slice(2 * b, 2 * b + 2)
        np.testing.assert_array_equal(alone.tokens, out.tokens[rows])
        np.testing.assert_allclose(alone.logprobs, out.logprobs[rows], atol=1e-5)


def test_determinism_and_distinct_samples(keys, cfg, params, batch):
    fn = make_sampler(cfg, **SAMPLED)
    a, b, c = (fn(params, *batch, keys(3, seed)) for seed in (0, 0, 1))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert np.mean(a.tokens != c.tokens) > 0.5
    # Rows are prompt-major, and the two samples of a prompt differ.
    np.testing.assert_array_equal(a.prompt, jnp.repeat(batch[0], 2, axis=0))
    np.testing.assert_array_equal(a.prompt_mask, jnp.repeat(batch[1], 2, axis=0))
    assert np.mean(a.tokens[0::2] != a.tokens[1::2]) > 0.5
    # One key is split into one key per prompt; raw uint32 keys stand for typed ones.
    key = jax.random.key(7)
    np.testing.assert_array_equal(
        jax.random.key_data(_prompt_keys(jax.random.key_data(key), 3)),
        jax.random.key_data(jax.random.split(key, 3)),
    )


def test_samples_repeat_prefill_per_prompt(keys, cfg, params, batch):
    """G samples of a prompt continue one prefill; greedy makes all G rows equal the
    row of the same prompt sampled with G = 1."""
    one = make_sampler(cfg, **GREEDY)(params, *batch, keys(3))
    three = make_sampler(cfg, **GREEDY, num_samples=3)(params, *batch, keys(3))
    for x1, x3 in zip(one, three, strict=True):
        np.testing.assert_allclose(x3, jnp.repeat(x1, 3, axis=0), atol=1e-5)


@pytest.mark.slow
def test_top_k_one_is_greedy(keys, cfg, params, batch):
    greedy = make_sampler(cfg, **GREEDY)(params, *batch, keys(3))
    top1 = make_sampler(cfg, max_new_tokens=R, top_k=1, eos_ids=())(params, *batch, keys(3))
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    # Log-probs stay those of the full distribution (temperature 1 both).
    np.testing.assert_allclose(top1.logprobs, greedy.logprobs, atol=1e-6)


def test_logprobs_are_the_training_distribution(keys, cfg, params, batch):
    """With temperature, top-k and top-p, the sampler's log-probs equal the trainer's
    recomputation under log_softmax(logits / temperature): the on-policy ratio is 1."""
    out = make_sampler(cfg, max_new_tokens=R, temperature=0.7, top_k=20, top_p=0.9)(
        params, *batch, keys(3)
    )
    _, recomputed = recompute(params, cfg, out, temperature=0.7)
    np.testing.assert_allclose(np.exp(out.logprobs - recomputed), 1.0, atol=1e-5)
    np.testing.assert_allclose(out.logprobs, recomputed, atol=1e-5)


def test_eos_mask_padding_and_lengths(keys, cfg, fixed_model, left_pad):
    # Every context: P(EOS) = P(65) = 0.1 (both stop), P(PAD) = 0.2 (not a stop:
    # a sampled PAD is a token like any other), the rest uniform.
    stops = [EOS, 65]
    probs = np.full(cfg.vocab_size, 0.6 / (cfg.vocab_size - 3))
    probs[stops] = 0.1
    probs[PAD] = 0.2
    model, logp_V = fixed_model(np.log(probs))
    prompt, prompt_mask = left_pad([[1, 2], [3]], 3)
    fn = make_sampler(cfg, max_new_tokens=R, num_samples=16, eos_ids=tuple(stops))
    out = fn(model, prompt, prompt_mask, keys(2))
    tokens, mask, lengths = np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.lengths)
    for row_t, row_m, length in zip(tokens, mask, lengths, strict=True):
        stop_at = np.flatnonzero(np.isin(row_t, stops))
        end = stop_at[0] + 1 if stop_at.size else R
        np.testing.assert_array_equal(row_m, np.arange(R) < end)
        assert length == end
        assert np.all(row_t[end:] == PAD)
    # The cases the test needs did occur: each stop id, full length, a PAD mid-row.
    last = tokens[np.arange(len(tokens)), lengths - 1]
    assert {EOS, 65} <= set(last[lengths < R]) and np.any(lengths == R)
    assert np.any((tokens == PAD) & (mask == 1))
    np.testing.assert_allclose(out.logprobs, np.where(mask, logp_V[tokens], 0), atol=1e-5)

    # A certain EOS ends every row at once (the loop then stops after one step).
    forced, _ = fixed_model(np.where(np.arange(cfg.vocab_size) == EOS, 30.0, 0.0))
    out = fn(forced, prompt, prompt_mask, keys(2))
    np.testing.assert_array_equal(out.tokens[:, 0], EOS)
    np.testing.assert_array_equal(out.tokens[:, 1:], PAD)
    np.testing.assert_array_equal(out.lengths, 1)
    np.testing.assert_allclose(out.logprobs[:, 0], 0.0, atol=1e-5)
    np.testing.assert_array_equal(out.logprobs[:, 1:], 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.45)])
def test_top_k_top_p_support_and_frequencies(keys, cfg, fixed_model, left_pad, top_k, top_p):
    # Five likely tokens (masses .3 .2 .15 .1 .05) and the rest share 0.2.
    probs = np.full(cfg.vocab_size, 0.2 / (cfg.vocab_size - 5))
    likely = np.array([100, 7, 250, 33, 64])
    probs[likely] = [0.3, 0.2, 0.15, 0.1, 0.05]
    model, logp_V = fixed_model(np.log(probs))
    out = make_sampler(cfg, max_new_tokens=16, num_samples=256, top_k=top_k, top_p=top_p)(
        model, *left_pad([[1]], 1), keys(1)
    )
    support = likely[:3] if top_k else likely[:2]  # Top-p 0.45: 0.3 < 0.45 <= 0.3 + 0.2.
    counts = np.bincount(np.asarray(out.tokens).ravel(), minlength=cfg.vocab_size)
    assert set(np.flatnonzero(counts)) == set(support)
    want = probs[support] / probs[support].sum()
    n = counts.sum()
    sigma = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(counts[support] / n - want) < 5 * sigma)
    np.testing.assert_allclose(out.logprobs, logp_V[np.asarray(out.tokens)], atol=1e-5)


@pytest.mark.slow
def test_geometric_mixture(keys, cfg, params, other_params, batch):
    fn = make_sampler(cfg, **SAMPLED)
    alone = fn(params, *batch, keys(3))
    # Mixing a model with itself changes nothing.
    same = fn(params, *batch, keys(3), mix_params=params, mix_coef=0.37)
    np.testing.assert_array_equal(same.tokens, alone.tokens)
    np.testing.assert_allclose(same.logprobs, alone.logprobs, atol=1e-5)
    # Full weight on the other model samples the other model.
    other = fn(other_params, *batch, keys(3))
    mixed = fn(params, *batch, keys(3), mix_params=other_params, mix_coef=1.0)
    np.testing.assert_array_equal(mixed.tokens, other.tokens)
    np.testing.assert_allclose(mixed.logprobs, other.logprobs, atol=1e-5)
    # In between: log-probs of log_softmax((1 - a) z + a z_mix), recomputed without cache.
    out = fn(params, *batch, keys(3), mix_params=other_params, mix_coef=0.3)
    p = batch[0].shape[1]
    z = 0.7 * recompute(params, cfg, out)[0] + 0.3 * recompute(other_params, cfg, out)[0]
    logp = jax.nn.log_softmax(z[:, p - 1 : -1], axis=-1)
    want = jnp.take_along_axis(logp, out.tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(out.logprobs, jnp.where(out.mask, want, 0), atol=1e-5)


def test_make_sampler_is_cached(cfg):
    assert make_sampler(cfg, **SAMPLED) is make_sampler(cfg, **SAMPLED)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=125), "max_seq_len=128"),
        (dict(max_new_tokens=8, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=8, top_p=0.0), "top_p"),
        (dict(max_new_tokens=8, top_k=-1), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=8, eos_ids=(400,)), "vocab_size"),
    ],
)
def test_bad_settings_fail_with_a_reason(keys, cfg, params, batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample(params, cfg, *batch, keys(3), **kwargs)


def test_bad_inputs_fail_with_a_reason(keys, cfg, params, batch):
    prompt, mask = batch
    with pytest.raises(ValueError, match="prompt_mask shape"):
        sample(params, cfg, prompt, mask[:, 1:], keys(3), max_new_tokens=4)
    with pytest.raises(ValueError, match="batch of 3 keys"):
        sample(params, cfg, prompt, mask, keys(2), max_new_tokens=4)
    with pytest.raises(ValueError, match="mix_params"):
        sample(params, cfg, prompt, mask, keys(3), max_new_tokens=4, mix_params={"embed": 0})
    with pytest.raises(ValueError, match=r"P=9 \+ max_new_tokens=120"):
        sample(params, cfg, prompt, mask, keys(3), max_new_tokens=120)
