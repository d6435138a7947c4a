"""Tests for rl_lm.core.kl."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.core import kl

LN2 = np.log(2.0)


@pytest.mark.parametrize(
    "name, p, p_ref, expected",
    [
        # log r = log(p_ref / p).
        ("k1", 0.5, 0.25, LN2),
        ("k1", 0.25, 0.5, -LN2),
        ("k2", 0.5, 0.25, LN2**2 / 2),
        ("k2", 0.25, 0.5, LN2**2 / 2),
        ("k3", 0.5, 0.25, 0.5 - 1 + LN2),
        ("k3", 0.25, 0.5, 2 - 1 - LN2),
        ("k1", 0.3, 0.3, 0.0),
        ("k2", 0.3, 0.3, 0.0),
        ("k3", 0.3, 0.3, 0.0),
    ],
)
def test_estimators_hand_values(name, p, p_ref, expected):
    lp, lp_ref = jnp.log(jnp.float32(p)), jnp.log(jnp.float32(p_ref))
    np.testing.assert_allclose(kl.kl_estimate(name, lp, lp_ref), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kl.KL_ESTIMATORS[name](lp, lp_ref), expected, rtol=1e-5, atol=1e-7)


def test_unknown_estimator_fails_with_choices():
    with pytest.raises(ValueError, match="k3"):
        kl.kl_estimate("k4", 0.0, 0.0)


def test_k3_is_nonnegative():
    log_r = jnp.linspace(-5.0, 5.0, 101)
    assert jnp.all(kl.k3(jnp.zeros_like(log_r), log_r) >= 0)


def test_exact_kl_hand_value():
    logits_p = jnp.log(jnp.array([[0.5, 0.5]]))
    logits_ref = jnp.log(jnp.array([[0.25, 0.75]]))
    expected = 0.5 * np.log(2.0) + 0.5 * np.log(0.5 / 0.75)
    np.testing.assert_allclose(kl.exact_kl_from_logits(logits_p, logits_ref), [expected], rtol=1e-6)
    # Shifting logits by a constant leaves the distributions unchanged.
    np.testing.assert_allclose(
        kl.exact_kl_from_logits(logits_p + 3.0, logits_ref - 1.0), [expected], rtol=1e-5
    )


def _categorical(seed, v=6):
    k1_, k2_ = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1_, (v,)), jax.random.normal(k2_, (v,))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expectation_of_k1_and_k3_is_exact_kl(seed):
    z, z_ref = _categorical(seed)
    lp, lp_ref = jax.nn.log_softmax(z), jax.nn.log_softmax(z_ref)
    pi = jnp.exp(lp)
    exact = kl.exact_kl_from_logits(z, z_ref)
    assert exact > 0.05
    np.testing.assert_allclose(jnp.sum(pi * kl.k3(lp, lp_ref)), exact, rtol=1e-5)
    np.testing.assert_allclose(jnp.sum(pi * kl.k1(lp, lp_ref)), exact, rtol=1e-5)
    # k2 is biased: its expectation is not the KL.
    assert abs(jnp.sum(pi * kl.k2(lp, lp_ref)) - exact) > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_expected_gradients_of_estimators_in_the_loss(seed):
    """With samples held fixed, E_pi of the gradient of each estimator is:

    k1: 0; k2: grad KL(pi || ref); k3: grad KL(ref || pi).
    """
    z, z_ref = _categorical(seed)
    lp_ref = jax.nn.log_softmax(z_ref)

    def expected_estimate(z, estimator):
        lp = jax.nn.log_softmax(z)
        return jnp.sum(jax.lax.stop_gradient(jnp.exp(lp)) * estimator(lp, lp_ref))

    grad_reverse_kl = jax.grad(lambda z: kl.exact_kl_from_logits(z, z_ref))(z)
    grad_forward_kl = jax.grad(lambda z: kl.exact_kl_from_logits(z_ref, z))(z)
    np.testing.assert_allclose(jax.grad(expected_estimate)(z, kl.k1), 0.0, atol=1e-6)
    np.testing.assert_allclose(jax.grad(expected_estimate)(z, kl.k2), grad_reverse_kl, atol=1e-5)
    np.testing.assert_allclose(jax.grad(expected_estimate)(z, kl.k3), grad_forward_kl, atol=1e-5)
    assert np.abs(grad_reverse_kl - grad_forward_kl).max() > 1e-2


def test_entropy_from_logits():
    logits = jnp.array([[0.0, np.log(3.0)], [1.0, 1.0]])
    expected = [-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), np.log(2.0)]
    np.testing.assert_allclose(kl.entropy_from_logits(logits), expected, rtol=1e-6)
    np.testing.assert_allclose(kl.entropy_from_logits(jnp.array([0.0, 100.0])), 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "observed_kl, expected_beta",
    [
        (12.0, 0.1 * (1 + 0.2 * 256 / 10000)),  # far above target: capped at +0.2
        (1e6, 0.1 * (1 + 0.2 * 256 / 10000)),
        (6.6, 0.1 * (1 + 0.1 * 256 / 10000)),  # 10% above target
        (6.0, 0.1),
        (5.4, 0.1 * (1 - 0.1 * 256 / 10000)),
        (0.0, 0.1 * (1 - 0.2 * 256 / 10000)),  # far below target: capped at -0.2
    ],
)
def test_adaptive_kl_update(observed_kl, expected_beta):
    beta = kl.adaptive_kl_update(0.1, observed_kl, target=6.0, n_steps=256, horizon=10000)
    np.testing.assert_allclose(beta, expected_beta, rtol=1e-6)
    if observed_kl > 6.0:
        assert beta > 0.1
    elif observed_kl < 6.0:
        assert beta < 0.1
