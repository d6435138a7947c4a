"""Verifiable rewards: answer extraction, exact match, format checks.

Every reward function maps (responses, answers) -> float32 [N], one value per
response, so rewards compose as weighted sums over a batch. REWARDS names
them for the configs' weights (`grpo.rewards`, `ppo.reward.verifiable`):
exact_match, marked_match, format and math_verify (math-verify's equivalence
of LaTeX, fractions and boxed answers, `rl_lm.rewards.math_answers`). A user's
own functions join by import path (`rl_lm.rewards.user`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from rl_lm.rewards import math_answers

RewardFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def normalize(answer: str) -> str:
    """Canonical form of an answer: no spaces or thousands commas, no leading '+'."""
    s = answer.strip().replace(",", "").replace(" ", "")
    s = s.removeprefix("+")
    if re.fullmatch(r"-?\d+\.0*", s):
        s = s.split(".")[0]
    if s in ("-0", ""):
        return s.removeprefix("-")
    return s


# How a response's answer is checked (eval.answer): "any" and "marked" extract it
# (`extract_answer`) and compare strings; "math_verify" asks math-verify whether it
# is mathematically equal (`math_answers.math_verify_reward`).
ANSWER_FORMATS = ("any", "marked", "math_verify")


def extract_answer(text: str, answer: str = "any") -> str:
    """The final answer of a response.

    Looks, in order, for a GSM8K-style "#### answer" marker, a LaTeX
    \\boxed{answer}, then the last number in the text. Returns "" when there is
    none. With answer="marked" only the marker counts: for tasks whose solutions
    end in "#### n" (the chain task), a response cut off before it has no answer,
    whatever number it wrote last. "math_verify" extracts as "any" does.
    """
    check_answer_format(answer)
    if "####" in text:
        return normalize(text.rsplit("####", 1)[1].split("\n")[0])
    if answer == "marked":
        return ""
    boxed = _BOXED.findall(text)
    if boxed:
        return normalize(boxed[-1])
    numbers = _NUMBER.findall(text)
    return normalize(numbers[-1]) if numbers else ""


def exact_match(
    responses: Sequence[str], answers: Sequence[str], answer: str = "any"
) -> np.ndarray:
    """1.0 where the extracted final answer (`extract_answer(r, answer)`) equals the reference.

    With answer="math_verify": where math-verify finds the two equal.
    """
    _check_lengths(responses, answers)
    if answer == "math_verify":
        return math_answers.make()(responses, answers)
    return np.array(
        [
            float(extract_answer(r, answer) == normalize(a) and normalize(a) != "")
            for r, a in zip(responses, answers, strict=True)
        ],
        np.float32,
    )


def marked_match(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """exact_match that reads only a "#### answer" marker."""
    return exact_match(responses, answers, "marked")


def format_reward(pattern: str = r"-?\d+") -> RewardFn:
    """1.0 where the whole stripped response matches `pattern` (regex)."""
    compiled = re.compile(pattern)

    def fn(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        _check_lengths(responses, answers)
        return np.array([float(bool(compiled.fullmatch(r.strip()))) for r in responses], np.float32)

    return fn


REWARDS: dict[str, Callable[[], RewardFn]] = {
    "exact_match": lambda: exact_match,
    "marked_match": lambda: marked_match,
    "format": format_reward,
    "math_verify": math_answers.make,
}


def combine(weights: dict[str, float]) -> RewardFn:
    """A weighted sum of named rewards, e.g. {"exact_match": 1.0, "format": 0.1}.

    Raises:
      ValueError: naming an unknown reward and the known ones.
    """
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"Unknown reward(s) {unknown}; known rewards: {sorted(REWARDS)}.")
    fns = [(REWARDS[name](), w) for name, w in weights.items()]

    def fn(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        total = np.zeros(len(responses), np.float32)
        for f, w in fns:
            total += np.float32(w) * f(responses, answers)
        return total

    return fn


def _check_lengths(responses: Sequence[str], answers: Sequence[str]) -> None:
    if len(responses) != len(answers):
        raise ValueError(f"Got {len(responses)} responses but {len(answers)} answers.")


def check_answer_format(answer: str) -> None:
    """Raises ValueError naming eval.answer unless `answer` is in ANSWER_FORMATS."""
    if answer not in ANSWER_FORMATS:
        raise ValueError(
            f"unknown answer format {answer!r} (eval.answer); choose one of {ANSWER_FORMATS}."
        )
