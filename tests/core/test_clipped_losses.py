"""Tests for rl_lm.core.losses: PPO clip, dual clip, GSPO ratio, value clip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.core import aggregation, losses
from rl_lm.core.masks import masked_mean

EPS_LO, EPS_HI = 0.2, 0.28  # asymmetric, so a swapped side would show

M = np.array(
    [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]],
    np.float32,
)
T_MAX = 8


def _token_grad(lp, lp_old, adv, **kwargs):
    """Gradient of the summed per-token loss wrt lp, and the loss itself."""

    def loss(lp):
        l, _ = losses.clipped_surrogate(lp, lp_old, adv, EPS_LO, EPS_HI, **kwargs)
        return jnp.sum(l), l

    return jax.grad(loss, has_aux=True)(lp)


def _per_token_weights(mode, m):
    """d loss / d l_{i,t} for each aggregation mode, written out by hand."""
    n_rows = np.sum(m.sum(1) > 0)
    if mode == "token-mean":
        return m / m.sum()
    if mode == "seq-mean-token-mean":
        return m / m.sum(1, keepdims=True) / n_rows
    if mode == "seq-mean-token-sum":
        return m / n_rows
    return m / (n_rows * T_MAX)


@pytest.mark.parametrize("mode", aggregation.AGGREGATION_MODES)
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_gradient_at_rho_one_is_plain_policy_gradient(mode, ratio_level):
    rng = np.random.default_rng(0)
    lp_old = np.log(rng.uniform(0.1, 0.9, size=M.shape)).astype(np.float32)
    adv = rng.normal(size=M.shape).astype(np.float32)

    def loss(lp):
        l, _ = losses.clipped_surrogate(
            lp, lp_old, adv, EPS_LO, EPS_HI, m=M, ratio_level=ratio_level
        )
        return aggregation.aggregate(l, M, mode, t_max=T_MAX)

    grad = jax.grad(loss)(jnp.asarray(lp_old))
    np.testing.assert_allclose(grad, -adv * _per_token_weights(mode, M), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "adv, rho, expected_loss, expected_grad, low, high",
    [
        # A > 0: clipped above 1 + eps_hi, free below.
        (1.0, 1.5, -1.28, 0.0, 0, 1),
        (1.0, 1.25, -1.25, -1.25, 0, 0),
        (1.0, 0.5, -0.5, -0.5, 0, 0),
        # A < 0: clipped below 1 - eps_lo, free above.
        (-1.0, 0.5, 0.8, 0.0, 1, 0),
        (-1.0, 0.85, 0.85, 0.85, 0, 0),
        (-1.0, 1.5, 1.5, 1.5, 0, 0),
        (-2.0, 1.25, 2.5, 2.5, 0, 0),
    ],
)
def test_clip_stops_gradient_only_on_the_advantage_side(
    adv, rho, expected_loss, expected_grad, low, high
):
    lp_old = jnp.full((1, 1), -1.0)
    lp = lp_old + jnp.log(rho)
    grad, l = _token_grad(lp, lp_old, jnp.full((1, 1), adv))
    np.testing.assert_allclose(l, [[expected_loss]], rtol=1e-5)
    # d(-rho A)/d lp = -rho A on the unclipped branch.
    np.testing.assert_allclose(grad, [[expected_grad]], rtol=1e-5, atol=1e-7)
    _, metrics = losses.clipped_surrogate(lp, lp_old, jnp.full((1, 1), adv), EPS_LO, EPS_HI)
    assert metrics["clipped_low"][0, 0] == low
    assert metrics["clipped_high"][0, 0] == high
    np.testing.assert_allclose(metrics["ratio"], [[rho]], rtol=1e-5)


@pytest.mark.parametrize(
    "adv, rho, expected_loss, expected_grad, dual",
    [
        (-1.0, 5.0, 3.0, 0.0, 1),  # capped at -c*A: no gradient
        (-2.0, 4.0, 6.0, 0.0, 1),
        (-1.0, 2.0, 2.0, 2.0, 0),  # below the cap: the usual PPO loss
        (1.0, 5.0, -1.28, 0.0, 0),  # A > 0 is never dual-clipped
    ],
)
def test_dual_clip_caps_negative_advantage_loss(adv, rho, expected_loss, expected_grad, dual):
    lp_old = jnp.zeros((1, 1))
    lp = lp_old + jnp.log(rho)
    grad, l = _token_grad(lp, lp_old, jnp.full((1, 1), adv), dual_clip=3.0)
    np.testing.assert_allclose(l, [[expected_loss]], rtol=1e-5)
    np.testing.assert_allclose(grad, [[expected_grad]], rtol=1e-5, atol=1e-7)
    _, metrics = losses.clipped_surrogate(
        lp, lp_old, jnp.full((1, 1), adv), EPS_LO, EPS_HI, dual_clip=3.0
    )
    assert metrics["dual_clipped"][0, 0] == dual
    # Without the dual clip the loss of a negative advantage is unbounded in rho.
    _, l_plain = _token_grad(lp, lp_old, jnp.full((1, 1), adv))
    if dual:
        assert l_plain[0, 0] > expected_loss


@pytest.mark.parametrize("mode", aggregation.AGGREGATION_MODES)
def test_gspo_matches_true_sequence_ratio(mode):
    """GSPO-token's gradient equals that of the sequence ratio s_i itself."""
    rng = np.random.default_rng(1)
    lp_old = jnp.asarray(np.log(rng.uniform(0.1, 0.9, size=M.shape)), jnp.float32)
    lp = lp_old + jnp.asarray(rng.normal(0, 0.1, size=M.shape), jnp.float32)
    adv_N = jnp.array([1.0, -0.5, 2.0, -1.5])
    eps = 0.03

    def gspo_token(lp):
        l, _ = losses.clipped_surrogate(
            lp, lp_old, adv_N[:, None], eps, eps, m=M, ratio_level="sequence"
        )
        return aggregation.aggregate(l, M, mode, t_max=T_MAX)

    def true_sequence(lp):
        s_N = jnp.exp(masked_mean(lp - lp_old, M, axis=1))
        l_N = -jnp.minimum(s_N * adv_N, jnp.clip(s_N, 1 - eps, 1 + eps) * adv_N)
        return aggregation.aggregate(jnp.broadcast_to(l_N[:, None], M.shape), M, mode, t_max=T_MAX)

    s_N = jnp.exp(masked_mean(lp - lp_old, M, axis=1))
    clipped = np.abs(np.asarray(s_N) - 1) > eps
    assert clipped.any() and not clipped.all()  # both regimes are exercised
    np.testing.assert_allclose(gspo_token(lp), true_sequence(lp), rtol=1e-5)
    grad = jax.grad(gspo_token)(lp)
    np.testing.assert_allclose(grad, jax.grad(true_sequence)(lp), rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(grad)).max() > 1e-3
    _, metrics = losses.clipped_surrogate(
        lp, lp_old, adv_N[:, None], eps, eps, m=M, ratio_level="sequence"
    )
    np.testing.assert_allclose(metrics["ratio"], jnp.broadcast_to(s_N[:, None], M.shape))


def test_sequence_log_ratio_value_and_gradient():
    lp_old = jnp.zeros((1, 3))
    lp = jnp.array([[0.3, -0.1, 9.0]])
    m = jnp.array([[1, 1, 0]])
    np.testing.assert_allclose(losses.sequence_log_ratio(lp, lp_old, m), [[0.1] * 3], rtol=1e-5)
    jac = jax.jacobian(lambda lp: losses.sequence_log_ratio(lp, lp_old, m)[0])(lp)[:, 0]
    np.testing.assert_allclose(jac, np.eye(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"adv": np.ones(2)}, r"\[N, 1\]"),
        ({"dual_clip": 0.5}, "dual_clip must be > 1"),
        ({"eps_lo": -0.1}, "eps_lo must be >= 0"),
        ({"ratio_level": "sequence"}, "needs the response mask"),
        ({"ratio_level": "seq"}, "'token' or 'sequence'"),
    ],
)
def test_bad_arguments_fail_early(kwargs, match):
    args = {"lp": np.zeros((2, 3)), "lp_old": np.zeros((2, 3)), "adv": np.ones((2, 3))}
    args.update(eps_lo=0.2, eps_hi=0.2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        losses.clipped_surrogate(**args)


@pytest.mark.parametrize(
    "value, expected_loss, expected_grad, clipped",
    [
        # V_old = 1, eps_v = 0.2, return = 2: the clip holds V at 1.2.
        (1.5, 0.5 * 0.8**2, 0.0, 1),  # clipped branch is larger: no gradient
        (1.1, 0.5 * 0.9**2, -0.9, 0),  # inside the clip range
        (0.5, 0.5 * 1.5**2, -1.5, 0),  # moving away from the return is never clipped
        (2.5, 0.5 * 0.8**2, 0.0, 1),
    ],
)
def test_clipped_value_loss(value, expected_loss, expected_grad, clipped):
    def loss(v):
        l, metrics = losses.clipped_value_loss(v, jnp.ones((1, 1)), jnp.full((1, 1), 2.0), 0.2)
        return jnp.sum(l), metrics

    grad, metrics = jax.grad(loss, has_aux=True)(jnp.full((1, 1), value))
    np.testing.assert_allclose(loss(jnp.full((1, 1), value))[0], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, [[expected_grad]], rtol=1e-5, atol=1e-7)
    assert metrics["value_clipped"][0, 0] == clipped
