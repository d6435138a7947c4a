"""Reading the checkpoints of a finished (or live) rl_lm run, without writing to it.

The writer is `rl_lm.train.checkpoint.Checkpointer`; these readers live here,
below the algorithms, because an algorithm may start from another run's
parameters (a reward model, a PRM) and must not depend on the training loop.
"""

from __future__ import annotations

import logging as pylogging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def reader(directory: str | os.PathLike) -> ocp.CheckpointManager:
    """A manager that never writes, so it is safe on the directory of a live run."""
    # Orbax warns at every read-only open; for a reader that is the point, not news.
    quiet = lambda record: not str(record.msg).startswith("Given directory is read only")
    absl_logger = pylogging.getLogger("absl")
    absl_logger.addFilter(quiet)
    try:
        return ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                read_only=True, save_interval_steps=0, create=False
            ),
            item_handlers=ocp.StandardCheckpointHandler(),
        )
    finally:
        absl_logger.removeFilter(quiet)


def saved_steps(directory: str | os.PathLike) -> list[int]:
    """The finished checkpoints' steps in `directory`, oldest first ([] when none).

    Unlike `Checkpointer.steps`, this creates and cleans up nothing.
    """
    if not Path(directory).is_dir():
        return []
    with reader(directory) as manager:
        return sorted(manager.all_steps())


def load_state(
    directory: str | os.PathLike, step: int | None = None, device: jax.Device | None = None
) -> tuple[Any, int]:
    """Reads a saved state onto one device, without knowing its config.

    For notebooks and tests: containers come back as dicts/lists (optimizer
    states lose their named-tuple types).

    Args:
      directory: a checkpoint directory (WORKDIR/checkpoints).
      step: the step to read; the latest when None.
      device: where the arrays go; this process's first device when None (in a
        multi-process job `jax.devices()[0]` belongs to process 0 alone).

    Returns:
      (state, step).
    """
    with reader(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}.")
        metadata = manager.item_metadata(step)
        device = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
        )
        state = manager.restore(step, args=ocp.args.StandardRestore(target))
    return state, step
