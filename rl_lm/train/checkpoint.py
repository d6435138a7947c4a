"""Orbax checkpoints of train states: async saves, keep-last-K, safe restore.

A checkpoint directory holds one subdirectory per saved step. Orbax writes each
step into a temporary directory and renames it when complete, so a save killed
midway never looks like a checkpoint. A finished checkpoint whose files were
later truncated or deleted fails to restore; `Checkpointer.restore_latest` then
falls back to the previous step and moves the broken one aside (into
`<directory>_corrupt/`), never deleting it.

A save that fails (a full or read-only disk) raises `RunError` in one line naming
the path and the free space, after removing the temporary directory it left; the
earlier checkpoints are untouched. An async save's failure surfaces at the next
`check`, `save` or `wait`.

The frozen base params of a LoRA run (the state's `lora.BASE` entry, see
`rl_lm.models.lora`) are written once, beside the step directories in
`<directory>_base/`, before the first step that needs them; each step holds only
the adapters, the optimizer state and the counters, and a restore puts the base
back into the state.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, NoReturn

import jax
import orbax.checkpoint as ocp
from absl import logging

from rl_lm.models import lora
from rl_lm.models.saved import load_state, saved_steps
from rl_lm.train.report import RunError, announce

# The read-only side, for callers of this module (analysis, tests, warm starts).
__all__ = ["Checkpointer", "base_directory", "load_base", "load_state", "saved_steps"]


def base_directory(directory: str | os.PathLike) -> Path:
    """Where the checkpoints in `directory` keep a LoRA run's frozen base params."""
    directory = Path(directory).absolute()
    return directory.with_name(directory.name + "_base")


def load_base(directory: str | os.PathLike, device: jax.Device | None = None) -> Any:
    """A LoRA run's frozen base params (`directory`: its checkpoints/), on one device.

    Raises:
      FileNotFoundError: when the run saved no base (it is not a LoRA run).
    """
    path = base_directory(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: the run in {directory} is not a LoRA run.")
    sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
    with ocp.StandardCheckpointer() as reader:
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
            reader.metadata(path).item_metadata,
        )
        return reader.restore(path, target)


def _split_base(state: Any) -> tuple[Any, Any]:
    if not isinstance(state, dict) or lora.BASE not in state:
        return state, None
    return {k: v for k, v in state.items() if k != lora.BASE}, state[lora.BASE]


class Checkpointer:
    """Saves and restores train-state pytrees under one directory.

    Args:
      directory: where step subdirectories live (created by the first save).
      keep: keep only the `keep` most recent steps.
      async_save: write in a background thread (the device-to-host copy is
        still taken before `save` returns, so the caller may donate the state).
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"train.keep={keep} must be >= 1.")
        self.directory = Path(directory).absolute()
        self._keep = keep
        self._async = async_save
        self._pending: int | None = None  # The step of a save that may still be running.
        self._failed_steps: set[int] = set()  # Steps whose save failed (their tmp dirs go).
        self._base_saved = base_directory(self.directory).is_dir()
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        # create=False: a run that fails before its first save leaves no empty directory.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep,
            enable_async_checkpointing=self._async,
            cleanup_tmp_directories=True,
            create=False,
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, *, wait: bool = False) -> None:
        """Saves `state` as `step` (replacing nothing: each step is saved once).

        Raises:
          RunError: when this save, or the previous async one, failed.
        """
        if step in self._manager.all_steps():
            return
        self.wait()  # A failure of the previous save is reported as that step's.
        self._pending = step
        state, base = _split_base(state)
        try:
            if base is not None and not self._base_saved:
                with ocp.StandardCheckpointer() as writer:
                    writer.save(base_directory(self.directory), base)
                    writer.wait_until_finished()
                self._base_saved = True
            self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        except Exception as e:  # noqa: BLE001 -- whatever the storage raised, the save failed.
            self._failed(e)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Blocks until pending async saves are on disk.

        Raises:
          RunError: when one of them failed.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._failed(e)
        self._pending = None

    def check(self) -> None:
        """Raises RunError if an async save has failed by now; cheap enough for every step."""
        if self._pending is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def _failed(self, error: Exception) -> NoReturn:
        step, self._pending = self._pending, None
        # Closing lets the writes still in flight settle; reopening refreshes the steps
        # (orbax forgot those the failed save was to delete).
        self._manager.close()
        self._failed_steps.add(step)
        self._sweep()
        self._manager = self._open()
        existing = next(p for p in (self.directory, *self.directory.parents) if p.exists())
        try:
            free = f"{shutil.disk_usage(existing).free / 2**30:.2f} GiB free"
        except OSError:
            free = "free space unknown"
        reason = (str(error).splitlines() or [""])[0][:300]
        kept = self._manager.all_steps()
        resume = f"resumes from step {max(kept)}" if kept else "starts over (nothing was saved)"
        raise RunError(
            f"Saving checkpoint step {step} to {self.directory / str(step)} failed "
            f"({type(error).__name__}: {reason}); {existing}: {free}. Training stopped and "
            f"the partial save was removed; rerun the same command once the disk has room "
            f"and is writable: the run {resume}."
        ) from error

    def _sweep(self) -> None:
        """Removes the temporary directories of failed saves (process 0).

        Writes the failed save had in flight may still land for a moment after
        the manager closed, so a directory is gone only once several looks in a
        row (over a few tenths of a second, at most ~5 s) find none.
        """
        if jax.process_index() != 0 or not self._failed_steps:
            return
        suffix = ocp.path.step.TMP_DIR_SUFFIX
        clean = 0
        for _ in range(50):
            tmps = [t for s in self._failed_steps for t in self.directory.glob(f"{s}{suffix}*")]
            for tmp in tmps:
                shutil.rmtree(tmp, ignore_errors=True)
            clean = 0 if tmps else clean + 1
            if clean == 3:
                return
            time.sleep(0.1)

    def close(self) -> None:
        """Waits for pending saves (raising RunError if one failed), then closes."""
        try:
            self.wait()
        finally:
            self._manager.close()
            self._sweep()

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restores `step` into the layout of `abstract_state` (ShapeDtypeStructs
        with shardings, e.g. `Trainer.abstract_state`)."""
        abstract_state, abstract_base = _split_base(abstract_state)
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        if abstract_base is not None:
            path = base_directory(self.directory)
            if not path.is_dir():
                raise FileNotFoundError(f"{path} (the LoRA run's frozen base params) is missing.")
            with ocp.StandardCheckpointer() as reader:
                state[lora.BASE] = reader.restore(path, abstract_base)
        return state

    def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | tuple[None, None]:
        """The most recent checkpoint that restores, and its step.

        A checkpoint that fails to restore is skipped with a warning; once an
        older one restores, the failed newer ones are moved aside so the run can
        save those steps again.

        Returns:
          (state, step), or (None, None) when there is no checkpoint.

        Raises:
          RuntimeError: when checkpoints exist but none restores (e.g. the model
            config changed); nothing is moved then.
        """
        failures = []
        for step in reversed(self.steps()):
            try:
                state = self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 -- any read error means "unusable".
                logging.warning(
                    "Checkpoint step %d in %s does not restore (%s: %s); trying the previous one.",
                    step,
                    self.directory,
                    type(e).__name__,
                    str(e)[:500],
                )
                failures.append((step, e))
                continue
            self._move_aside([s for s, _ in failures])
            return state, step
        if failures:
            details = "; ".join(
                f"step {s}: {type(e).__name__}: {str(e)[:300]}" for s, e in failures
            )
            raise RuntimeError(
                f"No checkpoint in {self.directory} restores into this run's state ({details}). "
                "If the model or optimizer config changed, use a new workdir; if the files are "
                "damaged, move the step directories away to start from scratch."
            )
        return None, None

    def _move_aside(self, steps: list[int]) -> None:
        if not steps:
            return
        self._manager.close()
        if jax.process_index() == 0:
            target_root = self.directory.with_name(self.directory.name + "_corrupt")
            target_root.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target = target_root / f"{step}.{int(time.time())}"
                shutil.move(str(self.directory / str(step)), str(target))
                announce(
                    f"Moved unreadable checkpoint step {step} aside to {target}.", logging.WARNING
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("checkpoint_move_aside")
        self._manager = self._open()
