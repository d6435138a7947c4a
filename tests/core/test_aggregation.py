"""Tests for rl_lm.core.aggregation: hand values, microbatch and sharding parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rl_lm.core import advantages, aggregation, kl, losses

MODES = aggregation.AGGREGATION_MODES

L = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], np.float32)
M = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)  # the last row is padding


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", (1 + 2 + 4) / 3),
        ("seq-mean-token-mean", (1.5 + 4) / 2),
        ("seq-mean-token-sum", (3 + 4) / 2),
        ("seq-mean-token-sum-norm", (3 + 4) / (2 * 4)),
    ],
)
def test_hand_values(mode, expected):
    np.testing.assert_allclose(aggregation.aggregate(L, M, mode, t_max=4), expected, rtol=1e-6)
    denominator = aggregation.aggregation_denominator(mode, M, t_max=4)
    numerator = aggregation.aggregation_numerator(L, M, mode)
    np.testing.assert_allclose(numerator / denominator, expected, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_gives_zero_loss_and_zero_gradient(mode):
    m = np.zeros_like(M)
    value, grad = jax.value_and_grad(lambda l: aggregation.aggregate(l, m, mode, t_max=4))(L)
    assert value == 0.0
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: aggregation.aggregate(L, M, "sum"), "choose one of"),
        (lambda: aggregation.aggregate(L, M[:, :2], "token-mean"), "own mask"),
        (lambda: aggregation.aggregate(L, M, "seq-mean-token-sum-norm"), "pass t_max"),
        (lambda: aggregation.aggregation_denominator("token-mean", M[0]), r"\[N, T\]"),
    ],
)
def test_bad_input_fails_early(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# A tiny linear "policy": logits = x @ W, so every aggregation mode has a
# non-trivial gradient wrt W that mixes all rows.
N, T, D, V, G, T_MAX = 16, 6, 4, 5, 4, 8


def _batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, T + 1, size=N)
    lengths[5] = 0  # a padding row
    m = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    rewards = rng.integers(0, 2, size=(N // G, G)).astype(np.float32)
    adv_N = advantages.group_advantages(rewards, "grpo").reshape(-1)
    w_old = rng.normal(size=(D, V)).astype(np.float32)
    batch = {
        "x": rng.normal(size=(N, T, D)).astype(np.float32),
        "y": rng.integers(0, V, size=(N, T)),
        "m": m,
        "adv": advantages.token_advantages(adv_N, m),
    }
    batch["lp_old"] = _log_probs(w_old, batch)
    batch["lp_ref"] = _log_probs(w_old + rng.normal(0, 0.3, size=(D, V)), batch)
    w = w_old + rng.normal(0, 0.3, size=(D, V)).astype(np.float32)
    return jnp.asarray(w), jax.tree.map(jnp.asarray, batch)


def _log_probs(w, batch):
    logp = jax.nn.log_softmax(batch["x"] @ w, axis=-1)
    return jnp.take_along_axis(logp, batch["y"][..., None], axis=-1)[..., 0]


def _loss(w, batch, denominator, mode):
    """GRPO's loss: clipped surrogate plus beta * k3, both under `mode`."""
    lp = _log_probs(w, batch)
    l, _ = losses.clipped_surrogate(lp, batch["lp_old"], batch["adv"], 0.2, 0.28)
    l = l + 0.04 * kl.k3(lp, batch["lp_ref"])
    return aggregation.aggregate(l, batch["m"], mode, denominator)


def _microbatches(batch, k):
    return [jax.tree.map(lambda a, i=i: a[i * N // k : (i + 1) * N // k], batch) for i in range(k)]


@pytest.mark.parametrize("mode", MODES)
def test_microbatch_accumulation_equals_full_batch(mode):
    w, batch = _batch()
    denominator = aggregation.aggregation_denominator(mode, batch["m"], T_MAX)
    value_and_grad = jax.jit(jax.value_and_grad(_loss), static_argnums=3)
    full_loss, full_grad = value_and_grad(w, batch, denominator, mode)
    assert jnp.abs(full_grad).max() > 1e-3

    acc_loss, acc_grad = 0.0, jnp.zeros_like(w)
    for mb in _microbatches(batch, 4):
        loss, grad = value_and_grad(w, mb, denominator, mode)
        acc_loss, acc_grad = acc_loss + loss, acc_grad + grad
    np.testing.assert_allclose(acc_loss, full_loss, rtol=1e-5)
    np.testing.assert_allclose(acc_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_per_microbatch_denominators_would_be_wrong():
    """The control for the test above: the naive average really differs."""
    w, batch = _batch()
    mode = "token-mean"
    grad_fn = jax.jit(jax.grad(_loss), static_argnums=3)
    full_grad = grad_fn(w, batch, None, mode)
    naive_grad = sum(grad_fn(w, mb, None, mode) for mb in _microbatches(batch, 4)) / 4
    assert jnp.abs(naive_grad - full_grad).max() > 1e-3


@pytest.fixture(scope="module")
def mesh():
    devices = np.array(jax.devices())
    if devices.size != 8:
        pytest.skip("needs 8 devices (tests/conftest.py simulates 8 CPU devices)")
    return Mesh(devices, ("data",))


@pytest.mark.parametrize("mode", MODES)
def test_sharded_batch_gradient_equals_full_batch(mode, mesh):
    w, batch = _batch()
    denominator = aggregation.aggregation_denominator(mode, batch["m"], T_MAX)
    grad_fn = jax.jit(jax.grad(_loss), static_argnums=3)
    full_grad = grad_fn(w, batch, denominator, mode)

    # GSPMD: the batch axis sharded over 8 devices, the parameters replicated.
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    assert len(sharded["m"].sharding.device_set) == 8
    gspmd_grad = grad_fn(jax.device_put(w, NamedSharding(mesh, P())), sharded, denominator, mode)
    np.testing.assert_allclose(gspmd_grad, full_grad, rtol=1e-4, atol=1e-6)

    # Explicit data parallelism: each device differentiates its own rows with
    # the global denominator, and the gradients are summed across devices.
    # (check_vma=False keeps grad local; with it on, grad would psum itself.)
    def local_grad(w, shard, denominator):
        return jax.lax.psum(jax.grad(_loss)(w, shard, denominator, mode), "data")

    dp_grad = jax.jit(
        jax.shard_map(
            local_grad,
            mesh=mesh,
            in_specs=(P(), P("data"), P()),
            out_specs=P(),
            check_vma=False,
        )
    )(w, batch, denominator)
    np.testing.assert_allclose(dp_grad, full_grad, rtol=1e-4, atol=1e-6)
