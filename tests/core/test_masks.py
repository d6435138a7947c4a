"""Tests for rl_lm.core.masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.core import masks

M = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
X = np.array([[1.0, 3.0, 100.0], [5.0, -7.0, np.nan]], np.float32)


def test_masked_sum_and_mean_ignore_masked_entries_even_nan():
    assert masks.masked_sum(X, M) == 9.0
    assert masks.masked_mean(X, M) == 3.0
    np.testing.assert_allclose(masks.masked_mean(X, M, axis=1), [2.0, 5.0])
    np.testing.assert_allclose(masks.masked_sum(X, M, axis=0), [6.0, 3.0, 0.0])


def test_masked_mean_of_empty_mask_is_zero_with_finite_gradient():
    m = np.array([[1, 1], [0, 0]], np.float32)
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(masks.masked_mean(x, m, axis=1), [1.5, 0.0])
    grad = jax.grad(lambda x: jnp.sum(masks.masked_mean(x, m, axis=1)))(x)
    np.testing.assert_allclose(grad, [[0.5, 0.5], [0.0, 0.0]])


def test_masked_var_is_population_variance():
    x = np.array([[1.0, 3.0, 50.0]], np.float32)
    m = np.array([[1, 1, 0]], np.float32)
    np.testing.assert_allclose(masks.masked_var(x, m), 1.0)
    np.testing.assert_allclose(masks.masked_var(x, m, axis=1), [1.0])


def test_mask_shape_mismatch_fails_early():
    with pytest.raises(ValueError, match="one entry per token"):
        masks.masked_sum(np.ones((2, 3)), np.ones((2, 4)))


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_normalizes_over_the_mask_only(shift_mean):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4, 7)).astype(np.float32)
    m = (rng.uniform(size=(4, 7)) < 0.6).astype(np.float32)
    out = masks.masked_whiten(x, m, shift_mean=shift_mean)
    on = m > 0
    expected_mean = x[on].mean() if not shift_mean else 0.0
    np.testing.assert_allclose(np.asarray(out)[on].mean(), expected_mean, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out)[on].var(), 1.0, rtol=1e-4)
    assert np.all(np.asarray(out)[~on] == 0)
    # Values under the mask's holes must not influence anything.
    x_junk = np.where(on, x, 1e6).astype(np.float32)
    np.testing.assert_allclose(masks.masked_whiten(x_junk, m, shift_mean=shift_mean), out)


def test_masked_whiten_hand_values():
    # Mean 3, std 2 over the mask.
    x = np.array([[1.0, 5.0, 9.0]], np.float32)
    m = np.array([[1, 1, 0]], np.float32)
    np.testing.assert_allclose(masks.masked_whiten(x, m, eps=0.0), [[-1.0, 1.0, 0.0]])
    np.testing.assert_allclose(
        masks.masked_whiten(x, m, shift_mean=False, eps=0.0), [[2.0, 4.0, 0.0]]
    )


def test_response_mask_from_eos():
    tokens = np.array([[5, 3, 2, 7, 2], [1, 1, 1, 1, 1], [2, 4, 4, 4, 4]])
    expected = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    np.testing.assert_array_equal(masks.response_mask_from_eos(tokens, eos_id=2), expected)
    np.testing.assert_array_equal(
        jax.jit(masks.response_mask_from_eos, static_argnums=1)(tokens, 2), expected
    )
