"""grain pipelines: row layout, masks, multi-host slicing, exact resume, errors."""

import itertools

import numpy as np
import pytest

from rl_lm.data import pipeline, registry
from rl_lm.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()  # bytes 0..255, PAD=256, BOS=257, EOS=258
PAD, BOS, EOS = 256, 257, 258


class NoBosTokenizer(ByteTokenizer):
    bos_id = None


def _sft_source(n=10):
    # Varying lengths, bytes values as tfds returns them.
    return [
        {"prompt": f"{i}+{i * 7}=".encode(), "response": str(8 * i).encode(), "answer": str(8 * i)}
        for i in range(n)
    ]


def _take(it, n):
    return list(itertools.islice(it, n))


def test_sft_row_by_hand():
    src = [{"prompt": "1+2=", "response": "3"}]
    (batch,) = _take(pipeline.sft_batches(src, TOK, batch_size=1, max_len=10, seed=0), 1)
    assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.int32
    np.testing.assert_array_equal(batch["tokens"], [[BOS, 49, 43, 50, 61, 51, EOS, PAD, PAD, PAD]])
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 0, 0, 0, 1, 1, 0, 0, 0]])


def test_sft_row_without_bos():
    src = [{"prompt": "1+2=", "response": "3"}]
    (batch,) = _take(
        pipeline.sft_batches(src, NoBosTokenizer(), batch_size=1, max_len=7, seed=0), 1
    )
    np.testing.assert_array_equal(batch["tokens"], [[49, 43, 50, 61, 51, EOS, PAD]])
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 0, 0, 1, 1, 0]])


def test_loss_mask_covers_exactly_response_and_eos():
    src = _sft_source()
    (batch,) = _take(pipeline.sft_batches(src, TOK, batch_size=10, max_len=16, seed=1), 1)
    for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
        prompt_end = int(np.flatnonzero(tokens == ord("="))[0]) + 1
        eos = int(np.flatnonzero(tokens == EOS)[0])
        expected = np.zeros_like(mask)
        expected[prompt_end : eos + 1] = 1
        np.testing.assert_array_equal(mask, expected)
        prompt, response = TOK.decode(tokens[:prompt_end]), TOK.decode(tokens[mask == 1])
        assert str(eval(prompt[:-1])) == response
        assert (tokens[eos + 1 :] == PAD).all()


def test_prompt_left_padding_by_hand():
    src = [{"prompt": b"1+2=", "response": b"3", "answer": b"3"}]
    (batch,) = _take(pipeline.prompt_batches(src, TOK, batch_size=2, max_prompt_len=8, seed=0), 1)
    np.testing.assert_array_equal(batch["prompt"], [[PAD, PAD, PAD, BOS, 49, 43, 50, 61]] * 2)
    np.testing.assert_array_equal(batch["prompt_mask"], [[0, 0, 0, 1, 1, 1, 1, 1]] * 2)
    assert batch["answer"].dtype == object and batch["answer"].tolist() == ["3", "3"]
    assert type(batch["answer"][0]) is str


def test_preference_rows_by_hand():
    src = [{"prompt": "1+2=", "chosen": "3", "rejected": "12"}]
    (batch,) = _take(pipeline.preference_batches(src, TOK, batch_size=1, max_len=9, seed=0), 1)
    np.testing.assert_array_equal(batch["chosen"], [[BOS, 49, 43, 50, 61, 51, EOS, PAD, PAD]])
    np.testing.assert_array_equal(batch["chosen_mask"], [[0, 0, 0, 0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch["rejected"], [[BOS, 49, 43, 50, 61, 49, 50, EOS, PAD]])
    np.testing.assert_array_equal(batch["rejected_mask"], [[0, 0, 0, 0, 0, 1, 1, 1, 0]])


@pytest.mark.parametrize("make", ["sft", "prompt"])
def test_processes_concatenate_to_the_global_batch(make):
    def batches(**kw):
        if make == "sft":
            return pipeline.sft_batches(_sft_source(), TOK, batch_size=4, max_len=16, seed=5, **kw)
        return pipeline.prompt_batches(
            _sft_source(), TOK, batch_size=4, max_prompt_len=9, seed=5, **kw
        )

    steps = 7  # 28 rows: crosses two epoch boundaries of the 10 examples.
    whole = _take(batches(), steps)
    parts = [_take(batches(process_index=p, process_count=2), steps) for p in range(2)]
    for s in range(steps):
        assert parts[0][s].keys() == whole[s].keys()
        for k in whole[s]:
            assert parts[0][s][k].shape[0] == 2
            np.testing.assert_array_equal(
                np.concatenate([parts[0][s][k], parts[1][s][k]]), whole[s][k]
            )


def test_start_step_resumes_exactly():
    def batches(**kw):
        return pipeline.prompt_batches(
            _sft_source(),
            TOK,
            batch_size=4,
            max_prompt_len=9,
            seed=2,
            process_index=1,
            process_count=2,
            **kw,
        )

    straight = _take(batches(), 9)
    resumed = _take(batches(start_step=4), 5)
    for a, b in zip(straight[4:], resumed, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_each_epoch_is_a_new_permutation():
    src = [{"prompt": "p", "answer": str(i)} for i in range(8)]
    it = pipeline.prompt_batches(src, TOK, batch_size=4, max_prompt_len=4, seed=0)
    answers = [a for batch in _take(it, 6) for a in batch["answer"]]
    epochs = [answers[i : i + 8] for i in range(0, 24, 8)]
    for epoch in epochs:
        assert sorted(epoch, key=int) == [str(i) for i in range(8)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    # Seed 1's first epoch is neither seed 0's first nor its second.
    other = pipeline.prompt_batches(src, TOK, batch_size=8, max_prompt_len=4, seed=1)
    assert next(other)["answer"].tolist() not in epochs[:2]


def test_too_long_rows_raise_unless_truncated():
    src = [{"prompt": "1+2=", "response": "333", "answer": "333"}]
    with pytest.raises(
        ValueError, match=r"example 0: .* is 9 tokens, more than max_len=6; raise data.max_len"
    ):
        next(pipeline.sft_batches(src, TOK, batch_size=1, max_len=6, seed=0))
    with pytest.raises(ValueError, match=r"example 0: .* is 5 tokens, .*raise data.max_prompt_len"):
        next(pipeline.prompt_batches(src, TOK, batch_size=1, max_prompt_len=3, seed=0))
    with pytest.raises(ValueError, match=r"example 0: .*rejected.*raise data.max_len"):
        pref = [{"prompt": "1+2=", "chosen": "3", "rejected": "333"}]
        next(pipeline.preference_batches(pref, TOK, batch_size=1, max_len=7, seed=0))

    batch = next(pipeline.sft_batches(src, TOK, batch_size=1, max_len=6, seed=0, truncate=True))
    np.testing.assert_array_equal(batch["tokens"], [[BOS, 49, 43, 50, 61, 51]])
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 0, 0, 0, 1]])
    batch = next(
        pipeline.prompt_batches(src, TOK, batch_size=1, max_prompt_len=3, seed=0, truncate=True)
    )
    np.testing.assert_array_equal(batch["prompt"], [[BOS, 50, 61]])


def test_bad_arguments():
    src = _sft_source()
    with pytest.raises(
        ValueError, match="batch_size 3 must be a positive multiple of process_count=2"
    ):
        pipeline.sft_batches(src, TOK, batch_size=3, max_len=16, seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index < process_count"):
        pipeline.sft_batches(
            src, TOK, batch_size=4, max_len=16, seed=0, process_index=2, process_count=2
        )
    pref = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
    with pytest.raises(ValueError, match=r"sft_batches needs .*missing \['response'\]"):
        pipeline.sft_batches(pref, TOK, batch_size=1, max_len=8, seed=0)
    with pytest.raises(ValueError, match="is empty"):
        pipeline.prompt_batches([], TOK, batch_size=1, max_prompt_len=8, seed=0)


def test_eval_examples():
    src = _sft_source(5)
    got = pipeline.eval_examples(src, 2)
    assert got == [
        {"prompt": "0+0=", "response": "0", "answer": "0"},
        {"prompt": "1+7=", "response": "8", "answer": "8"},
    ]
    assert len(pipeline.eval_examples(src)) == 5
    with pytest.raises(ValueError, match="asked for 6 examples, the source has 5"):
        pipeline.eval_examples(src, 6)


def test_arithmetic_source_end_to_end(tmp_path):
    name = registry.dataset_name("arithmetic", ops="+-", train_size=64, test_size=16)
    source = registry.load_source(name, "train", data_dir=tmp_path)
    batches = pipeline.sft_batches(source, TOK, batch_size=8, max_len=12, seed=0)
    for batch in _take(batches, 3):
        for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
            prompt = TOK.decode(tokens[(mask == 0) & (tokens != PAD)])
            assert TOK.decode(tokens[mask == 1]) == str(eval(prompt[:-1]))
    prompts = pipeline.prompt_batches(source, TOK, batch_size=8, max_prompt_len=8, seed=0)
    batch = next(prompts)
    texts = TOK.decode_batch(batch["prompt"], batch["prompt_mask"])
    assert [str(eval(t[:-1])) for t in texts] == batch["answer"].tolist()
