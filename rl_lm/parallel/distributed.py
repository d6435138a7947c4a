"""Multi-process (multi-host) initialization of JAX.

One process per host (or, for tests, several processes on one machine, each
with its own simulated CPU devices). Processes find each other through a
coordinator address; on CPU they exchange collectives over gloo.
"""

from __future__ import annotations

import os

import jax
from absl import logging

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` when this is one process of several.

    Arguments left as None fall back to the environment variables `ENV_VARS`.
    Nothing happens when no coordinator is given (a single-process run).

    Args:
      coordinator_address: "host:port" of process 0.
      num_processes: the number of processes.
      process_id: this process's index in [0, num_processes).

    Returns:
      Whether jax.distributed was initialized.

    Raises:
      ValueError: when some but not all of the three are set.
    """
    env = os.environ
    address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else env.get("JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else env.get("JAX_PROCESS_ID")
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"multi-process launch needs coordinator_address, num_processes and process_id; "
            f"{missing} not set (flags --{missing[0]}=... or env {ENV_VARS})."
        )
    # CPU backends need an explicit cross-process collectives implementation.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=address, num_processes=int(count), process_id=int(index)
    )
    logging.info(
        "jax.distributed: process %d of %d (coordinator %s)",
        jax.process_index(),
        jax.process_count(),
        address,
    )
    return True


def log_devices() -> None:
    """Logs this process's index and its local and global device counts."""
    logging.info(
        "process %d/%d: %d local devices, %d global devices (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
