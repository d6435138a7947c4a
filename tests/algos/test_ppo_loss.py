"""PPO loss and rollout targets: hand values, clipping, KL-in-reward, normalization, parity."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_lm.algos import common, ppo_loss
from rl_lm.core.kl import entropy_from_logits
from rl_lm.models import transformer as tf
from rl_lm.models.config import get_model_config

# A policy with a value head on its trunk.
CFG = get_model_config("tiny").replace(scalar_head=True)
CRITIC_CFG = get_model_config("tiny").replace(lm_head=False, scalar_head=True)
N, P, R = 8, 4, 5


def _cfg(**kw):
    cfg = ppo_loss.default_config()
    cfg.max_new_tokens = R
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
    }


@pytest.fixture(scope="module")
def params():
    return {"policy": tf.init_params(CFG, jax.random.key(0))}


def _loss(params, batch, cfg, critic_cfg=None):
    (num, den), _ = ppo_loss.loss_fn(params, batch, CFG, cfg, critic_cfg)
    return num / den


def _grad(params, batch, cfg, critic_cfg=None):
    return jax.jit(jax.grad(lambda p, b: _loss(p, b, cfg, critic_cfg)))(params, batch)


def _max_abs(tree):
    return max(float(jnp.abs(x).max()) for x in jax.tree.leaves(tree))


def _with_targets(params, batch, log_rho, adv, dv, dret):
    """Rollout fields making rho = exp(log_rho), V_old = V - dv and returns = V + dret."""
    lp, _, v = ppo_loss.response_outputs(params, batch, CFG, _cfg())
    return {
        **batch,
        "lp_old": lp - log_rho,
        "adv": jnp.broadcast_to(adv, lp.shape).astype(jnp.float32),
        "values": v - dv,
        "returns": v + dret,
    }


def test_outputs_match_full_logits_and_value_head(params):
    batch = _batch()
    lp, ent, v = ppo_loss.response_outputs(params, batch, CFG, _cfg(logprob_chunk=2))
    tokens = jnp.concatenate([batch["prompt"], batch["response"]], axis=1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["mask"]], axis=1).astype(bool)
    hidden, _ = tf.forward(params["policy"], tokens, CFG, mask_NxT=mask)
    h = hidden[:, P - 1 : P + R - 1]
    logp = jax.nn.log_softmax(tf.logits(params["policy"], h, CFG), axis=-1)
    m = np.asarray(batch["mask"], bool)
    want_lp = jnp.take_along_axis(logp, batch["response"][..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(lp, np.where(m, want_lp, 0), atol=1e-5)
    want_ent = entropy_from_logits(tf.logits(params["policy"], h, CFG))
    np.testing.assert_allclose(ent, np.where(m, want_ent, 0), atol=1e-5)
    np.testing.assert_allclose(v, np.where(m, tf.scalar(params["policy"], h), 0), atol=1e-6)


def test_loss_by_hand(params):
    """Four token kinds: clipped above, clipped below, unclipped (A > 0), unclipped (A < 0)."""
    batch = _batch(1)
    m = np.asarray(batch["mask"], np.float64)
    kinds = np.arange(N * R).reshape(N, R) % 4
    log_rho = np.log(np.array([1.5, 0.5, 0.9, 1.1]))[kinds]
    adv = np.array([1.0, -2.0, 0.5, -1.0])[kinds]
    # V moved 0.5 above V_old: clipped V = V - 0.3. Returns V + 1 make the clipped
    # error the larger (1.3^2 vs 1), returns V - 1 the unclipped one (1 vs 0.7^2).
    dret = np.where(kinds % 2 == 0, 1.0, -1.0)
    full = _with_targets(params, batch, log_rho, adv, 0.5, dret)
    cfg = _cfg(vf_coef=0.1, ent_coef=0.01, clip_eps=0.2, value_clip_eps=0.2)
    pg = np.array([-1.2 * 1.0, 0.8 * 2.0, -0.9 * 0.5, 1.1 * 1.0])[kinds]
    vf = np.where(kinds % 2 == 0, 0.5 * 1.3**2, 0.5 * 1.0)
    _, ent, _ = ppo_loss.response_outputs(params, batch, CFG, cfg)
    expected = np.sum(m * (pg + 0.1 * vf - 0.01 * np.asarray(ent))) / m.sum()
    (num, den), metrics = ppo_loss.loss_fn(params, full, CFG, cfg)
    np.testing.assert_allclose(num / den, expected, rtol=1e-5)
    np.testing.assert_allclose(den, m.sum())
    ratio = lambda name: float(metrics[name][0] / metrics[name][1])
    np.testing.assert_allclose(ratio("clipfrac"), m[kinds < 2].sum() / m.sum(), rtol=1e-6)
    np.testing.assert_allclose(ratio("vf_clipfrac"), m[kinds % 2 == 0].sum() / m.sum(), rtol=1e-6)
    np.testing.assert_allclose(ratio("pg_loss"), (m * pg).sum() / m.sum(), rtol=1e-5)


def test_zero_policy_gradient_beyond_the_clip(params):
    batch = _batch(2)
    cfg = _cfg(vf_coef=0.0, ent_coef=0.0)
    # A > 0 with rho = 1.5 and A < 0 with rho = 0.5: both beyond the clip.
    beyond = np.where(np.arange(R)[None] % 2 == 0, 1.0, -1.0) * np.ones((N, 1))
    log_rho = np.where(beyond > 0, np.log(1.5), np.log(0.5))
    clipped = _with_targets(params, batch, log_rho, beyond, 0.0, 0.0)
    assert _max_abs(_grad(params, clipped, cfg)) == 0.0
    # The same ratios with the advantages' signs flipped: inside the clip's open side.
    flipped = {**clipped, "adv": -clipped["adv"]}
    assert _max_abs(_grad(params, flipped, cfg)) > 0.0


def test_value_clip_stops_the_value_gradient_only_when_the_clipped_error_is_larger(params):
    batch = _batch(3)
    cfg = _cfg(vf_coef=1.0, ent_coef=0.0)
    # Policy terms contribute no gradient: every token is beyond the clip.
    pinned = dict(log_rho=np.log(1.5), adv=1.0, dv=0.5)
    head = lambda g: g["policy"]["score"]
    away = _with_targets(params, batch, dret=1.0, **pinned)  # clipped error 1.69 > 1
    assert _max_abs(head(_grad(params, away, cfg))) == 0.0
    toward = _with_targets(params, batch, dret=-1.0, **pinned)  # 1 > 0.49: unclipped
    assert _max_abs(head(_grad(params, toward, cfg))) > 0.0
    # Within the clip (V - V_old = 0.1) the value loss is the plain squared error.
    inside = _with_targets(params, batch, dv=0.1, dret=1.0, log_rho=0.0, adv=0.0)
    np.testing.assert_allclose(_loss(params, inside, _cfg(vf_coef=1.0, ent_coef=0.0)), 0.5)


def test_separate_critic_gets_the_value_gradient(params):
    batch = _batch(4)
    both = {**params, "critic": tf.init_params(CRITIC_CFG, jax.random.key(1))}
    _, _, v = ppo_loss.response_outputs(both, batch, CFG, _cfg(), CRITIC_CFG)
    want = tf.scalar(both["critic"], ppo_loss.response_hidden(both["critic"], CRITIC_CFG, batch))
    np.testing.assert_allclose(v, np.where(np.asarray(batch["mask"]) > 0, want, 0), atol=1e-6)
    lp, _, _ = ppo_loss.response_outputs(both, batch, CFG, _cfg(), CRITIC_CFG)
    rollout = {**batch, "lp_old": lp, "adv": jnp.zeros_like(lp), "values": v, "returns": v + 1}
    grads = _grad(both, rollout, _cfg(), CRITIC_CFG)
    assert _max_abs(grads["critic"]) > 0.0
    assert _max_abs(grads["policy"]) == 0.0  # zero advantage, no entropy bonus


def test_token_rewards_put_the_penalty_per_token_and_the_score_on_the_last_token():
    score = jnp.array([2.0, 3.0, 5.0, 7.0])
    kl_NxT = jnp.array([[0.1, 0.2, 0.3]] * 4) + jnp.array([[0.0], [0.3], [0.6], [0.9]])
    m = jnp.array([[1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 0]])
    got = ppo_loss.token_rewards(score, kl_NxT, m, 0.5)
    expected = [
        [-0.05, -0.1 + 2.0, 0.0],
        [-0.2, -0.25, -0.3 + 3.0],
        [0.0, -0.4, -0.45 + 5.0],
        [0.0, 0.0, 0.0],  # an empty response gets nothing
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_rollout_targets_hand_values():
    # k1 = lp - lp_ref = 0.2 per token; beta = 0.5; gamma = lam = 1, V = 0:
    # A_t = reward to go = score - 0.1 * (tokens left).
    m = jnp.array([[1, 1, 1], [1, 1, 0]])
    lp = jnp.where(m > 0, -1.0, 0.0)
    lp_ref = jnp.where(m > 0, -1.2, 0.0)
    cfg = _cfg(gamma=1.0, lam=1.0, whiten_advantages=False)
    out, stats = ppo_loss.rollout_targets(
        jnp.array([1.0, -1.0]), lp, lp_ref, jnp.zeros((2, 3)), m, 0.5, cfg
    )
    want = [[1.0 - 0.3, 1.0 - 0.2, 1.0 - 0.1], [-1.0 - 0.2, -1.0 - 0.1, 0.0]]
    np.testing.assert_allclose(out["adv"], want, rtol=1e-6)
    np.testing.assert_allclose(out["returns"], want, rtol=1e-6)
    np.testing.assert_allclose(stats["kl"], (0.6 + 0.4) / 2, rtol=1e-6)
    # Values that predict the returns exactly explain all their variance.
    out, stats = ppo_loss.rollout_targets(
        jnp.array([1.0, -1.0]), lp, lp_ref, jnp.asarray(want), m, 0.5, cfg
    )
    np.testing.assert_allclose(out["adv"], 0.0, atol=1e-6)
    np.testing.assert_allclose(stats["explained_variance"], 1.0, rtol=1e-6)
    # Whitening: mean 0, variance 1 under the mask, 0 off it.
    out, _ = ppo_loss.rollout_targets(
        jnp.array([1.0, -1.0]), lp, lp_ref, jnp.zeros((2, 3)), m, 0.5, _cfg()
    )
    adv = np.asarray(out["adv"])
    on = np.asarray(m) > 0
    np.testing.assert_allclose([adv[on].mean(), adv[on].std()], [0.0, 1.0], atol=1e-5)
    assert adv[~on] == 0.0


def test_reward_normalization():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, 16), rng.normal(-1.0, 0.5, 8)
    stats = {k: np.asarray(v) for k, v in ppo_loss.init_reward_stats().items()}
    same, unchanged = ppo_loss.normalize_rewards(a, stats, "none", 0.0, 1e-8)
    np.testing.assert_allclose(same, a, rtol=1e-6)
    assert unchanged == stats
    batch, _ = ppo_loss.normalize_rewards(a, stats, "batch", 0.0, 1e-8)
    np.testing.assert_allclose([batch.mean(), batch.std()], [0.0, 1.0], atol=1e-5)
    # Running statistics after two batches are those of both batches together.
    _, stats = ppo_loss.normalize_rewards(a, stats, "running", 0.0, 1e-8)
    got, stats = ppo_loss.normalize_rewards(b, stats, "running", 0.0, 1e-8)
    both = np.concatenate([a, b])
    np.testing.assert_allclose(
        [stats["count"], stats["mean"], stats["var"]], [24, both.mean(), both.var()], rtol=1e-5
    )
    np.testing.assert_allclose(got, (b - both.mean()) / both.std(), rtol=1e-4)
    clipped, _ = ppo_loss.normalize_rewards(a, stats, "batch", 1.0, 1e-8)
    np.testing.assert_allclose(clipped, np.clip(batch, -1.0, 1.0), rtol=1e-6)


def _sgd_step(params, batch, cfg, micro):
    optimizer = optax.sgd(1.0)
    params = jax.tree.map(jnp.copy, params)  # the jitted step donates its state
    state = common.new_state(params, optimizer, jax.random.key(0))
    loss = lambda p, b: ppo_loss.loss_fn(p, b, CFG, cfg)
    return jax.jit(common.make_update(loss, optimizer, micro))(state, batch)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_two_microbatches_equal_the_full_batch(params, aggregation):
    batch = _batch(5)
    noise = 0.3 * np.asarray(jax.random.normal(jax.random.key(2), (N, R)))
    # Off-policy and off-value, so that both clips are active on some tokens.
    rollout = _with_targets(params, batch, noise, np.sign(noise), noise, 2 * noise)
    cfg = _cfg(aggregation=aggregation, ent_coef=0.01)
    full, m_full = _sgd_step(params, rollout, cfg, 1)
    accum, m_acc = _sgd_step(params, rollout, cfg, 2)
    assert 0 < m_full["clipfrac"] < 1 and 0 < m_full["vf_clipfrac"] < 1
    for name in ("loss", "pg_loss", "vf_loss", "entropy", "clipfrac"):
        np.testing.assert_allclose(m_full[name], m_acc[name], rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(accum["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("critic", "shared", "ppo.critic='shared'"),
        ("lam", 1.5, "ppo.lam=1.5"),
        ("temperature", 0.0, "ppo.temperature=0.0"),
        ("num_minibatches", 0, "ppo.num_minibatches=0"),
    ],
)
def test_validate_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        ppo_loss.validate(_cfg(**{field: value}))
    cfg = _cfg()
    cfg.reward.source = "learned"
    with pytest.raises(ValueError, match="ppo.reward.source='learned'"):
        ppo_loss.validate(cfg)
    cfg = _cfg()
    cfg.kl.update(adaptive=True, target=0.0)
    with pytest.raises(ValueError, match="ppo.kl.target=0.0"):
        ppo_loss.validate(cfg)
