"""Multi-turn PPO: GAE skips observation tokens; every forward sees them; the trainer and
configs/ppo_tool_arith.py run episodes."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ppo_tool_arith
from rl_lm.algos import episodes, ppo, ppo_loss
from rl_lm.core import gae
from rl_lm.models import transformer as tf
from rl_lm.models.config import get_model_config
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.sampling.logprobs import response_logprobs
from tests.algos.test_grpo_tools import ScriptedEnv, _episode_batch

CFG = get_model_config("tiny").replace(scalar_head=True)  # a value head on the trunk
TOK = ByteTokenizer()


def _gae_reference(r, v, gamma, lam):
    """Textbook GAE of one contiguous episode (numpy, float64); V after the end is 0."""
    adv, next_v, next_a = np.zeros(len(r)), 0.0, 0.0
    for t in reversed(range(len(r))):
        next_a = r[t] + gamma * next_v - v[t] + gamma * lam * next_a
        adv[t], next_v = next_a, v[t]
    return adv, adv + v


def _gapped_rows():
    """Three rows of 12 positions: 1 = action, 0 = observation or padding.

    Row 0 has two observations mid-response, row 1 ends in an observation (the
    budget cut the episode there), row 2 is single-turn (no gap)."""
    mask = np.asarray(
        [
            [1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0],
            [1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        ],
        np.int32,
    )
    rng = np.random.default_rng(0)
    r = rng.normal(size=mask.shape).astype(np.float32)
    v = rng.normal(size=mask.shape).astype(np.float32)
    # Whatever sits at observation and padding positions must not matter.
    r = np.where(mask > 0, r, 1e3).astype(np.float32)
    v = np.where(mask > 0, v, -1e3).astype(np.float32)
    return r, v, mask


def _compact(x, mask):
    """The action positions of each row, left-aligned, zero-padded (the observations deleted)."""
    out = np.zeros_like(x)
    for i in range(len(x)):
        kept = x[i][mask[i] > 0]
        out[i, : len(kept)] = kept
    return out


def _scatter(compact, mask):
    out = np.zeros(mask.shape, compact.dtype)
    for i in range(len(mask)):
        out[i][mask[i] > 0] = compact[i, : int(mask[i].sum())]
    return out


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_with_observation_gaps_is_gae_of_the_compacted_episode(gamma, lam):
    r, v, mask = _gapped_rows()
    adv, ret = (np.asarray(x) for x in gae.gae(jnp.asarray(r), jnp.asarray(v), mask, gamma, lam))
    compact_m = _compact(mask, mask)
    cadv, cret = (
        np.asarray(x)
        for x in gae.gae(jnp.asarray(_compact(r, mask)), jnp.asarray(_compact(v, mask)),
                         compact_m, gamma, lam)
    )  # fmt: skip
    np.testing.assert_allclose(adv, _scatter(cadv, mask), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ret, _scatter(cret, mask), rtol=1e-6, atol=1e-6)
    for i in range(len(mask)):  # and both are the textbook recursion over the actions
        on = mask[i] > 0
        want_adv, want_ret = _gae_reference(r[i][on], v[i][on], gamma, lam)
        np.testing.assert_allclose(adv[i][on], want_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret[i][on], want_ret, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(adv[mask == 0], 0.0)
    np.testing.assert_array_equal(ret[mask == 0], 0.0)


def test_rollout_targets_with_gaps_are_those_of_the_compacted_rollout():
    """KL rewards, the score on the last action token, GAE and whitening: all the same as
    with the observation tokens deleted; the gap-free row is unchanged bit for bit."""
    _, v, mask = _gapped_rows()
    rng = np.random.default_rng(1)
    lp = np.where(mask > 0, -rng.uniform(0.1, 3.0, mask.shape), 5.0).astype(np.float32)
    lp_ref = np.where(mask > 0, lp + rng.normal(0, 0.2, mask.shape), -7.0).astype(np.float32)
    score = jnp.asarray([1.0, -0.5, 0.25], jnp.float32)
    cfg = ppo_loss.default_config()
    cfg.update(gamma=0.97, lam=0.9)
    cfg.kl.estimator = "k3"

    def targets(lp, lp_ref, v, m):
        out, stats = ppo_loss.rollout_targets(
            score[-len(m) :], *(jnp.asarray(x) for x in (lp, lp_ref, v, m)), 0.1, cfg
        )
        return {k: np.asarray(x) for k, x in out.items()}, {k: float(x) for k, x in stats.items()}

    gapped, gapped_stats = targets(lp, lp_ref, v, mask)
    compact, compact_stats = targets(*(_compact(x, mask) for x in (lp, lp_ref, v, mask)))
    for k in ("adv", "returns"):
        np.testing.assert_allclose(gapped[k], _scatter(compact[k], mask), rtol=1e-5, atol=1e-6)
    for k in gapped_stats:
        np.testing.assert_allclose(gapped_stats[k], compact_stats[k], rtol=1e-5, atol=1e-6)
    # The single-turn row alone is already compact: the same numbers exactly.
    one, _ = targets(lp[2:], lp_ref[2:], v[2:], mask[2:])
    alone, _ = targets(*(_compact(x, mask)[2:] for x in (lp, lp_ref, v, mask)))
    for k in one:
        np.testing.assert_array_equal(one[k], alone[k])


@pytest.fixture(scope="module")
def params():
    return {"policy": tf.init_params(CFG, jax.random.key(0))}


def _cfg(**kw):
    cfg = ppo_loss.default_config()
    cfg.update(max_new_tokens=64, ent_coef=0.01, **kw)
    return cfg


def test_policy_and_value_forward_see_the_observations(params):
    batch = _episode_batch()
    lp, _, values = ppo_loss.response_outputs(params, batch, CFG, _cfg())
    want = response_logprobs(
        params["policy"], CFG, batch["prompt"], batch["prompt_mask"], batch["response"],
        batch["mask"], chunk_size=64, attention_mask_NxR=batch["attention_mask"],
    )  # fmt: skip
    np.testing.assert_allclose(lp, want, rtol=1e-5, atol=1e-6)
    m = np.asarray(batch["mask"])
    np.testing.assert_array_equal(np.asarray(lp)[m == 0], 0.0)
    np.testing.assert_array_equal(np.asarray(values)[m == 0], 0.0)
    # Without the attention mask the answer after the result loses its context.
    blind = {k: x for k, x in batch.items() if k != "attention_mask"}
    lp_blind, _, values_blind = ppo_loss.response_outputs(params, blind, CFG, _cfg())
    assert float(jnp.max(jnp.abs(lp_blind - lp))) > 1e-4
    assert float(jnp.max(jnp.abs(values_blind - values))) > 1e-4


def _loss(params, batch):
    (num, den), _ = ppo_loss.loss_fn(params, batch, CFG, _cfg())
    return num / den


def test_observation_tokens_change_neither_loss_nor_gradient(params):
    batch = _episode_batch()
    shape = batch["mask"].shape
    rng = np.random.default_rng(0)
    lp, _, values = ppo_loss.response_outputs(params, batch, CFG, _cfg())
    m = batch["mask"].astype(jnp.float32)
    base = dict(batch, lp_old=lp - 0.1 * m, values=values + 0.05 * m)
    base["adv"] = jnp.asarray(rng.normal(size=shape), jnp.float32) * m
    base["returns"] = (values + jnp.asarray(rng.normal(size=shape), jnp.float32)) * m
    obs = (batch["attention_mask"] == 1) & (batch["mask"] == 0)
    noisy = dict(base)
    for k in ("lp_old", "values", "adv", "returns"):
        noisy[k] = jnp.where(obs, jnp.asarray(rng.normal(size=shape), jnp.float32), base[k])
    assert float(_loss(params, base)) == float(_loss(params, noisy))
    # Row 1 ends in an observation: its ids are targets only.
    edited = dict(base)
    last_obs = obs.at[0].set(False)
    edited["response"] = jnp.where(last_obs, (batch["response"] + 5) % 256, batch["response"])
    g1, g2 = (jax.grad(_loss)(params, b) for b in (base, edited))
    assert float(_loss(params, base)) == float(_loss(params, edited))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_env_config_is_validated():
    cfg = _cfg()
    cfg.env.update(name="tool", max_turns=0)
    with pytest.raises(ValueError) as err:
        ppo_loss.validate(cfg)
    for part in ("ppo.env.name='tool'", "ppo.env.max_turns=0"):
        assert part in str(err.value)
    cfg = _cfg()
    cfg.env.name = "tools"
    cfg.process.source = "strict"
    with pytest.raises(ValueError) as err:
        ppo_loss.validate(cfg)  # the default reward source is the reward model
    message = str(err.value)
    assert "ppo.process with ppo.env" in message
    assert "ppo.reward.source='reward_model' with ppo.env" in message
    cfg = _cfg()
    cfg.env.name = "tools"
    cfg.reward.source = "verifiable"
    ppo_loss.validate(cfg)
    cfg.reward_sources = "verifiable=1,reward_model=0.5"
    with pytest.raises(ValueError, match="ppo.reward_sources with ppo.env"):
        ppo_loss.validate(cfg)


def test_trainer_gives_every_forward_the_attention_mask(tmp_path, monkeypatch):
    """One PPO update on scripted episodes (every row gets an observation) with a vanishing
    learning rate: lp_old and V_old, the reference and the update's log-probs are one
    function of one sequence only if each sees the observations, so the ratio is 1 and
    both KLs (to the reference, the update's approx_kl) are 0 to float precision."""
    from rl_lm import parallel

    monkeypatch.setattr(episodes, "make_env", lambda cfg, data_name="": ScriptedEnv())
    config = ppo_tool_arith.get_config("runlocal")
    config.unlock()
    config.data.data_dir = str(tmp_path / "data")
    config.ppo.update(max_new_tokens=32, num_epochs=1, num_minibatches=2)
    config.ppo.kl.estimator = "k3"
    config.ppo.env.max_turn_tokens = 6
    config.optim.lr = 1e-12
    mesh = parallel.make_mesh(config.mesh)
    trainer = ppo.make_trainer(config, mesh)
    state = trainer.init_state(jax.random.PRNGKey(0))
    state, metrics = trainer.step(state, next(trainer.batches(0)))
    assert metrics["tool/observation_tokens"] == len(TOK.encode("<result>4242</result>"))
    assert metrics["tool/calls"] == 1.0 and "time_tools" in metrics
    assert abs(metrics["ratio"] - 1.0) < 1e-6, metrics["ratio"]
    assert abs(metrics["approx_kl"]) < 1e-10, metrics["approx_kl"]
    assert metrics["kl"] < 1e-6, metrics["kl"]
    assert np.isfinite(metrics["explained_variance"]) and np.isfinite(metrics["vf_loss"])


@pytest.mark.slow
def test_config_runs_through_the_launcher(tmp_path):
    from tests.launch_helpers import run_launch

    start = time.perf_counter()
    done = run_launch(
        "launch.train",
        "--config=configs/ppo_tool_arith.py:runlocal",
        f"--workdir={tmp_path / 'run'}",
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Finished step 2: held-out accuracy" in done.stdout, done.stdout[-2000:]
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "tool/observation_tokens" in logged and "explained_variance" in logged
    print(f"launch took {time.perf_counter() - start:.0f} s")
