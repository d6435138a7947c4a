"""Tests for the sampler's support filters and its inverse-CDF draw, on hand-made logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.sampling.sampler import filter_logits, inverse_cdf_sample

# Probabilities .05 .3 .1 .2 .15 .2 (unsorted on purpose): sorted .3 .2 .2 .15 .1 .05.
PROBS = np.array([0.05, 0.3, 0.1, 0.2, 0.15, 0.2])


def kept(top_k=0, top_p=1.0, probs=PROBS):
    out = filter_logits(jnp.log(jnp.asarray([probs], jnp.float32)), top_k=top_k, top_p=top_p)
    return set(np.flatnonzero(np.isfinite(np.asarray(out)[0])))


@pytest.mark.parametrize(
    "top_k, top_p, expected",
    [
        (0, 1.0, {0, 1, 2, 3, 4, 5}),
        (1, 1.0, {1}),
        (2, 1.0, {1, 3, 5}),  # A tie at the k-th value keeps both.
        (4, 1.0, {1, 3, 4, 5}),
        (0, 0.29, {1}),  # 0.3 alone reaches 0.29.
        (0, 0.1, {1}),  # The most likely token is always kept.
        (0, 0.31, {1, 3, 5}),  # 0.3 + 0.2 (+ the tied 0.2).
        (0, 0.75, {1, 3, 4, 5}),  # 0.3 + 0.2 + 0.2 = 0.7 < 0.75 <= 0.85.
        (0, 0.96, {0, 1, 2, 3, 4, 5}),
        # Top-p renormalizes over the top k: (.3, .2, .2, .15) / .85; 0.3/.85 = .35 < .5.
        (4, 0.5, {1, 3, 5}),
        (4, 0.3, {1}),
    ],
)
def test_filter_support(top_k, top_p, expected):
    assert kept(top_k, top_p) == expected


def test_filter_keeps_kept_logits_unchanged():
    logits = jnp.log(jnp.asarray([PROBS], jnp.float32))
    out = filter_logits(logits, top_k=4, top_p=0.9)
    finite = np.isfinite(np.asarray(out))
    np.testing.assert_array_equal(np.asarray(out)[finite], np.asarray(logits)[finite])


def test_inverse_cdf_sample_hand_cases():
    logits = jnp.log(jnp.asarray([[0.25, 0.0, 0.5, 0.25]] * 5, jnp.float32))
    u = jnp.asarray([1e-7, 0.25, 0.2500001, 0.75, 1.0])
    # CDF 0.25, 0.25, 0.75, 1.0: the zero-probability token 1 is never drawn.
    np.testing.assert_array_equal(inverse_cdf_sample(logits, u), [0, 0, 2, 2, 3])


def test_inverse_cdf_sample_frequencies():
    n = 20000
    logits = jnp.log(jnp.asarray(np.tile(PROBS, (n, 1)), jnp.float32)) + 3.0  # Unnormalized.
    u = 1.0 - jax.random.uniform(jax.random.key(0), (n,))
    counts = np.bincount(np.asarray(inverse_cdf_sample(logits, u)), minlength=len(PROBS))
    sigma = np.sqrt(PROBS * (1 - PROBS) / n)
    assert np.all(np.abs(counts / n - PROBS) < 5 * sigma)
