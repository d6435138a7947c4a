"""GRPO with a learned reward on 8 simulated devices: the reward model's score is the reward,
"both" adds the verifiable rewards to it, the default stays verifiable; the rollout rewards are
checked row by row against scoring the sampled responses directly."""

import jax
import numpy as np
import pytest

from configs import grpo_synthetic
from rl_lm import parallel
from rl_lm.algos import common, grpo, grpo_loss, reward_model, rm_rewards
from rl_lm.core import advantages
from rl_lm.models.tokenizer import load_tokenizer
from rl_lm.models.transformer import init_params
from rl_lm.rewards import synthetic, verifiable


def _distinct_chars(responses, answers):
    """A verifiable reward that is rarely 0 on a random policy's bytes."""
    return np.array([len(set(r)) / 8 for r in responses], np.float32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_default_source_is_verifiable_and_validate_names_the_field():
    cfg = grpo_loss.default_config()
    assert cfg.reward_source == "verifiable"
    cfg.reward_source = "learned"
    with pytest.raises(ValueError, match="grpo.reward_source='learned'"):
        grpo_loss.validate(cfg)


def test_reward_model_source_needs_a_reward_model_section():
    config = grpo_synthetic.get_config("runlocal")
    config.unlock()
    del config["reward_model"]
    with pytest.raises(ValueError, match="grpo.reward_source='reward_model' needs a reward_model"):
        rm_rewards.model_config(config, config.grpo.reward_source, "grpo.reward_source")
    assert rm_rewards.model_config(config, "verifiable", "grpo.reward_source") is None


@pytest.mark.slow
@pytest.mark.parametrize("source", ["reward_model", "both", "verifiable"])
def test_rollout_rewards_are_the_scores_of_the_source(source, data_dir, monkeypatch):
    config = grpo_synthetic.get_config("runlocal")
    config.unlock()
    config.data.data_dir = data_dir
    config.grpo.update(reward_source=source, rewards={"distinct": 1.0})
    if source == "verifiable":
        # No KL in the loss: the reference stays in the state for the preference evaluation.
        config.grpo.kl_placement = "none"
    config.lock()
    monkeypatch.setitem(verifiable.REWARDS, "distinct", lambda: _distinct_chars)
    rm_cfg = common.model_config(config.reward_model.model)
    rm_params = init_params(rm_cfg, jax.random.PRNGKey(5))
    monkeypatch.setattr(rm_rewards, "load_reward_model", lambda *_: rm_params)
    # Spies: what the rollout sampled, and the rewards its group advantages were taken of.
    samples, rewards = [], []
    real_sampler, real_advantages = grpo.make_sampler, advantages.group_advantages

    def make_sampler(*args, **kwargs):
        sample = real_sampler(*args, **kwargs)

        def spied(*a):
            out = sample(*a)
            samples.append({k: parallel.to_host(v) for k, v in out._asdict().items()})
            return out

        return spied

    def group_advantages(r_BxG, *args):
        rewards.append(np.asarray(r_BxG).reshape(-1))
        return real_advantages(r_BxG, *args)

    monkeypatch.setattr(grpo, "make_sampler", make_sampler)
    monkeypatch.setattr(advantages, "group_advantages", group_advantages)

    mesh = parallel.make_mesh(config.mesh)
    assert mesh.devices.size == 8
    sft = init_params(common.model_config(config.model), jax.random.PRNGKey(3))
    trainer = grpo.make_trainer(config, mesh, init_from=sft)
    state = trainer.init_state(jax.random.PRNGKey(0))
    state, metrics = trainer.step(state, next(trainer.batches(0)))

    (out,), (reward_N,) = samples, rewards
    tokenizer = load_tokenizer(config.tokenizer)
    texts = tokenizer.decode_batch(out["tokens"], out["mask"])
    learned_N = np.asarray(
        reward_model.score_responses(
            rm_params, rm_cfg, out["prompt"], out["prompt_mask"], out["tokens"], out["mask"]
        )
    )
    checked_N = _distinct_chars(texts, texts)
    assert checked_N.std() > 0 and learned_N.std() > 0
    expected_N = {
        "reward_model": learned_N,
        "both": learned_N + checked_N,
        "verifiable": checked_N,
    }[source]
    np.testing.assert_allclose(reward_N, expected_N, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["reward"], expected_N.mean(), rtol=1e-5, atol=1e-6)

    # The hidden true reward of the same samples is logged whatever the source.
    prompts = tokenizer.decode_batch(out["prompt"], out["prompt_mask"])
    np.testing.assert_allclose(
        metrics["reward_true"], synthetic.true_reward(prompts, texts).mean(), rtol=1e-6
    )
    uses_rm = source != "verifiable"
    assert ("reward_learned" in metrics) == uses_rm
    assert ("reward_verifiable" in metrics) == (source == "both")
    assert ("rm_params" in state) == uses_rm
    if uses_rm:
        np.testing.assert_allclose(metrics["reward_learned"], learned_N.mean(), rtol=1e-5)
        for a, b in zip(
            *(jax.tree.leaves(x) for x in (state["rm_params"], rm_params)), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    if source == "both":
        np.testing.assert_allclose(metrics["reward_verifiable"], checked_N.mean(), rtol=1e-6)
    if source == "verifiable":  # The preference task's evaluation, as PPO's.
        assert {"win_rate", "reward", "ref_reward", "kl"} <= set(trainer.evaluate(state))
