"""Multi-process (multi-host) initialization of JAX.

One process per host (or, for tests, several processes on one machine, each
with its own simulated CPU devices). Processes find each other through a
coordinator address; on CPU they exchange collectives over gloo.

Under SLURM (`srun`) nothing needs to be given: jax's own SLURM detector
(`jax.distributed.initialize(cluster_detection_method="slurm")`) takes the
process count and index from SLURM_NTASKS / SLURM_PROCID and the coordinator
from the first host of SLURM_STEP_NODELIST, on a port derived from
SLURM_JOB_ID (or JAX_COORDINATOR_PORT when set). With RL_LM_DISTRIBUTED=auto
(what launch/tpu_pod.sh and launch/xpk.sh set) `jax.distributed.initialize()`
detects the cluster itself: every worker of a TPU VM pod slice, a GKE TPU
workload, SLURM or Open MPI.
"""

from __future__ import annotations

import os

import jax
from absl import logging

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# What jax's SLURM detector reads; srun sets all of them in every task it starts.
AUTO_VAR = "RL_LM_DISTRIBUTED"  # "auto": let jax detect the cluster.
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` when this is one process of several.

    Arguments left as None fall back to the environment variables `ENV_VARS`.
    When none of the three is given either way, RL_LM_DISTRIBUTED=auto hands
    the detection to jax (TPU pods, GKE), and a task of a multi-task `srun`
    step (`SLURM_VARS` set, SLURM_NTASKS > 1) initializes from SLURM; otherwise
    nothing happens (a single-process run).

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
        if env.get(AUTO_VAR, "").lower() == "auto":
            jax.distributed.initialize()
            logging.info(
                "jax.distributed (detected): process %d of %d",
                jax.process_index(),
                jax.process_count(),
            )
            return True
        return _initialize_from_slurm()
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


def slurm_tasks() -> tuple[int, int] | None:
    """(tasks in the step, tasks on this node) of an `srun` task, else None.

    None also for a job's batch script itself (no SLURM_STEP_NODELIST): it is
    one process even when the job has several tasks, and waiting for the others
    would hang.
    """
    env = os.environ
    if not all(v in env for v in SLURM_VARS):
        if "SLURM_JOB_ID" in env:
            logging.info("SLURM job without an srun step: a single-process run.")
        return None
    tasks = int(env["SLURM_NTASKS"])
    nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")))
    return tasks, -(-tasks // max(nodes, 1))


def _initialize_from_slurm() -> bool:
    """jax's SLURM detector; every device of a node is visible when it runs one task.

    jax restricts each task to GPU number SLURM_LOCALID (one process per GPU);
    with one task per node that would hide all GPUs but the first, so then an
    empty `local_device_ids` (restrict nothing) is passed instead.
    """
    tasks = slurm_tasks()
    if tasks is None or tasks[0] == 1:
        return False
    total, per_node = tasks
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        cluster_detection_method="slurm", local_device_ids=[] if per_node == 1 else None
    )
    logging.info(
        "jax.distributed from SLURM job %s: process %d of %d (%d per node, nodes %s)",
        os.environ["SLURM_JOB_ID"],
        jax.process_index(),
        jax.process_count(),
        per_node,
        os.environ["SLURM_STEP_NODELIST"],
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
