"""One-step off-policy GRPO (grpo.off_policy): which params sample which rollout, the
importance weights, exact resume and the sampler's own sub-mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo_arith
from rl_lm import parallel
from rl_lm.algos import grpo, off_policy, rollout
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import init_params

START = init_params(get_model_config("tiny"), jax.random.PRNGKey(7))
ROLLOUT_METRICS = ("reward", "train_accuracy", "response_len", "tokens")


def _config(tmp_path, steps=1, lr=None, **off):
    config = grpo_arith.get_config("runlocal")
    config.unlock()
    config.data.name = "arithmetic/d1_n2_add_train200_test20_seed0"
    config.data.data_dir = str(tmp_path)
    config.grpo.off_policy.update(steps=steps, **off)
    if lr is not None:
        config.optim.lr = lr
    return config


def _run(config, num_steps, devices=None, state=None, start_step=0):
    mesh = parallel.make_mesh(config.mesh, devices=devices)
    trainer = grpo.make_trainer(config, mesh, init_from=START)
    if state is None:
        state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches, history = trainer.batches(start_step), []
    for _ in range(num_steps):
        state, metrics = trainer.step(state, next(batches))
        history.append(metrics)
    return state, history, trainer


def _close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), *jax.device_get((a, b)))


@pytest.fixture
def sampled(monkeypatch):
    """The response tokens of every rollout made, in order (both paths go through
    rollout.from_samples)."""
    seen, real = [], rollout.from_samples
    monkeypatch.setattr(
        rollout, "from_samples", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    )
    return seen


def test_rollout_k_is_sampled_with_the_params_of_step_k_minus_1(tmp_path, sampled):
    # lr 0: the on-policy run samples every rollout with theta_0, as the off-policy run
    # samples rollouts 0 and 1 (theta_0 stands in for theta_{-1}).
    _run(_config(tmp_path, steps=0, lr=0.0), 3)
    frozen = [r.host_response for r in sampled]
    on = _run(_config(tmp_path, steps=0, lr=0.1), 1)[1]
    del sampled[:]
    off_state, off, _ = _run(_config(tmp_path, steps=1, lr=0.1), 3)
    tokens = [r.host_response for r in sampled]
    assert len(tokens) == 3  # rollouts 0, 1, 2: the last step dispatches no rollout 3
    np.testing.assert_array_equal(tokens[0], frozen[0])
    np.testing.assert_array_equal(tokens[1], frozen[1])  # theta_0's, not theta_1's
    # Rollout 2 comes from theta_1, which trained: it is no longer theta_0's.
    assert (tokens[2] != frozen[2]).mean() > 0.01
    # Step 0 is on-policy (weights 1 up to the sampler's float error): the same update.
    assert off[0]["is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert off[0]["is_truncated"] == 0.0
    np.testing.assert_allclose(off[0]["loss"], on[0]["loss"], rtol=1e-4, atol=1e-7)
    # Steps 1 and 2 train on a policy one update old: the weights move away from 1.
    for k in (1, 2):
        assert abs(off[k]["is_weight_mean"] - 1.0) > 1e-3
        assert 0.0 <= off[k]["is_truncated"] <= 1.0
    # After step k the state keeps theta_k (which dispatched rollout k+1), not theta_{k+1}.
    two_steps = _run(_config(tmp_path, steps=1, lr=0.1), 2)[0]
    _close(off_state[off_policy.BEHAVIOR], two_steps["params"], rtol=0, atol=0)
    behavior, params = jax.device_get((off_state[off_policy.BEHAVIOR], off_state["params"]))
    assert not all(map(np.array_equal, jax.tree.leaves(behavior), jax.tree.leaves(params)))


def test_staleness_zero_through_the_pipeline_is_the_on_policy_run(tmp_path, monkeypatch):
    # Nothing dispatched ahead and the behavior params set to the current ones before each
    # step (staleness 0), weights then 1: the pipelined step is the on-policy step exactly.
    on_state, on, _ = _run(_config(tmp_path, steps=0, lr=1e-2), 3)
    monkeypatch.setattr(off_policy.Pipeline, "start", lambda self, *args: None)
    monkeypatch.setattr(off_policy, "weights", lambda off, lp, r: (jnp.ones_like(lp), {}))
    config = _config(tmp_path, steps=1, lr=1e-2)
    trainer = grpo.make_trainer(config, parallel.make_mesh(config.mesh), init_from=START)
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches = trainer.batches(0)
    for k in range(3):
        state = {**state, off_policy.BEHAVIOR: off_policy.snapshot(state["params"])}
        state, metrics = trainer.step(state, next(batches))
        for name in ("loss", "kl", *ROLLOUT_METRICS):
            assert metrics[name] == on[k][name], (k, name)
    _close(state["params"], on_state["params"], rtol=0, atol=0)


def test_a_restored_run_samples_the_rollout_in_flight_again(tmp_path):
    config = _config(tmp_path, steps=1, lr=1e-2)
    straight, history, _ = _run(config, 4)
    half, _, _ = _run(config, 2)
    saved = jax.device_get(half)  # what a checkpoint holds; the in-flight rollout is lost
    resumed, tail, _ = _run(config, 2, state=saved, start_step=2)
    _close(resumed, straight, rtol=0, atol=0)
    for name in ("loss", "is_weight_mean", *ROLLOUT_METRICS):
        assert [m[name] for m in tail] == [m[name] for m in history[2:]], name


def test_the_sampler_on_its_own_devices_changes_nothing(tmp_path):
    # Trainer on devices 0-3 and sampler on 4-7, against both on devices 0-3.
    config = _config(tmp_path, steps=1, lr=1e-2)
    config.mesh.update({"data": 4, "fsdp": 1, "tensor": 1})
    shared, shared_history, _ = _run(config, 3, devices=jax.devices()[:4])
    config.mesh.update({"data": -1})
    config.grpo.off_policy.sampler_devices = 4
    split, split_history, trainer = _run(config, 3)
    assert trainer.mesh.devices.size == 4
    assert {d.id for d in trainer.mesh.devices.flat} == {d.id for d in jax.devices()[:4]}
    for a, b in zip(shared_history, split_history, strict=True):
        for name in ROLLOUT_METRICS:
            assert a[name] == b[name], name
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-7)
    _close(split["params"], shared["params"], rtol=1e-5, atol=1e-6)


def test_sub_mesh_split_is_checked(tmp_path):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    train, sample = off_policy.split_mesh(mesh, 4)
    assert (train.shape["data"], sample.shape["data"], sample.shape["fsdp"]) == (1, 1, 2)
    for bad in (3, 8):
        with pytest.raises(ValueError, match=f"sampler_devices={bad} must be a multiple"):
            off_policy.split_mesh(mesh, bad)
    assert off_policy.split_mesh(mesh, 0) == (mesh, mesh)


def test_pairs_give_each_batch_with_the_next():
    assert list(off_policy.pairs(iter(range(4)))) == [(0, 1), (1, 2), (2, 3)]
