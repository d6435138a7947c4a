"""Synthetic arithmetic prompts ("17+25=" -> "42") as a local tfds builder.

Difficulty is a `ArithmeticConfig`: operands uniform in [0, 10**max_digits),
`num_operands` of them joined by operators drawn uniformly from `ops`, and the
answer with the usual precedence (`*` before `+`/`-`). Named presets cover the
common cases; `arithmetic_config(...)` gives any other difficulty a config whose
name encodes every field, so it can be asked for by name ("arithmetic/<name>").

The test split is a fixed held-out set: `test_size` distinct problems drawn
from their own random stream, so it depends on the difficulty, `test_size` and
`seed` only (and a larger test set extends a smaller one). Train problems come
from a second stream, with replacement, rejecting every test prompt.

A careless demonstrator (`demo_error` > 0, two-operand addition only): the
train split's "response" (the SFT demonstration) drops every carry, e.g.
"57+68=" -> "15", in `demo_error` percent of the examples, drawn from a third
stream; "answer" (what rewards and evaluation check) stays right. Imitation
then learns the mistake, while a verifier's reward only knows the right
answer: the setting where reinforcement learning has something to add.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from rl_lm.data import storage

OPS = "+-*"
_OP_NAMES = {"+": "add", "-": "sub", "*": "mul"}
_MAX_DIGITS = 18  # 10**18 < 2**63, so operands fit numpy's int64 sampler.
_CUSTOM_NAME = re.compile(
    r"d(?P<max_digits>\d+)_n(?P<num_operands>\d+)_(?P<ops>(?:add|sub|mul)+)"
    r"_train(?P<train_size>\d+)_test(?P<test_size>\d+)_seed(?P<seed>\d+)"
    r"(?:_err(?P<demo_error>\d+))?"
)


@dataclasses.dataclass(eq=False)
class ArithmeticConfig(tfds.core.BuilderConfig):
    """One difficulty of the arithmetic dataset.

    Attributes:
        max_digits: operands are uniform in [0, 10**max_digits).
        num_operands: operands per problem (>= 2).
        ops: the operators to draw from, a string over "+-*".
        train_size: train examples (drawn with replacement, never a test prompt).
        test_size: distinct held-out test problems.
        seed: seed of the random streams.
        demo_error: percent of train demonstrations that drop every carry
            (addition of two operands only; 0 = all demonstrations right).
    """

    max_digits: int = 2
    num_operands: int = 2
    ops: str = "+"
    train_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0
    demo_error: int = 0

    def difficulty(self) -> dict[str, int | str]:
        """The fields above (everything but the tfds bookkeeping)."""
        return {f: getattr(self, f) for f in _FIELDS}


_FIELDS = ("max_digits", "num_operands", "ops", "train_size", "test_size", "seed", "demo_error")
_DEFAULTS = {f: ArithmeticConfig.__dataclass_fields__[f].default for f in _FIELDS}

PRESETS = {
    "add2": ArithmeticConfig(name="add2", description="a+b, 2-digit operands"),
    "add3": ArithmeticConfig(name="add3", max_digits=3, description="a+b, 3-digit operands"),
    "addsub2": ArithmeticConfig(
        name="addsub2", ops="+-", description="a+b or a-b, 2-digit operands"
    ),
    "mix3": ArithmeticConfig(
        name="mix3", num_operands=3, ops="+-*", description="three 2-digit operands, + - *"
    ),
    "add2_careless": ArithmeticConfig(
        name="add2_careless",
        demo_error=60,
        description="a+b, 2-digit operands; 60% of the demonstrations drop every carry",
    ),
}


def _canonical_ops(ops: str) -> str:
    if not isinstance(ops, str) or not ops or set(ops) - set(OPS) or len(set(ops)) != len(ops):
        raise ValueError(
            f"arithmetic ops must be a non-empty string of distinct characters from "
            f"{OPS!r}, got {ops!r}; e.g. ops='+-'."
        )
    return "".join(o for o in OPS if o in ops)


def _validate(fields: dict) -> dict:
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown arithmetic fields {sorted(unknown)}; known: {list(_FIELDS)}.")
    f = {**_DEFAULTS, **fields}
    f["ops"] = _canonical_ops(f["ops"])
    for key in ("max_digits", "num_operands", "train_size", "test_size", "seed", "demo_error"):
        if not isinstance(f[key], (int, np.integer)) or isinstance(f[key], bool):
            raise ValueError(f"arithmetic {key} must be an int, got {f[key]!r}.")
        f[key] = int(f[key])
    if not 1 <= f["max_digits"] <= _MAX_DIGITS:
        raise ValueError(f"arithmetic max_digits must be in [1, {_MAX_DIGITS}], got {f}.")
    if f["num_operands"] < 2:
        raise ValueError(f"arithmetic num_operands must be >= 2, got {f['num_operands']}.")
    if f["train_size"] < 1 or f["test_size"] < 1 or f["seed"] < 0:
        raise ValueError(f"arithmetic train_size, test_size must be >= 1 and seed >= 0: {f}.")
    if not 0 <= f["demo_error"] <= 100:
        raise ValueError(f"arithmetic demo_error is a percent in [0, 100], got {f['demo_error']}.")
    if f["demo_error"] and (f["ops"] != "+" or f["num_operands"] != 2):
        raise ValueError(
            f"arithmetic demo_error={f['demo_error']} (dropped carries) needs ops='+' and "
            f"num_operands=2, got ops={f['ops']!r}, num_operands={f['num_operands']}."
        )
    space = 10 ** (f["max_digits"] * f["num_operands"]) * len(f["ops"]) ** (f["num_operands"] - 1)
    if f["test_size"] > space // 2:
        raise ValueError(
            f"arithmetic test_size={f['test_size']} is more than half of the {space} "
            f"distinct problems of {f}; lower test_size or raise max_digits."
        )
    return f


def _custom_name(f: dict) -> str:
    ops = "".join(_OP_NAMES[o] for o in f["ops"])
    return (
        f"d{f['max_digits']}_n{f['num_operands']}_{ops}"
        f"_train{f['train_size']}_test{f['test_size']}_seed{f['seed']}"
        + (f"_err{f['demo_error']}" if f["demo_error"] else "")
    )


def arithmetic_config(**fields) -> ArithmeticConfig:
    """The config of a difficulty; fields left out take the "add2" defaults.

    A difficulty equal to a preset returns that preset, so the same data is never
    prepared twice under two names.

    Args:
        **fields: any of max_digits, num_operands, ops, train_size, test_size, seed.

    Returns:
        A preset, or a config named like "d3_n2_addsub_train20000_test1000_seed0".
    """
    f = _validate(fields)
    for preset in PRESETS.values():
        if preset.difficulty() == f:
            return preset
    return ArithmeticConfig(name=_custom_name(f), **f)


def config_from_name(name: str) -> ArithmeticConfig:
    """The config called `name`: a preset or a name made by `arithmetic_config`."""
    if name in PRESETS:
        return PRESETS[name]
    m = _CUSTOM_NAME.fullmatch(name)
    if m is None:
        raise ValueError(
            f"unknown arithmetic config {name!r}: use a preset ({', '.join(PRESETS)}) or a "
            "name from arithmetic_config(...).name / dataset_name('arithmetic', ...), "
            "e.g. 'd3_n2_addsub_train20000_test1000_seed0'."
        )
    fields = {k: int(v) for k, v in m.groupdict().items() if k != "ops" and v is not None}
    op_of = {v: k for k, v in _OP_NAMES.items()}
    fields["ops"] = "".join(op_of[n] for n in re.findall("add|sub|mul", m["ops"]))
    config = arithmetic_config(**fields)
    if config.name != name:  # e.g. "mulsub" spells a valid but non-canonical name
        raise ValueError(f"arithmetic config {name!r} should be spelled {config.name!r}.")
    return config


def evaluate(operands: list[int], ops: str) -> int:
    """Value of operands[0] ops[0] operands[1] ..., `*` binding tighter than `+`/`-`."""
    total, term = 0, operands[0]
    for op, x in zip(ops, operands[1:], strict=True):
        if op == "*":
            term *= x
        else:
            total, term = total + term, (x if op == "+" else -x)
    return total + term


def _draws(rng: np.random.Generator, f: dict):
    """Endless (prompt, answer) draws, in chunks for speed."""
    n = f["num_operands"]
    while True:
        operands = rng.integers(0, 10 ** f["max_digits"], size=(4096, n)).tolist()
        op_ids = rng.integers(0, len(f["ops"]), size=(4096, n - 1)).tolist()
        for xs, ks in zip(operands, op_ids, strict=True):
            ops = "".join(f["ops"][k] for k in ks)
            prompt = "".join(f"{x}{o}" for x, o in zip(xs, ops + "=", strict=True))
            yield prompt, str(evaluate(xs, ops))


def carryless_sum(a: int, b: int) -> int:
    """a + b with every carry dropped: digit-wise sums mod 10 (57 + 68 -> 15)."""
    out, scale = 0, 1
    while a or b:
        out += (a % 10 + b % 10) % 10 * scale
        a, b, scale = a // 10, b // 10, scale * 10
    return out


def make_problems(config: ArithmeticConfig) -> dict[str, list[tuple[str, str, str]]]:
    """The (prompt, demonstration, answer) triples of both splits, deterministic given the config.

    The demonstration is the answer except for `demo_error` percent of the
    train examples, which get the carry-less sum.
    """
    f = _validate(config.difficulty())
    test, seen = [], set()
    for prompt, answer in _draws(np.random.default_rng([f["seed"], 0]), f):
        if len(test) == f["test_size"]:
            break
        if prompt not in seen:
            seen.add(prompt)
            test.append((prompt, answer, answer))
    train = []
    careless = np.random.default_rng([f["seed"], 2]).random(f["train_size"]) < f["demo_error"] / 100
    for prompt, answer in _draws(np.random.default_rng([f["seed"], 1]), f):
        if len(train) == f["train_size"]:
            break
        if prompt not in seen:
            demo = answer
            if careless[len(train)]:
                a, b = (int(x) for x in prompt[:-1].split("+"))
                demo = str(carryless_sum(a, b))
            train.append((prompt, demo, answer))
    return {"train": train, "test": test}


class Arithmetic(tfds.core.GeneratorBasedBuilder):
    """tfds builder of the arithmetic dataset; one config per difficulty."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = list(PRESETS.values())
    DEFAULT_CONFIG_NAME = "add2"

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({"prompt": text, "response": text, "answer": text}),
            # Keep generation order, so "the first n test examples" is a fixed set.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        problems = make_problems(self.builder_config)
        return {split: self._generate_examples(pairs) for split, pairs in problems.items()}

    def _generate_examples(self, triples):
        for i, (prompt, demo, answer) in enumerate(triples):
            yield i, {"prompt": prompt, "response": demo, "answer": answer}


def arithmetic_builder(data_dir: str | os.PathLike | None = None, **fields) -> Arithmetic:
    """A builder for any difficulty (see `arithmetic_config`), writing array_record.

    Args:
        data_dir: where the dataset lives; None for `storage.default_data_dir()`.
        **fields: difficulty fields, or `config="mix3"` for a config by name.

    Returns:
        The builder; `storage.prepare(builder)` writes it, `load_source` does so on demand.
    """
    name = fields.pop("config", None)
    if name is not None and fields:
        raise ValueError(f"pass either config={name!r} or difficulty fields, not both.")
    config = config_from_name(name) if name is not None else arithmetic_config(**fields)
    return Arithmetic(
        config=config,
        data_dir=os.fspath(storage.resolve_data_dir(data_dir)),
        file_format=storage.FILE_FORMAT,
    )
