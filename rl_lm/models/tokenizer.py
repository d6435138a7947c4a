"""Tokenizers: a byte-level one for from-scratch models and a local Hugging Face wrapper.

Every tokenizer exposes the same small interface (`Tokenizer`): `encode` / `decode`
for one text, and `encode_batch` / `decode_batch` for padded int32 arrays with a
mask, which is what samplers and data pipelines consume. Nothing here downloads:
Hugging Face tokenizers are read from a local directory holding `tokenizer.json`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_PAD_SIDES = ("left", "right")
_TRUNCATE_MODES = ("error", "left", "right")


class Tokenizer(abc.ABC):
    """Interface shared by all tokenizers.

    Attributes:
        vocab_size: one more than the largest id the tokenizer can produce; a model's
            embedding table needs at least this many rows.
        pad_id: id written into padding positions (never attended to; see the mask).
        bos_id: beginning-of-sequence id, or None when the tokenizer has none.
        eos_id: the end-of-sequence id appended by `add_eos`.
        eos_ids: every id that ends a sequence (`eos_id` first); chat models often
            have several (e.g. end-of-turn and end-of-text).
        chat_template: the Jinja chat template of the checkpoint, or None (see
            `rl_lm.data.chat`).
        special_tokens: the named special tokens as text ({"bos_token": ..., ...}),
            the variables a chat template sees besides the messages.
    """

    vocab_size: int
    pad_id: int
    bos_id: int | None
    eos_id: int
    eos_ids: tuple[int, ...]
    chat_template: str | None = None
    special_tokens: dict[str, str] = {}

    @abc.abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Ids of `text` alone, without any special token."""

    @abc.abstractmethod
    def _decode_ids(self, ids: list[int], skip_special: bool) -> str:
        """Text of `ids`; pad/bos/eos have already been dropped when skip_special."""

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._encode_text(t) for t in texts]

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of pad, bos and every eos."""
        ids = {self.pad_id, *self.eos_ids}
        if self.bos_id is not None:
            ids.add(self.bos_id)
        return frozenset(ids)

    def _specials(self, add_bos: bool, add_eos: bool) -> tuple[list[int], list[int]]:
        if add_bos and self.bos_id is None:
            raise ValueError(
                f"add_bos=True but {type(self).__name__} has no BOS token; pass "
                "add_bos=False (e.g. add_bos=tokenizer.bos_id is not None)."
            )
        return ([self.bos_id] if add_bos else []), ([self.eos_id] if add_eos else [])

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Encodes one text.

        Args:
            text: the text.
            add_bos: prepend `bos_id` (raises if the tokenizer has none).
            add_eos: append `eos_id`.

        Returns:
            The token ids.
        """
        head, tail = self._specials(add_bos, add_eos)
        return head + self._encode_text(text) + tail

    def decode(self, ids: Any, skip_special: bool = True) -> str:
        """Decodes a 1-D sequence of ids (list, numpy or jax array).

        Args:
            ids: token ids; decoding does not stop at EOS (see `decode_batch`).
            skip_special: drop pad, bos and eos ids (and, for Hugging Face
                tokenizers, every token the tokenizer marks as special).

        Returns:
            The text.
        """
        ids_T = np.asarray(ids)
        if ids_T.ndim != 1:
            raise ValueError(
                f"decode takes a 1-D sequence of ids, got shape {ids_T.shape}; "
                "use decode_batch for a [N, T] array."
            )
        if ids_T.size and not np.issubdtype(ids_T.dtype, np.integer):
            raise TypeError(f"decode takes integer ids, got dtype {ids_T.dtype}.")
        out = [int(i) for i in ids_T]
        if skip_special:
            special = self.special_ids
            out = [i for i in out if i not in special]
        return self._decode_ids(out, skip_special)

    def encode_batch(
        self,
        texts: Sequence[str],
        max_len: int,
        pad_side: str = "left",
        add_bos: bool = False,
        add_eos: bool = False,
        truncate: str = "error",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes texts into a padded [N, max_len] array and its mask.

        Truncation cuts text tokens only and keeps a requested BOS / EOS (as Hugging
        Face does), so a truncated prompt still starts with BOS.

        Args:
            texts: N texts.
            max_len: row length T.
            pad_side: "left" (prompts, so generation continues at the right edge)
                or "right".
            add_bos: prepend `bos_id` to each row.
            add_eos: append `eos_id` to each row.
            truncate: what to do with a text longer than max_len: "error" raises,
                "left" keeps its end, "right" keeps its start.

        Returns:
            (ids_NxT, mask_NxT), both int32; mask is 1 on real tokens, 0 on padding.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a sequence of texts, got a single str.")
        if pad_side not in _PAD_SIDES:
            raise ValueError(f"pad_side must be one of {_PAD_SIDES}, got {pad_side!r}.")
        if truncate not in _TRUNCATE_MODES:
            raise ValueError(f"truncate must be one of {_TRUNCATE_MODES}, got {truncate!r}.")
        head, tail = self._specials(add_bos, add_eos)
        budget = max_len - len(head) - len(tail)
        if budget < 1:
            raise ValueError(
                f"max_len={max_len} leaves no room for text after "
                f"{len(head) + len(tail)} special token(s); raise max_len."
            )
        ids_NxT = np.full((len(texts), max_len), self.pad_id, dtype=np.int32)
        mask_NxT = np.zeros((len(texts), max_len), dtype=np.int32)
        for i, body in enumerate(self._encode_texts(texts)):
            if len(body) > budget:
                if truncate == "error":
                    raise ValueError(
                        f"text {i} has {len(body) + len(head) + len(tail)} tokens but "
                        f"max_len is {max_len}; raise the maximum length (the config "
                        "field that sets it) or pass truncate='left' (keep the end) or "
                        "truncate='right' (keep the start)."
                    )
                body = body[-budget:] if truncate == "left" else body[:budget]
            row = head + body + tail
            span = slice(max_len - len(row), max_len) if pad_side == "left" else slice(0, len(row))
            ids_NxT[i, span] = row
            mask_NxT[i, span] = 1
        return ids_NxT, mask_NxT

    def decode_batch(
        self,
        ids_NxT: Any,
        mask_NxT: Any = None,
        skip_special: bool = True,
        stop_at_eos: bool = True,
    ) -> list[str]:
        """Decodes each row of a [N, T] array, stopping at its first EOS.

        Only positions where the mask is 1 are read; within them a row ends just
        before the first id in `eos_ids`. When pad_id is an EOS id (Hugging Face
        tokenizers without a pad token) pass the mask for left-padded rows, or the
        leading pads read as EOS.

        Args:
            ids_NxT: token ids.
            mask_NxT: optional 0/1 array of the same shape.
            skip_special: as in `decode`.
            stop_at_eos: False reads every masked position: a chat prompt's turns
                each end in an end-of-turn id that is also an EOS of the model.

        Returns:
            N texts.
        """
        ids_NxT = np.asarray(ids_NxT)
        if ids_NxT.ndim != 2:
            raise ValueError(f"decode_batch takes a [N, T] array, got shape {ids_NxT.shape}.")
        if mask_NxT is None:
            keep_NxT = np.ones(ids_NxT.shape, dtype=bool)
        else:
            keep_NxT = np.asarray(mask_NxT).astype(bool)
            if keep_NxT.shape != ids_NxT.shape:
                raise ValueError(
                    f"mask shape {keep_NxT.shape} does not match ids shape {ids_NxT.shape}."
                )
        texts = []
        for ids_T, keep_T in zip(ids_NxT, keep_NxT, strict=True):
            row = ids_T[keep_T]
            stops = np.flatnonzero(np.isin(row, self.eos_ids)) if stop_at_eos else []
            if len(stops):
                row = row[: stops[0]]
            texts.append(self.decode(row, skip_special=skip_special))
        return texts


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, then PAD=256, BOS=257, EOS=258 (vocab_size 259).

    Needs no files, so it is the tokenizer of every from-scratch default. Ids outside
    the vocabulary (a model whose embedding table is padded past 259 may sample them)
    decode to U+FFFD, as do invalid UTF-8 byte runs.
    """

    vocab_size = 259
    pad_id = 256
    bos_id = 257
    eos_id = 258
    eos_ids = (258,)
    _NAMES = {256: "<pad>", 257: "<bos>", 258: "<eos>"}

    def _encode_text(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def _decode_ids(self, ids: list[int], skip_special: bool) -> str:
        parts, run = [], bytearray()
        for i in ids:
            if 0 <= i < 256:
                run.append(i)
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            parts.append(self._NAMES.get(i, "\ufffd"))
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` (as `encode`) and each byte's (start, end) character span."""
        ids, offsets = [], []
        for i, char in enumerate(text):
            ids += char.encode("utf-8")
            offsets += [(i, i + 1)] * (len(ids) - len(offsets))
        return ids, offsets

    def __repr__(self) -> str:
        return "ByteTokenizer()"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or remove the file.") from e


def _token_content(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


# The named special tokens a chat template sees, as transformers' special_tokens_map.
_NAMED_TOKENS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _chat_template(directory: Path, tok_config: dict[str, Any]) -> str | None:
    """The template of chat_template.jinja, else tokenizer_config.json's chat_template.

    A list of named templates (older checkpoints) yields the one named "default".
    """
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(
                f"{directory / 'tokenizer_config.json'} lists chat templates {sorted(named)} "
                "but none named 'default'; name the one to use 'default'."
            )
        template = named["default"]
    if template is not None and not isinstance(template, str):
        raise ValueError(
            f"chat_template in {directory / 'tokenizer_config.json'} must be a string or a "
            f"list of named templates, got {type(template).__name__}."
        )
    return template


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


class HFTokenizer(Tokenizer):
    """A local Hugging Face fast tokenizer (`tokenizer.json`), read with `tokenizers`.

    Special tokens come from tokenizer_config.json and special_tokens_map.json when
    either mentions them (an explicit null means "none"), and otherwise from the ids
    in config.json and generation_config.json. With no pad token, eos is used as pad
    (padding is masked, so which id fills it does not matter). BOS / EOS are added by
    this class, never by the tokenizer's own post-processor, so `add_bos` cannot
    double a BOS.
    """

    def __init__(self, path: str | Path):
        """Loads a tokenizer.

        Args:
            path: a directory holding tokenizer.json (and optionally
                tokenizer_config.json, special_tokens_map.json, config.json,
                generation_config.json), or a tokenizer.json file whose directory
                holds those.
        """
        import tokenizers  # Deferred: the byte tokenizer needs no third-party library.

        path = Path(path).expanduser()
        if path.is_file():
            directory, tokenizer_file = path.parent, path
        elif path.is_dir():
            directory, tokenizer_file = path, path / "tokenizer.json"
        else:
            raise FileNotFoundError(
                f"tokenizer path {path} does not exist; expected a local Hugging Face "
                "tokenizer directory holding tokenizer.json (nothing is downloaded)."
            )
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found; expected a Hugging Face fast tokenizer file "
                "there. A directory with only a slow tokenizer (e.g. tokenizer.model) can "
                "be converted once with transformers: "
                "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)."
            )
        self.path = tokenizer_file
        self._tok = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        # A tokenizer.json may carry its own truncation / padding; encode_batch owns both.
        self._tok.no_truncation()
        self._tok.no_padding()

        tok_files = [
            _read_json(directory / "tokenizer_config.json"),
            _read_json(directory / "special_tokens_map.json"),
        ]
        model_files = [
            _read_json(directory / "config.json"),
            _read_json(directory / "generation_config.json"),
        ]
        # Multimodal configs keep the language model's ids under text_config.
        model_files += [f["text_config"] for f in model_files if "text_config" in f]

        def from_tokenizer_files(role: str) -> tuple[bool, int | None]:
            for f in tok_files:
                key = f"{role}_token"
                if key in f:
                    content = _token_content(f[key])
                    return True, None if content is None else self._token_id(content, key)
            return False, None

        def from_model_files(role: str) -> list[int]:
            return [i for f in model_files for i in _id_list(f.get(f"{role}_token_id"))]

        _, eos = from_tokenizer_files("eos")
        eos_ids = ([eos] if eos is not None else []) + from_model_files("eos")
        if not eos_ids:
            raise ValueError(
                f"no EOS token found for the tokenizer in {directory}: set eos_token in "
                "tokenizer_config.json or eos_token_id in config.json."
            )
        self.eos_ids = tuple(dict.fromkeys(eos_ids))
        self.eos_id = self.eos_ids[0]

        named, bos = from_tokenizer_files("bos")
        if not named:
            bos = next(iter(from_model_files("bos")), None)
        self.bos_id = bos

        named, pad = from_tokenizer_files("pad")
        if not named:
            pad = next(iter(from_model_files("pad")), None)
        self.pad_id = self.eos_id if pad is None else pad

        vocab_ids = self._tok.get_vocab(with_added_tokens=True).values()
        self.vocab_size = max([*vocab_ids, *self.special_ids]) + 1

        self.chat_template = _chat_template(directory, tok_files[0])
        self.special_tokens = {}
        for role in _NAMED_TOKENS:
            key = f"{role}_token"
            value = next((f[key] for f in tok_files if key in f), None)
            if _token_content(value) is not None:
                self.special_tokens[key] = _token_content(value)

    def _token_id(self, content: str, key: str) -> int:
        token_id = self._tok.token_to_id(content)
        if token_id is None:
            raise ValueError(
                f"{key} {content!r} is not in the vocabulary of {self.path}; the tokenizer "
                "files disagree: fix tokenizer_config.json / special_tokens_map.json."
            )
        return token_id

    def _encode_text(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def _decode_ids(self, ids: list[int], skip_special: bool) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of `text` (as `encode`) and each token's (start, end) character span."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r})"


def load_tokenizer(spec: str) -> Tokenizer:
    """Builds a tokenizer from a config string.

    Args:
        spec: "byte" for `ByteTokenizer`, or the path of a local Hugging Face tokenizer
            directory (or of its tokenizer.json) for `HFTokenizer`.

    Returns:
        The tokenizer.
    """
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if spec and path.exists():
        return HFTokenizer(path)
    raise ValueError(
        f"unknown tokenizer {spec!r}; expected 'byte' or the path of an existing local "
        "Hugging Face tokenizer directory (holding tokenizer.json) or tokenizer.json file. "
        "Hub names are not downloaded: fetch the directory first and pass its path."
    )


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Fails if the tokenizer can emit ids the model's embedding table lacks.

    A model vocabulary larger than the tokenizer's (padded for efficiency) is fine.

    Args:
        tokenizer: the tokenizer.
        model_vocab_size: rows of the model's embedding table.
    """
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer!r} produces ids up to {tokenizer.vocab_size - 1} "
            f"(vocab_size {tokenizer.vocab_size}) but the model's vocab_size is "
            f"{model_vocab_size}: the tokenizer does not match the checkpoint. Use the "
            "tokenizer shipped with the checkpoint (or a model with vocab_size >= "
            f"{tokenizer.vocab_size})."
        )
