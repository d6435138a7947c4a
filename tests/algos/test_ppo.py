"""The PPO trainer end to end on 8 simulated devices: rollout, targets, updates, KL controller."""

import jax
import numpy as np
import pytest

from configs import ppo_synthetic
from rl_lm import parallel
from rl_lm.algos import common, ppo
from rl_lm.models.transformer import init_params


@pytest.mark.slow
def test_two_steps_with_a_separate_critic_move_the_adaptive_beta_both_ways(tmp_path):
    config = ppo_synthetic.get_config("runlocal")
    config.unlock()
    data_dir = str(tmp_path / "data")
    config.data.data_dir = data_dir
    stage = config.reward_model.stage
    stage.data.data_dir = data_dir
    stage.train.num_steps = 1
    config.ppo.update(critic="separate", num_epochs=2, num_minibatches=2)
    config.ppo.reward.update(source="both", normalize="running")
    rows = config.data.batch_size * config.ppo.num_generations
    # k3 >= 0; beta moves by the full 20% per rollout when the horizon is one rollout.
    config.ppo.kl.update(coef=0.05, adaptive=True, estimator="k3", target=1e-4, horizon=rows)
    config.optim.update(lr=1e-2, warmup_steps=0)
    config.lock()
    mesh = parallel.make_mesh(config.mesh)
    assert mesh.devices.size == 8
    sft = init_params(common.model_config(config.model), jax.random.PRNGKey(3))
    trainer = ppo.make_trainer(config, mesh, init_from=sft)
    state = trainer.init_state(jax.random.PRNGKey(0))
    # The separate critic starts as the reward model; the policy and reference as SFT.
    for a, b in zip(
        *(jax.tree.leaves(x) for x in (state["params"]["critic"], state["rm_params"])), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state["params"]["policy"]["embed"], sft["embed"])
    np.testing.assert_array_equal(state["ref_params"]["embed"], sft["embed"])

    batches = trainer.batches(0)
    state, first = trainer.step(state, next(batches))
    # The policy is still the reference: KL 0 < target, beta falls by 20%.
    np.testing.assert_allclose(first["kl"], 0.0, atol=1e-6)
    np.testing.assert_allclose(first["kl_coef"], 0.05)
    np.testing.assert_allclose(state["kl_coef"], 0.05 * 0.8, rtol=1e-6)
    state, second = trainer.step(state, next(batches))
    # After four updates at a high learning rate KL exceeds the target: beta rises by 20%.
    assert second["kl"] > 1.2 * 1e-4
    np.testing.assert_allclose(second["kl_coef"], 0.04, rtol=1e-6)
    np.testing.assert_allclose(state["kl_coef"], 0.04 * 1.2, rtol=1e-6)

    updates = config.ppo.num_epochs * config.ppo.num_minibatches
    assert int(state["step"]) == 2 * updates
    assert float(state["reward_stats"]["count"]) == 2 * rows
    for name in (
        "reward_learned",
        "reward_verifiable",
        "reward_true",
        "kl",
        "entropy",
        "vf_loss",
        "clipfrac",
        "explained_variance",
    ):
        assert np.isfinite(second[name]), name
    result = trainer.evaluate(state)
    assert {"win_rate", "reward", "ref_reward", "kl"} <= set(result)


@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_synthetic_chain_shares_one_trunk_shape(arg):
    """SFT stage, policy and reward model must fit each other's trunk (warm starts copy it)."""
    config = ppo_synthetic.get_config(arg)
    fields = ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "mlp_dim")
    shape = lambda model: {f: model[f] for f in fields}
    assert shape(config.warm_start.model) == shape(config.model)
    assert shape(config.reward_model.model) == shape(config.model)
    assert config.reward_model.stage.model == config.reward_model.model
