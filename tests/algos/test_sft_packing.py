"""Packed SFT equals unpacked SFT: segment logits, loss, gradient, microbatches, the trainer.

Tolerances (float32 on CPU): logits of a segment match the example alone to
atol 1e-5; loss numerators to rtol 1e-5 (denominators exactly); gradients and
SGD-updated parameters to rtol 1e-4, atol 1e-6. The masked-out keys contribute
exactly 0 to the softmax, so the differences are only summation order.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import sft_arith
from rl_lm import parallel
from rl_lm.algos import common, sft
from rl_lm.data import packing
from rl_lm.models import transformer
from rl_lm.models.config import get_model_config

CFG = get_model_config("tiny")
DATA = "arithmetic/d1_n2_add_train200_test20_seed0"
LENGTHS = (5, 9, 3, 7, 4, 6, 8, 2)


def _examples(rng, lengths=LENGTHS):
    """Random examples whose loss mask covers the last half (at least one token)."""
    out = []
    for i, n in enumerate(lengths):
        tokens = rng.integers(0, CFG.vocab_size - 3, n).astype(np.int32)
        mask = np.zeros(n, np.int32)
        mask[max(1, n // 2) :] = 1
        out.append({"tokens": tokens, "loss_mask": mask, "index": i})
    return out


def _unpacked(examples, max_len, pad_id=0):
    tokens = np.full((len(examples), max_len), pad_id, np.int32)
    mask = np.zeros_like(tokens)
    for r, ex in enumerate(examples):
        tokens[r, : len(ex["tokens"])] = ex["tokens"]
        mask[r, : len(ex["tokens"])] = ex["loss_mask"]
    return {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(mask)}


def _packed(examples, num_rows, max_len):
    return jax.tree.map(
        jnp.asarray, packing.pack(examples, num_rows=num_rows, max_len=max_len, pad_id=0)
    )


@pytest.fixture(scope="module")
def params():
    return transformer.init_params(CFG, jax.random.PRNGKey(0))


def test_segment_positions_restart_at_each_segment():
    seg = jnp.array([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 3]])
    pos = transformer.segment_positions(seg, jnp.ones_like(seg))
    np.testing.assert_array_equal(pos, [[0, 1, 2, 0, 1, 0, 1], [0, 0, 1, 2, 0, 1, 2]])


def test_segment_logits_equal_each_example_alone(params):
    examples = _examples(np.random.default_rng(0))
    batch = _packed(examples, num_rows=4, max_len=16)
    hidden, _ = transformer.forward(
        params,
        batch["tokens"],
        CFG,
        positions_NxT=batch["positions"],
        segment_ids_NxT=batch["segment_ids"],
    )
    logits = transformer.logits(params, hidden, CFG)
    # Default positions come from the segment ids: the same on every real token
    # (padding, a segment of its own, counts on where the packer wrote 0).
    hidden_default, _ = transformer.forward(
        params, batch["tokens"], CFG, segment_ids_NxT=batch["segment_ids"]
    )
    real = np.asarray(batch["segment_ids"]) > 0
    np.testing.assert_array_equal(np.asarray(hidden_default)[real], np.asarray(hidden)[real])
    row_of = packing.first_fit(LENGTHS, 4, 16)
    for i, ex in enumerate(examples):
        r = row_of[i]
        # First-fit numbers a row's segments in placement order.
        where = np.asarray(batch["segment_ids"][r]) == 1 + row_of[:i].count(r)
        alone = transformer.jit_logits(params, jnp.asarray(ex["tokens"])[None], CFG)[0]
        np.testing.assert_allclose(logits[r][where], alone, atol=1e-5, rtol=0)


def test_packed_loss_and_gradient_equal_unpacked(params):
    examples = _examples(np.random.default_rng(1))
    plain, packed = _unpacked(examples, max_len=9), _packed(examples, num_rows=4, max_len=16)
    loss = functools.partial(sft.loss_fn, cfg=CFG, chunk_size=5)
    (num, den), metrics = loss(params, plain)
    (p_num, p_den), p_metrics = loss(params, packed)
    assert float(p_den) == float(den) == sum(int(ex["loss_mask"].sum()) for ex in examples)
    np.testing.assert_allclose(p_num, num, rtol=1e-5)
    assert float(p_metrics["target_tokens"][0]) == float(metrics["target_tokens"][0])

    def mean_loss(p, batch):
        (n, d), _ = loss(p, batch)
        return n / d

    grads = jax.grad(mean_loss)(params, plain)
    p_grads = jax.grad(mean_loss)(params, packed)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p_grads, grads
    )


@pytest.mark.parametrize("k", [1, 2, 4])
def test_packed_microbatched_step_equals_unpacked_step(params, k):
    # Plain SGD, so the parameter updates are the gradients themselves.
    optimizer = optax.sgd(1.0)
    examples = _examples(np.random.default_rng(2))
    loss = functools.partial(sft.loss_fn, cfg=CFG)
    state = common.new_state(params, optimizer, jax.random.PRNGKey(2))
    ref_state, ref = jax.jit(common.make_update(loss, optimizer))(state, _unpacked(examples, 9))
    update = jax.jit(common.make_update(loss, optimizer, num_microbatches=k))
    new_state, metrics = update(state, _packed(examples, num_rows=4, max_len=16))
    np.testing.assert_allclose(metrics["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], ref["grad_norm"], rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        new_state["params"],
        ref_state["params"],
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = sft_arith.get_config("runlocal")
    config.data.name = DATA
    config.data.data_dir = str(tmp_path_factory.mktemp("data"))
    return config


def _trainer_steps(config, steps=2):
    trainer = sft.make_trainer(config, parallel.make_mesh(config.mesh))
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches = trainer.batches(0)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.step(state, next(batches))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["params"])


def test_packed_trainer_takes_the_unpacked_steps(config):
    losses, params = _trainer_steps(config)
    packed = config.copy_and_resolve_references()
    # 16 sums of at most 11 tokens: first-fit puts at least 4 in every row of 48.
    packed.data.update(pack=True, max_len=48, pack_rows=8)
    p_losses, p_params = _trainer_steps(packed)
    np.testing.assert_allclose(p_losses, losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p_params, params
    )


def test_pack_needs_pack_rows(config):
    packed = config.copy_and_resolve_references()
    packed.data.pack = True
    with pytest.raises(ValueError, match="data.pack=True needs data.pack_rows"):
        sft.make_trainer(packed, parallel.make_mesh(packed.mesh))
