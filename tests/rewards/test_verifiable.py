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
