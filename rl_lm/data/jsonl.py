"""User JSONL files as local tfds datasets ("jsonl/<name>"), so real data needs no code.

Two kinds, one JSON object per line (blank lines are skipped, other fields ignored):
- "sft": prompt, response, and optionally answer (stored as "" when absent), the
  reference answer a verifiable reward checks against.
- "preference": prompt, chosen, rejected.

Prepare once, from Python or the shell:

    prepare_jsonl("my_prefs", kind="preference", train="train.jsonl", test="test.jsonl")
    python -m rl_lm.data --dataset=jsonl/my_prefs --kind=preference \
        --train=train.jsonl --test=test.jsonl

then load with `load_source("jsonl/my_prefs", "train")`. Line order is kept, so
`eval_examples(test, n)` is the first n lines of the test file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import tensorflow_datasets as tfds

from rl_lm.data import storage

# kind -> (required fields, optional fields)
KINDS = {
    "sft": (("prompt", "response"), ("answer",)),
    "preference": (("prompt", "chosen", "rejected"), ()),
}
_NAME = re.compile(r"[A-Za-z0-9_][\w.\-]*")


@dataclasses.dataclass(eq=False)
class JsonlConfig(tfds.core.BuilderConfig):
    """One user dataset: its kind and the files of its splits (test may be None)."""

    kind: str = "sft"
    train: str = ""
    test: str | None = None


def read_jsonl(path: str | os.PathLike, kind: str) -> list[dict[str, str]]:
    """Reads and validates one JSONL file.

    Args:
        path: the file.
        kind: "sft" or "preference" (see the module docstring).

    Returns:
        The examples, each with exactly the kind's fields, as str.

    Raises:
        ValueError: naming the file, line and field of the first bad line.
    """
    required, optional = KINDS[kind]
    need = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
    examples = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{where}: invalid JSON ({e.msg}, column {e.colno}); each line must be "
                    "one JSON object."
                ) from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{where}: expected a JSON object with fields {need}, got {type(obj).__name__}."
                )
            example = {}
            for field in required + optional:
                if field not in obj and field in required:
                    raise ValueError(
                        f"{where}: missing field {field!r}; a {kind!r} dataset needs {need}."
                    )
                value = obj.get(field, "")
                if not isinstance(value, str):
                    raise ValueError(
                        f"{where}: field {field!r} must be a string, got "
                        f"{type(value).__name__} {value!r:.40}."
                    )
                example[field] = value
            examples.append(example)
    if not examples:
        raise ValueError(f"{path} holds no examples; expected one JSON object per line.")
    return examples


class Jsonl(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder over user JSONL files; one config per user dataset.

    Not in tfds's registry: prepared datasets are read back from their folder
    (`tfds.builder_from_directory`), since their configs exist only on disk.
    """

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        required, optional = KINDS[cfg.kind]
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{cfg.kind} examples from train={cfg.train} test={cfg.test}",
            features=tfds.features.FeaturesDict({f: text for f in required + optional}),
            disable_shuffling=True,  # Keep file order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        cfg = self.builder_config
        paths = {"train": cfg.train, "test": cfg.test}
        return {s: self._generate_examples(p) for s, p in paths.items() if p is not None}

    def _generate_examples(self, path):
        yield from enumerate(read_jsonl(path, self.builder_config.kind))


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the prepared dataset "jsonl/<name>" (it holds dataset_info.json)."""
    return storage.resolve_data_dir(data_dir) / "jsonl" / name / str(Jsonl.VERSION)


def how_to_prepare(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The instructions quoted by errors about an unprepared "jsonl/<name>"."""
    where = storage.resolve_data_dir(data_dir)
    return (
        f"prepare it once with rl_lm.data.prepare_jsonl({name!r}, kind='sft' or "
        f"'preference', train='train.jsonl', test='test.jsonl', data_dir={str(where)!r}) "
        f"or `python -m rl_lm.data --dataset=jsonl/{name} --kind=sft --train=train.jsonl "
        f"--test=test.jsonl --data_dir={where}`."
    )


def prepare_jsonl(
    name: str,
    kind: str,
    train: str | os.PathLike,
    test: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Validates JSONL files and writes them as the dataset "jsonl/<name>".

    Args:
        name: dataset name (letters, digits, "_", "-", "."); load it as "jsonl/<name>".
        kind: "sft" or "preference".
        train: the train split's file.
        test: the test split's file, or None for a dataset with a train split only.
        data_dir: where datasets live; None for `storage.default_data_dir()`.
        overwrite: replace an existing dataset of that name.

    Returns:
        The prepared dataset's folder.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"jsonl dataset name {name!r} must be letters, digits, '_', '-' or '.', "
            "e.g. 'my_prefs'."
        )
    if kind not in KINDS:
        raise ValueError(f"jsonl kind must be one of {list(KINDS)}, got {kind!r}.")
    paths = {"train": train, "test": test}
    for split, path in paths.items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{split} file {path} of jsonl dataset {name!r} not found.")
        if path is not None:
            read_jsonl(path, kind)  # Fail before anything is written.
    out = dataset_dir(name, data_dir)
    if out.exists() and not overwrite:
        raise ValueError(
            f"jsonl dataset {name!r} already exists at {out}; pass overwrite=True "
            "(--overwrite) to replace it."
        )
    config = JsonlConfig(
        name=name,
        kind=kind,
        train=os.fspath(Path(train).resolve()),
        test=None if test is None else os.fspath(Path(test).resolve()),
    )
    builder = Jsonl(
        config=config,
        data_dir=os.fspath(storage.resolve_data_dir(data_dir)),
        file_format=storage.FILE_FORMAT,
    )
    storage.prepare(builder, overwrite=overwrite)
    return out
