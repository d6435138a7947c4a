"""Questions about a local table that only the lookup tool can read, as a local tfds builder.

The table holds `entities` made-up entities, each a random pronounceable name
("Zorvak") with three random attributes: a 4-digit code, a city (another
made-up name) and a year. Nothing about them can be known without the tool,
so a ~0.2M-parameter byte-level model must learn to call it and copy from its
output. A prompt asks one attribute of one entity ("code of Zorvak?"); the
answer follows a "####" marker, checked with `exact_match(..., answer="marked")`
(ANSWER_FORMAT).

Each example has a prompt, the answer ("4821"), the SFT demonstration
"response" and its "segments" (JSON [text, trainable] pairs whose texts
concatenate to the response): the demonstration calls the tool in the compact
format, reads the observation the environment appends (`<result>OUTPUT</result>`
right after `</call>`, OUTPUT = `lookup(name)`, not trainable) and answers:

    <call>lookup(name='Zorvak')</call><result>Zorvak: code 4821, city Belmo, year 1957</result>
    #### 4821

(one line: "#### " follows "</result>" directly).

The table is a function of `entities` and `seed` alone (`table`), so the tool
is built from the dataset's config (`make_lookup_tool(config)`). The tool that
`rl_lm.algos.episodes.TOOLS["lookup"]` makes reads the table of the run's own
`data.name` (the default table, 1000 entities and seed 0, for a run on another
dataset).

Configs are named "lookup" plus every field that differs from its default,
e.g. "lookup_train256_test32", "lookup_entities2000_seed1";
`dataset_name(**fields)` makes them. Test problems ask about `test_size`
distinct entities that no train prompt names (held out: not even memorizing
the train answers helps), drawn from their own stream; train problems are
drawn with replacement over the other entities, with a uniform attribute.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from rl_lm.data import storage
from rl_lm.tools import calls

ANSWER_FORMAT = "marked"  # the Task's `verifiable.exact_match` format
ANSWER_PREFIX = "#### "
TOOL = "lookup"
ATTRIBUTES = ("code", "city", "year")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_MAX_ENTITIES = 100_000  # names are drawn from about 1.1M distinct ones


class Entry(NamedTuple):
    """One row of the table."""

    name: str
    code: str
    city: str
    year: str


@dataclasses.dataclass(eq=False)
class ToolLookupConfig(tfds.core.BuilderConfig):
    """One table-lookup dataset.

    Attributes:
        entities: rows of the table.
        train_size: train examples (drawn with replacement, never a test entity).
        test_size: held-out problems, one per distinct entity.
        seed: seed of the table and of every random stream.
    """

    entities: int = 1000
    train_size: int = 20_000
    test_size: int = 300
    seed: int = 0


_CODES = {  # field -> its prefix in config names
    "entities": "entities",
    "train_size": "train",
    "test_size": "test",
    "seed": "seed",
}
_KIND = "lookup"
_TOKEN = re.compile(r"(entities|train|test|seed)(.+)")
_DEFAULTS = {f: ToolLookupConfig.__dataclass_fields__[f].default for f in _CODES}


def _validate(fields: dict) -> dict:
    unknown = set(fields) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown tool_lookup fields {sorted(unknown)}; known: {list(_DEFAULTS)}.")
    f = {**_DEFAULTS, **fields}
    for key in _DEFAULTS:
        if not isinstance(f[key], (int, np.integer)) or isinstance(f[key], bool):
            raise ValueError(f"tool_lookup {key} must be an int, got {f[key]!r}.")
        f[key] = int(f[key])
    if not 2 <= f["entities"] <= _MAX_ENTITIES:
        raise ValueError(f"tool_lookup entities must be in [2, {_MAX_ENTITIES}], got {f}.")
    if f["train_size"] < 1 or f["test_size"] < 1 or f["seed"] < 0:
        raise ValueError(f"tool_lookup train_size, test_size must be >= 1 and seed >= 0: {f}.")
    if f["test_size"] > f["entities"] // 2:
        raise ValueError(
            f"tool_lookup test_size={f['test_size']} is more than half of the "
            f"{f['entities']} entities of {f}; lower test_size or raise entities."
        )
    return f


def tool_lookup_config(**fields) -> ToolLookupConfig:
    """The config of a table-lookup dataset; fields left out take their defaults.

    Args:
        **fields: any field of `ToolLookupConfig`.

    Returns:
        The preset "lookup" when every field is a default, else a config named
        like "lookup_train256_test32".
    """
    f = _validate(fields)
    changed = [n for n in _CODES if f[n] != _DEFAULTS[n]]
    if not changed and _KIND in PRESETS:
        return PRESETS[_KIND]
    name = _KIND + "".join(f"_{_CODES[n]}{f[n]}" for n in changed)
    return ToolLookupConfig(name=name, **f)


PRESETS: dict[str, ToolLookupConfig] = {}
PRESETS[_KIND] = tool_lookup_config()


def config_from_name(name: str) -> ToolLookupConfig:
    """The config called `name` (as made by `tool_lookup_config`), e.g. "lookup_seed1"."""
    kind, *tokens = name.split("_")
    how = (
        f"expected 'lookup' then _<field><value> with fields {list(_CODES.values())}, "
        "e.g. 'lookup_entities2000_train256'"
    )
    if kind != _KIND:
        raise ValueError(f"unknown tool_lookup config {name!r}: {how}.")
    fields = {}
    codes = {code: field for field, code in _CODES.items()}
    for token in tokens:
        m = _TOKEN.fullmatch(token)
        if m is None:
            raise ValueError(f"unknown tool_lookup config {name!r}: {how}.")
        field, value = codes[m[1]], m[2]
        if not value.isdigit():
            raise ValueError(f"bad value {value!r} of {field} in tool_lookup config {name!r}.")
        fields[field] = int(value)
    config = tool_lookup_config(**fields)
    if config.name != name:
        raise ValueError(f"tool_lookup config {name!r} should be spelled {config.name!r}.")
    return config


def dataset_name(**fields) -> str:
    """The `load_source` name of a table-lookup dataset, e.g. "tool_lookup/lookup_seed1"."""
    if "config" in fields:
        name = fields.pop("config")
        if fields:
            raise ValueError(f"pass either config={name!r} or tool_lookup fields, not both.")
        return f"tool_lookup/{config_from_name(name).name}"
    return f"tool_lookup/{tool_lookup_config(**fields).name}"


def _names(rng: np.random.Generator, n: int) -> list[str]:
    """`n` capitalized names of two syllables (consonant, vowel, maybe a consonant)."""
    c, v = len(_CONSONANTS), len(_VOWELS)
    picks = rng.integers(0, [c, v, c + 1, c, v, c + 1], size=(n, 6)).tolist()
    letters = (_CONSONANTS, _VOWELS, _CONSONANTS + " ", _CONSONANTS, _VOWELS, _CONSONANTS + " ")
    out = ["".join(s[i] for s, i in zip(letters, p, strict=True)).replace(" ", "") for p in picks]
    return [s.capitalize() for s in out]


@functools.lru_cache(maxsize=8)
def table(entities: int = _DEFAULTS["entities"], seed: int = _DEFAULTS["seed"]) -> tuple:
    """The table of `entities` distinct-named entries, a function of (entities, seed)."""
    _validate({"entities": entities, "seed": seed, "test_size": 1})
    rng = np.random.default_rng([seed, 0])
    names, seen = [], set()
    while len(names) < entities:
        for name in _names(rng, 4096):
            if name not in seen and len(names) < entities:
                seen.add(name)
                names.append(name)
    codes = rng.integers(1000, 10_000, size=entities).tolist()
    years = rng.integers(1700, 2000, size=entities).tolist()
    cities = _names(rng, entities)
    return tuple(Entry(*map(str, row)) for row in zip(names, codes, cities, years, strict=True))


def render(entry: Entry) -> str:
    """The tool's output for one entry: "Zorvak: code 4821, city Belmo, year 1957"."""
    return f"{entry.name}: code {entry.code}, city {entry.city}, year {entry.year}"


def make_lookup_tool(config: str | ToolLookupConfig = _KIND) -> Callable[[str], str]:
    """The `lookup(name)` tool over the table of a dataset config (a name or a config)."""
    if isinstance(config, str):
        config = config_from_name(config)
    by_name = {e.name.lower(): e for e in table(config.entities, config.seed)}

    def lookup(name: str) -> str:
        """Look up one entity of the local table by its name.

        Args:
            name: The entity's name, e.g. 'Zorvak' (case does not matter).
        """
        entry = by_name.get(name.strip().lower())
        return render(entry) if entry else f"no entry for {name!r}"

    return lookup


def observation(output: str) -> str:
    """The text the environment appends after a call: `<result>OUTPUT</result>`."""
    return f"<result>{output}</result>"


def demonstration(entry: Entry, attribute: str) -> list[tuple[str, int]]:
    """The [text, trainable] segments of a demonstration: the call, its
    (non-trainable) observation, the tool's own output, then "#### <answer>"."""
    call = calls.format_call(TOOL, {"name": entry.name}, calls.COMPACT)
    answer = getattr(entry, attribute)
    return [(call, 1), (observation(render(entry)), 0), (ANSWER_PREFIX + answer, 1)]


def prompt(name: str, attribute: str) -> str:
    """The question: "code of Zorvak?"."""
    return f"{attribute} of {name}?"


_PROMPT = re.compile(rf"(?:{'|'.join(ATTRIBUTES)}) of (\w+)\?")


def ground_truth_calls(prompt: str) -> list[tuple[str, dict[str, str]]]:
    """The one call a demonstration of `prompt` makes: [("lookup", {"name": ...})].

    `prompt` is the prompt text ("code of Zorvak?", or inside a chat template's
    turn); the last question in it counts.

    Raises:
      ValueError: for a text with no question: every tool_lookup prompt needs a call.
    """
    found = _PROMPT.findall(prompt)
    if not found:
        raise ValueError(f"no tool_lookup question ('code of Zorvak?') in {prompt[-80:]!r}.")
    return [(TOOL, {"name": found[-1]})]


def make_examples(config: ToolLookupConfig) -> dict[str, list[dict[str, str]]]:
    """The rows of both splits, deterministic given the config."""
    f = _validate({n: getattr(config, n) for n in _DEFAULTS})
    entries, n = table(f["entities"], f["seed"]), f["entities"]
    order = np.random.default_rng([f["seed"], 1]).permutation(n)
    held_out, rest = order[: f["test_size"]], order[f["test_size"] :]
    test_attrs = np.random.default_rng([f["seed"], 2]).integers(0, 3, size=len(held_out))
    rng = np.random.default_rng([f["seed"], 3])
    train_ids = rest[rng.integers(0, len(rest), size=f["train_size"])]
    train_attrs = rng.integers(0, 3, size=f["train_size"])
    out = {}
    for split, ids, attrs in (
        ("train", train_ids, train_attrs),
        ("test", held_out, test_attrs),
    ):
        rows = []
        for i, a in zip(ids.tolist(), attrs.tolist(), strict=True):
            entry, attribute = entries[i], ATTRIBUTES[a]
            segments = demonstration(entry, attribute)
            rows.append(
                {
                    "prompt": prompt(entry.name, attribute),
                    "response": "".join(text for text, _ in segments),
                    "answer": getattr(entry, attribute),
                    "segments": json.dumps(segments),
                }
            )
        out[split] = rows
    return out


class ToolLookup(tfds.core.GeneratorBasedBuilder):
    """tfds builder of the table-lookup datasets ("tool_lookup/lookup", ...)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = list(PRESETS.values())
    DEFAULT_CONFIG_NAME = _KIND

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


def tool_lookup_builder(
    data_dir: str | os.PathLike | None = None, config: str = _KIND
) -> ToolLookup:
    """A builder of "tool_lookup/<config>", writing array_record.

    Args:
        data_dir: where datasets live; None for `storage.default_data_dir()`.
        config: a config name, e.g. "lookup" or "lookup_train256_test32".

    Returns:
        The builder; `storage.prepare(builder)` writes it, `load_source` does so on demand.
    """
    return ToolLookup(
        config=config_from_name(config or ToolLookup.DEFAULT_CONFIG_NAME),
        data_dir=os.fspath(storage.resolve_data_dir(data_dir)),
        file_format=storage.FILE_FORMAT,
    )
