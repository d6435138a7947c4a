"""SFT: the loss by hand, sharded steps equal the single-device step, microbatching."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import sft_arith
from rl_lm import parallel
from rl_lm.algos import common, sft
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import init_params, jit_logits

CFG = get_model_config("tiny")
DATA = "arithmetic/d1_n2_add_train200_test20_seed0"


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = sft_arith.get_config("runlocal")
    config.data.name = DATA
    config.data.data_dir = str(tmp_path_factory.mktemp("data"))
    return config


def _batch(rng, n=8, t=10):
    """Rows with 1..n target tokens, so per-row and per-token means differ."""
    tokens = jax.random.randint(rng, (n, t), 0, 259)
    mask = np.zeros((n, t), np.int32)
    for i in range(n):
        mask[i, t - 1 - i : t] = 1 if i < t - 1 else 0
    return {"tokens": tokens, "loss_mask": jnp.asarray(mask)}


def test_loss_matches_full_logits():
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = _batch(jax.random.PRNGKey(1))
    (num, den), metrics = sft.loss_fn(params, batch, CFG, chunk_size=3)
    logp = jax.nn.log_softmax(jit_logits(params, batch["tokens"], CFG), axis=-1)
    target_logp = jnp.take_along_axis(logp[:, :-1], batch["tokens"][:, 1:, None], -1)[..., 0]
    m = batch["loss_mask"][:, 1:]
    np.testing.assert_allclose(num, -jnp.sum(target_logp * m), rtol=1e-5)
    assert float(den) == float(batch["loss_mask"].sum()) == 36
    np.testing.assert_allclose(metrics["target_tokens"], (36.0, 8.0))


def test_microbatches_give_the_full_batch_step():
    # Plain SGD, so parameter updates are the gradients themselves.
    optimizer = optax.sgd(1.0)
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = _batch(jax.random.PRNGKey(1))
    loss = functools.partial(sft.loss_fn, cfg=CFG)
    results = {}
    for k in (1, 2, 4):
        update = jax.jit(common.make_update(loss, optimizer, num_microbatches=k))
        state = common.new_state(params, optimizer, jax.random.PRNGKey(2))
        results[k] = update(state, batch)
    full_state, full_metrics = results[1]
    for k in (2, 4):
        state, metrics = results[k]
        np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-6)
        np.testing.assert_allclose(metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
            state["params"],
            full_state["params"],
        )
    # The mean of per-microbatch means is a different (wrong) loss on this batch.
    micro = common.split_microbatches(batch, 4)
    means = [
        jnp.divide(*loss(params, jax.tree.map(lambda x, j=j: x[j], micro))[0]) for j in range(4)
    ]
    assert abs(float(jnp.mean(jnp.stack(means))) - float(full_metrics["loss"])) > 1e-3


def _run(config, mesh_axes, devices, steps=2):
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_axes)
    mesh = parallel.make_mesh(config.mesh, devices=devices)
    trainer = sft.make_trainer(config, mesh)
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    init = jax.device_get(state["params"])
    batches = trainer.batches(0)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.step(state, next(batches))
        losses.append(float(metrics["loss"]))
    return init, jax.device_get(state), losses, state


@pytest.fixture(scope="module")
def single_device(config):
    return _run(config, {"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)])
def test_sharded_step_equals_single_device(config, single_device, shape):
    axes = dict(zip(parallel.AXES, shape, strict=True))
    init, state, losses, live = _run(config, axes, jax.devices())
    ref_init, ref_state, ref_losses, _ = single_device
    jax.tree.map(np.testing.assert_array_equal, init, ref_init)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert int(state["step"]) == 2
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        state["params"],
        ref_state["params"],
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8),
        state["opt_state"],
        ref_state["opt_state"],
    )
    # The state really is sharded as the rules say.
    wq = live["params"]["layers"]["wq"]
    assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert wq.addressable_shards[0].data.shape == (2, 32 // axes["fsdp"], 4 // axes["tensor"], 8)


def test_sft_fits_one_batch(config):
    config = config.copy_and_resolve_references()
    config.optim.update(lr=1e-2, schedule="constant")
    mesh = parallel.make_mesh(config.mesh)
    trainer = sft.make_trainer(config, mesh)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batch = next(trainer.batches(0))
    losses = []
    for _ in range(40):
        state, metrics = trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_evaluate_reports_accuracy_of_greedy_answers(config):
    trainer = sft.make_trainer(config, parallel.make_mesh(config.mesh))
    result = trainer.evaluate(trainer.init_state(jax.random.PRNGKey(0)))
    assert result["num_examples"] == config.eval.num_examples
    assert 0.0 <= result["accuracy"] <= 1.0
