"""Running the launchers as a user does: a subprocess from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_launch(
    module: str, *flags: str, data_dir: str | Path | None = None, code: str | None = None
) -> subprocess.CompletedProcess:
    """`python -m MODULE FLAGS...` (or `python -c CODE FLAGS...`), its output captured.

    Args:
      module: the launcher, e.g. "launch.train"; ignored when `code` is given.
      *flags: its command line.
      data_dir: the prepared datasets' root ($RL_LM_DATA_DIR), if any.
      code: a script run instead of the module (e.g. one that patches a library first).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if data_dir is not None:
        env["RL_LM_DATA_DIR"] = str(data_dir)
    command = ["-c", code] if code else ["-m", module]
    return subprocess.run(
        [sys.executable, *command, *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def last_line(out: subprocess.CompletedProcess) -> str:
    """The last line of stderr, asserting the command printed no traceback."""
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stderr.strip().splitlines()[-1]
