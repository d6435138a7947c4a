"""PRIME's implicit PRM: phi = ref pays nothing and costs log 2, a few updates on outcome labels
rank right above wrong, advantages whiten by hand, validation names the field, and a sharded
GRPO trainer updates phi, logs it and resumes from a checkpoint bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, prime_chain
from rl_lm import parallel
from rl_lm.algos import common, grpo, grpo_loss, prime, process_rewards
from rl_lm.core import credit
from rl_lm.models import transformer as tf
from rl_lm.models.config import get_model_config
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.train.checkpoint import Checkpointer

CFG = get_model_config("tiny")
LABELS = np.array([1, 0, 0, 1, 1, 0, 1, 0], np.float32)


def _rollout(n=8, p=4, r=6):
    rng = np.random.default_rng(0)
    mask = (np.arange(r)[None] < rng.integers(2, r + 1, n)[:, None]).astype(np.int32)
    return {
        "prompt": jnp.asarray(rng.integers(0, 256, (n, p)), jnp.int32),
        "prompt_mask": jnp.ones((n, p), jnp.int32),
        "response": jnp.asarray(rng.integers(0, 256, (n, r)), jnp.int32),
        "mask": jnp.asarray(mask),
    }


def _lp(params, rows):
    return response_logprobs(params, CFG, *(rows[k] for k in prime._ROWS), chunk_size=4)


def test_phi_equal_to_ref_pays_nothing_and_costs_log_2():
    params = tf.init_params(CFG, jax.random.key(0))
    rows = _rollout()
    lp = _lp(params, rows)
    np.testing.assert_array_equal(credit.implicit_process_rewards(lp, lp, rows["mask"]), 0)
    batch = {**rows, "lp_ref": lp, "label": jnp.asarray(LABELS)}
    (num, den), _ = prime.loss_fn(params, batch, CFG, beta=0.05, chunk=4)
    assert den == 8
    np.testing.assert_allclose(num / den, np.log(2), rtol=1e-6)
    # Every implicit sequence reward is 0: ties, half right either way.
    assert prime.sign_accuracy(np.zeros(8), LABELS) == 0.5
    assert prime.rank_accuracy(np.zeros(8), LABELS, 4) == 0.5


def test_accuracies_by_hand():
    z, labels = np.array([3.0, 1.0, 2.0, 1.5]), np.array([1, 0, 0, 1])
    # Signs: all positive, right on the two correct rows only.
    assert prime.sign_accuracy(z, labels) == 0.5
    # Pairs (correct, wrong): 3 > 1, 3 > 2, 1.5 > 1, 1.5 < 2.
    assert prime.rank_accuracy(z, labels, 4) == 0.75
    # In groups of two: (3 vs 1) won, (1.5 vs 2) lost; a group of one outcome has no pair.
    assert prime.rank_accuracy(z, labels, 2) == 0.5
    assert prime.rank_accuracy(z, np.array([1, 1, 0, 0]), 2) == 0.5


def test_whitened_advantages_by_hand():
    # One group of two: outcomes 1 and 0, leave-one-out +1 and -1 at the last token; the
    # reverse cumsum gives tokens [1, 1] and [-1], mean 1/3, variance 8/9 over the 3 tokens.
    mask = jnp.array([[1, 1], [1, 0]])
    adv = prime.whitened_advantages(jnp.zeros((2, 2)), jnp.array([1.0, 0.0]), mask, group_size=2)
    s = np.sqrt(2.0)
    np.testing.assert_allclose(adv, [[1 / s, 1 / s], [-s, 0]], rtol=1e-6)
    # Token rewards alone: leave-one-out of the row means (0.5 and 2), then the return to go.
    r = jnp.array([[0.0, 1.0], [2.0, 0.0]])
    raw = credit.prime_advantages(r, jnp.zeros(2), mask, 2)
    np.testing.assert_allclose(raw, [[-3, -1], [1.5, 0]], rtol=1e-6)


def _proc(**overrides):
    proc = grpo_loss.default_config().process
    proc.update(source="prime", baseline="loo", **overrides)
    return proc


def test_updates_on_outcome_labels_lower_the_bce_and_rank_right_above_wrong():
    mesh = parallel.make_mesh(base.mesh())
    assert mesh.devices.size == 8
    specs = tf.partition_specs(CFG, base.RULES)
    optim = base.optim(lr=0.0, warmup_steps=1, schedule="constant")
    parts = prime.make(_proc(prime_lr=1e-2), CFG, optim, 20, 2, 1, 4, specs, mesh)
    ref = tf.init_params(CFG, jax.random.key(0))
    state = jax.jit(parts["init"], out_shardings=parallel.named(mesh, parts["specs"]))(ref)
    rows = _rollout()
    batch = {**rows, "lp_ref": _lp(ref, rows), "label": jnp.asarray(LABELS)}
    losses = []
    for _ in range(8):
        state, metrics = parts["update"](state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(np.log(2), rel=1e-6)
    assert losses[-1] < 0.75 * losses[0] and np.all(np.diff(losses) < 0), losses
    z = np.asarray(
        jnp.sum(
            credit.implicit_process_rewards(
                _lp(state["params"], rows), batch["lp_ref"], rows["mask"]
            ),
            axis=1,
        )
    )
    assert z[LABELS == 1].min() > 0 > z[LABELS == 0].max(), z
    assert int(state["step"]) == 8


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("baseline", "group_norm", "set grpo.process.baseline='loo'"),
        ("form", "min", "set grpo.process.form='sum'"),
        ("transform", "delta", "set grpo.process.transform='none'"),
        ("prime_beta", 0.0, "grpo.process.prime_beta=0.0 must be > 0"),
        ("prime_steps", 0, "grpo.process.prime_steps=0 must be an int >= 1"),
    ],
)
def test_validate_names_the_prime_field(field, value, message):
    cfg = grpo_loss.default_config()
    cfg.process.update(source="prime", baseline="loo")
    grpo_loss.validate(cfg)
    cfg.process[field] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        grpo_loss.validate(cfg)


def test_prime_needs_the_verifiable_reward_and_grpo():
    cfg = grpo_loss.default_config()
    cfg.process.update(source="prime", baseline="loo")
    cfg.reward_source = "both"
    with pytest.raises(ValueError, match="set grpo.reward_source='verifiable'"):
        grpo_loss.validate(cfg)
    # Outside GRPO (PPO validates its own process section) there is no loop to train phi in.
    problems = process_rewards.validate(cfg.process, None, section="ppo.process")
    assert problems == [
        "ppo.process.source='prime' trains its PRM inside the GRPO loop only "
        "(rl_lm.algos.prime); use it with algo='grpo'"
    ]


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_trainer_updates_phi_logs_it_and_resumes_exactly(tmp_path):
    config = prime_chain.get_config("runlocal")
    config.unlock()
    config.data.data_dir = str(tmp_path / "data")
    # No KL in the loss: the state keeps the reference for PRIME alone.
    config.grpo.update(beta=0.0, kl_placement="none")
    config.lock()
    mesh = parallel.make_mesh(config.mesh)
    assert mesh.devices.size == 8
    init = tf.init_params(common.model_config(config.model), jax.random.PRNGKey(3))
    trainer = grpo.make_trainer(config, mesh, init_from=init)
    state = trainer.init_state(jax.random.PRNGKey(0))
    _assert_trees_equal(state["prime"]["params"], init)
    batches = trainer.batches(0)
    state, first = trainer.step(state, next(batches))
    # The first update starts from phi = ref: every implicit reward is 0.
    assert first["prime_loss"] == pytest.approx(np.log(2), rel=1e-5)
    assert first["prime_accuracy"] == 0.5
    # The rollout is scored by phi after its update (PRIME's Algorithm 1), no longer by ref.
    assert first["process_return"] != 0
    ckpt = Checkpointer(tmp_path / "ckpt", keep=1)
    ckpt.save(1, state, wait=True)
    state, metrics = trainer.step(state, next(batches))
    names = ("prime_loss", "prime_accuracy", "prime_rank_accuracy", "prime_accuracy_updated")
    for name in (*names, "prime_rank_accuracy_updated", "process_return"):
        assert np.isfinite(metrics[name]), name
    assert int(state["prime"]["step"]) == 2 and int(state["step"]) == 2
    assert not np.array_equal(state["prime"]["params"]["embed"], init["embed"])
    _assert_trees_equal(state["ref_params"], init)

    resumed = ckpt.restore(1, trainer.abstract_state)
    ckpt.close()
    resumed, again = trainer.step(resumed, next(trainer.batches(1)))
    _assert_trees_equal(resumed, state)
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith("time_")}
    assert untimed(again) == untimed(metrics)
