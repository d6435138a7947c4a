"""Dataset names and loading: "arithmetic/<config>", "chain/<config>", "tool_arith/<config>",
"tool_lookup/<config>", "jsonl/<name>", "sort_pref/<config>" and "rps_pref/<config>"."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds
from absl import logging

from rl_lm.data import arithmetic, chain, jsonl, preference_tasks, storage, tool_arith, tool_lookup

TASKS = ("arithmetic", "chain", "tool_arith", "tool_lookup", "jsonl", *preference_tasks.TASKS)


def dataset_name(task: str, **fields) -> str:
    """Maps an experiment config's data fields to a dataset name.

    Args:
        task: "arithmetic", "jsonl", "sort_pref" or "rps_pref".
        **fields: for "arithmetic", difficulty fields of `ArithmeticConfig` (missing
            ones take the "add2" defaults) or `config="mix3"`; for "jsonl", `name=`;
            for "sort_pref" / "rps_pref", `kind=` and config fields (see
            `preference_tasks.task_config`); for "chain" / "tool_arith" / "tool_lookup",
            their config fields or `config=` (`chain.dataset_name`,
            `tool_arith.dataset_name`, `tool_lookup.dataset_name`).

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
    if task in preference_tasks.TASKS:
        return preference_tasks.dataset_name(task, **fields)
    if task == "chain":
        return chain.dataset_name(**fields)
    if task == "tool_arith":
        return tool_arith.dataset_name(**fields)
    if task == "tool_lookup":
        return tool_lookup.dataset_name(**fields)
    raise ValueError(f"unknown data task {task!r}; known: {', '.join(TASKS)}.")


def load_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    prepare: bool = True,
):
    """The tfds data source (random access, len) of one split of a dataset.

    Arithmetic and synthetic preference datasets are generated on first use
    (deterministic, seconds); JSONL datasets must have been prepared with `prepare_jsonl`.

    Args:
        name: "arithmetic" (= "arithmetic/add2"), "arithmetic/<config>",
            "jsonl/<name>", "sort_pref/<config>" or "rps_pref/<config>".
        split: "train" or "test".
        data_dir: where datasets live; None for `storage.default_data_dir()`.
        prepare: generate a missing arithmetic or preference dataset (else raise).

    Returns:
        A tfds `ArrayRecordDataSource`; examples are dicts of bytes.
    """
    root = storage.resolve_data_dir(data_dir)
    family, _, config = name.partition("/")
    if family in ("arithmetic", "chain", "tool_arith", "tool_lookup") or (
        family in preference_tasks.TASKS
    ):
        if family == "arithmetic":
            config = config or arithmetic.Arithmetic.DEFAULT_CONFIG_NAME
            builder = arithmetic.arithmetic_builder(root, config=config)
        elif family == "chain":
            builder = chain.chain_builder(root, config)
        elif family == "tool_arith":
            builder = tool_arith.tool_arith_builder(root, config)
        elif family == "tool_lookup":
            builder = tool_lookup.tool_lookup_builder(root, config)
        else:
            builder = preference_tasks.task_builder(family, config, root)
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
            "max_digits=..., num_operands=..., ops=...)), 'chain/<config>', 'tool_arith/<config>', "
            "'tool_lookup/<config>', 'sort_pref/<config>', "
            "'rps_pref/<config>' or 'jsonl/<name>'. If "
            f"{family!r} is your own JSONL data, {jsonl.how_to_prepare(family, root)[:-1]}, "
            f"then load it as 'jsonl/{family}'."
        )
    if split not in builder.info.splits:
        raise ValueError(
            f"dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}."
        )
    return builder.as_data_source(split=split)
