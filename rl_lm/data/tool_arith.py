"""Arithmetic that needs the calculator tool ("123*456=") as a local tfds builder.

Two operands of exactly `max_digits` digits (uniform in [10**(d-1), 10**d);
[0, 10) for d = 1) joined by one operator drawn uniformly from `ops` ("*" by
default): products of two 3-digit numbers are beyond a ~1M-parameter byte-level
model's head, and trivial with the calculator.

Each example has a prompt ("123*456="), the answer ("56088"), the SFT
demonstration "response" and its "segments": a JSON list of [text, trainable]
pairs whose texts concatenate to the response. With the tool (`tool=1`) the
demonstration calls the calculator in the compact format, reads the
observation the environment appends (`<result>OUTPUT</result>` right after
`</call>`, OUTPUT = `calculator(expression)`, not trainable) and answers:

    <call>calculator(expression='123*456')</call><result>56088</result>#### 56088

`redundant` percent of the demonstrations call the tool twice (a second
identical call and result) before answering: the OTC setting, where RL should
learn to drop the wasted call. With `tool=0` the demonstration answers
directly ("#### 56088"), the no-tool baseline. The answer follows a "####"
marker, checked with `exact_match(..., answer="marked")` (ANSWER_FORMAT), so
that a rollout stopping after the observation does not get the observation's
number counted as its answer.

Configs are named "tool" or "notool" plus every other field that differs from
its default, e.g. "tool_redundant0", "notool_digits4_train256_test32";
`dataset_name(**fields)` makes them. Test problems are distinct, drawn from
their own stream, and depend only on max_digits, ops, test_size and seed (so
"tool" and "notool" share them); train problems are drawn with replacement from
a second stream, rejecting test prompts. Redundant calls come from a third
(train) and fourth (test) stream.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from rl_lm.data import arithmetic, storage
from rl_lm.tools import calls
from rl_lm.tools.calculator import calculator

ANSWER_FORMAT = "marked"  # the Task's `verifiable.exact_match` format
ANSWER_PREFIX = "#### "
TOOL = "calculator"
OPS = arithmetic.OPS
_OP_NAMES = {"+": "add", "-": "sub", "*": "mul"}
_MAX_DIGITS = 18  # 10**18 < 2**63, so operands fit numpy's int64 sampler.


@dataclasses.dataclass(eq=False)
class ToolArithConfig(tfds.core.BuilderConfig):
    """One tool-arithmetic dataset.

    Attributes:
        tool: 1 demonstrations call the calculator, 0 they answer directly.
        max_digits: both operands have exactly this many digits.
        ops: the operators to draw from, a string over "+-*".
        train_size: train examples (drawn with replacement, never a test prompt).
        test_size: distinct held-out problems.
        seed: seed of every random stream.
        redundant: percent of the demonstrations that call the tool twice
            (tool=1 only; with tool=0 it is 0).
    """

    tool: int = 1
    max_digits: int = 3
    ops: str = "*"
    train_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0
    redundant: int = 20


_CODES = {  # field -> its prefix in config names
    "max_digits": "digits",
    "ops": "ops",
    "train_size": "train",
    "test_size": "test",
    "seed": "seed",
    "redundant": "redundant",
}
_KINDS = {1: "tool", 0: "notool"}
_TOKEN = re.compile(r"(digits|ops|train|test|seed|redundant)(.+)")
_DEFAULTS = {f: ToolArithConfig.__dataclass_fields__[f].default for f in ("tool", *_CODES)}


def _validate(fields: dict) -> dict:
    unknown = set(fields) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown tool_arith fields {sorted(unknown)}; known: {list(_DEFAULTS)}.")
    f = {**_DEFAULTS, **fields}
    ops = f["ops"]
    if not isinstance(ops, str) or not ops or set(ops) - set(OPS) or len(set(ops)) != len(ops):
        raise ValueError(
            f"tool_arith ops must be a non-empty string of distinct characters from {OPS!r}, "
            f"got {ops!r}; e.g. ops='+*'."
        )
    f["ops"] = "".join(o for o in OPS if o in ops)
    for key in _DEFAULTS:
        if key != "ops":
            if not isinstance(f[key], (int, np.integer)) or isinstance(f[key], bool):
                raise ValueError(f"tool_arith {key} must be an int, got {f[key]!r}.")
            f[key] = int(f[key])
    if f["tool"] not in _KINDS:
        raise ValueError(f"tool_arith tool must be 1 (call the calculator) or 0, got {f['tool']}.")
    if not 0 <= f["redundant"] <= 100:
        raise ValueError(f"tool_arith redundant is a percent in [0, 100], got {f['redundant']}.")
    if not f["tool"]:
        if f["redundant"] not in (0, _DEFAULTS["redundant"]):
            raise ValueError(
                f"tool_arith redundant={f['redundant']} (repeated calls) needs tool=1; "
                "tool=0 demonstrations make no call."
            )
        f["redundant"] = 0
    if not 1 <= f["max_digits"] <= _MAX_DIGITS:
        raise ValueError(f"tool_arith max_digits must be in [1, {_MAX_DIGITS}], got {f}.")
    if f["train_size"] < 1 or f["test_size"] < 1 or f["seed"] < 0:
        raise ValueError(f"tool_arith train_size, test_size must be >= 1 and seed >= 0: {f}.")
    lo, hi = _operand_range(f["max_digits"])
    space = (hi - lo) ** 2 * len(f["ops"])
    if f["test_size"] > space // 2:
        raise ValueError(
            f"tool_arith test_size={f['test_size']} is more than half of the {space} "
            f"distinct problems of {f}; lower test_size or raise max_digits."
        )
    return f


def _operand_range(digits: int) -> tuple[int, int]:
    return (10 ** (digits - 1) if digits > 1 else 0), 10**digits


def _is_default(f: dict, name: str) -> bool:
    return f[name] == (_DEFAULTS[name] if f["tool"] or name != "redundant" else 0)


def tool_arith_config(**fields) -> ToolArithConfig:
    """The config of a tool-arithmetic dataset; fields left out take their defaults.

    Args:
        **fields: any field of `ToolArithConfig`.

    Returns:
        The preset ("tool", "notool") when every other field is a default, else a
        config named like "tool_digits4_redundant0".
    """
    f = _validate(fields)
    kind = _KINDS[f["tool"]]
    changed = [n for n in _CODES if not _is_default(f, n)]
    if not changed and kind in PRESETS:
        return PRESETS[kind]
    name = kind + "".join(f"_{_CODES[n]}{_format(n, f[n])}" for n in changed)
    return ToolArithConfig(name=name, **f)


def _format(field: str, value) -> str:
    return "".join(_OP_NAMES[o] for o in value) if field == "ops" else str(value)


PRESETS: dict[str, ToolArithConfig] = {}
PRESETS.update({kind: tool_arith_config(tool=t) for t, kind in _KINDS.items()})


def config_from_name(name: str) -> ToolArithConfig:
    """The config called `name` (as made by `tool_arith_config`), e.g. "tool_redundant0"."""
    kind, *tokens = name.split("_")
    tool_of = {v: k for k, v in _KINDS.items()}
    how = (
        f"expected 'tool' or 'notool' then _<field><value> with fields "
        f"{list(_CODES.values())}, e.g. 'tool_digits4_redundant50'"
    )
    if kind not in tool_of:
        raise ValueError(f"unknown tool_arith config {name!r}: {how}.")
    fields = {"tool": tool_of[kind]}
    codes = {code: field for field, code in _CODES.items()}
    op_of = {v: k for k, v in _OP_NAMES.items()}
    for token in tokens:
        m = _TOKEN.fullmatch(token)
        if m is None:
            raise ValueError(f"unknown tool_arith config {name!r}: {how}.")
        field, value = codes[m[1]], m[2]
        if field == "ops":
            fields[field] = "".join(op_of.get(n, "?") for n in re.findall("...", value))
        elif value.isdigit():
            fields[field] = int(value)
        else:
            raise ValueError(f"bad value {value!r} of {field} in tool_arith config {name!r}.")
    config = tool_arith_config(**fields)
    if config.name != name:
        raise ValueError(f"tool_arith config {name!r} should be spelled {config.name!r}.")
    return config


def dataset_name(**fields) -> str:
    """The `load_source` name of a tool-arithmetic dataset, e.g. "tool_arith/notool"."""
    if "config" in fields:
        name = fields.pop("config")
        if fields:
            raise ValueError(f"pass either config={name!r} or tool_arith fields, not both.")
        return f"tool_arith/{config_from_name(name).name}"
    return f"tool_arith/{tool_arith_config(**fields).name}"


def _draws(rng: np.random.Generator, f: dict):
    """Endless (prompt, expression, answer) draws, in chunks for speed."""
    lo, hi = _operand_range(f["max_digits"])
    while True:
        operands = rng.integers(lo, hi, size=(4096, 2)).tolist()
        op_ids = rng.integers(0, len(f["ops"]), size=4096).tolist()
        for (a, b), k in zip(operands, op_ids, strict=True):
            op = f["ops"][k]
            expression = f"{a}{op}{b}"
            yield f"{expression}=", expression, str(arithmetic.evaluate([a, b], op))


def observation(output: str) -> str:
    """The text the environment appends after a call: `<result>OUTPUT</result>`."""
    return f"<result>{output}</result>"


_PROMPT = re.compile(r"(\d+[-+*]\d+)=")


def ground_truth_calls(prompt: str) -> list[tuple[str, dict[str, str]]]:
    """The one call a demonstration of `prompt` makes: [("calculator", {"expression": ...})].

    `prompt` is the prompt text ("865*673=", or inside a chat template's turn);
    the last problem in it counts.

    Raises:
      ValueError: for a text with no problem: every tool_arith prompt needs a call,
        and scoring such a text as needing none would pay a call-less answer.
    """
    found = _PROMPT.findall(prompt)
    if not found:
        raise ValueError(f"no tool_arith problem ('865*673=') in the prompt {prompt[-80:]!r}.")
    return [(TOOL, {"expression": found[-1]})]


def demonstration(expression: str, answer: str, calls_made: int) -> list[tuple[str, int]]:
    """The [text, trainable] segments of a demonstration making `calls_made` calls.

    Each call is followed by its (non-trainable) observation, the calculator's
    own output; the answer line "#### <answer>" comes last.
    """
    call = calls.format_call(TOOL, {"expression": expression}, calls.COMPACT)
    turn = [(call, 1), (observation(calculator(expression)), 0)]
    return turn * calls_made + [(ANSWER_PREFIX + answer, 1)]


def make_examples(config: ToolArithConfig) -> dict[str, list[dict[str, str]]]:
    """The rows of both splits, deterministic given the config."""
    f = _validate({n: getattr(config, n) for n in _DEFAULTS})
    test, seen = [], set()
    for draw in _draws(np.random.default_rng([f["seed"], 0]), f):
        if len(test) == f["test_size"]:
            break
        if draw[0] not in seen:
            seen.add(draw[0])
            test.append(draw)
    train = []
    for draw in _draws(np.random.default_rng([f["seed"], 1]), f):
        if len(train) == f["train_size"]:
            break
        if draw[0] not in seen:
            train.append(draw)
    out = {}
    for split, draws, stream in (("train", train, 2), ("test", test, 3)):
        twice = np.random.default_rng([f["seed"], stream]).random(len(draws)) < f["redundant"] / 100
        rows = []
        for (prompt, expression, answer), again in zip(draws, twice.tolist(), strict=True):
            segments = demonstration(expression, answer, f["tool"] * (1 + again))
            rows.append(
                {
                    "prompt": prompt,
                    "response": "".join(text for text, _ in segments),
                    "answer": answer,
                    "segments": json.dumps(segments),
                }
            )
        out[split] = rows
    return out


class ToolArith(tfds.core.GeneratorBasedBuilder):
    """tfds builder of the tool-arithmetic datasets ("tool_arith/tool", "tool_arith/notool")."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = list(PRESETS.values())
    DEFAULT_CONFIG_NAME = "tool"

    def _info(self) -> tfds.core.DatasetInfo:
        names = ("prompt", "response", "answer", "segments")
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


def tool_arith_builder(
    data_dir: str | os.PathLike | None = None, config: str = "tool"
) -> ToolArith:
    """A builder of "tool_arith/<config>", writing array_record.

    Args:
        data_dir: where datasets live; None for `storage.default_data_dir()`.
        config: a config name, e.g. "tool", "notool" or "tool_redundant0".

    Returns:
        The builder; `storage.prepare(builder)` writes it, `load_source` does so on demand.
    """
    return ToolArith(
        config=config_from_name(config or ToolArith.DEFAULT_CONFIG_NAME),
        data_dir=os.fspath(storage.resolve_data_dir(data_dir)),
        file_format=storage.FILE_FORMAT,
    )
