"""Tests for rl_lm.core.steps."""

import jax
import numpy as np
import pytest

from rl_lm.core import steps

# Byte tokenizer ids (rl_lm.models.tokenizer.ByteTokenizer): bytes are 0..255.
NL, PAD, EOS = 10, 256, 258

# One compiled program per shape runs faster than op-by-op dispatch; test_step_helpers
# and test_bad_input_fails_early call the function eagerly.
segment = jax.jit(steps.segment_steps, static_argnames=("delimiter_ids", "max_steps", "eos_id"))


def encode(texts, t, eos=False, pad_id=PAD):
    """Byte-encodes responses into padded [N, T] tokens and a response mask."""
    tokens = np.full((len(texts), t), pad_id, np.int32)
    mask = np.zeros((len(texts), t), np.int32)
    for i, text in enumerate(texts):
        ids = list(text.encode()) + ([EOS] if eos else [])
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    return tokens, mask


def reference_segmentation(tokens, mask, delims, s_max, eos_id=None):
    """Loop reference: walks each response and cuts after every delimiter."""
    n, t = tokens.shape
    step_end = np.full((n, s_max), -1)
    token_step = np.full((n, t), -1)
    num, overflow = np.zeros(n, int), np.zeros(n, bool)
    for i in range(n):
        positions = [j for j in range(t) if mask[i, j]]
        steps_i, current = [], []
        for k, j in enumerate(positions):
            current.append(j)
            is_last = k == len(positions) - 1
            next_is_joining_eos = (
                eos_id is not None
                and k == len(positions) - 2
                and tokens[i, positions[-1]] == eos_id
            )
            if (tokens[i, j] in delims and not next_is_joining_eos) or is_last:
                steps_i.append(current)
                current = []
        overflow[i] = len(steps_i) > s_max
        if overflow[i]:
            steps_i = steps_i[: s_max - 1] + [sum(steps_i[s_max - 1 :], [])]
        num[i] = len(steps_i)
        for s, members in enumerate(steps_i):
            step_end[i, s] = members[-1]
            token_step[i, members] = s
    return step_end, num, token_step, overflow


def check_against_reference(out, tokens, mask, delims, s_max, eos_id=None):
    step_end, num, token_step, overflow = reference_segmentation(
        tokens, mask, delims, s_max, eos_id
    )
    np.testing.assert_array_equal(out.step_end_NxS, step_end)
    np.testing.assert_array_equal(out.num_steps_N, num)
    np.testing.assert_array_equal(out.token_step_NxT, token_step)
    np.testing.assert_array_equal(out.overflow_N, overflow)
    np.testing.assert_array_equal(out.step_mask_NxS, np.arange(s_max)[None] < num[:, None])


def test_arithmetic_chain_hand_values():
    # "1+2=3\n" is tokens 0..5, "3*4=12\n" 6..12, "#### 12" 13..19.
    tokens, mask = encode(["1+2=3\n3*4=12\n#### 12"], 24)
    out = segment(tokens, mask, NL, max_steps=4)
    np.testing.assert_array_equal(out.step_end_NxS, [[5, 12, 19, -1]])
    np.testing.assert_array_equal(out.step_mask_NxS, [[True, True, True, False]])
    np.testing.assert_array_equal(out.num_steps_N, [3])
    np.testing.assert_array_equal(out.token_step_NxT, [[0] * 6 + [1] * 7 + [2] * 7 + [-1] * 4])
    np.testing.assert_array_equal(out.overflow_N, [False])


def test_eos_belongs_to_last_step():
    # Row 0: "1+2=3\n" is 0..5, "#### 3" 6..11, EOS 12. Row 1: "a\nb\n" 0..3, EOS 4.
    tokens, mask = encode(["1+2=3\n#### 3", "a\nb\n"], 14, eos=True)
    plain = segment(tokens, mask, NL, max_steps=4)
    # Without eos_id an EOS after a trailing newline is a step of its own.
    np.testing.assert_array_equal(plain.step_end_NxS, [[5, 12, -1, -1], [1, 3, 4, -1]])
    joined = segment(tokens, mask, NL, max_steps=4, eos_id=EOS)
    np.testing.assert_array_equal(joined.step_end_NxS, [[5, 12, -1, -1], [1, 4, -1, -1]])
    np.testing.assert_array_equal(joined.token_step_NxT[1, :6], [0, 0, 1, 1, 1, -1])


def test_trailing_delimiter_without_eos_and_empty_response():
    tokens, mask = encode(["a\nb\n", ""], 6)
    out = segment(tokens, mask, NL, max_steps=3)
    np.testing.assert_array_equal(out.step_end_NxS, [[1, 3, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(out.num_steps_N, [2, 0])
    np.testing.assert_array_equal(out.step_mask_NxS, [[True, True, False], [False] * 3])
    np.testing.assert_array_equal(out.token_step_NxT[1], [-1] * 6)


def test_padding_made_of_delimiters_is_ignored():
    tokens, mask = encode(["ab\ncd", "x"], 8, pad_id=NL)
    out = segment(tokens, mask, NL, max_steps=3)
    np.testing.assert_array_equal(out.step_end_NxS, [[2, 4, -1], [0, -1, -1]])
    np.testing.assert_array_equal(out.token_step_NxT[1], [0] + [-1] * 7)


def test_overflow_merges_into_last_slot():
    tokens, mask = encode(["a\nb\nc\nd", "a\nb"], 7)
    out = segment(tokens, mask, NL, max_steps=2)
    np.testing.assert_array_equal(out.step_end_NxS, [[1, 6], [1, 2]])
    np.testing.assert_array_equal(out.token_step_NxT[0], [0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(out.overflow_N, [True, False])
    np.testing.assert_array_equal(out.num_steps_N, [2, 2])


def test_several_delimiters():
    tokens, mask = encode(["x=1;y=2\nz"], 9)
    out = segment(tokens, mask, (NL, ord(";")), max_steps=4)
    np.testing.assert_array_equal(out.step_end_NxS, [[3, 7, 8, -1]])


@pytest.mark.parametrize("eos_id", [None, EOS])
def test_random_batches_match_loop_reference_under_jit(eos_id):
    rng = np.random.default_rng(0)
    n, t, s_max = 16, 12, 3
    alphabet = np.array([NL, NL, ord("a"), ord("b"), ord(";"), EOS])
    tokens = rng.choice(alphabet, size=(n, t)).astype(np.int32)
    lengths = rng.integers(0, t + 1, size=n)
    lengths[0] = 0
    tokens[1, :3], lengths[1] = [ord("a"), NL, EOS], 3
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    delims = (NL, ord(";"))
    out = segment(tokens, mask, delimiter_ids=delims, max_steps=s_max, eos_id=eos_id)
    check_against_reference(out, tokens, mask, delims, s_max, eos_id)
    assert out.overflow_N.any() and (out.num_steps_N == 0).any()


def test_step_helpers():
    tokens, mask = encode(["1+2=3\n3*4=12\n#### 12", "a\nb"], 22)
    out = steps.segment_steps(tokens, mask, NL, max_steps=4)
    positions = np.broadcast_to(np.arange(22.0), (2, 22))
    np.testing.assert_array_equal(
        steps.values_at_step_ends(positions, out.step_end_NxS, out.step_mask_NxS),
        [[5, 12, 19, 0], [1, 2, 0, 0]],
    )
    lengths = steps.sum_per_step(np.ones((2, 22), np.float32) * mask, out.token_step_NxT, 4)
    np.testing.assert_array_equal(lengths, [[6, 7, 7, 0], [2, 1, 0, 0]])
    # Garbage off the response never reaches the sums.
    garbage = np.where(mask > 0, 1.0, np.nan).astype(np.float32)
    np.testing.assert_array_equal(steps.sum_per_step(garbage, out.token_step_NxT, 4), lengths)
    per_token = steps.steps_to_tokens(np.array([[1.0, 2, 3, 9], [4, 5, 9, 9]]), out.token_step_NxT)
    np.testing.assert_array_equal(per_token[0], [1] * 6 + [2] * 7 + [3] * 7 + [0] * 2)
    np.testing.assert_array_equal(per_token[1], [4, 4, 5] + [0] * 19)


def test_last_token_mask():
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(
        steps.last_token_mask(mask), [[False, True, False], [False] * 3, [False, False, True]]
    )


def test_bad_input_fails_early():
    tokens, mask = encode(["a"], 2)
    with pytest.raises(ValueError, match="max_steps"):
        steps.segment_steps(tokens, mask, NL, max_steps=0)
    with pytest.raises(ValueError, match="delimiter_ids"):
        steps.segment_steps(tokens, mask, (), max_steps=2)
    with pytest.raises(ValueError, match="must both be"):
        steps.segment_steps(tokens, mask[:, :1], NL, max_steps=2)
