import numpy as np
import pytest

from rl_lm.core import importance


def _case():
    lp_s = np.log(np.array([[0.5, 0.5, 0.5], [0.2, 0.4, 0.9]], np.float32))
    lp_t = np.log(np.array([[0.5, 0.75, 0.1], [0.8, 0.4, 0.9]], np.float32))
    m = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    return lp_t, lp_s, m


def test_token_weights_by_hand():
    w, met = importance.truncated_weights(*_case(), cap=2.0, mode="token")
    # ratios: [1, 1.5, masked], [4 -> 2, 1, 1]
    np.testing.assert_allclose(w, [[1.0, 1.5, 0.0], [2.0, 1.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(met["is_weight_mean"], 6.5 / 5, rtol=1e-6)
    np.testing.assert_allclose(met["is_truncated"], 1 / 5, rtol=1e-6)


def test_sequence_weights_by_hand():
    w, met = importance.truncated_weights(*_case(), cap=2.0, mode="sequence")
    # row 0: 1 * 1.5 (masked token ignored) = 1.5; row 1: 4 * 1 * 1 -> 2
    np.testing.assert_allclose(w, [[1.5, 1.5, 0.0], [2.0, 2.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(met["is_truncated"], 3 / 5, rtol=1e-6)


def test_cap_boundary_not_truncated():
    lp_s = np.zeros((1, 2), np.float32)
    lp_t = np.log(np.array([[2.0, 1.0]], np.float32))
    w, met = importance.truncated_weights(lp_t, lp_s, np.ones((1, 2)), cap=2.0)
    np.testing.assert_allclose(w, [[2.0, 1.0]], rtol=1e-6)
    assert float(met["is_truncated"]) == 0.0


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        importance.truncated_weights(*_case(), cap=2.0, mode="bogus")
