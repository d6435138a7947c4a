"""User JSONL files as local tfds datasets ("jsonl/<name>"), so real data needs no code.

Three kinds, one JSON object per line (blank lines are skipped, other fields ignored):

- "sft": prompt and response, and optionally answer (stored as "" when absent), the
  reference answer a verifiable reward checks against; or, instead of prompt and
  response, messages: a conversation whose assistant turns get the loss (rendered
  with the tokenizer's chat template; see `rl_lm.data.chat`).
      {"prompt": "2+3=", "response": "5", "answer": "5"}
      {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
- "preference": prompt, chosen, rejected.
      {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
- "prompt" (for GRPO / PPO): prompt text or messages (rendered with the chat
  template and its generation prompt into the stored prompt), answer (the
  reference answer), and optionally metadata (a JSON object, stored as JSON text).
      {"prompt": "What is 2+3?", "answer": "5"}
      {"messages": [{"role": "user", "content": "What is 2+3?"}], "answer": "5",
       "metadata": {"source": "gsm8k", "id": 7}}

Examples are stored as text fields: sft has prompt, response, answer and, when
some row is a conversation, messages (the conversation as JSON text, "" for
prompt/response rows; a conversation's prompt and
response are the conversation up to its last assistant turn, rendered with the
generation prompt, and that turn's content); preference has prompt, chosen,
rejected; prompt has prompt (rendered), answer, metadata ("{}" when absent) and,
as sft, messages. A prompt dataset's train and test splits therefore feed
`prompt_batches` and the trainers exactly as arithmetic prompts do.

Prepare once, from Python or the shell, with the tokenizer of the run (needed
to render messages and to check lengths):

    prepare_jsonl("my_math", kind="prompt", train="train.jsonl", test="test.jsonl",
                  tokenizer="/ckpt/qwen2", max_prompt_len=256)
    python -m rl_lm.data --dataset=jsonl/my_prefs --kind=preference \
        --train=train.jsonl --test=test.jsonl

With `max_len` (sft, preference: [BOS] + prompt + response + [EOS], or [BOS] +
the conversation) and `max_prompt_len` (prompt, sft: [BOS] + prompt) an over-long row
fails at prepare time, naming its file, line, length and the limit; a failed
prepare writes nothing. Then load with `load_source("jsonl/my_math", "train")`.
Line order is kept, so `eval_examples(test, n)` is the first n lines of the test
file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from rl_lm.data import pipeline, storage

# kind -> (required fields, optional fields) of a row with plain-text prompts.
KINDS = {
    "sft": (("prompt", "response"), ("answer",)),
    "preference": (("prompt", "chosen", "rejected"), ()),
    "prompt": (("prompt", "answer"), ("metadata",)),
}
# kind -> the stored text features.
FEATURES = {
    "sft": ("prompt", "response", "answer", "messages"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt", "answer", "metadata", "messages"),
}
_CHAT_KINDS = ("sft", "prompt")  # Kinds whose rows may hold messages instead of text.
_NAME = re.compile(r"[A-Za-z0-9_][\w.\-]*")


@dataclasses.dataclass(eq=False)
class JsonlConfig(tfds.core.BuilderConfig):
    """One user dataset: its kind and the files of its splits (test may be None)."""

    kind: str = "sft"
    train: str = ""
    test: str | None = None


def _need(kind: str) -> str:
    required, optional = KINDS[kind]
    need = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
    if kind == "sft":
        need += "; or messages instead of prompt and response"
    elif kind == "prompt":
        need += "; or messages instead of prompt"
    return need


def _string(obj: dict, field: str, where: str) -> str:
    value = obj.get(field, "")
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: field {field!r} must be a string, got {type(value).__name__} {value!r:.40}."
        )
    return value


def _example(obj: dict, kind: str, where: str, tokenizer) -> dict[str, str]:
    """The stored example of one row; renders its messages with `tokenizer`."""
    from rl_lm.data import chat  # Deferred: plain-text rows need no jinja2.

    required, optional = KINDS[kind]
    chat_row = kind in _CHAT_KINDS and "messages" in obj
    if chat_row:
        replaced = ("prompt",) if kind == "prompt" else ("prompt", "response")
        clash = [f for f in replaced if f in obj]
        if clash:
            raise ValueError(
                f"{where}: a row has either messages or {' and '.join(replaced)}, not both "
                f"(it has messages and {', '.join(clash)})."
            )
        required = tuple(f for f in required if f not in replaced)
    for field in required:
        if field not in obj:
            raise ValueError(
                f"{where}: missing field {field!r}; a {kind!r} dataset needs {_need(kind)}."
            )
    example = {f: _string(obj, f, where) for f in required + optional if f != "metadata"}
    if kind == "prompt":
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(
                f"{where}: field 'metadata' must be a JSON object, got "
                f"{type(metadata).__name__} {metadata!r:.40}."
            )
        example["metadata"] = json.dumps(metadata, ensure_ascii=False)
    if kind in _CHAT_KINDS:
        example["messages"] = ""
    if not chat_row:
        return example
    messages = chat.check_messages(obj["messages"], where)
    if tokenizer is None:
        raise ValueError(
            f"{where}: rows with messages are rendered with a chat template; pass the "
            "run's tokenizer to prepare_jsonl (tokenizer='/path/to/checkpoint')."
        )
    example["messages"] = json.dumps(messages, ensure_ascii=False)
    try:
        if kind == "prompt":
            example["prompt"] = chat.render_prompt(tokenizer, messages)
            return example
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise ValueError("an sft conversation needs an assistant turn to train on")
        example["prompt"] = chat.render_prompt(tokenizer, messages[:last])
        example["response"] = messages[last]["content"]
        pipeline.chat_ids(tokenizer, messages)  # The template must give its assistant mask.
    except Exception as e:  # Template errors too: name the row.
        raise ValueError(f"{where}: {e}") from e
    return example


def _lengths(example: dict[str, str], kind: str, tokenizer) -> list[tuple[str, int, str]]:
    """(limit, length, what it counts) of each row the pipeline builds from `example`."""
    prompt = len(pipeline.prompt_ids(tokenizer, example["prompt"]))
    if kind == "prompt":
        return [("max_prompt_len", prompt, "[BOS] + prompt")]
    if example.get("messages"):
        row = len(pipeline.chat_ids(tokenizer, example["messages"])[0])
        out = [("max_len", row, "[BOS] + conversation")]
    else:
        sides = ("response",) if kind == "sft" else ("chosen", "rejected")
        n, side = max(
            (len(pipeline.target_ids(tokenizer, example["prompt"], example[s])[0]), s)
            for s in sides
        )
        out = [("max_len", n, f"[BOS] + prompt + {side} + [EOS]")]
    if kind == "sft":  # Its prompt is the held-out evaluation's prompt.
        out.append(("max_prompt_len", prompt, "[BOS] + prompt"))
    return out


def read_jsonl(
    path: str | os.PathLike,
    kind: str,
    tokenizer: Any = None,
    max_len: int | None = None,
    max_prompt_len: int | None = None,
) -> list[dict[str, str]]:
    """Reads and validates one JSONL file.

    Args:
        path: the file.
        kind: "sft", "preference" or "prompt" (see the module docstring).
        tokenizer: a `Tokenizer`; needed for rows with messages and for length checks.
        max_len: longest allowed sft / preference row in tokens (None: unchecked).
        max_prompt_len: longest allowed prompt in tokens, of prompt and sft rows
            (None: unchecked).

    Returns:
        The examples, each with exactly the kind's stored fields (FEATURES), as str.

    Raises:
        ValueError: naming the file, line and field of the first bad line.
    """
    limits = {"max_len": max_len, "max_prompt_len": max_prompt_len}
    limits = {k: v for k, v in limits.items() if v is not None}
    if limits and tokenizer is None:
        given = ", ".join(f"{k}={v}" for k, v in limits.items())
        raise ValueError(f"checking {given} needs the tokenizer; pass tokenizer=.")
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
                    f"{where}: expected a JSON object with fields {_need(kind)}, got "
                    f"{type(obj).__name__}."
                )
            example = _example(obj, kind, where, tokenizer)
            for name, n, what in _lengths(example, kind, tokenizer) if limits else ():
                if n > limits.get(name, n):
                    raise ValueError(
                        f"{where}: {what} is {n} tokens, more than {name}={limits[name]}; "
                        f"shorten or drop the row, or raise {name} (and the config's "
                        f"data.{name})."
                    )
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

    def __init__(self, *, examples: dict[str, list[dict[str, str]]], tokenizer: str, **kwargs):
        """As tfds's builder, with the validated `examples` of each split to write."""
        self._examples, self._tokenizer = examples, tokenizer
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        text = tfds.features.Text()
        fields = FEATURES[cfg.kind]
        rows = [ex for split in self._examples.values() for ex in split]
        if not any(ex.get("messages") for ex in rows):  # Plain-text datasets, as before.
            fields = tuple(f for f in fields if f != "messages")
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"{cfg.kind} examples from train={cfg.train} test={cfg.test} "
                f"(tokenizer {self._tokenizer})"
            ),
            features=tfds.features.FeaturesDict({f: text for f in fields}),
            disable_shuffling=True,  # Keep file order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {s: self._generate_examples(s) for s in self._examples}

    def _generate_examples(self, split):
        fields = self.info.features.keys()
        for i, ex in enumerate(self._examples[split]):
            yield i, {f: ex[f] for f in fields}


def dataset_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the prepared dataset "jsonl/<name>" (it holds dataset_info.json)."""
    return storage.resolve_data_dir(data_dir) / "jsonl" / name / str(Jsonl.VERSION)


def how_to_prepare(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The instructions quoted by errors about an unprepared "jsonl/<name>"."""
    where = storage.resolve_data_dir(data_dir)
    return (
        f"prepare it once with rl_lm.data.prepare_jsonl({name!r}, kind='sft', 'preference' "
        f"or 'prompt', train='train.jsonl', test='test.jsonl', data_dir={str(where)!r}, "
        "tokenizer=<the config's tokenizer, to render messages and check lengths>) "
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
    tokenizer: Any = None,
    max_len: int | None = None,
    max_prompt_len: int | None = None,
) -> Path:
    """Validates JSONL files and writes them as the dataset "jsonl/<name>".

    Every row is read, rendered and checked before anything is written, so a bad
    row leaves no dataset (and, with overwrite, the old one in place).

    Args:
        name: dataset name (letters, digits, "_", "-", "."); load it as "jsonl/<name>".
        kind: "sft", "preference" or "prompt".
        train: the train split's file.
        test: the test split's file, or None for a dataset with a train split only.
        data_dir: where datasets live; None for `storage.default_data_dir()`.
        overwrite: replace an existing dataset of that name.
        tokenizer: the run's tokenizer (a `Tokenizer` or a `load_tokenizer` spec such
            as a checkpoint directory); renders messages with its chat template and
            counts tokens for the length checks. None: rows must be plain text.
        max_len: fail on an sft / preference row longer than this (the config's
            data.max_len); None skips the check.
        max_prompt_len: fail on a prompt of a prompt or sft row longer than this
            (data.max_prompt_len: sampling and the held-out evaluation); None skips it.

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
    spec = tokenizer
    if isinstance(tokenizer, str):
        from rl_lm.models.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    paths = {"train": train, "test": test}
    examples = {}
    for split, path in paths.items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{split} file {path} of jsonl dataset {name!r} not found.")
        if path is not None:  # Fail before anything is written.
            examples[split] = read_jsonl(path, kind, tokenizer, max_len, max_prompt_len)
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
        examples=examples,
        tokenizer=str(spec),
        config=config,
        data_dir=os.fspath(storage.resolve_data_dir(data_dir)),
        file_format=storage.FILE_FORMAT,
    )
    storage.prepare(builder, overwrite=overwrite)
    return out
