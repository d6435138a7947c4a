"""The math_verify reward: equivalent answers in any notation score 1, anything else 0."""

import threading

import numpy as np
import pytest

from rl_lm.rewards import math_answers, verifiable


@pytest.mark.parametrize(
    "response, answer",
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\frac{1}{2}}", "1/2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac12"),
        ("So the probability is $\\frac{1}{2}$.", "0.5"),
        ("$x=3$", "3"),
        ("Solving, we get $x = 3$.", "3"),
        ("The answer is 3.", "3"),
        ("3", "x=3"),
        ("\\boxed{2\\pi}", "2\\pi"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{0.50}", "\\frac{1}{2}"),
        ("First 3, but the final answer is \\boxed{-2}", "-2"),
        ("\\boxed{\\sqrt{2}}", "\\sqrt 2"),
        ("\\boxed{4}", "$4$"),
    ],
)
def test_equivalent_answers_score_one(response, answer):
    assert math_answers.is_equivalent(response, answer)


@pytest.mark.parametrize(
    "response, answer",
    [
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("$x=4$", "3"),
        ("I think 3, but the final answer is \\boxed{4}", "3"),
        ("\\boxed{2}", "2\\pi"),  # "2\pi" is LaTeX, not the number 2
        ("\\boxed{x^2}", "1"),
        ("blah blah no math", "3"),
        ("}{\\frac{{\\boxed{$$", "3"),
        ("\x00\x01 \\\\ \\left(", "1/2"),
        ("", "3"),
        ("   ", "3"),
        ("\\boxed{3}", ""),
        ("", ""),
    ],
)
def test_wrong_garbage_and_empty_score_zero(response, answer):
    assert not math_answers.is_equivalent(response, answer)


def test_registered_and_vectorized():
    fn = verifiable.combine({"math_verify": 1.0})
    got = fn(["\\boxed{\\frac{1}{2}}", "$x=3$", "wrong: 4", ""], ["0.5", "3", "3", "3"])
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0, 0.0])
    assert got.dtype == np.float32
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        math_answers.math_verify_reward(["1", "2"], ["1"])


def test_a_check_that_times_out_scores_zero(monkeypatch):
    # 9^(9^(9^9)) has no closed form sympy can compare: the signal alarm stops it.
    import math_verify

    monkeypatch.setattr(math_answers, "TIMEOUT_SECONDS", 1)
    timeouts = []
    parse = math_verify.parse

    def spy(text, **kwargs):
        timeouts.append(kwargs.get("parsing_timeout"))
        return parse(text, **kwargs)

    monkeypatch.setattr(math_verify, "parse", spy)
    assert not math_answers.is_equivalent("\\boxed{9^{9^{9^{9}}}}", "3")
    assert timeouts == [1, 1]  # In the main thread every parse is bounded by the alarm.


def test_works_outside_the_main_thread():
    # math-verify's signal timeouts need the main thread; elsewhere the check runs untimed.
    out = {}

    def work():
        out["scores"] = math_answers.math_verify_reward(
            ["\\boxed{\\frac{1}{2}}", "\\boxed{7}", "garbage }{"], ["0.5", "3", "3"]
        )

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    np.testing.assert_array_equal(out["scores"], [1.0, 0.0, 0.0])


def test_math_verify_answer_format_for_accuracies():
    # eval.answer="math_verify": held-out and train accuracy by the same check.
    got = verifiable.exact_match(
        ["\\boxed{\\frac12}", "0.5", "3"], ["0.5", "1/2", "4"], "math_verify"
    )
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0])
    assert "math_verify" in verifiable.ANSWER_FORMATS
    verifiable.check_answer_format("math_verify")
