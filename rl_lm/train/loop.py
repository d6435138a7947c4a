"""The generic training loop: any algorithm's Trainer, resumable and preemptible.

`train(config, workdir)` builds the mesh and the Trainer of `config.algo`,
restores the latest checkpoint of WORKDIR (or initializes), then runs steps
until `config.train.num_steps`. Everything a resumed run needs is in the
checkpoint (params, optimizer, step, rng) or derived from the step (the data
position), so a run restarted after a crash continues exactly where its last
checkpoint left it. SIGTERM makes the loop save at the next step boundary and
return. A trainer with `run_chunk` and `chunk_steps` (GRPO on device,
`rl_lm.algos.grpo_device`) runs up to chunk_steps steps per call, each chunk
ending at the next step that evaluates or saves; its per-step metrics are
logged as any trainer's.

WORKDIR layout: config.json, checkpoints/, metrics.jsonl, tb/, curves.png.
"""

from __future__ import annotations

import json
import logging as pylogging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from rl_lm import parallel
from rl_lm.algos import common
from rl_lm.train import preflight, registry, warm_start
from rl_lm.train.checkpoint import Checkpointer
from rl_lm.train.divergence import Watch
from rl_lm.train.metrics import MetricsWriter, Progress, read_metrics
from rl_lm.train.plotting import plot_curves
from rl_lm.train.report import ConfigError, announce

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
PLOT_FILE = "curves.png"


def quiet_library_logs(packages: tuple[str, ...] = ("orbax",)) -> None:
    """Drops the INFO logs of chatty libraries (orbax logs every file it writes).

    They log through absl like us, so records are told apart by source file.
    Their warnings and errors still show, one line each, without the tracebacks
    of their background threads: an exception that matters reaches our code,
    which reports it (a failed save is one line from `Checkpointer`).
    """
    dirs = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def keep(record) -> bool:
        if not any(d in record.pathname for d in dirs):
            return True
        record.exc_info = record.exc_text = None
        return record.levelno >= pylogging.WARNING

    logging.get_absl_handler().addFilter(keep)
    previous = sys.unraisablehook

    def unraisable(info) -> None:
        # After a failed save orbax abandons its in-flight writes; each finishing later
        # finds its event loop closed, which Python would print as one more traceback.
        closed = isinstance(info.exc_value, RuntimeError) and "loop is closed" in str(
            info.exc_value
        )
        if not closed:
            previous(info)

    sys.unraisablehook = unraisable
    # Those abandoned writes also leave coroutines that Python warns about at exit.
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)


def compare_config(config: Any, workdir: Path) -> None:
    """Checks `config` equals the one saved in WORKDIR/config.json, if any (writes nothing).

    Raises:
      ConfigError: naming the differing keys when WORKDIR holds another run's config.
    """
    path = workdir / CONFIG_FILE
    if not path.exists():
        return
    saved = preflight.flatten(json.loads(path.read_text()))
    now = preflight.flatten(json.loads(config.to_json_best_effort()))
    diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:10])
        raise ConfigError(
            f"{workdir} holds a run with a different config ({shown}). Resuming it with "
            "another config would mix two experiments: use a new --workdir, or delete "
            f"{path} to accept the new config deliberately."
        )


def check_config(config: Any, workdir: Path) -> None:
    """Saves the config as WORKDIR/config.json, or checks it equals the saved one.

    Raises:
      ConfigError: naming the differing keys when WORKDIR holds another run's config.
    """
    compare_config(config, workdir)
    path = workdir / CONFIG_FILE
    if not path.exists() and jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True) + "\n"
        )


class Preemption:
    """Context manager turning SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self._flag = False
        self._previous = None

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        else:
            logging.warning("Not on the main thread: SIGTERM will not save a checkpoint.")
        return self

    def _handle(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary.")
        self._flag = True

    def requested(self) -> bool:
        """Whether any process was asked to stop (a collective when multi-process)."""
        if jax.process_count() == 1:
            return self._flag
        flags = multihost_utils.process_allgather(np.int32(self._flag))
        return bool(np.max(flags))

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def train(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Runs (or resumes) the experiment `config` in `workdir`.

    Returns:
      {"step": the last step reached, "preempted": bool, "eval/...": the latest
      evaluation metrics (the final ones unless preempted)}.

    Raises:
      RunError: for a config that cannot run (here), a diverging run (stopped
        before it saves a non-finite state) or a failed save; the message says which.
    """
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0
    tc = config.train
    num_steps = tc.num_steps
    trainer, ckpt, state, start = _start(config, workdir)
    writer = MetricsWriter(workdir, start_step=start, enabled=is_main)
    progress = Progress(num_steps, start, enabled=is_main)
    watch = Watch(config.optim, saved=lambda: _latest(ckpt))
    result: dict[str, Any] = {"step": start, "preempted": False}
    try:
        if start == 0 and tc.get("eval_at_start", False):
            # The starting point of the curve (e.g. the warm start's accuracy), as step 0;
            # a restart before the first checkpoint already has it.
            logged = [r for r in read_metrics(workdir) if r["step"] == 0]
            evals = logged[0] if logged else {}
            if not logged:
                evals = {f"eval/{k}": v for k, v in trainer.evaluate(state).items()}
                writer.write(0, evals)
            result["start"] = {k: v for k, v in evals.items() if k.startswith("eval/")}
        tokens, clock = 0, time.perf_counter()
        with Preemption() as preemption:
            batches = trainer.batches(start)
            step = start
            while step < num_steps:
                # A chunked trainer runs several steps per call, up to the next
                # evaluation or checkpoint; every other trainer one.
                count = _chunk_length(trainer, step, tc)
                chunk = [next(batches) for _ in range(count)]
                if count == 1 and getattr(trainer, "run_chunk", None) is None:
                    state, metrics = trainer.step(state, chunk[0])
                    rows = [metrics]
                else:
                    state, rows = trainer.run_chunk(state, chunk)
                for i, metrics in enumerate(rows):
                    step += 1
                    watch.push(step, metrics)  # Checks the previous step's, computed by now.
                    ckpt.check()
                    tokens += int(metrics.pop("tokens", 0))
                    row = {}
                    if _due(step, tc.log_every, num_steps):
                        row = common.host_scalars(metrics)
                        now = time.perf_counter()
                        row["tokens_per_s"] = tokens / max(now - clock, 1e-9)
                        tokens, clock = 0, now
                    if i == count - 1 and _due(step, tc.eval_every, num_steps):
                        watch.flush()
                        evals = {f"eval/{k}": v for k, v in trainer.evaluate(state).items()}
                        row.update(evals)
                        result.update(evals)
                        clock = time.perf_counter()  # Evaluation time is not throughput.
                    if row:
                        writer.write(step, row)
                    progress.update(row)
                result["step"] = step
                if preemption.requested():
                    watch.check_state(step, state)
                    ckpt.save(step, state, wait=True)
                    announce(f"Saved step {step} after SIGTERM; exiting.")
                    result["preempted"] = True
                    break
                if _due(step, tc.ckpt_every, num_steps):
                    watch.check_state(step, state)
                    ckpt.save(step, state)
            watch.flush()
        ckpt.wait()
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    if not result["preempted"]:
        if start == num_steps:
            announce(f"{workdir} already finished {num_steps} steps; evaluating only.")
            result.update({f"eval/{k}": v for k, v in trainer.evaluate(state).items()})
        _finish(workdir, result, is_main)
    return result


def _start(config: Any, workdir: Path) -> tuple[common.Trainer, Checkpointer, Any, int]:
    """Builds the trainer and restores (or initializes) its state.

    WORKDIR/config.json is written only once that succeeded, and the checkpoint
    directory only by the first save, so a start that fails (a length or shape
    mismatch, a vocabulary the model lacks, ...) leaves WORKDIR as it found it; a
    warm-start stage that ran keeps its own directory, WORKDIR/warm_start.

    Returns:
      (trainer, checkpointer, state, its step).
    """
    preflight.check_init(config)
    preflight.check_lengths(config)
    compare_config(config, workdir)
    mesh = parallel.make_mesh(config.mesh)
    logging.info("mesh: %s", parallel.describe(mesh))
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, keep=config.train.keep)
    try:
        init_from = warm_start.initial_params(
            config, workdir, resuming=bool(ckpt.steps()), run_stage=train
        )
        trainer = _make_trainer(config, mesh, init_from)
        state, start = ckpt.restore_latest(trainer.abstract_state)
        if state is None:
            state, start = trainer.init_state(jax.random.PRNGKey(config.seed)), 0
    except BaseException:
        ckpt.close()
        raise
    check_config(config, workdir)
    if start == 0:
        announce(f"Started a new run in {workdir}.")
    else:
        announce(f"Resumed from step {start} of {ckpt.directory}.")
    return trainer, ckpt, state, start


def _make_trainer(config: Any, mesh: Any, init_from: Any) -> common.Trainer:
    """`registry.make_trainer`, its ValueErrors (a contradictory config) as one-line ConfigErrors.

    The algorithms validate their sections there and raise ValueError naming the
    fields; any other exception is a bug, and keeps its traceback.
    """
    try:
        return registry.make_trainer(config, mesh, init_from)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"config.algo={config.algo!r} cannot start: {e}") from e


def _chunk_length(trainer: common.Trainer, step: int, tc: Any) -> int:
    """Steps the next call runs after `step`: 1, or a chunked trainer's `chunk_steps`
    cut at the next step that evaluates or saves (which need the state)."""
    end = min(tc.num_steps, step + max(int(getattr(trainer, "chunk_steps", 1)), 1))
    for every in (tc.eval_every, tc.ckpt_every):
        if every > 0:
            end = min(end, (step // every + 1) * every)
    return end - step


def _latest(ckpt: Checkpointer) -> str:
    steps = ckpt.steps()
    if not steps:
        return "no checkpoint had been saved yet"
    return f"the latest checkpoint, step {steps[-1]} in {ckpt.directory}, is untouched"


def _finish(workdir: Path, result: dict[str, Any], is_main: bool) -> None:
    """Plots the curves and reports the held-out figures (process 0)."""
    if not is_main:
        return
    plot = workdir / PLOT_FILE
    plot_curves(read_metrics(workdir), plot, title=str(workdir))
    start = result.get("start", {})
    figures = ", ".join(
        f"{k[5:]} {v:.4g}" + (f" (step 0: {start[k]:.4g})" if start.get(k, v) != v else "")
        for k, v in result.items()
        if k.startswith("eval/")
    )
    announce(f"Finished step {result['step']}: held-out {figures or 'n/a'}. Curves: {plot}")
