"""Meshes, shardings, host-to-device batch transfer and multi-host initialization."""

from rl_lm.parallel.distributed import initialize, log_devices
from rl_lm.parallel.mesh import AXES, BATCH_AXES, describe, make_mesh, mesh_shape
from rl_lm.parallel.sharding import (
    batch_divisor,
    batch_sharding,
    named,
    process_rows,
    replicated,
    shard_batch,
    to_host,
)

__all__ = [
    "AXES",
    "BATCH_AXES",
    "batch_divisor",
    "batch_sharding",
    "describe",
    "initialize",
    "log_devices",
    "make_mesh",
    "mesh_shape",
    "named",
    "process_rows",
    "replicated",
    "shard_batch",
    "to_host",
]
