"""grain pipelines from a data source to numpy batches, exactly resumable.

Every process builds the same global stream of examples: each epoch is a new
permutation of the source drawn from (seed, epoch), epochs follow each other
endlessly, and global batch s is stream rows [s*B, (s+1)*B). Process p of P
yields rows [p*b, (p+1)*b) of each global batch (b = B / P) and tokenizes only
those, so the P process batches concatenate to the 1-process batch. A batch is
a pure function of (seed, step): resuming after a crash is `start_step=step`.

Rows follow one convention: position t of `tokens` is a training target
predicted from tokens < t, so a loss mask is 1 exactly on the response and its
EOS (in a conversation, on the assistant turns), never on BOS, the prompt or padding.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from rl_lm.data import packing

# The datasets are small and rows cheap: a little read-ahead overlaps the next
# batch with the train step without holding many batches in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
Batch = dict[str, np.ndarray]


def _text(value: Any) -> str:
    """tfds stores Text features as bytes; in-memory sources may hold str."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _check_source(source: Sequence, fields: tuple[str, ...], caller: str) -> None:
    if len(source) == 0:
        raise ValueError(f"{caller}: the source {source!r:.200} is empty.")
    missing = [f for f in fields if f not in source[0]]
    if missing:
        raise ValueError(
            f"{caller} needs examples with fields {list(fields)}, but {source!r:.200} has "
            f"{sorted(source[0])} (missing {missing}); sft batches take an sft dataset "
            "(arithmetic or jsonl kind 'sft'), prompt batches an sft or 'prompt' one, "
            "preference batches a 'preference' one."
        )


def _stack(rows: Sequence[dict[str, Any]]) -> Batch:
    """Stacks row dicts; str leaves become an object array of python str."""
    return {
        k: np.array([r[k] for r in rows], dtype=object)
        if isinstance(rows[0][k], str)
        else np.stack([r[k] for r in rows])
        for k in rows[0]
    }


def _batches(
    source: Sequence,
    row_fn: Callable[[int, dict], dict],
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    process_index: int,
    process_count: int,
    batch_fn: Callable[[Sequence[dict]], Batch] = _stack,
) -> Iterator[Batch]:
    """This process's slice of every global batch from `start_step` on."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}."
        )
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"the global batch_size {batch_size} must be a positive multiple of "
            f"process_count={process_count}; change the config's batch size."
        )
    if start_step < 0 or not 0 <= seed < 2**32:
        raise ValueError(f"need start_step >= 0 and 0 <= seed < 2**32, got {start_step}, {seed}.")
    b = batch_size // process_count
    # grain seeds epoch e with (its seed + e); scrambling `seed` first keeps runs
    # with seeds s and s+1 from sharing permutations one epoch apart.
    grain_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    rows = grain.MapDataset.range(len(source)).shuffle(seed=grain_seed).repeat()
    rows = rows.map(lambda i: row_fn(int(i), source[int(i)]))
    # Sub-batch k holds stream rows [k*b, (k+1)*b); global step s is sub-batches
    # s*P .. s*P + P - 1, and only the accessed ones are ever read and tokenized.
    # (drop_remainder only keeps grain's length of the endless stream an int.)
    local = rows.batch(b, drop_remainder=True, batch_fn=batch_fn)[
        start_step * process_count + process_index :: process_count
    ]
    return iter(local.to_iter_dataset(_READ_OPTIONS))


def _bos(tokenizer, ids: Sequence[int] = ()) -> list[int]:
    """[BOS], or [] when the tokenizer has none or `ids` (a rendered chat) starts with it."""
    bos = tokenizer.bos_id
    return [] if bos is None or (len(ids) and ids[0] == bos) else [bos]


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """[BOS] + prompt, the row a prompt is sampled from (no second BOS after a chat's)."""
    body = tokenizer.encode(prompt)
    return _bos(tokenizer, body) + body


def target_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """[BOS] + prompt + response + [EOS], and the length of its [BOS] + prompt context."""
    context = prompt_ids(tokenizer, prompt)
    return context + tokenizer.encode(response) + [tokenizer.eos_id], len(context)


def chat_ids(tokenizer, messages: str | Sequence[dict]) -> tuple[list[int], list[int]]:
    """[BOS] + a rendered conversation (JSON text or a list), and its assistant-turn mask.

    No EOS is appended: each assistant turn ends with the template's end-of-turn
    token, which is in the mask (see `rl_lm.data.chat.chat_tokens`).
    """
    from rl_lm.data import chat  # Deferred: only conversations need jinja2.

    if isinstance(messages, str):
        messages = json.loads(messages)
    ids, mask = chat.chat_tokens(tokenizer, messages)
    bos = _bos(tokenizer, ids)
    return bos + ids, [0] * len(bos) + mask


def _target_row(
    tokenizer, index: int, prompt: str, response: str, max_len: int, truncate: bool, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """[BOS] + prompt + response + [EOS], right-padded, and its loss mask."""
    row, context = target_ids(tokenizer, prompt, response)
    return _padded_row(tokenizer, index, row, context, None, max_len, truncate, name)


def _padded_row(tokenizer, index, row, context, mask, max_len, truncate, name):
    """`row` right-padded to max_len; its mask is `mask`, or 1 from `context` on."""
    if len(row) > max_len and not truncate:
        raise ValueError(
            f"example {index}: [BOS] + {name} is {len(row)} tokens, more than "
            f"max_len={max_len}; raise data.max_len or pass truncate=True (which cuts "
            "the end of the row, EOS included)."
        )
    row = row[:max_len]
    tokens_T = np.full(max_len, tokenizer.pad_id, dtype=np.int32)
    tokens_T[: len(row)] = row
    mask_T = np.zeros(max_len, dtype=np.int32)
    if mask is None:
        mask_T[context : len(row)] = 1
    else:
        mask_T[: len(row)] = mask[:max_len]
        mask_T[0] = 0  # Position 0 is never a target (a conversation opening with its reply).
    return tokens_T, mask_T


def segment_ids(
    tokenizer, prompt: str, response: str, segments: str | Sequence
) -> tuple[list[int], list[int]]:
    """[BOS] + prompt + response + [EOS] from the response's [text, trainable] segments.

    Each segment's text is encoded on its own (as a multi-turn sampler appends
    separately encoded observations), so a demonstration tokenizes as a rollout
    does; the loss mask is 1 on the trainable segments and the EOS.
    """
    if isinstance(segments, str):
        try:
            segments = json.loads(segments)
        except json.JSONDecodeError as e:
            raise ValueError(f"segments of prompt {prompt!r} are not JSON: {e}.") from None
    ok = isinstance(segments, list) and all(
        isinstance(s, list | tuple)
        and len(s) == 2
        and isinstance(s[0], str)
        and s[1] in (0, 1)
        and not isinstance(s[1], float)
        for s in segments
    )
    if not ok:
        raise ValueError(
            f"segments of prompt {prompt!r} must be a list of [text, trainable] pairs, "
            f"trainable 0 or 1; got {segments!r:.300}."
        )
    if "".join(text for text, _ in segments) != response:
        raise ValueError(
            f"segments of prompt {prompt!r} do not concatenate to its response "
            f"{response!r:.300}: {segments!r:.300}."
        )
    row = prompt_ids(tokenizer, prompt)
    mask = [0] * len(row)
    for text, trainable in segments:
        ids = tokenizer.encode(text)
        row += ids
        mask += [int(trainable)] * len(ids)
    return row + [tokenizer.eos_id], mask + [1]


def _sft_ids(tokenizer, ex) -> tuple[list[int], int, list[int] | None, str]:
    """An sft example's row, its context length or loss mask, and its name in errors."""
    messages = _text(ex.get("messages", ""))
    if messages:
        row, mask = chat_ids(tokenizer, messages)
        return row, 0, mask, "conversation"
    segments = _text(ex.get("segments", ""))
    if segments:
        prompt, response = _text(ex["prompt"]), _text(ex["response"])
        row, mask = segment_ids(tokenizer, prompt, response, segments)
        return row, 0, mask, "prompt + response segments + [EOS]"
    row, context = target_ids(tokenizer, _text(ex["prompt"]), _text(ex["response"]))
    return row, context, None, "prompt + response + [EOS]"


def _sft_row(tokenizer, max_len, truncate, index, ex):
    row, context, mask, name = _sft_ids(tokenizer, ex)
    tokens_T, mask_T = _padded_row(tokenizer, index, row, context, mask, max_len, truncate, name)
    return {"tokens": tokens_T, "loss_mask": mask_T}


def _sft_segment(tokenizer, max_len, truncate, index, ex):
    """An sft example unpadded, for packing (`packing.pack` checks its length)."""
    row, context, mask, _ = _sft_ids(tokenizer, ex)
    if mask is None:
        mask = [0] * context + [1] * (len(row) - context)
    n = min(len(row), max_len) if truncate else len(row)
    return {
        "tokens": np.asarray(row[:n], np.int32),
        "loss_mask": np.asarray(mask[:n], np.int32),
        "index": index,
    }


def _preference_row(tokenizer, max_len, truncate, index, ex):
    prompt = _text(ex["prompt"])
    out = {}
    for side in ("chosen", "rejected"):
        out[side], out[f"{side}_mask"] = _target_row(
            tokenizer, index, prompt, _text(ex[side]), max_len, truncate, f"prompt + {side} + [EOS]"
        )
    return out


def _prompt_row(tokenizer, max_prompt_len, truncate, index, ex):
    row = prompt_ids(tokenizer, _text(ex["prompt"]))
    bos = _bos(tokenizer)
    if len(row) > max_prompt_len:
        if not truncate:
            raise ValueError(
                f"example {index}: [BOS] + prompt is {len(row)} tokens, more than "
                f"max_prompt_len={max_prompt_len}; raise data.max_prompt_len or pass "
                "truncate=True (which keeps BOS and the end of the prompt)."
            )
        row = bos + row[len(row) - max_prompt_len + len(bos) :]
    prompt_P = np.full(max_prompt_len, tokenizer.pad_id, dtype=np.int32)
    mask_P = np.zeros(max_prompt_len, dtype=np.int32)
    prompt_P[max_prompt_len - len(row) :] = row
    mask_P[max_prompt_len - len(row) :] = 1
    return {"prompt": prompt_P, "prompt_mask": mask_P, "answer": _text(ex.get("answer", ""))}


def sft_batches(
    source: Sequence,
    tokenizer,
    *,
    batch_size: int,
    max_len: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    truncate: bool = False,
    pack_rows: int | None = None,
) -> Iterator[Batch]:
    """Endless supervised batches of prompt + response rows, or of conversations.

    An example whose "messages" (a conversation as JSON text) is non-empty becomes
    [BOS] + the conversation rendered with the tokenizer's chat template, with the
    loss on its assistant turns (`chat_ids`); one whose "segments" (JSON [text,
    trainable] pairs of its response) is non-empty, prompt + response with the loss
    on the trainable segments (`segment_ids`); the others, prompt + response.

    Args:
        source: random-access examples with "prompt" and "response", and optionally
            "messages" (e.g. `load_source`).
        tokenizer: a `rl_lm.models.tokenizer.Tokenizer`.
        batch_size: the global batch B (a multiple of process_count).
        max_len: row length T.
        seed: shuffling seed; batches are a pure function of (seed, step).
        start_step: first global step to yield (exact resume).
        process_index: this process p.
        process_count: number of processes P.
        truncate: cut rows longer than max_len instead of raising.
        pack_rows: pack each step's B examples into this many rows R of max_len
            (`rl_lm.data.packing`, greedy first-fit), a multiple of process_count;
            None gives one example per row. A step whose examples need more rows
            raises, naming `data.pack_rows`.

    Returns:
        An iterator of {"tokens": int32 [B/P, T], "loss_mask": int32 [B/P, T]}; a row
        is [BOS] + prompt + response + [EOS] right-padded with pad_id, loss_mask is 1
        on the response and EOS (a conversation: on its assistant turns). Packed,
        [R/P, T] rows of the same B/P examples, with "segment_ids" and "positions"
        (`packing.pack`).
    """
    _check_source(source, ("prompt", "response"), "sft_batches")
    batch_fn = _stack
    row_fn = functools.partial(_sft_row, tokenizer, max_len, truncate)
    if pack_rows is not None:
        if pack_rows < 1 or pack_rows % process_count:
            raise ValueError(
                f"pack_rows={pack_rows} must be a positive multiple of process_count="
                f"{process_count}; change data.pack_rows."
            )
        row_fn = functools.partial(_sft_segment, tokenizer, max_len, truncate)
        batch_fn = functools.partial(
            packing.pack,
            num_rows=pack_rows // process_count,
            max_len=max_len,
            pad_id=tokenizer.pad_id,
        )
    return _batches(
        source,
        row_fn,
        batch_size=batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        batch_fn=batch_fn,
    )


def preference_batches(
    source: Sequence,
    tokenizer,
    *,
    batch_size: int,
    max_len: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    truncate: bool = False,
) -> Iterator[Batch]:
    """Endless preference batches: chosen and rejected rows built like `sft_batches`.

    Args: as `sft_batches`, with a source of "prompt", "chosen", "rejected" examples.

    Returns:
        An iterator of {"chosen", "chosen_mask", "rejected", "rejected_mask"}, each
        int32 [B/P, T]; each mask is 1 on its response and EOS.
    """
    _check_source(source, ("prompt", "chosen", "rejected"), "preference_batches")
    row_fn = functools.partial(_preference_row, tokenizer, max_len, truncate)
    return _batches(
        source,
        row_fn,
        batch_size=batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
    )


def prompt_batches(
    source: Sequence,
    tokenizer,
    *,
    batch_size: int,
    max_prompt_len: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    truncate: bool = False,
) -> Iterator[Batch]:
    """Endless batches of left-padded prompts for sampling, with their answers.

    Args: as `sft_batches`, with `max_prompt_len` (P) for max_len; the source needs
        "prompt" and may have "answer" ("" where absent).

    Returns:
        An iterator of {"prompt": int32 [B/P, P] ([BOS] + prompt, left-padded),
        "prompt_mask": int32 [B/P, P], "answer": object array [B/P] of python str}.
    """
    _check_source(source, ("prompt",), "prompt_batches")
    row_fn = functools.partial(_prompt_row, tokenizer, max_prompt_len, truncate)
    return _batches(
        source,
        row_fn,
        batch_size=batch_size,
        seed=seed,
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
    )


def eval_examples(source: Sequence, n: int | None = None) -> list[dict[str, str]]:
    """The first n examples (all when None) in stored order, as dicts of python str.

    Stored order is fixed (tfds shuffling is disabled for the local builders), so
    this is a fixed held-out set.
    """
    if n is None:
        n = len(source)
    if not 0 <= n <= len(source):
        raise ValueError(f"eval_examples: asked for {n} examples, the source has {len(source)}.")
    return [{k: _text(v) for k, v in source[i].items()} for i in range(n)]
