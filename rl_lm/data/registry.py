"""Dataset names and loading: "arithmetic/<config>" and "jsonl/<name>"."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds
from absl import logging

from rl_lm.data import arithmetic, jsonl, storage

TASKS = ("arithmetic", "jsonl")


def dataset_name(task: str, **fields) -> str:
    """Maps an experiment config's data fields to a dataset name.

    Args:
        task: "arithmetic" or "jsonl".
        **fields: for "arithmetic", difficulty fields of `ArithmeticConfig` (missing
            ones take the "add2" defaults) or `config="mix3"`; for "jsonl", `name=`.

    Returns:
        A name for `load_source`, e.g. "arithmetic/add3" or "jsonl/my_prefs".
    """
    if task == "arithmetic":
        if "config" in fields:
            config = fields.pop("config")
            if fields:
                raise ValueError(f"pass either config={config!r} or difficulty fields, not both.")
            return f"arithmetic/{arithmetic.config_from_name(config).name}"
        return f"arithmetic/{arithmetic.arithmetic_config(**fields).name}"
    if task == "jsonl":
        if set(fields) != {"name"}:
            raise ValueError(f"task 'jsonl' takes exactly name=..., got {sorted(fields)}.")
        return f"jsonl/{fields['name']}"
    raise ValueError(f"unknown data task {task!r}; known: {', '.join(TASKS)}.")


def load_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    prepare: bool = True,
):
    """The tfds data source (random access, len) of one split of a dataset.

    Arithmetic datasets are generated on first use (deterministic, seconds); JSONL
    datasets must have been prepared with `prepare_jsonl`.

    Args:
        name: "arithmetic" (= "arithmetic/add2"), "arithmetic/<config>" or
            "jsonl/<name>".
        split: "train" or "test".
        data_dir: where datasets live; None for `storage.default_data_dir()`.
        prepare: generate a missing arithmetic dataset (else raise).

    Returns:
        A tfds `ArrayRecordDataSource`; examples are dicts of bytes.
    """
    root = storage.resolve_data_dir(data_dir)
    family, _, config = name.partition("/")
    if family == "arithmetic":
        builder = arithmetic.arithmetic_builder(
            root, config=config or arithmetic.Arithmetic.DEFAULT_CONFIG_NAME
        )
        if not storage.is_prepared(builder):
            if not prepare:
                raise ValueError(
                    f"dataset {name!r} is not prepared in {root}; call "
                    f"load_source({name!r}, {split!r}, data_dir={str(root)!r}, prepare=True) "
                    "to generate it (deterministic, takes seconds)."
                )
            logging.info("Preparing dataset %s in %s (first use).", name, root)
            storage.prepare(builder)
    elif family == "jsonl" and config:
        path = jsonl.dataset_dir(config, root)
        if not (path / "dataset_info.json").is_file():
            raise ValueError(
                f"jsonl dataset {name!r} is not prepared in {root}; "
                + jsonl.how_to_prepare(config, root)
            )
        builder = tfds.builder_from_directory(path)
    else:
        raise ValueError(
            f"unknown dataset {name!r}: expected 'arithmetic/<config>' (presets "
            f"{', '.join(arithmetic.PRESETS)}; any difficulty via dataset_name('arithmetic', "
            "max_digits=..., num_operands=..., ops=...)) or 'jsonl/<name>'. If "
            f"{family!r} is your own JSONL data, {jsonl.how_to_prepare(family, root)[:-1]}, "
            f"then load it as 'jsonl/{family}'."
        )
    if split not in builder.info.splits:
        raise ValueError(
            f"dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}."
        )
    return builder.as_data_source(split=split)
