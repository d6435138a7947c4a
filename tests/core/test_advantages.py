"""Tests for rl_lm.core.advantages."""

import jax
import numpy as np
import pytest

from rl_lm.core import advantages

ESTIMATORS = ["grpo", "dr_grpo", "rloo", "batch_std"]

# Rewards [1, 0, 0, 1]: mean 1/2, unbiased std sqrt(1/3).
# Rewards [1, 0, 0, 0]: mean 1/4, unbiased std sqrt((9/16 + 3/16) / 3) = 1/2.
# Batch [[1, 0, 0, 0], [1, 1, 1, 1]]: 5 ones and 3 zeros, unbiased std
# sqrt((5 * (3/8)^2 + 3 * (5/8)^2) / 7) = sqrt(120 / 448).
BATCH_STD = np.sqrt(120 / 448)


@pytest.mark.parametrize(
    "estimator, rewards, expected",
    [
        ("grpo", [[1, 0, 0, 1]], np.array([[1, -1, -1, 1]]) * 0.5 * np.sqrt(3)),
        ("grpo", [[1, 0, 0, 0]], [[1.5, -0.5, -0.5, -0.5]]),
        ("dr_grpo", [[1, 0, 0, 1]], [[0.5, -0.5, -0.5, 0.5]]),
        ("dr_grpo", [[1, 0, 0, 0]], [[0.75, -0.25, -0.25, -0.25]]),
        ("rloo", [[1, 0, 0, 1]], [[2 / 3, -2 / 3, -2 / 3, 2 / 3]]),
        ("rloo", [[1, 0, 0, 0]], [[1, -1 / 3, -1 / 3, -1 / 3]]),
        (
            "batch_std",
            [[1, 0, 0, 0], [1, 1, 1, 1]],
            [[0.75 / BATCH_STD, -0.25 / BATCH_STD, -0.25 / BATCH_STD, -0.25 / BATCH_STD], [0] * 4],
        ),
    ],
)
def test_hand_values(estimator, rewards, expected):
    rewards = np.asarray(rewards, np.float32)
    np.testing.assert_allclose(
        advantages.group_advantages(rewards, estimator, eps=0.0), expected, rtol=1e-6, atol=1e-7
    )
    # The default eps barely moves a value whose std is O(1).
    np.testing.assert_allclose(
        advantages.group_advantages(rewards, estimator), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("jit", [False, True])
def test_invariants_sum_zero_and_equal_groups_zero(estimator, jit):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(5, 8)).astype(np.float32)
    rewards[2] = 0.7  # a group with no spread
    rewards[4] = 0.0
    fn = advantages.group_advantages
    if jit:
        fn = jax.jit(fn, static_argnums=1)
    adv = np.asarray(fn(rewards, estimator))
    assert adv.shape == (5, 8)
    np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-5)
    np.testing.assert_array_equal(adv[2], 0.0)
    np.testing.assert_array_equal(adv[4], 0.0)
    assert np.abs(adv).max() > 0.1


def test_relations_between_estimators():
    rewards = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    g = rewards.shape[1]
    dr = advantages.group_advantages(rewards, "dr_grpo")
    np.testing.assert_allclose(
        advantages.group_advantages(rewards, "rloo"), dr * g / (g - 1), rtol=1e-5
    )
    # GRPO is invariant to an affine change of the reward scale.
    np.testing.assert_allclose(
        advantages.group_advantages(3.0 * rewards - 2.0, "grpo", eps=0.0),
        advantages.group_advantages(rewards, "grpo", eps=0.0),
        rtol=1e-4,
        atol=1e-5,
    )


def test_integer_rewards_are_promoted_to_float():
    adv = advantages.group_advantages(np.array([[1, 0]]), "dr_grpo")
    np.testing.assert_allclose(adv, [[0.5, -0.5]])


@pytest.mark.parametrize(
    "rewards, estimator, match",
    [
        (np.ones((2, 1)), "grpo", "G >= 2"),
        (np.ones(4), "grpo", r"reshape\(B, G\)"),
        (np.ones((2, 4)), "ppo", "choose one of"),
    ],
)
def test_bad_input_fails_early(rewards, estimator, match):
    with pytest.raises(ValueError, match=match):
        advantages.group_advantages(rewards, estimator)


def test_token_advantages_broadcast_under_mask():
    adv_N = np.array([2.0, -1.0], np.float32)
    m = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(
        advantages.token_advantages(adv_N, m), [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
    )
    with pytest.raises(ValueError, match=r"\[N\] and \[N, T\]"):
        advantages.token_advantages(adv_N, m.T)
