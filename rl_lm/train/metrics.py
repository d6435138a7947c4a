"""Run metrics: a JSONL file, TensorBoard event files and a progress bar.

WORKDIR/metrics.jsonl has one JSON object per logged step: {"step", "wall_time",
metric: value, ...} (evaluation metrics prefixed "eval/"). A non-finite value (a
diverged loss) is written as null, which every JSON reader accepts, and read
back by `read_metrics` as float nan. A resumed run first drops the lines past
its restored step, so every step appears once however often the run was
interrupted; TensorBoard gets the same cut via purge_step. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import tqdm
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
# Shown in the progress bar when present, in this order, with these labels.
_BAR_KEYS = {"loss": "loss", "eval/accuracy": "acc", "reward": "reward", "tokens_per_s": "tok/s"}


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The rows of WORKDIR/metrics.jsonl (empty when there is none); null reads as nan."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # A line cut by a crash ends the readable part.
            rows.append({k: math.nan if v is None else v for k, v in row.items()})
    return rows


def _json_line(row: Mapping[str, float]) -> str:
    """Standard JSON: NaN and infinities, which json.dumps would write bare, become null."""
    clean = {k: v if math.isfinite(v) else None for k, v in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class MetricsWriter:
    """Appends metrics rows to JSONL and TensorBoard.

    Args:
      workdir: the run's directory.
      start_step: the step the run (re)starts from; rows after it are dropped.
      enabled: False on processes other than 0 (every method is then a no-op).
    """

    def __init__(self, workdir: str | os.PathLike, *, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / METRICS_FILE
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(workdir) if r["step"] <= start_step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(_json_line(r) for r in kept))
        os.replace(tmp, self.path)
        self._file = self.path.open("a")
        self._tb = SummaryWriter(
            str(Path(workdir) / TB_DIR), purge_step=start_step + 1 if start_step else None
        )

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._file.write(_json_line({"step": step, "wall_time": time.time(), **values}))
        self._file.flush()
        for key, value in values.items():
            if math.isfinite(value):  # TensorBoard draws no NaN (and tensorboardX warns).
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


class Progress:
    """A tqdm bar over the run's steps showing the key metrics (process 0 only)."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self._bar = tqdm.tqdm(
            total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc="train"
        )
        self._shown: dict[str, str] = {}

    def update(self, metrics: Mapping[str, float] | None = None) -> None:
        """Advances one step; refreshes the displayed metrics when given."""
        if metrics:
            for key, label in _BAR_KEYS.items():
                if key in metrics:
                    value = float(metrics[key])
                    self._shown[label] = f"{value:.0f}" if abs(value) >= 100 else f"{value:.4g}"
            self._bar.set_postfix(self._shown, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
