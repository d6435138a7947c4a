"""Trains an experiment config; with no flags, the project's default experiment.

    python -m launch.train --config=configs/grpo_arith.py[:arg] --workdir=DIR [--config.a.b=v ...]

Restarting the same command resumes from the workdir's latest checkpoint;
--print_config lists every field of the config (with the overrides) and exits.
With --config.init.hf_dir=DIR the model sections and the tokenizer come from the
Hugging Face checkpoint in DIR (see rl_lm.train.hf_start).
One process of a multi-process (multi-host) run also passes the coordinator,
either as flags or as JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID:

    python -m launch.train --config=... --workdir=DIR \
        --coordinator_address=host0:1234 --num_processes=2 --process_id=0

A failure the user can act on (a diverged run, a failed save, a config that
cannot run) ends the command with one line on stderr and exit status 1.
"""

import re
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from rl_lm import parallel
from rl_lm.train import hf_start, loop, preflight
from rl_lm.train.report import RunError

_DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "grpo_arith.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_DEFAULT_CONFIG), "Experiment config file[:arg].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run directory (resumed if present).")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the config's fields and exit.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        overrides = config_flags.get_override_values(flags.FLAGS["config"])
        config = hf_start.resolve(_CONFIG.value, overrides)
    except RunError as e:
        sys.exit(str(e))
    if _PRINT_CONFIG.value:
        for key, value in preflight.flatten(config).items():
            print(f"{key} = {value!r}")
        return
    if "://" in _WORKDIR.value:
        sys.exit(
            f"--workdir={_WORKDIR.value} is a URL; runs write through the file system. Mount the"
            " bucket on every host (gcsfuse, or GKE's /gcs mount) and pass the mounted path."
        )
    loop.quiet_library_logs()
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    parallel.log_devices()
    workdir = Path(_WORKDIR.value).absolute()
    logging.info(
        "config %s, algo %s, workdir %s",
        flags.FLAGS["config"].config_filename,
        config.algo,
        workdir,
    )
    print(f"Run directory: {workdir}", flush=True)
    try:
        loop.train(config, workdir)
    except RunError as e:
        # The one line must stay the last: silence what library threads log while the
        # interpreter shuts down (orbax's signalling thread can, under load).
        logging.set_verbosity(logging.FATAL)
        sys.exit(str(e))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a mistyped --config.a.b override is one line, not a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError, IndexError):
        message = _unknown_override(argv)
        if message is None:
            raise
        sys.exit(message)


def _unknown_override(argv: list[str]) -> str | None:
    """The error of the first --config.a.b override that names no field of the config."""
    spec, paths = str(_DEFAULT_CONFIG), []
    for i, arg in enumerate(argv):
        name, has_value, value = arg.partition("=")
        if name in ("--config", "-config"):
            spec = value if has_value else argv[i + 1] if i + 1 < len(argv) else spec
        elif match := re.fullmatch(r"--?(?:no)?config\.(.+)", name):
            paths.append(match.group(1))
    try:
        config = flags.FLAGS["config"].parser.parse(spec)
    except Exception:  # noqa: BLE001 -- then absl's own error is the one to show.
        return None
    return next(filter(None, (preflight.unknown_field(config, p) for p in paths)), None)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
