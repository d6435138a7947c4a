"""Device meshes with the axes (data, fsdp, tensor).

`data` replicates parameters and splits the batch; `fsdp` splits both the batch
and the parameters (ZeRO-3 style, gathered for each use); `tensor` splits the
inner dimensions of matmuls (heads, MLP, vocabulary). Which parameter dimension
goes to which axis is decided by the logical axis rules of the config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over both data-parallel axes.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves a {data, fsdp, tensor} size mapping against a device count.

    Args:
      axes: size of each axis in `AXES`; at most one may be -1, meaning "all the
        devices the other axes leave".
      num_devices: the number of devices the mesh must cover exactly.

    Returns:
      The sizes in `AXES` order.

    Raises:
      ValueError: naming the offending axis or the mismatched product.
    """
    unknown = sorted(set(axes) - set(AXES))
    missing = [a for a in AXES if a not in axes]
    if unknown or missing:
        raise ValueError(
            f"mesh config must have exactly the axes {AXES}; unknown {unknown}, missing "
            f"{missing}. Set e.g. mesh.data=-1, mesh.fsdp=1, mesh.tensor=1."
        )
    sizes = [int(axes[a]) for a in AXES]
    bad = [f"{a}={s}" for a, s in zip(AXES, sizes, strict=True) if s == 0 or s < -1]
    if bad:
        raise ValueError(f"mesh axis sizes must be positive or -1, got {', '.join(bad)}.")
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1, got {[AXES[i] for i in free]}; fix all but one."
        )
    fixed = math.prod(s for s in sizes if s != -1)
    described = " x ".join(f"{a}={s}" for a, s in zip(AXES, sizes, strict=True))
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {described}: the fixed axes ({fixed} devices) do not divide the "
                f"{num_devices} available devices; choose sizes whose product divides it."
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {described} covers {fixed} devices but {num_devices} are available; "
            "make the product equal the device count or set one axis to -1."
        )
    return tuple(sizes)


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (global) devices with named axes `AXES`.

    `jax.make_mesh` orders the devices (topology-aware on TPU; `jax.devices()`
    order, process-major, elsewhere), so the batch rows a process holds form one
    contiguous block of the global batch: the block `rl_lm.data` pipelines give
    process p (`parallel.shard_batch` checks this).

    Args:
      axes: axis sizes, see `mesh_shape`.
      devices: defaults to `jax.devices()`.

    Returns:
      A `jax.sharding.Mesh` with auto (GSPMD) axis types.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(axes, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def describe(mesh: Mesh) -> str:
    """One line for logs, e.g. "data=2 x fsdp=4 x tensor=1 (8 devices, cpu)"."""
    sizes = " x ".join(f"{a}={mesh.shape[a]}" for a in mesh.axis_names)
    return f"{sizes} ({mesh.devices.size} devices, {mesh.devices.flat[0].platform})"
