"""Tests for rl_lm.core.gae against a direct double-loop reference."""

import jax
import numpy as np
import pytest

from rl_lm.core.gae import gae

M = np.array(
    [
        [1, 1, 1, 1, 1, 1],  # full row
        [1, 1, 1, 0, 0, 0],  # padding at the end
        [1, 0, 0, 0, 0, 0],  # a one-token response
        [0, 0, 0, 0, 0, 0],  # an empty (padding) row
        [1, 1, 0, 0, 1, 0],  # a hole in the middle (e.g. masked tool output)
    ],
    np.float32,
)


def _reference_gae(r, v, m, gamma, lam):
    """A_t = sum_{k >= 0} (gamma lam)^k delta_{t+k} over the response tokens only."""
    adv = np.zeros_like(r, dtype=np.float64)
    for i in range(r.shape[0]):
        idx = np.flatnonzero(m[i])
        rr, vv = r[i, idx].astype(np.float64), v[i, idx].astype(np.float64)
        v_next = np.append(vv[1:], 0.0)
        delta = rr + gamma * v_next - vv
        for t in range(len(idx)):
            adv[i, idx[t]] = sum((gamma * lam) ** k * delta[t + k] for k in range(len(idx) - t))
    return adv, np.where(m > 0, adv + v, 0.0)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=M.shape).astype(np.float32)
    v = rng.normal(size=M.shape).astype(np.float32)
    # Junk off the mask must be ignored.
    return np.where(M > 0, r, 1e3).astype(np.float32), np.where(M > 0, v, -1e3).astype(np.float32)


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (1.0, 0.0), (0.99, 0.95), (0.9, 0.5)])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_double_loop_reference(gamma, lam, jit):
    r, v = _inputs()
    fn = jax.jit(gae) if jit else gae
    adv, ret = fn(r, v, M, gamma, lam)
    ref_adv, ref_ret = _reference_gae(r, v, M, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[M == 0] == 0) and np.all(np.asarray(ret)[M == 0] == 0)


def test_lambda_gamma_one_is_reward_to_go_minus_value():
    r, v = _inputs(1)
    adv, ret = gae(r, v, M, 1.0, 1.0)
    for i in (0, 1, 2):  # rows whose padding is at the end
        n = int(M[i].sum())
        reward_to_go = np.cumsum(r[i, :n][::-1])[::-1]
        np.testing.assert_allclose(adv[i, :n], reward_to_go - v[i, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret[i, :n], reward_to_go, rtol=1e-5, atol=1e-5)


def test_lambda_zero_is_one_step_td_error():
    r, v = _inputs(2)
    gamma = 0.9
    adv, _ = gae(r, v, M, gamma, 0.0)
    i, n = 1, 3
    v_next = np.append(v[i, 1:n], 0.0)  # the value after the last response token is 0
    np.testing.assert_allclose(adv[i, :n], r[i, :n] + gamma * v_next - v[i, :n], rtol=1e-5)


def test_hand_values():
    r = np.array([[0.0, 0.0, 1.0, 5.0]], np.float32)
    v = np.array([[0.5, 0.5, 0.5, 9.0]], np.float32)
    m = np.array([[1, 1, 1, 0]], np.float32)
    adv, ret = gae(r, v, m, 1.0, 1.0)
    np.testing.assert_allclose(adv, [[0.5, 0.5, 0.5, 0.0]])
    np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0, 0.0]])
    adv, _ = gae(r, v, m, 1.0, 0.0)
    np.testing.assert_allclose(adv, [[0.0, 0.0, 0.5, 0.0]])


def test_shape_mismatch_fails_early():
    with pytest.raises(ValueError, match="must all be"):
        gae(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 3)), 1.0, 1.0)
