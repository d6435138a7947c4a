"""GRPO loss: hand values, policy-gradient identity, clipping, accumulation, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from rl_lm.algos import common, grpo_loss
from rl_lm.core.aggregation import AGGREGATION_MODES
from rl_lm.models import transformer as tf
from rl_lm.models.config import get_model_config
from rl_lm.sampling.logprobs import response_logprobs

CFG = get_model_config("tiny")
N, P, R = 8, 4, 5


def _cfg(**kw):
    cfg = grpo_loss.default_config()
    cfg.max_new_tokens = R
    cfg.beta = 0.0
    cfg.kl_placement = "none"
    cfg.update(kw)
    return cfg


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    prompt_mask = np.ones((N, P), np.int32)
    prompt_mask[::3, :2] = 0  # some left padding
    lengths = rng.integers(1, R + 1, N)
    mask = (np.arange(R)[None] < lengths[:, None]).astype(np.int32)
    return {
        "prompt": jnp.asarray(rng.integers(0, 256, (N, P)), jnp.int32),
        "prompt_mask": jnp.asarray(prompt_mask),
        "response": jnp.asarray(rng.integers(0, 256, (N, R)), jnp.int32),
        "mask": jnp.asarray(mask),
        "adv": jnp.asarray(rng.normal(size=N), jnp.float32),
    }


@pytest.fixture(scope="module")
def params():
    return tf.init_params(CFG, jax.random.key(0))


def _lp(params, batch):
    return response_logprobs(
        params, CFG, batch["prompt"], batch["prompt_mask"], batch["response"], batch["mask"]
    )


def _loss(params, batch, cfg):
    (num, den), _ = grpo_loss.loss_fn(params, batch, CFG, cfg)
    return num / den


def test_on_policy_loss_value_is_minus_aggregated_advantage(params):
    # At rho = 1 every token's loss is -A; hand-aggregate it per mode.
    batch = _batch()
    m = np.asarray(batch["mask"], np.float64)
    a = np.asarray(batch["adv"], np.float64)
    lengths = m.sum(1)
    expected = {
        "token-mean": -(a * lengths).sum() / lengths.sum(),
        "seq-mean-token-mean": -a.mean(),
        "seq-mean-token-sum": -(a * lengths).sum() / N,
        "seq-mean-token-sum-norm": -(a * lengths).sum() / (N * R),
    }
    for mode, value in expected.items():
        got = _loss(params, batch, _cfg(aggregation=mode))
        np.testing.assert_allclose(got, value, rtol=1e-5, err_msg=mode)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_gradient_at_rho_one_is_policy_gradient(params, mode):
    batch = _batch(1)
    cfg = _cfg(aggregation=mode)
    m = batch["mask"].astype(jnp.float32)
    lengths = m.sum(1)

    def reinforce(p):
        lp = _lp(p, batch)
        per_row = jnp.sum(batch["adv"][:, None] * lp * m, axis=1)
        weights = {
            "token-mean": 1.0 / lengths.sum(),
            "seq-mean-token-mean": 1.0 / (N * lengths),
            "seq-mean-token-sum": 1.0 / N,
            "seq-mean-token-sum-norm": 1.0 / (N * R),
        }[mode]
        return -jnp.sum(per_row * weights)

    g_loss = jax.grad(_loss)(params, batch, cfg)
    g_pg = jax.grad(reinforce)(params)
    for a, b in zip(jax.tree.leaves(g_loss), jax.tree.leaves(g_pg), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)


def test_no_gradient_beyond_the_clip(params):
    batch = _batch(2)
    lp = _lp(params, batch)
    cfg = _cfg(eps_lo=0.2, eps_hi=0.28)
    # Positive advantages with rho = e^0.5 > 1 + eps_hi: clipped, no gradient.
    clipped = {**batch, "adv": jnp.abs(batch["adv"]) + 0.1, "lp_old": lp - 0.5}
    grads = jax.grad(_loss)(params, clipped, cfg)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(grads)) == 0.0
    (_, _), metrics = grpo_loss.loss_fn(params, clipped, CFG, cfg)
    np.testing.assert_allclose(metrics["clip_high"][0] / metrics["clip_high"][1], 1.0)
    # Same ratio with negative advantages: the clip is on the other side, gradient flows.
    other = {**clipped, "adv": -clipped["adv"]}
    grads = jax.grad(_loss)(params, other, cfg)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(grads)) > 0.0


def test_kl_in_loss_is_zero_at_reference_and_positive_elsewhere(params):
    batch = _batch(3)
    cfg = _cfg(beta=0.1, kl_placement="loss")
    lp = _lp(params, batch)
    at_ref = {**batch, "lp_ref": lp, "adv": jnp.zeros(N)}
    (num, _), metrics = grpo_loss.loss_fn(params, at_ref, CFG, cfg)
    np.testing.assert_allclose(num, 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics["kl"][0], 0.0, atol=1e-6)
    away = {**at_ref, "lp_ref": lp - 0.3}
    (num, den), metrics = grpo_loss.loss_fn(params, away, CFG, cfg)
    k3 = np.exp(-0.3) - 1 + 0.3
    np.testing.assert_allclose(metrics["kl"][0] / metrics["kl"][1], k3, rtol=1e-4)
    np.testing.assert_allclose(num / den, 0.1 * k3, rtol=1e-4)


def _sgd_step(params, batch, cfg, micro, mesh=None):
    optimizer = optax.sgd(1.0)
    params = jax.tree.map(jnp.copy, params)  # the jitted step donates its state
    state = common.new_state(params, optimizer, jax.random.key(0))
    loss = lambda p, b: grpo_loss.loss_fn(p, b, CFG, cfg)
    update = common.make_update(loss, optimizer, micro)
    if mesh is None:
        return jax.jit(update)(state, batch)
    from rl_lm import parallel

    shardings = jax.tree.map(lambda _: parallel.replicated(mesh), state)
    return common.jit_step(update, mesh, shardings)(state, batch)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_microbatches_and_data_parallel_equal_full_batch(params, mode):
    batch = _batch(4)
    # Off-policy so that clipping is active on some tokens.
    lp = _lp(params, batch)
    noise = 0.3 * jax.random.normal(jax.random.key(1), lp.shape)
    batch = {**batch, "lp_old": lp + noise, "lp_ref": lp - noise}
    cfg = _cfg(aggregation=mode, beta=0.05, kl_placement="loss")
    full, m_full = _sgd_step(params, batch, cfg, 1)
    accum, m_acc = _sgd_step(params, batch, cfg, 4)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(8, 1, 1), ("data", "fsdp", "tensor"))
    dp, _ = _sgd_step(params, batch, cfg, 1, mesh)
    np.testing.assert_allclose(m_full["loss"], m_acc["loss"], rtol=1e-5)
    for a, b, c in zip(*(jax.tree.leaves(s["params"]) for s in (full, accum, dp)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)


def test_overlong_penalty_and_spread_filter():
    # L_max = 16, L_cache = 4: no penalty up to 12 tokens, then linear down to -1 at 16.
    got = grpo_loss.overlong_penalty(np.array([5, 12, 13, 14, 16]), 16, 4)
    np.testing.assert_allclose(got, [0.0, 0.0, -0.25, -0.5, -1.0])
    np.testing.assert_array_equal(grpo_loss.overlong_penalty(np.array([16]), 16, 0), [0.0])
    rewards = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(grpo_loss.group_has_spread(rewards), [False, True, False])


def test_validate_names_the_field():
    with pytest.raises(ValueError, match="grpo.aggregation='tokenmean'"):
        grpo_loss.validate(_cfg(aggregation="tokenmean"))
    with pytest.raises(ValueError, match="grpo.num_generations must be >= 2"):
        grpo_loss.validate(_cfg(num_generations=1))


def test_off_policy_settings_are_checked():
    cfg = grpo_loss.default_config()
    cfg.off_policy.steps = 1
    grpo_loss.validate(cfg)
    cfg.off_policy.steps = 2
    with pytest.raises(ValueError, match="off_policy.steps=2 not supported"):
        grpo_loss.validate(cfg)
    cfg.off_policy.steps = 0
    cfg.off_policy.sampler_devices = 4
    with pytest.raises(ValueError, match="sampler_devices needs grpo.off_policy.steps=1"):
        grpo_loss.validate(cfg)
    cfg.off_policy.sampler_devices = 0
    cfg.off_policy.steps = 1
    cfg.dynamic_sampling = True
    with pytest.raises(ValueError, match="does not take grpo.dynamic_sampling"):
        grpo_loss.validate(cfg)
    cfg.dynamic_sampling = False
    cfg.env.name = "tools"
    with pytest.raises(ValueError, match="does not take multi-turn episodes"):
        grpo_loss.validate(cfg)
    cfg.env.name = ""
    cfg.off_policy.steps = 0
    cfg.off_policy.is_cap = 0.5
    with pytest.raises(ValueError, match="is_cap=0.5 must be >= 1"):
        grpo_loss.validate(cfg)


def test_episodes_refuse_what_they_cannot_combine_with():
    cfg = grpo_loss.default_config()
    cfg.env.name = "tools"
    grpo_loss.validate(cfg)  # the verifiable reward
    cfg.process.source = "strict"
    cfg.reward_source = "both"
    cfg.overlong_cache = 4
    with pytest.raises(ValueError) as err:
        grpo_loss.validate(cfg)
    for part in (
        "grpo.process with grpo.env",
        "grpo.reward_source='both' with grpo.env",
        "grpo.overlong_cache with grpo.env",
    ):
        assert part in str(err.value)
    cfg = grpo_loss.default_config()
    cfg.env.name = "tools"
    cfg.reward_sources = "verifiable=1,reward_model=0.5"
    with pytest.raises(ValueError, match="grpo.reward_sources with grpo.env"):
        grpo_loss.validate(cfg)
