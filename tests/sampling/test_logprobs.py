"""Tests for rl_lm.sampling.logprobs: chunked values and gradients equal the direct ones."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.models.transformer import forward, logits
from rl_lm.sampling.logprobs import response_logprobs, token_logprobs


def direct_logprobs(params, cfg, tokens, mask=None, temperature=1.0):
    """log_softmax of the full [N, T, V] logits, with token_logprobs' zeroing rule."""
    mask = jnp.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
    hidden, _ = forward(params, tokens, cfg, mask_NxT=mask)
    logp_all = jax.nn.log_softmax(logits(params, hidden, cfg) / temperature, axis=-1)
    lp = jnp.take_along_axis(logp_all[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_all[:, :-1]) * logp_all[:, :-1], axis=-1)
    valid = mask & (jnp.cumsum(mask, axis=1) - mask > 0)
    pad = lambda x: jnp.where(valid, jnp.pad(x, ((0, 0), (1, 0))), 0.0)
    return pad(lp), pad(ent)


def random_tokens(n, t, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 259, (n, t)), jnp.int32)


@pytest.fixture(scope="module")
def reference(cfg, params):
    """Tokens, loss weights, and the direct log-probs and gradient (temperature 0.7)."""
    tokens = random_tokens(3, 12)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(tokens.shape), jnp.float32)

    def loss(p):
        lp = direct_logprobs(p, cfg, tokens, temperature=0.7)[0]
        return jnp.sum(weights * lp), lp

    (loss_val, lp), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return tokens, weights, loss_val, lp, grad


# T = 12 scores 11 positions: 4 and 5 do not divide 11, 11 does, 64 exceeds it.
@pytest.mark.parametrize(
    "chunk_size", [4, *(pytest.param(c, marks=pytest.mark.slow) for c in (1, 5, 11, 64))]
)
def test_values_and_gradients_equal_direct(cfg, params, reference, chunk_size):
    tokens, weights, loss_ref, lp_ref, grad_ref = reference

    def loss(p):
        lp = token_logprobs(p, cfg, tokens, chunk_size=chunk_size, temperature=0.7)
        return jnp.sum(weights * lp), lp

    (loss_val, lp), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(lp, lp_ref, atol=1e-5)
    assert np.all(np.asarray(lp)[:, 0] == 0) and np.all(np.asarray(lp)[:, 1:] < 0)
    np.testing.assert_allclose(loss_val, loss_ref, rtol=1e-5)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(grad), jax.tree.leaves(grad_ref), strict=True
    ):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0, path
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, err_msg=str(path))


def test_entropy_and_masks_equal_direct(cfg, params, left_pad):
    tokens, mask = left_pad([[5, 6, 7, 8, 9, 10], [11, 12, 13]], 8)
    mask = mask.at[0, -1].set(0)  # A masked token at the end too.
    (lp, ent), (lp_ref, ent_ref) = jax.jit(
        lambda p: (
            token_logprobs(p, cfg, tokens, mask, chunk_size=3, with_entropy=True),
            direct_logprobs(p, cfg, tokens, mask),
        )
    )(params)
    np.testing.assert_allclose(lp, lp_ref, atol=1e-5)
    np.testing.assert_allclose(ent, ent_ref, atol=1e-5)
    # Zero on padding, on the masked last token and on each row's first real token.
    assert np.all(np.asarray(lp)[0, [0, 1, 2, 7]] == 0) and np.all(np.asarray(lp)[0, 3:7] != 0)
    assert np.all(np.asarray(lp)[1, :6] == 0) and np.all(np.asarray(lp)[1, 6:] != 0)
    assert np.all(np.asarray(ent)[1, :6] == 0) and np.all(np.asarray(ent)[1, 6:] > 0)


@pytest.mark.slow
def test_left_padding_does_not_change_logprobs(cfg, params, left_pad):
    row = [40, 41, 42, 43, 44]
    padded, mask = left_pad([row], 9)
    lp_padded = token_logprobs(params, cfg, padded, mask, chunk_size=4)
    lp_plain = token_logprobs(params, cfg, jnp.asarray([row]), chunk_size=4)
    np.testing.assert_allclose(lp_padded[:, 4:], lp_plain, atol=1e-5)


def test_response_logprobs_is_the_response_slice(cfg, params, left_pad):
    prompt, prompt_mask = left_pad([[1, 2, 3], [4, 5, 6, 7, 8]], 6)
    g, r = 2, 5
    response = random_tokens(2 * g, r, seed=3)
    response_mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1] * 5])
    full = jnp.concatenate([jnp.repeat(prompt, g, axis=0), response], axis=1)
    full_mask = jnp.concatenate([jnp.repeat(prompt_mask, g, axis=0), response_mask], axis=1)

    @jax.jit
    def all_three(p):
        got = response_logprobs(p, cfg, prompt, prompt_mask, response, response_mask)
        # Prompts already repeated per row (a SampleOutput's layout) work the same.
        repeated = response_logprobs(p, cfg, full[:, :6], full_mask[:, :6], response, response_mask)
        return got, repeated, token_logprobs(p, cfg, full, full_mask)[:, 6:]

    got, repeated, want = all_three(params)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(repeated, want, atol=1e-6)
    assert np.all(np.asarray(got)[response_mask == 0] == 0)
    assert np.all(np.asarray(got)[response_mask == 1] < 0)


def _shapes(jaxpr):
    """Every intermediate shape of a jaxpr, sub-jaxprs (scan, remat, pjit) included."""
    for eqn in jaxpr.eqns:
        yield from (v.aval.shape for v in eqn.outvars)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _shapes(inner)


def test_gradient_never_materializes_full_logits(cfg, params):
    n, t, chunk = 2, 33, 4
    tokens = random_tokens(n, t)

    def largest_logits(fn):
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(fn(p))))(params).jaxpr
        return max(math.prod(s) for s in _shapes(jaxpr) if s and s[-1] == cfg.vocab_size)

    chunked = largest_logits(lambda p: token_logprobs(p, cfg, tokens, chunk_size=chunk))
    direct = largest_logits(lambda p: direct_logprobs(p, cfg, tokens)[0])
    assert direct >= n * (t - 1) * cfg.vocab_size  # The check can see full logits ...
    # ... and the chunked pass holds one chunk of them (or the embedding table).
    assert chunked <= max(n * chunk * cfg.vocab_size, cfg.dim * cfg.vocab_size)


def test_bad_inputs_fail_with_a_reason(cfg, params):
    tokens = random_tokens(4, 6)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(params, cfg, tokens, temperature=0.0)
    with pytest.raises(ValueError, match="mask shape"):
        token_logprobs(params, cfg, tokens, jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(params, cfg, tokens, chunk_size=0)
    with pytest.raises(ValueError, match="multiple of 3 prompts"):
        response_logprobs(
            params, cfg, tokens[:3], jnp.ones((3, 6)), tokens, jnp.ones((4, 6), jnp.int32)
        )
