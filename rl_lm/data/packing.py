"""Sequence packing: several tokenized examples side by side in one row.

A packed row holds whole examples (segments) one after another, then padding:

    tokens       [BOS 1 + 2 = 3 EOS BOS 4 + 5 = 9 EOS pad pad]
    segment_ids  [ 1  1 1 1 1 1   2  2 2 2 2 2   0   0 ]
    positions    [ 0  1 2 3 4 5   0  1 2 3 4 5   0   0 ]

With `segment_ids` and `positions` passed to `rl_lm.models.transformer.forward`,
a token attends only to the earlier tokens of its own segment and its RoPE
position restarts at 0, so each segment's logits are those of the example
alone. Segment ids count from 1 within a row; 0 is padding (a segment of its own).

Placement is greedy first-fit in the examples' order: each example goes to the
first row with room for it. It is deterministic, never splits an example, and
keeps every example of the batch, so a packed batch has the same target tokens
as the unpacked one and, under the token-mean SFT loss, the same loss and
gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Batch = dict[str, np.ndarray]


def first_fit(lengths: Sequence[int], num_rows: int, max_len: int, names: Sequence = ()) -> list:
    """The row of each example under greedy first-fit into `num_rows` rows of `max_len`.

    Args:
      lengths: the token count of each example, in placement order.
      num_rows: rows available.
      max_len: tokens per row.
      names: how errors name each example (its source index); defaults to its
        position in `lengths`.

    Returns:
      row_of[i], the row example i goes to.

    Raises:
      ValueError: an example is longer than a row, or the examples need more
        than `num_rows` rows.
    """
    names = list(names) or list(range(len(lengths)))
    free = [max_len] * num_rows
    row_of = []
    for name, n in zip(names, lengths, strict=True):
        if not 0 < n <= max_len:
            raise ValueError(
                f"example {name} is {n} tokens; a packed row holds 1 to max_len={max_len} "
                "tokens of an example (never split across rows): raise data.max_len."
            )
        row = next((r for r, f in enumerate(free) if f >= n), None)
        if row is None:
            raise ValueError(
                f"{len(lengths)} examples ({sum(lengths)} tokens) do not fit in {num_rows} "
                f"packed rows of {max_len} tokens (example {name} found no room); raise "
                "data.pack_rows or data.max_len."
            )
        free[row] -= n
        row_of.append(row)
    return row_of


def pack(
    examples: Sequence[dict[str, np.ndarray]], *, num_rows: int, max_len: int, pad_id: int
) -> Batch:
    """Packs variable-length examples into a fixed [num_rows, max_len] batch.

    Args:
      examples: dicts with "tokens" and "loss_mask", 1-D of one length each, and
        optionally "index" (an int naming the example in errors).
      num_rows: rows R of the batch.
      max_len: tokens per row T.
      pad_id: the padding token.

    Returns:
      {"tokens", "loss_mask", "segment_ids", "positions"}, int32 [R, T]. The loss
      mask is the examples' own except at each segment's first token, which has
      no earlier token of its segment to be predicted from (0, as at position 0
      of an unpacked row); padding has mask 0, segment 0 and position 0.
    """
    lengths = [len(ex["tokens"]) for ex in examples]
    names = [int(ex["index"]) if "index" in ex else i for i, ex in enumerate(examples)]
    row_of = first_fit(lengths, num_rows, max_len, names)
    out = {
        "tokens": np.full((num_rows, max_len), pad_id, np.int32),
        "loss_mask": np.zeros((num_rows, max_len), np.int32),
        "segment_ids": np.zeros((num_rows, max_len), np.int32),
        "positions": np.zeros((num_rows, max_len), np.int32),
    }
    used = [0] * num_rows
    segments = [0] * num_rows
    for ex, row, n in zip(examples, row_of, lengths, strict=True):
        start, stop = used[row], used[row] + n
        segments[row] += 1
        out["tokens"][row, start:stop] = ex["tokens"]
        out["loss_mask"][row, start:stop] = ex["loss_mask"]
        out["loss_mask"][row, start] = 0
        out["segment_ids"][row, start:stop] = segments[row]
        out["positions"][row, start:stop] = np.arange(n)
        used[row] = stop
    return out
