import numpy as np
import pytest

from rl_lm.rewards import verifiable


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", "42"),
        (" -7 ", "-7"),
        ("so 3+4 = 7", "7"),
        ("the answer is 1,234.", "1234"),
        ("reasoning...\n#### 18\nextra 99", "18"),
        ("we get \\boxed{12} then 5", "12"),
        ("12.0", "12"),
        ("no digits here", ""),
        ("+5", "5"),
        ("-0", "0"),
    ],
)
def test_extract_answer(text, expected):
    assert verifiable.extract_answer(text) == expected


def test_exact_match_vectorized():
    got = verifiable.exact_match(["42", "41", "x", "=-3", ""], ["42", "42", "7", "-3", ""])
    np.testing.assert_array_equal(got, [1.0, 0.0, 0.0, 1.0, 0.0])
    assert got.dtype == np.float32


def test_format_and_combine():
    fmt = verifiable.format_reward()
    np.testing.assert_array_equal(fmt(["42", "4 2", "-1"], ["", "", ""]), [1.0, 0.0, 1.0])
    fn = verifiable.combine({"exact_match": 1.0, "format": 0.5})
    np.testing.assert_allclose(fn(["42", "x42", "7"], ["42", "42", "42"]), [1.5, 1.0, 0.5])


def test_errors():
    with pytest.raises(ValueError, match="Unknown reward.*known rewards"):
        verifiable.combine({"exact": 1.0})
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        verifiable.exact_match(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="answer format 'strict'.*eval.answer"):
        verifiable.exact_match(["1"], ["1"], "strict")


def test_marked_answers_read_only_the_marker():
    # A chain cut off by the budget before its "#### n" line wrote the right number last.
    cut = "12+5=17\n17*3=51\n51-7=44\n51-7=44\n"
    assert verifiable.extract_answer(cut) == "44"
    assert verifiable.extract_answer(cut, "marked") == ""
    assert verifiable.extract_answer(cut + "#### 44", "marked") == "44"
    assert verifiable.extract_answer(cut + "#### 4", "marked") == "4"  # a cut answer line
    responses = [cut, cut + "#### 44", "\\boxed{44}"]
    np.testing.assert_array_equal(verifiable.marked_match(responses, ["44"] * 3), [0, 1, 0])
    np.testing.assert_array_equal(verifiable.exact_match(responses, ["44"] * 3), [1, 1, 1])
    fn = verifiable.combine({"marked_match": 1.0})
    np.testing.assert_array_equal(fn(responses, ["44"] * 3), [0, 1, 0])
