"""Batch placement from process-local rows, parameter shardings, host transfer."""

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rl_lm import parallel
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import partition_specs

MESH_AXES = {"data": 2, "fsdp": 2, "tensor": 2}


def test_shard_batch_places_rows_over_batch_axes():
    mesh = parallel.make_mesh(MESH_AXES)
    tokens = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    out = parallel.shard_batch({"tokens": tokens}, mesh, 8)
    assert out["tokens"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(parallel.to_host(out["tokens"]), tokens)
    # 4 batch shards of 2 rows each, replicated over the tensor axis.
    for shard in out["tokens"].addressable_shards:
        assert shard.data.shape == (2, 3)
    assert parallel.process_rows(mesh, 8) == (0, 8)


def test_shard_batch_rejects_strings_and_wrong_row_counts():
    mesh = parallel.make_mesh(MESH_AXES)
    with pytest.raises(TypeError, match="'answer' holds python objects"):
        parallel.shard_batch({"answer": np.array(["1", "2"] * 4, dtype=object)}, mesh, 8)
    with pytest.raises(ValueError, match="should hold 8 rows"):
        parallel.shard_batch({"tokens": np.zeros((4, 3), np.int32)}, mesh, 8)
    with pytest.raises(ValueError, match="not a multiple of the 4 batch shards"):
        parallel.shard_batch({"tokens": np.zeros((6, 3), np.int32)}, mesh, 6)


def test_param_shardings_follow_the_rules():
    mesh = parallel.make_mesh(MESH_AXES)
    rules = (("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"))
    shardings = parallel.named(mesh, partition_specs(get_model_config("tiny"), rules))
    assert shardings["embed"].spec == P("tensor", "fsdp")
    assert shardings["layers"]["wq"].spec == P(None, "fsdp", "tensor", None)
    assert shardings["layers"]["attn_norm"].spec == P(None, None)
    assert parallel.batch_divisor(mesh) == 4
