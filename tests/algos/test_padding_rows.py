"""Padding rows change no gradient, wherever they land in microbatches and shards.

Rows with an empty response mask occur in practice (DAPO's dynamic sampling
pads a short refill with them). A microbatch or data shard made only of such
rows must add 0 to the loss's denominator: once it added 1 and shrank the
gradient (0.86x for seq-mean-token-mean with two empty rows of eight in one of
four microbatches). The reference here is the step on the batch with the
padding rows removed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rl_lm import parallel
from rl_lm.algos import common, grpo_loss, ppo_loss
from rl_lm.core import aggregation
from rl_lm.models import transformer as tf
from rl_lm.models.config import get_model_config

N, P, R = 16, 4, 5
POLICY = get_model_config("tiny")
PPO_POLICY = POLICY.replace(scalar_head=True)

# name: (num_microbatches, batch shards of an 8-device mesh, the 4 empty rows).
# Microbatch j holds rows j, j + k, ... (`split_microbatches`); shard d of s
# holds the contiguous rows d * N / s .. (d + 1) * N / s - 1.
PLACEMENTS = {
    "one_microbatch": (4, 1, (3, 7, 11, 15)),
    "two_shards": (1, 8, (0, 1, 14, 15)),
    "one_shard_across_microbatches": (2, 4, (12, 13, 14, 15)),
    "scattered": (2, 2, (2, 5, 6, 11)),
}
# Every mode through GRPO's loss; PPO's loss under its default mode (the other
# modes are the same aggregation code, run with -m slow).
CASES = [("grpo", mode) for mode in aggregation.AGGREGATION_MODES] + [
    pytest.param("ppo", mode, marks=[] if mode == "token-mean" else pytest.mark.slow)
    for mode in aggregation.AGGREGATION_MODES
]


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, R + 1, N)
    return {
        "prompt": rng.integers(0, 256, (N, P)).astype(np.int32),
        "prompt_mask": np.ones((N, P), np.int32),
        "response": rng.integers(0, 256, (N, R)).astype(np.int32),
        "mask": (np.arange(R)[None] < lengths[:, None]).astype(np.int32),
        "noise": rng.normal(0, 0.3, (4, N, R)).astype(np.float32),
    }


def _grpo_case(mode):
    cfg = grpo_loss.default_config()
    cfg.update(max_new_tokens=R, aggregation=mode, beta=0.04, eps_hi=0.28)
    params = tf.init_params(POLICY, jax.random.key(0))
    b = _batch()
    lp = np.asarray(
        grpo_loss.response_logprobs(
            params, POLICY, b["prompt"], b["prompt_mask"], b["response"], b["mask"]
        )
    )
    rows = {k: v for k, v in b.items() if k != "noise"}
    rows.update(lp_old=lp + b["noise"][0], lp_ref=lp + b["noise"][1], adv=b["noise"][2] * 5)
    return params, rows, lambda p, batch: grpo_loss.loss_fn(p, batch, POLICY, cfg)


def _ppo_case(mode):
    cfg = ppo_loss.default_config()
    cfg.update(max_new_tokens=R, aggregation=mode)
    params = {"policy": tf.init_params(PPO_POLICY, jax.random.key(1))}
    b = _batch(1)
    rows = {k: v for k, v in b.items() if k != "noise"}
    lp, _, v = ppo_loss.response_outputs(params, rows, PPO_POLICY, cfg)
    rows.update(
        lp_old=np.asarray(lp) + b["noise"][0],
        adv=b["noise"][1] * 5,
        values=np.asarray(v) + b["noise"][2],
        returns=np.asarray(v) + b["noise"][3] * 3,
    )
    return params, rows, lambda p, batch: ppo_loss.loss_fn(p, batch, PPO_POLICY, cfg)


def _empty(rows, empty):
    """The batch with the given rows emptied (mask 0, everything else garbage)."""
    out = {k: np.array(v) for k, v in rows.items()}
    idx = np.asarray(empty)
    out["mask"][idx] = 0
    for k in ("adv", "lp_old", "lp_ref", "values", "returns"):
        if k in out:
            out[k][idx] = 1e3  # never read: padding rows carry anything
    return out


def _step(params, rows, loss_fn, k, mesh=None):
    """The parameter change of one SGD(lr=1) step (minus the gradient) and the loss."""
    update = jax.jit(common.make_update(loss_fn, optax.sgd(1.0), num_microbatches=k))
    state = common.new_state(params, optax.sgd(1.0), jax.random.key(0))
    batch = jax.tree.map(jnp.asarray, rows)
    if mesh is not None:
        state = jax.device_put(state, parallel.replicated(mesh))
        batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    new_state, metrics = update(state, batch)
    delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new_state["params"], params)
    return delta, float(metrics["loss"])


@pytest.mark.parametrize(("case", "mode"), CASES)
def test_padding_rows_change_nothing(case, mode):
    params, rows, loss_fn = (_grpo_case if case == "grpo" else _ppo_case)(mode)
    n_real = N - 4
    want, want_loss = _step(params, {key: v[:n_real] for key, v in rows.items()}, loss_fn, 1)
    assert max(np.abs(x).max() for x in jax.tree.leaves(want)) > 1e-4
    for name, (k, shards, empty) in PLACEMENTS.items():
        mesh = None
        if shards > 1:
            mesh = parallel.make_mesh({"data": shards, "fsdp": 1, "tensor": 8 // shards})
        got, got_loss = _step(params, _empty(_place(rows, empty), empty), loss_fn, k, mesh)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, err_msg=name)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-7, err_msg=name)


def _place(rows, empty):
    """The rows of `rows` reordered so that the first N - 4 (the reference's, in
    order) sit outside `empty` and the last 4 at `empty`."""
    keep = np.setdiff1d(np.arange(N), empty)
    order = np.empty(N, np.int64)
    order[keep] = np.arange(len(keep))
    order[np.asarray(empty)] = np.arange(len(keep), N)
    return {key: v[order] for key, v in rows.items()}


def test_all_padding_batch_is_a_zero_step():
    """Nothing to learn from: loss 0, gradient 0, no NaN (only the last ratio guards 0)."""
    params, rows, loss_fn = _grpo_case("token-mean")
    delta, loss = _step(params, _empty(rows, np.arange(N)), loss_fn, 4)
    assert loss == 0.0
    assert all(np.all(x == 0) for x in jax.tree.leaves(delta))
    m = jnp.zeros((2, 3))
    assert float(aggregation.aggregation_denominator("token-mean", m)) == 0.0
    assert float(aggregation.aggregate(jnp.ones((2, 3)), m, "seq-mean-token-mean")) == 0.0
