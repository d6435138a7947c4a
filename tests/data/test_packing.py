"""Sequence packing: first-fit by hand, the packed layout, errors, the packed sft stream."""

import itertools

import numpy as np
import pytest

from rl_lm.data import packing, pipeline
from rl_lm.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()  # bytes 0..255, PAD=256, BOS=257, EOS=258
PAD, BOS, EOS = 256, 257, 258


def _ex(tokens, mask, index=None):
    ex = {"tokens": np.asarray(tokens, np.int32), "loss_mask": np.asarray(mask, np.int32)}
    if index is not None:
        ex["index"] = index
    return ex


def _sft_source(n=24):
    return [{"prompt": f"{i}+{i * 7}=".encode(), "response": str(8 * i).encode()} for i in range(n)]


def test_first_fit_by_hand():
    # 3 -> row 0 (3 left); 4 -> row 1 (2 left); 2 -> row 0 (1 left); 2 -> row 1; 1 -> row 0.
    assert packing.first_fit([3, 4, 2, 2, 1], num_rows=2, max_len=6) == [0, 1, 0, 1, 0]
    # An exact fit fills a row; the next example opens the next one.
    assert packing.first_fit([6, 1, 5], num_rows=3, max_len=6) == [0, 1, 1]


def test_pack_by_hand():
    examples = [
        _ex([1, 2, 3], [0, 1, 1]),
        _ex([4, 5, 6, 7], [0, 0, 1, 1]),
        _ex([8, 9], [1, 1]),  # A mask on the first token is dropped: nothing precedes it.
    ]
    out = packing.pack(examples, num_rows=2, max_len=6, pad_id=0)
    assert set(out) == {"tokens", "loss_mask", "segment_ids", "positions"}
    assert all(v.dtype == np.int32 and v.shape == (2, 6) for v in out.values())
    np.testing.assert_array_equal(out["tokens"], [[1, 2, 3, 8, 9, 0], [4, 5, 6, 7, 0, 0]])
    np.testing.assert_array_equal(out["loss_mask"], [[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(out["segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])


def test_pack_leaves_unused_rows_as_padding():
    out = packing.pack([_ex([5, 6], [0, 1])], num_rows=3, max_len=4, pad_id=9)
    np.testing.assert_array_equal(out["tokens"], [[5, 6, 9, 9], [9] * 4, [9] * 4])
    assert out["segment_ids"][1:].sum() == 0 and out["loss_mask"][1:].sum() == 0


def test_pack_is_deterministic():
    rng = np.random.default_rng(0)
    examples = [_ex(rng.integers(0, 9, n), np.ones(n)) for n in rng.integers(1, 7, 20)]
    a = packing.pack(examples, num_rows=12, max_len=8, pad_id=0)
    b = packing.pack(examples, num_rows=12, max_len=8, pad_id=0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_an_example_longer_than_a_row_is_named():
    examples = [_ex([1, 2], [0, 1], index=3), _ex([1] * 7, [0] * 7, index=41)]
    with pytest.raises(ValueError, match=r"example 41 is 7 tokens.*max_len=6"):
        packing.pack(examples, num_rows=4, max_len=6, pad_id=0)


def test_too_few_rows_names_pack_rows():
    with pytest.raises(ValueError, match=r"example 2 found no room.*data.pack_rows"):
        packing.first_fit([4, 4, 4], num_rows=2, max_len=6)


def _segments(batch):
    """Every (tokens, loss_mask) segment of a batch, as tuples, in a canonical order."""
    out = []
    for r in range(batch["tokens"].shape[0]):
        seg = batch.get("segment_ids", (batch["tokens"] != PAD).astype(np.int32))[r]
        for s in set(seg.tolist()) - {0}:
            out.append(
                (tuple(batch["tokens"][r][seg == s]), tuple(batch["loss_mask"][r][seg == s]))
            )
    return sorted(out)


def test_packed_stream_holds_each_steps_examples():
    kwargs = dict(batch_size=12, seed=3, start_step=1)
    plain = pipeline.sft_batches(_sft_source(), TOK, max_len=12, **kwargs)
    packed = pipeline.sft_batches(_sft_source(), TOK, max_len=32, pack_rows=6, **kwargs)
    for a, b in itertools.islice(zip(plain, packed, strict=True), 3):
        assert b["tokens"].shape == (6, 32)
        assert _segments(a) == _segments(b)
        assert int(a["loss_mask"].sum()) == int(b["loss_mask"].sum())


def test_packed_stream_splits_over_processes():
    kwargs = dict(batch_size=12, max_len=32, seed=0, pack_rows=6)
    whole = next(pipeline.sft_batches(_sft_source(), TOK, **kwargs))
    parts = [
        next(pipeline.sft_batches(_sft_source(), TOK, process_index=p, process_count=2, **kwargs))
        for p in range(2)
    ]
    assert all(p["tokens"].shape == (3, 32) for p in parts)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert _segments(merged) == _segments(whole)


def test_packed_stream_errors():
    with pytest.raises(ValueError, match="pack_rows=3 must be a positive multiple"):
        pipeline.sft_batches(
            _sft_source(), TOK, batch_size=4, max_len=32, seed=0, pack_rows=3, process_count=2
        )
    batches = pipeline.sft_batches(
        _sft_source(), TOK, batch_size=12, max_len=8, seed=0, pack_rows=12
    )
    with pytest.raises(ValueError, match=r"example \d+ is \d+ tokens"):
        next(batches)
