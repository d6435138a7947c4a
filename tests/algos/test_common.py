"""Shared algorithm plumbing: schedule, decay mask, state specs, microbatching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rl_lm import parallel
from rl_lm.algos import common
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import abstract_params, partition_specs

OPTIM = dict(
    lr=1.0,
    warmup_steps=4,
    schedule="cosine",
    end_lr_ratio=0.1,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.1,
    grad_clip=1.0,
)


def test_schedule_by_hand():
    lr = common.learning_rate_schedule(OPTIM, num_steps=14)
    # Warmup: (step + 1) / 4; then cosine from 1 at step 4 to 0.1 at step 14.
    np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 3)], [0.25, 0.5, 1.0])
    np.testing.assert_allclose(float(lr(9)), 0.1 + 0.9 * 0.5, rtol=1e-6)  # halfway
    np.testing.assert_allclose([float(lr(14)), float(lr(100))], [0.1, 0.1], rtol=1e-6)
    linear = common.learning_rate_schedule({**OPTIM, "schedule": "linear"}, num_steps=14)
    np.testing.assert_allclose(float(linear(9)), 0.55, rtol=1e-6)
    with pytest.raises(ValueError, match="optim.schedule='cosin'"):
        common.learning_rate_schedule({**OPTIM, "schedule": "cosin"}, 10)


def test_decay_mask_spares_norms_and_biases():
    params = abstract_params(get_model_config("tiny", qkv_bias=True))
    mask = common.decay_mask(params)
    assert mask["embed"] and mask["lm_head"] and mask["layers"]["wq"]
    assert not mask["final_norm"] and not mask["layers"]["attn_norm"]
    assert not mask["layers"]["bq"]


def test_state_specs_give_moments_their_param_specs():
    cfg = get_model_config("tiny")
    optimizer = common.make_optimizer(OPTIM, 10)
    rules = (("embed", "fsdp"), ("mlp", "tensor"))
    specs = partition_specs(cfg, rules)

    def init(rng):
        return common.new_state(jax.tree.map(jnp.zeros_like, abstract_params(cfg)), optimizer, rng)

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    state_specs = common.state_specs(abstract, specs, optimizer)
    adam = state_specs["opt_state"][1][0]
    assert adam.mu["layers"]["w_up"] == P(None, "fsdp", "tensor")
    assert adam.nu["embed"] == P(None, "fsdp")
    assert adam.count == P()
    assert state_specs["step"] == P() and state_specs["rng"] == P()


def test_split_microbatches_is_strided():
    batch = {"x": np.arange(8)[:, None] * np.ones((1, 2), int)}
    micro = common.split_microbatches(batch, 4)
    assert micro["x"].shape == (4, 2, 2)
    np.testing.assert_array_equal(micro["x"][:, :, 0], [[0, 4], [1, 5], [2, 6], [3, 7]])
    with pytest.raises(ValueError, match="multiple of train.num_microbatches"):
        common.split_microbatches(batch, 3)


def test_check_batch_size_names_the_field():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    common.check_batch_size(16, mesh, 4, "data.batch_size")
    with pytest.raises(ValueError, match=r"data.batch_size=12 must be a multiple .* \(= 16\)"):
        common.check_batch_size(12, mesh, 4, "data.batch_size")


def test_ratio_is_zero_for_empty_denominators():
    np.testing.assert_allclose(common.ratio(jnp.array([3.0, 1.0]), jnp.array([2.0, 0.0])), [1.5, 0])
