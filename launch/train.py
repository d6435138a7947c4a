"""Trains an experiment config; with no flags, the project's default experiment.

    python -m launch.train --config=configs/grpo_arith.py[:arg] --workdir=DIR [--config.a.b=v ...]

Restarting the same command resumes from the workdir's latest checkpoint.
One process of a multi-process (multi-host) run also passes the coordinator,
either as flags or as JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID:

    python -m launch.train --config=... --workdir=DIR \
        --coordinator_address=host0:1234 --num_processes=2 --process_id=0
"""

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from rl_lm import parallel
from rl_lm.train import loop

_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "grpo_arith.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_DEFAULT_CONFIG), "Experiment config file[:arg].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run directory (resumed if present).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    loop.quiet_library_logs()
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    parallel.log_devices()
    workdir = Path(_WORKDIR.value).absolute()
    logging.info(
        "config %s, algo %s, workdir %s",
        flags.FLAGS["config"].config_filename,
        _CONFIG.value.algo,
        workdir,
    )
    print(f"Run directory: {workdir}", flush=True)
    loop.train(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
