"""Where prepared datasets live, and how a builder is prepared safely.

tfds writes every dataset into an `incomplete.*` folder and renames it to the
final `<name>/<config>/<version>` folder only after the last file is written
(and deletes the temporary folder on an exception). A dataset interrupted
mid-write therefore never looks prepared; `prepare` adds tolerance for several
processes (hosts of one job) preparing the same deterministic dataset at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging

DATA_DIR_ENV = "RL_LM_DATA_DIR"
FILE_FORMAT = "array_record"


def default_data_dir() -> Path:
    """`$RL_LM_DATA_DIR` if set, else `~/.cache/rl_lm/tensorflow_datasets`."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/rl_lm/tensorflow_datasets").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The given data dir (user-expanded), or the default one when None."""
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether the builder's dataset is fully written (tfds's check, minus its warning)."""
    root = Path(builder.data_dir)
    return (root / "dataset_info.json").is_file() and (root / "features.json").is_file()


def prepare(builder: tfds.core.DatasetBuilder, overwrite: bool = False) -> None:
    """Writes `builder`'s dataset as array_record, atomically.

    Args:
        builder: a builder constructed with `file_format="array_record"`.
        overwrite: delete an existing copy first (a failure while regenerating
            then leaves no dataset, never a partial one).
    """
    mode = tfds.download.GenerateMode
    config = tfds.download.DownloadConfig(
        download_mode=mode.FORCE_REDOWNLOAD if overwrite else mode.REUSE_DATASET_IF_EXISTS
    )
    try:
        builder.download_and_prepare(download_config=config)
    except OSError:
        # The final rename fails when another process finished the same
        # (deterministic) dataset first; its copy is as good as ours.
        if overwrite or not is_prepared(builder):
            raise
        logging.info("%s was prepared concurrently by another process.", builder.data_dir)
