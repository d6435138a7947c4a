"""What a run tells its user: the events it reaches, and the failures that stop it.

Library logs (absl, orbax, XLA) go to stderr, and there are many of them. The
few events a user follows (resumed from step N, started from a checkpoint,
moved a damaged one aside, finished) are also printed plainly on stdout by
`announce`. A failure the user can act on is a `RunError` whose message is one
self-contained line; the launcher prints it alone and exits with status 1.
"""

from __future__ import annotations

import sys

import jax
import tqdm
from absl import logging


class RunError(Exception):
    """A run stopped, or refused to start, for a reason its one-line message explains."""


class ConfigError(RunError, ValueError):
    """The config cannot run as it stands (or not in this workdir)."""


def announce(message: str, level: int = logging.INFO) -> None:
    """Logs `message` at absl `level` and prints it on stdout (process 0).

    tqdm.write keeps the line clear of a progress bar drawn at the time.
    """
    logging.log(level, "%s", message)
    if jax.process_index() == 0:
        tqdm.tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
