"""Synthetic preference datasets with a known ground truth, as local tfds builders.

Two tasks, defined in `rl_lm.rewards.synthetic` (prompts, true reward, preferences):

- "sort_pref": sort the prompt's digits ("sort 5381=" -> "1358"), a graded true
  reward r* in [0, 1]. Responses come from a deliberately mediocre behaviour
  policy (`preference_examples.BEHAVIOUR`), so an SFT model imitating it has a
  middling mean r* (about 0.64) while the sorted digits, at most 16 bytes, score 1.
- "rps_pref": rock-paper-scissors with a favourite class per prompt, whose
  preferences are intransitive; responses come from the reference.

Each task has two kinds, as configs: "sft" rows (prompt, response, ...) for
`sft_batches` and "pairs" rows (prompt, chosen, rejected, ...) for
`preference_batches`; both serve `prompt_batches`. Extra fields:
- sort_pref/sft: answer (the sorted digits, the argument `sort_reward` takes),
  reward (r* of the response);
- sort_pref/pairs: answer, chosen_reward, rejected_reward; the two responses
  are distinct behaviour draws, labelled by Bradley-Terry sampling
  P(a > b) = sigmoid((r*_a - r*_b) / temperature) (temperature 0: the better one,
  a coin flip on ties);
- rps_pref/pairs: preference = P(chosen > rejected); the two responses are
  reference draws of different classes (a same-class pair says nothing, P = 1/2),
  labelled by sampling from P.

Configs are named by kind plus every field that differs from its default, e.g.
"sort_pref/pairs", "sort_pref/pairs_temp0.0_train500", "rps_pref/sft_str1.0-0.5";
`dataset_name(task, kind=..., **fields)` makes them. Prompts depend only on the
task's prompt fields, sizes and seed, so both kinds of one seed share their test
prompts, which no train prompt repeats; for pairs, changing the temperature only
changes which response of each pair is chosen.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from rl_lm.data import preference_examples, storage
from rl_lm.rewards import synthetic

TASKS = ("sort_pref", "rps_pref")
KINDS = ("sft", "pairs")
_MAX_SORT_DIGITS = 16  # Keeps every behaviour response within 24 bytes.


@dataclasses.dataclass(eq=False)
class SortPrefConfig(tfds.core.BuilderConfig):
    """One sort_pref dataset.

    Attributes:
        kind: "sft" or "pairs".
        min_digits: prompts have n digits, n uniform in [min_digits, max_digits].
        max_digits: at most 16.
        temperature: Bradley-Terry temperature of the pair labels (pairs only).
        train_size: train examples (prompts drawn with replacement, never a test one).
        test_size: examples on distinct held-out prompts.
        seed: seed of every random stream.
    """

    kind: str = "sft"
    min_digits: int = 3
    max_digits: int = 8
    temperature: float = 0.1
    train_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0


@dataclasses.dataclass(eq=False)
class RpsPrefConfig(tfds.core.BuilderConfig):
    """One rps_pref dataset.

    Attributes:
        kind: "sft" or "pairs".
        strengths: each prompt's strength s is drawn uniformly from these, in (0, 1].
        train_size: train examples (prompts drawn with replacement, never a test one).
        test_size: examples on distinct held-out prompts.
        seed: seed of every random stream.
    """

    kind: str = "sft"
    strengths: tuple[float, ...] = (1.0,)
    train_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0


_CONFIGS = {"sort_pref": SortPrefConfig, "rps_pref": RpsPrefConfig}
_CODES = {  # field -> its prefix in config names
    "min_digits": "min",
    "max_digits": "max",
    "temperature": "temp",
    "strengths": "str",
    "train_size": "train",
    "test_size": "test",
    "seed": "seed",
}
_TOKEN = re.compile(r"(min|max|temp|str|train|test|seed)(.+)")


def _field_names(task: str) -> tuple[str, ...]:
    return tuple(f for f in _CODES if f in _CONFIGS[task].__dataclass_fields__)


def _default(task: str, field: str):
    return _CONFIGS[task].__dataclass_fields__[field].default


def _format(value) -> str:
    if isinstance(value, tuple):
        return "-".join(repr(v) for v in value)
    return repr(value)


def _validate(task: str, fields: dict) -> dict:
    if task not in _CONFIGS:
        raise ValueError(f"unknown preference task {task!r}; known: {', '.join(TASKS)}.")
    names = ("kind",) + _field_names(task)
    unknown = set(fields) - set(names)
    if unknown:
        raise ValueError(f"unknown {task} fields {sorted(unknown)}; known: {list(names)}.")
    f = {n: fields.get(n, _default(task, n)) for n in names}
    if f["kind"] not in KINDS:
        raise ValueError(f"{task} kind must be one of {list(KINDS)}, got {f['kind']!r}.")
    for key in ("train_size", "test_size", "seed", "min_digits", "max_digits"):
        if key in f:
            if not isinstance(f[key], (int, np.integer)) or isinstance(f[key], bool):
                raise ValueError(f"{task} {key} must be an int, got {f[key]!r}.")
            f[key] = int(f[key])
    if f["train_size"] < 1 or f["test_size"] < 1 or f["seed"] < 0:
        raise ValueError(f"{task} train_size, test_size must be >= 1 and seed >= 0: {f}.")
    if task == "sort_pref":
        if not 1 <= f["min_digits"] <= f["max_digits"] <= _MAX_SORT_DIGITS:
            raise ValueError(
                f"sort_pref needs 1 <= min_digits <= max_digits <= {_MAX_SORT_DIGITS}, got "
                f"{f['min_digits']}, {f['max_digits']}."
            )
        if f["kind"] == "sft" and "temperature" in fields:
            raise ValueError("sort_pref temperature labels pairs; drop it for kind='sft'.")
        if isinstance(f["temperature"], bool) or not float(f["temperature"]) >= 0:
            raise ValueError(f"sort_pref temperature must be a float >= 0, got {f['temperature']}.")
        f["temperature"] = float(f["temperature"])
        space = sum(10**n for n in range(f["min_digits"], f["max_digits"] + 1))
    else:
        s = f["strengths"]
        s = tuple(float(x) for x in (s if isinstance(s, (tuple, list)) else (s,)))
        if not s or len(set(s)) != len(s):
            raise ValueError(f"rps_pref strengths must be distinct floats, got {f['strengths']}.")
        try:
            for x in s:
                synthetic.rps_prompt("R", x, 0)  # A strength the prompt text can carry.
        except ValueError:
            raise ValueError(
                f"rps_pref strengths must be in (0, 1] and print as decimals (e.g. 0.5, "
                f"not 1e-05), got {f['strengths']}."
            ) from None
        f["strengths"] = s
        space = 3 * len(s) * 10_000
    if f["test_size"] > space // 2:
        raise ValueError(
            f"{task} test_size={f['test_size']} is more than half of the {space} distinct "
            "prompts; lower test_size (or widen the prompts)."
        )
    return f


_PRESETS: dict[str, dict[str, SortPrefConfig | RpsPrefConfig]] = {}  # task -> kind -> config


def task_config(task: str, **fields) -> SortPrefConfig | RpsPrefConfig:
    """The config of `task` ("sort_pref" or "rps_pref") with `fields`; others default.

    Args:
        task: the task.
        **fields: kind ("sft" or "pairs") and any field of the task's config class.

    Returns:
        A config named by its kind and non-default fields, e.g. "pairs_temp0.0"; the
        preset object itself ("sft", "pairs") when every field is a default, as tfds
        requires.
    """
    f = _validate(task, fields)
    defaults = _validate(task, {"kind": f["kind"]})
    changed = [n for n in _field_names(task) if f[n] != defaults[n]]
    if not changed and task in _PRESETS:
        return _PRESETS[task][f["kind"]]
    name = f["kind"] + "".join(f"_{_CODES[n]}{_format(f[n])}" for n in changed)
    return _CONFIGS[task](name=name, **f)


_PRESETS.update({task: {k: task_config(task, kind=k) for k in KINDS} for task in TASKS})


def config_from_name(task: str, name: str) -> SortPrefConfig | RpsPrefConfig:
    """The config called `name` (as made by `task_config`), e.g. "pairs_temp0.0"."""
    kind, *tokens = name.split("_")
    codes = {code: field for field, code in _CODES.items()}
    fields = {"kind": kind}
    for token in tokens:
        m = _TOKEN.fullmatch(token)
        if m is None or codes[m[1]] not in _field_names(task):
            raise ValueError(
                f"unknown {task} config {name!r}: expected a kind ({', '.join(KINDS)}) then "
                f"_<field><value> for fields {list(_field_names(task))}, e.g. "
                f"{task_config(task, kind='pairs', seed=1).name!r}."
            )
        field, value = codes[m[1]], m[2]
        try:
            default = _default(task, field)
            if isinstance(default, tuple):
                fields[field] = tuple(float(v) for v in value.split("-"))
            else:
                fields[field] = type(default)(value)
        except ValueError:
            raise ValueError(f"bad value {value!r} of {field} in {task} config {name!r}.") from None
    config = task_config(task, **fields)
    if config.name != name:
        raise ValueError(f"{task} config {name!r} should be spelled {config.name!r}.")
    return config


def dataset_name(task: str, **fields) -> str:
    """The `load_source` name of a dataset, e.g. "sort_pref/pairs_temp0.0"."""
    return f"{task}/{task_config(task, **fields).name}"


_TEXT = tfds.features.Text()
_FEATURES = {
    ("sort_pref", "sft"): {"response": _TEXT, "answer": _TEXT, "reward": np.float32},
    ("sort_pref", "pairs"): {
        "chosen": _TEXT,
        "rejected": _TEXT,
        "answer": _TEXT,
        "chosen_reward": np.float32,
        "rejected_reward": np.float32,
    },
    ("rps_pref", "sft"): {"response": _TEXT},
    ("rps_pref", "pairs"): {"chosen": _TEXT, "rejected": _TEXT, "preference": np.float32},
}


class _PreferenceTask(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder body; subclasses are named by their task."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"prompt": _TEXT, **_FEATURES[(self.name, self.builder_config.kind)]}
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,  # Keep generation order: "the first n" is a fixed set.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        rows = preference_examples.make_examples(self.name, self.builder_config)
        return {split: self._generate_examples(r) for split, r in rows.items()}

    def _generate_examples(self, rows):
        yield from enumerate(rows)


class SortPref(_PreferenceTask):
    """The sort_pref datasets ("sort_pref/sft", "sort_pref/pairs", ...)."""

    BUILDER_CONFIGS = list(_PRESETS["sort_pref"].values())


class RpsPref(_PreferenceTask):
    """The rps_pref datasets ("rps_pref/sft", "rps_pref/pairs", ...)."""

    BUILDER_CONFIGS = list(_PRESETS["rps_pref"].values())


_BUILDERS = {"sort_pref": SortPref, "rps_pref": RpsPref}


def task_builder(task: str, config: str, data_dir: str | os.PathLike | None = None):
    """A builder of "<task>/<config>", writing array_record.

    Args:
        task: "sort_pref" or "rps_pref".
        config: a config name, e.g. "sft", "pairs" or "pairs_temp0.0_seed1".
        data_dir: where datasets live; None for `storage.default_data_dir()`.

    Returns:
        The builder; `storage.prepare(builder)` writes it, `load_source` does so on demand.
    """
    if task not in _BUILDERS:
        raise ValueError(f"unknown preference task {task!r}; known: {', '.join(TASKS)}.")
    if not config:
        raise ValueError(
            f"name a config of {task}: '{task}/sft' or '{task}/pairs' (others from "
            f"dataset_name({task!r}, kind=..., ...))."
        )
    return _BUILDERS[task](
        config=config_from_name(task, config),
        data_dir=os.fspath(storage.resolve_data_dir(data_dir)),
        file_format=storage.FILE_FORMAT,
    )
