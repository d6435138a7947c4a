"""Multi-step arithmetic chains ("12 +5 *3 -7:") as a local tfds builder.

The task and its step format live in `rl_lm.rewards.steps` (the checker and
the generator share one definition). A chain is a start value in
[0, 10**max_digits) and `num_ops` operations applied left to right; each
operation is drawn uniformly from the (operator, operand) pairs, operands in
[1, 10**operand_digits), that keep the running value in [0, 10**max_digits),
so every step line stays short. The default (3 operations, 2-digit values,
1-digit operands) fits [BOS] + prompt + response + [EOS] in 48 bytes.

Two kinds, as configs:
- "sft": prompt, response (the canonical solution, one step per line), answer;
  with `restate` > 0, that percentage of the demonstrations writes one of its
  lines (an operation step or the answer line, uniformly) twice in a row (a
  restatement, as human solutions sometimes do), so that a policy tuned on them
  samples restatements now and then; `restate_at` = k >= 1 restates line k
  only (e.g. the last operation step, right before the answer line), and
  `restate_times` = n > 1 writes the copy 1 .. n times (uniformly), so that
  the policy samples padding of every length up to n, and `restate_value` = 1
  writes the short "=v" (the line's result v) instead of the whole line;
- "prm": prompt, response, answer, labels: step-labelled responses for a
  discriminative PRM. Half are canonical (labels "1111"), half have a wrong
  result at a uniform step k (the answer line included) by a small offset,
  after which the chain continues with correct arithmetic from the wrong value:
  labels "1..1" before k and "0..0" from k on (`steps.strict_labels`).
  `labels` holds one character per step.

Configs are named by kind plus every field that differs from its default, e.g.
"sft", "prm_steps4_train256_test32"; `dataset_name(kind=..., **fields)` makes
them. Test prompts are distinct, drawn from their own stream, and depend only
on the prompt fields, test_size and seed (both kinds of a seed share them);
train prompts are drawn with replacement from a second stream, rejecting test
prompts. Corruptions come from a third (train) and fourth (test) stream.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from rl_lm.data import storage
from rl_lm.rewards import steps

KINDS = ("sft", "prm")
_OP_NAMES = {"+": "add", "-": "sub", "*": "mul"}
_MAX_DIGITS = 6
_MAX_TIMES = 8
_OFFSETS = (-10, -3, -2, -1, 1, 2, 3, 10)  # Wrong results: the right one plus one of these.


@dataclasses.dataclass(eq=False)
class ChainConfig(tfds.core.BuilderConfig):
    """One chain dataset.

    Attributes:
        kind: "sft" (demonstrations) or "prm" (step-labelled responses).
        num_ops: operations per chain (steps = num_ops + the answer line).
        max_digits: the start and every running value lie in [0, 10**max_digits).
        operand_digits: operands lie in [1, 10**operand_digits).
        ops: the operators, a string over "+-*".
        train_size: train examples (drawn with replacement, never a test prompt).
        test_size: distinct held-out prompts.
        seed: seed of every random stream.
        restate: percentage of "sft" demonstrations that restate one step.
        restate_at: which line a restatement repeats: 0 any (uniformly), k >= 1
            line k (1 .. num_ops + 1, the answer line last).
        restate_times: a restatement writes its copy 1 .. restate_times times
            (uniformly; 1 draws nothing, so datasets before this field keep their rows).
        restate_value: 1 writes each copy as "=v", v the restated line's result.
    """

    kind: str = "sft"
    num_ops: int = 3
    max_digits: int = 2
    operand_digits: int = 1
    ops: str = "+-*"
    train_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0
    restate: int = 0
    restate_at: int = 0
    restate_times: int = 1
    restate_value: int = 0


_CODES = {  # field -> its prefix in config names
    "num_ops": "steps",
    "max_digits": "digits",
    "operand_digits": "operand",
    "ops": "ops",
    "train_size": "train",
    "test_size": "test",
    "seed": "seed",
    "restate": "restate",
    "restate_at": "at",
    "restate_times": "times",
    "restate_value": "value",
}
_TOKEN = re.compile(r"(steps|digits|operand|ops|train|test|seed|restate|at|times|value)(.+)")
_DEFAULTS = {f: ChainConfig.__dataclass_fields__[f].default for f in ("kind", *_CODES)}


def _validate(fields: dict) -> dict:
    unknown = set(fields) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown chain fields {sorted(unknown)}; known: {list(_DEFAULTS)}.")
    f = {**_DEFAULTS, **fields}
    if f["kind"] not in KINDS:
        raise ValueError(f"chain kind must be one of {list(KINDS)}, got {f['kind']!r}.")
    ops = f["ops"]
    if (
        not isinstance(ops, str)
        or not ops
        or set(ops) - set(steps.OPS)
        or len(set(ops)) != len(ops)
    ):
        raise ValueError(f"chain ops must be distinct characters from {steps.OPS!r}, got {ops!r}.")
    f["ops"] = "".join(o for o in steps.OPS if o in ops)
    for key in _CODES:
        if key != "ops":
            if not isinstance(f[key], (int, np.integer)) or isinstance(f[key], bool):
                raise ValueError(f"chain {key} must be an int, got {f[key]!r}.")
            f[key] = int(f[key])
    if not 1 <= f["operand_digits"] <= f["max_digits"] <= _MAX_DIGITS:
        raise ValueError(
            f"chain needs 1 <= operand_digits <= max_digits <= {_MAX_DIGITS}, got "
            f"{f['operand_digits']}, {f['max_digits']}."
        )
    if not 0 <= f["restate"] <= 100:
        raise ValueError(f"chain restate is a percentage in [0, 100], got {f['restate']}.")
    if f["restate"] and f["kind"] != "sft":
        raise ValueError("chain restate applies to kind='sft' demonstrations only.")
    if not 0 <= f["restate_at"] <= f["num_ops"] + 1 or (f["restate_at"] and not f["restate"]):
        raise ValueError(
            f"chain restate_at={f['restate_at']} must be 0 (any line) or a line 1 .. "
            f"{f['num_ops'] + 1}, and needs restate > 0."
        )
    if not 1 <= f["restate_times"] <= _MAX_TIMES:
        raise ValueError(f"chain restate_times={f['restate_times']} must lie in 1 .. {_MAX_TIMES}.")
    if f["restate_value"] not in (0, 1):
        raise ValueError(f"chain restate_value={f['restate_value']} must be 0 or 1.")
    for key, off in (("restate_times", 1), ("restate_value", 0)):
        if f[key] != off and not f["restate"]:
            raise ValueError(
                f"chain {key}={f[key]} needs restate > 0 (demonstrations that restate)."
            )
    if f["num_ops"] < 1 or f["train_size"] < 1 or f["test_size"] < 1 or f["seed"] < 0:
        raise ValueError(f"chain num_ops, train_size, test_size must be >= 1 and seed >= 0: {f}.")
    return f


def _format(field: str, value) -> str:
    return "".join(_OP_NAMES[o] for o in value) if field == "ops" else str(value)


def chain_config(**fields) -> ChainConfig:
    """The config of a chain dataset; fields left out take their defaults.

    Args:
        **fields: kind and any field of `ChainConfig`.

    Returns:
        The preset ("sft", "prm") when every other field is a default, else a
        config named like "prm_steps4_train256".
    """
    f = _validate(fields)
    changed = [n for n in _CODES if f[n] != _DEFAULTS[n]]
    if not changed and f["kind"] in PRESETS:
        return PRESETS[f["kind"]]
    name = f["kind"] + "".join(f"_{_CODES[n]}{_format(n, f[n])}" for n in changed)
    return ChainConfig(name=name, **f)


PRESETS: dict[str, ChainConfig] = {}
PRESETS.update({k: chain_config(kind=k) for k in KINDS})


def config_from_name(name: str) -> ChainConfig:
    """The config called `name` (as made by `chain_config`), e.g. "prm_steps4"."""
    kind, *tokens = name.split("_")
    codes = {code: field for field, code in _CODES.items()}
    fields = {"kind": kind}
    op_of = {v: k for k, v in _OP_NAMES.items()}
    for token in tokens:
        m = _TOKEN.fullmatch(token)
        if m is None:
            raise ValueError(
                f"unknown chain config {name!r}: expected a kind ({', '.join(KINDS)}) then "
                f"_<field><value> with fields {list(_CODES.values())}, e.g. 'prm_steps4_seed1'."
            )
        field, value = codes[m[1]], m[2]
        if field == "ops":
            fields[field] = "".join(op_of.get(n, "?") for n in re.findall("...", value))
        elif value.isdigit():
            fields[field] = int(value)
        else:
            raise ValueError(f"bad value {value!r} of {field} in chain config {name!r}.")
    config = chain_config(**fields)
    if config.name != name:
        raise ValueError(f"chain config {name!r} should be spelled {config.name!r}.")
    return config


def dataset_name(**fields) -> str:
    """The `load_source` name of a chain dataset, e.g. "chain/prm_steps4"."""
    if "config" in fields:
        name = fields.pop("config")
        if fields:
            raise ValueError(f"pass either config={name!r} or chain fields, not both.")
        return f"chain/{config_from_name(name).name}"
    return f"chain/{chain_config(**fields).name}"


def _draw_prompt(rng: np.random.Generator, f: dict) -> str:
    """One chain: every operation uniform over the pairs that keep the value in range."""
    top = 10 ** f["max_digits"]
    operands = range(1, 10 ** f["operand_digits"])
    while True:
        start = int(rng.integers(0, top))
        value, ops = start, []
        for _ in range(f["num_ops"]):
            valid = [
                (o, x) for o in f["ops"] for x in operands if 0 <= steps.apply_op(value, o, x) < top
            ]
            if not valid:  # e.g. only "+" from 99: start again.
                break
            op, x = valid[int(rng.integers(len(valid)))]
            ops.append((op, x))
            value = steps.apply_op(value, op, x)
        if len(ops) == f["num_ops"]:
            return steps.format_prompt(start, ops)


def _prompts(f: dict) -> dict[str, list[str]]:
    """Distinct test prompts, then train prompts (with replacement) that avoid them."""
    rng = np.random.default_rng([f["seed"], 0])
    test, seen = [], set()
    for _ in range(100 * f["test_size"]):
        if len(test) == f["test_size"]:
            break
        prompt = _draw_prompt(rng, f)
        if prompt not in seen:
            seen.add(prompt)
            test.append(prompt)
    if len(test) < f["test_size"]:
        raise ValueError(f"could not draw {f['test_size']} distinct chain prompts for {f}.")
    rng = np.random.default_rng([f["seed"], 1])
    train = []
    while len(train) < f["train_size"]:
        prompt = _draw_prompt(rng, f)
        if prompt not in seen:
            train.append(prompt)
    return {"train": train, "test": test}


def corrupt(prompt: str, k: int, offset: int) -> str:
    """The solution of `prompt` with step k's result off by `offset`, continued from there.

    Steps after k apply the remaining operations correctly to the wrong value (so
    they look right on their own), and the answer line repeats the final value;
    k = num_ops corrupts the answer line only.
    """
    start, ops = steps.parse_prompt(prompt)
    if not 0 <= k <= len(ops) or offset == 0:
        raise ValueError(f"need 0 <= k <= {len(ops)} and a nonzero offset, got {k}, {offset}.")
    lines, value = [], start
    for s, (op, x) in enumerate(ops):
        result = steps.apply_op(value, op, x) + (offset if s == k else 0)
        lines.append(f"{value}{op}{x}={result}")
        value = result
    answer = value + (offset if k == len(ops) else 0)
    return steps.DELIMITER.join(lines + [f"{steps.ANSWER_PREFIX}{answer}"])


def make_examples(config: ChainConfig) -> dict[str, list[dict[str, str]]]:
    """The rows of both splits, deterministic given the config."""
    f = _validate({n: getattr(config, n) for n in _DEFAULTS})
    out = {}
    for split, prompts in _prompts(f).items():
        rng = np.random.default_rng([f["seed"], 2 if split == "train" else 3])
        restate_rng = np.random.default_rng([f["seed"], 4 if split == "train" else 5])
        rows = []
        for prompt in prompts:
            lines = steps.solve(prompt)
            if f["restate"] and restate_rng.random() < f["restate"] / 100:
                k = int(restate_rng.integers(len(lines)))
                k = f["restate_at"] - 1 if f["restate_at"] else k
                times = 1
                if f["restate_times"] > 1:
                    times = int(restate_rng.integers(1, f["restate_times"] + 1))
                copy = steps.restated_result(lines[k]) if f["restate_value"] else lines[k]
                lines[k + 1 : k + 1] = [copy] * times
            row = {
                "prompt": prompt,
                "response": steps.DELIMITER.join(lines),
                "answer": lines[-1].removeprefix(steps.ANSWER_PREFIX),
            }
            if f["kind"] == "prm":
                if rng.random() < 0.5:
                    k = int(rng.integers(f["num_ops"] + 1))
                    offset = int(_OFFSETS[rng.integers(len(_OFFSETS))])
                    row["response"] = corrupt(prompt, k, offset)
                labels = steps.strict_labels(prompt, row["response"])
                row["labels"] = "".join(str(x) for x in labels)
            rows.append(row)
        out[split] = rows
    return out


class Chain(tfds.core.GeneratorBasedBuilder):
    """tfds builder of the chain datasets ("chain/sft", "chain/prm", ...)."""

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {
        "1.1.0": "The restate field (sft demonstrations that restate a line).",
        "1.2.0": "The restate_at field (which line a restatement repeats).",
        "1.3.0": "The restate_times and restate_value fields (how many copies, and short ones).",
    }
    BUILDER_CONFIGS = list(PRESETS.values())
    DEFAULT_CONFIG_NAME = "sft"

    def _info(self) -> tfds.core.DatasetInfo:
        names = ("prompt", "response", "answer")
        if self.builder_config.kind == "prm":
            names += ("labels",)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({n: tfds.features.Text() for n in names}),
            disable_shuffling=True,  # Keep generation order: "the first n" is a fixed set.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        rows = make_examples(self.builder_config)
        return {split: self._generate_examples(r) for split, r in rows.items()}

    def _generate_examples(self, rows):
        yield from enumerate(rows)


def chain_builder(data_dir: str | os.PathLike | None = None, config: str = "sft") -> Chain:
    """A builder of "chain/<config>", writing array_record.

    Args:
        data_dir: where datasets live; None for `storage.default_data_dir()`.
        config: a config name, e.g. "sft", "prm" or "prm_steps4_seed1".

    Returns:
        The builder; `storage.prepare(builder)` writes it, `load_source` does so on demand.
    """
    return Chain(
        config=config_from_name(config or Chain.DEFAULT_CONFIG_NAME),
        data_dir=os.fspath(storage.resolve_data_dir(data_dir)),
        file_format=storage.FILE_FORMAT,
    )
