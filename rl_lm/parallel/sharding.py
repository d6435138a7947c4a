"""Shardings of parameters, train states and batches, and host <-> device transfer.

Parameters get their PartitionSpecs from the model's logical axis names and the
config's rules (`rl_lm.models.transformer.partition_specs`); batches are split
along their leading dimension over `BATCH_AXES`. In a multi-process run every
process holds one contiguous block of the global batch's rows, which is exactly
what `rl_lm.data` pipelines yield with (process_index, process_count).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rl_lm.parallel.mesh import BATCH_AXES


def named(mesh: Mesh, specs: Any) -> Any:
    """Maps a tree of PartitionSpecs to NamedShardings on `mesh`."""
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `BATCH_AXES`, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    """The number of batch shards; every global batch size must be a multiple."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def process_rows(mesh: Mesh, global_batch: int) -> tuple[int, int]:
    """The [start, stop) rows of a global batch that this process's devices hold.

    Raises:
      ValueError: if they are not block `jax.process_index()` of
        `jax.process_count()` equal blocks, the layout the data pipelines assume.
    """
    if global_batch % batch_divisor(mesh):
        raise ValueError(
            f"global batch {global_batch} is not a multiple of the {batch_divisor(mesh)} "
            f"batch shards of the mesh ({BATCH_AXES} axes); change the batch size or mesh."
        )
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    rows = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
    start, stop = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    per_process = global_batch // jax.process_count()
    expected = (jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    if covered != stop - start or (start, stop) != expected:
        raise ValueError(
            f"process {jax.process_index()} holds batch rows {rows} but the data pipeline "
            f"gives it rows {expected}; lay the mesh out so that each process's devices "
            "are contiguous along the batch axes (e.g. keep mesh.tensor within a host)."
        )
    return start, stop


def shard_batch(local: Mapping[str, Any], mesh: Mesh, global_batch: int) -> dict[str, jax.Array]:
    """Builds global batch arrays from this process's rows.

    Args:
      local: numeric arrays with leading dimension global_batch / process_count
        (this process's block of rows, as `rl_lm.data` pipelines yield them).
      mesh: the mesh.
      global_batch: the global batch size B.

    Returns:
      The global arrays [B, ...], sharded by `batch_sharding(mesh)`.
    """
    start, stop = process_rows(mesh, global_batch)
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(
                f"batch field {key!r} holds python objects (e.g. strings); keep it on "
                "the host and pass only numeric arrays to shard_batch."
            )
        if array.shape[:1] != (stop - start,):
            raise ValueError(
                f"batch field {key!r} has shape {array.shape}; this process should hold "
                f"{stop - start} rows of the global batch of {global_batch}."
            )
        out[key] = jax.make_array_from_process_local_data(
            sharding, array, (global_batch, *array.shape[1:])
        )
    return out


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-process) global array, on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON value `value`, in process order, on every process.

    For small host values that differ by process (e.g. what each process's own
    environments returned). A collective (two allgathers) when multi-process:
    every process must call it, in the same order. [value] in a single process.
    """
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8).astype(np.int32)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    padded = np.zeros(max(int(sizes.max()), 1), np.int32)
    padded[: len(data)] = data
    every = np.asarray(multihost_utils.process_allgather(padded))
    return [
        json.loads(every[i, :size].astype(np.uint8).tobytes().decode())
        for i, size in enumerate(sizes)
    ]
