"""Chain step checkers: hand cases, the exploitable lenient scorer, and step slots that
line up with `core.steps.segment_steps` on the byte-tokenized responses."""

import jax
import numpy as np
import pytest

from rl_lm.core import steps as core_steps
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards import steps

PROMPT = "12 +5 *3 -7:"
SOLUTION = "12+5=17\n17*3=51\n51-7=44\n#### 44"


def test_prompt_round_trip_and_canonical_solution():
    assert steps.parse_prompt(PROMPT) == (12, [("+", 5), ("*", 3), ("-", 7)])
    assert steps.format_prompt(12, [("+", 5), ("*", 3), ("-", 7)]) == PROMPT
    assert "\n".join(steps.solve(PROMPT)) == SOLUTION  # left to right, not 12+5*3-7 = 20
    with pytest.raises(ValueError, match="not a chain prompt"):
        steps.parse_prompt("12+5*3-7=")


@pytest.mark.parametrize(
    "response, strict, lenient, local, restate",
    [
        (SOLUTION, [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]),
        (
            SOLUTION + "\n",
            [1, 1, 1, 1],
            [1, 1, 1, 1],
            [1, 1, 1, 1],
            [1, 1, 1, 1],
        ),  # a trailing newline adds no step
        # Arithmetic error in step 2; step 3 is right arithmetic on the wrong value.
        (
            "12+5=17\n17*3=50\n50-7=43\n#### 43",
            [1, 0, 0, 0],
            [1, 0, 1, 1],
            [1, 0, 1, 1],
            [1, 0, 0, 0],
        ),
        # A repeated correct step: it looks right, but it is not the next step.
        (
            "12+5=17\n12+5=17\n17*3=51\n51-7=44\n#### 44",
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 0, 1, 1, 1],
            [1, 1, 1, 1, 1],
        ),
        # A skipped step (the *3), then right arithmetic.
        ("12+5=17\n17-7=10\n#### 10", [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]),
        # Padding after the answer, and a wrong answer line.
        (SOLUTION + "\n1+1=2", [1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]),
        # Re-applying an operation after the answer: "local" pays it, strict does not.
        (SOLUTION + "\n44-7=37\n#### 37", [1] * 4 + [0, 0], [1] * 6, [1] * 6, [1, 1, 1, 1, 0, 0]),
        (
            "12+5=17\n17*3=51\n51-7=44\n#### 45",
            [1, 1, 1, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 0],
        ),
        ("#### 44", [0], [0], [0], [0]),  # an answer with no step above it
        ("12 + 5 = 17", [0], [0], [0], [0]),  # malformed
        ("", [0], [0], [0], [0]),  # an empty response is one empty step (EOS alone)
        # Restating the answer, a restatement after a slip, a step taken too early.
        (SOLUTION + "\n#### 44", [1, 1, 1, 1, 0], [1] * 5, [1] * 5, [1] * 5),
        ("12+5=17\n17*3=50\n12+5=17", [1, 0, 0], [1, 0, 1], [1, 0, 0], [1, 0, 1]),
        # Restating a wrong line pays too, and does not put the chain back on track.
        ("12+5=18\n12+5=18\n17*3=51", [0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]),
        ("12+5=17\n51-7=44", [1, 0], [1, 1], [1, 0], [1, 0]),
        (
            "12+5=17\n\n17*3=51",
            [1, 0, 0],
            [1, 0, 1],
            [1, 0, 1],
            [1, 0, 0],
        ),  # an empty line is a step
    ],
)
def test_hand_cases(response, strict, lenient, local, restate):
    assert steps.strict_labels(PROMPT, response) == strict
    assert steps.restate_labels(PROMPT, response) == restate
    assert steps.lenient_labels(PROMPT, response) == lenient
    assert steps.local_labels(PROMPT, response) == local


def test_lenient_scorer_pays_for_padding_strict_does_not():
    padded = SOLUTION.replace("#### 44", "51-7=44\n51-7=44\n51-7=44\n#### 44")
    s, m = steps.step_scores([PROMPT] * 2, [SOLUTION, padded], 8, "lenient")
    assert s.sum(axis=1).tolist() == [4, 7] and m.sum(axis=1).tolist() == [4, 7]
    s, _ = steps.step_scores([PROMPT] * 2, [SOLUTION, padded], 8, "strict")
    assert s.sum(axis=1).tolist() == [4, 3]


def test_overflow_slot_takes_the_minimum_of_its_steps():
    response = "12+5=17\n17*3=51\n1+1=2\nbad\n1+1=2"
    s, m = steps.step_scores([PROMPT], [response], 3, "lenient")
    np.testing.assert_array_equal(s, [[1, 1, 0]])
    np.testing.assert_array_equal(m, [[True, True, True]])
    with pytest.raises(ValueError, match="unknown step checker"):
        steps.step_scores([PROMPT], [response], 3, "lax")
    with pytest.raises(ValueError, match="1 prompts but 2 responses"):
        steps.step_scores([PROMPT], [response] * 2, 3)


RESPONSES = [
    SOLUTION,
    SOLUTION + "\n",
    "12+5=17\n17*3=50\n\n#### 43",
    "",
    "\n",
    "12+5=17\n12+5=17\n12+5=17\n12+5=17\n12+5=17\n12+5=17",  # overflows S = 4
    "#### 44\n\n",
]


@pytest.mark.parametrize("with_eos", [True, False])
def test_step_slots_match_segment_steps(with_eos):
    tok = ByteTokenizer()
    t = 64
    tokens = np.full((len(RESPONSES), t), tok.pad_id, np.int32)
    mask = np.zeros((len(RESPONSES), t), np.int32)
    for i, r in enumerate(RESPONSES):
        ids = tok.encode(r, add_eos=with_eos)
        tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1
    st = jax.jit(core_steps.segment_steps, static_argnums=(2, 3, 4))(
        tokens, mask, 10, 4, tok.eos_id
    )
    rows = [i for i, r in enumerate(RESPONSES) if with_eos or r]  # no EOS: "" has no tokens
    for checker in steps.CHECKERS:
        scores, step_mask = steps.step_scores([PROMPT] * len(RESPONSES), RESPONSES, 4, checker)
        np.testing.assert_array_equal(step_mask[rows], np.asarray(st.step_mask_NxS)[rows])
        assert not scores[~step_mask].any()
    # The decoded step texts are the checker's steps, slot by slot.
    ends = np.asarray(st.step_end_NxS)
    for i in rows:
        ends_i = [e for e in ends[i] if e >= 0]
        starts = [0] + [e + 1 for e in ends_i[:-1]]
        pieces = [
            tok.decode(tokens[i, a : e + 1].tolist()) for a, e in zip(starts, ends_i, strict=True)
        ]
        expected = steps.split_steps(RESPONSES[i])
        expected = expected[:3] + ["\n".join(expected[3:])] if len(expected) > 4 else expected
        got = [p.replace("<eos>", "").removesuffix("\n") for p in pieces]
        assert got == expected, (i, pieces)


@pytest.mark.parametrize(
    "response, want",
    [
        (SOLUTION, [1, 1, 1, 1]),
        # Padding before the answer is paid, as under restate.
        ("12+5=17\n17*3=51\n51-7=44\n51-7=44\n#### 44", [1, 1, 1, 1, 1]),
        # Restating the answer, or any line after it, is not.
        (SOLUTION + "\n#### 44\n51-7=44", [1, 1, 1, 1, 0, 0]),
        # A wrong answer line ends the solution too.
        ("12+5=17\n#### 17\n17*3=51", [1, 0, 0]),
        ("12+5=17\n12+5=17", [1, 1]),  # no answer line: restate's labels
        # A short "=v" restating a result already written pays as a restatement ...
        ("12+5=17\n17*3=51\n51-7=44\n=44\n=44\n#### 44", [1, 1, 1, 1, 1, 1]),
        ("12+5=17\n=17\n17*3=51", [1, 1, 1]),  # ... without leaving the chain
        # A value nobody wrote is a wrong step (strict from there); after it, a
        # restated result still pays and a right step does not.
        ("12+5=17\n=18\n=17\n17*3=51", [1, 0, 1, 0]),
        ("=12\n12+5=17", [0, 0]),  # the start value is no written result
        (SOLUTION + "\n=44", [1, 1, 1, 1, 0]),  # after the answer: 0
    ],
)
def test_restate_before_pays_padding_only_before_the_answer(response, want):
    assert steps.restate_before_labels(PROMPT, response) == want


@pytest.mark.parametrize(
    "response, checker, as_written, completed",
    [
        # The budget cut the answer line: on track so far.
        ("12+5=17\n17*3=51\n51-7=44\n#### 4", "strict", [1, 1, 1, 0], [1, 1, 1, 1]),
        # Cut inside a restatement of line 1 (restate pays it, strict does not).
        ("12+5=17\n12+5", "restate", [1, 0], [1, 1]),
        ("12+5=17\n12+5", "strict", [1, 0], [1, 0]),
        # A cut line that no accepted line starts with stays wrong.
        ("12+5=17\n17*3=52", "strict", [1, 0], [1, 0]),
        ("12+5=17\n17*3=5", "strict", [1, 0], [1, 1]),
        # Cut just after a delimiter: no partial line to complete.
        ("12+5=17\n17*3=50\n", "strict", [1, 0], [1, 0]),
        # After the answer, restate_before accepts no line, so no completion either.
        (SOLUTION + "\n#### 4", "restate_before", [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]),
        # Cut inside a short restatement of a written result: "=4" starts "=44".
        ("12+5=17\n17*3=51\n51-7=44\n=4", "restate_before", [1, 1, 1, 0], [1, 1, 1, 1]),
        ("12+5=17\n17*3=51\n51-7=44\n=", "restate", [1, 1, 1, 0], [1, 1, 1, 1]),
        ("12+5=17\n17*3=51\n51-7=44\n=9", "restate", [1, 1, 1, 0], [1, 1, 1, 0]),
    ],
)
def test_a_cut_step_is_judged_as_written_or_completed(response, checker, as_written, completed):
    n = len(as_written)
    got, _ = steps.step_scores([PROMPT], [response], 8, checker)
    assert got[0, :n].tolist() == as_written
    got, _ = steps.step_scores([PROMPT], [response], 8, checker, cut_N=[True])
    assert got[0, :n].tolist() == completed
    got, _ = steps.step_scores([PROMPT], [response], 8, checker, cut_N=[False])
    assert got[0, :n].tolist() == as_written  # ended by EOS: judged as written
    with pytest.raises(ValueError, match="cut flags"):
        steps.step_scores([PROMPT], [response], 8, checker, cut_N=[True, False])
