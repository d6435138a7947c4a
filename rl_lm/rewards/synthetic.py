"""Hidden true rewards and programmatic preferences of the synthetic preference tasks.

Two tasks (their datasets are built by `rl_lm.data.preference_tasks`):

Sorting, a transitive task with a graded true reward. The prompt "sort 5381="
asks for its digits in non-decreasing order ("1358"). With n prompt digits, a
response of L bytes, `overlap` the size of the multiset intersection of the
prompt's and the response's digits, and `order` the fraction of adjacent pairs
of the response's digits (non-digits skipped) that are non-decreasing (1 with
fewer than two digits):

    r* = content * order,    content = 2 * overlap / (n + L)   (a Dice score)

so r* is in [0, 1], and r* = 1 exactly for the sorted prompt digits. Every extra
byte (junk, a repeated digit) dilutes `content`, which is the length penalty.
Preferences over it are Bradley-Terry: P(a > b) = sigmoid((r*_a - r*_b) / T).

Rock-paper-scissors, an intransitive task for Nash learning. The prompt "rps R
1.0 0427:" names a favourite class and a strength s (the 4 digits are a nonce).
A response's class is its first character, one of `RPS_CLASSES` = ("R", "S",
"P"), ordered so that class i beats class i+1 (mod 3), as in the antisymmetric
matrix A = [[0, 1, -1], [-1, 0, 1], [1, -1, 0]]; anything else is invalid.
Between classes, P(i > j) = 1/2 + s * A[i, j] / 2; an invalid response loses to
every valid one and ties with an invalid one. The reference (the SFT data)
draws the class from `rps_reference`: 0.6 on the favourite, 0.3 on the class it
beats, 0.1 on the one that beats it, then a word of that class from
`RPS_WORDS`. For favourite "R" and s = 1 the class-level game is exactly the
tabular fixture of `rl_lm.algos.nash_tabular`. Since P depends only on classes,
pi*_beta(y|x) = pi*_beta(class(y)|x) * ref(y | class(y), x), with the
class-level pi*_beta the fixed point of (`rps_preference_matrix`,
`rps_reference`). No Bradley-Terry reward represents these preferences: around
the cycle some step has r_i <= r_{i+1}, so it predicts <= 1/2 where P says 1/2
+ s/2.

Every function takes a batch of strings and returns float32 [N] (or [N, 3] and
[N, 3, 3] per-prompt tables).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_SORT_PROMPT = re.compile(r"sort (\d+)=")
_DIGIT = ord("0")

RPS_CLASSES = ("R", "S", "P")
# Within-class words of the reference and their probabilities.
RPS_WORDS = (("Rock", "Rocks", "Rubble"), ("Scissors", "Shears", "Snip"), ("Paper", "Page", "Pulp"))
RPS_WORD_PROBS = (0.5, 0.3, 0.2)
# Reference class probabilities of (favourite, the class it beats, the class beating it).
RPS_REF_PROBS = (0.6, 0.3, 0.1)
_RPS_PROMPT = re.compile(r"rps ([RSP]) (\d+\.\d+) (\d{4}):")
_A = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], np.float32)  # row beats column


def _check_lengths(**batches: Sequence) -> int:
    sizes = {name: len(b) for name, b in batches.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch sizes differ: {sizes}; pass one entry per example.")
    return next(iter(sizes.values()))


def sort_prompt(digits: str) -> str:
    """The prompt asking to sort `digits` (a non-empty string of 0-9)."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError(f"sort_prompt takes a non-empty string of digits 0-9, got {digits!r}.")
    return f"sort {digits}="


def parse_sort_prompts(prompts: Sequence[str]) -> list[str]:
    """The digits of each sort prompt, in prompt order ("sort 5381=" -> "5381")."""
    digits = []
    for prompt in prompts:
        m = _SORT_PROMPT.fullmatch(prompt)
        if m is None:
            raise ValueError(
                f"{prompt!r:.80} is not a sort prompt; expected e.g. 'sort 5381=' "
                "(see rl_lm.rewards.synthetic.sort_prompt)."
            )
        digits.append(m[1])
    return digits


def sort_target(prompts: Sequence[str]) -> list[str]:
    """The best response to each sort prompt: its digits in non-decreasing order."""
    return ["".join(sorted(d)) for d in parse_sort_prompts(prompts)]


def _digit_counts(digits: bytes) -> list[int]:
    counts = [0] * 10
    for d in digits:
        counts[d - _DIGIT] += 1
    return counts


def _sort_score(target: str, response: str) -> float:
    """content * order of one response (see the module docstring)."""
    data = response.encode("utf-8")
    digits = bytes(c for c in data if _DIGIT <= c < _DIGIT + 10)
    overlap = sum(map(min, _digit_counts(target.encode()), _digit_counts(digits)))
    content = 2 * overlap / (len(target) + len(data))
    steps = [a <= b for a, b in zip(digits, digits[1:], strict=False)]
    order = sum(steps) / len(steps) if steps else 1.0
    return content * order


def sort_reward(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """The true sort reward r* as a verifiable reward (responses, answers) -> float32 [N].

    Args:
        responses: decoded responses.
        answers: the prompts' digits (the datasets store the sorted ones as "answer";
            only their multiset matters).

    Returns:
        r* in [0, 1] per response; 1 exactly where the response is the sorted digits.
    """
    _check_lengths(responses=responses, answers=answers)
    for a in answers:
        if not a.isascii() or not a.isdigit():
            raise ValueError(
                f"sort_reward needs answers that are digit strings (the sorted prompt "
                f"digits), got {a!r:.80}; use the dataset's 'answer' field."
            )
    return np.array(
        [_sort_score(a, r) for r, a in zip(responses, answers, strict=True)], np.float32
    )


def true_reward(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """The hidden true reward r*(prompt, response) of the sort task, float32 [N]."""
    _check_lengths(prompts=prompts, responses=responses)
    return sort_reward(responses, sort_target(prompts))


def bradley_terry_probability(r_a: np.ndarray, r_b: np.ndarray, temperature: float) -> np.ndarray:
    """P(a > b) = sigmoid((r_a - r_b) / temperature), float32 [N].

    Args:
        r_a: rewards of the first responses, [N].
        r_b: rewards of the second responses, [N].
        temperature: >= 0; 0 gives deterministic preferences (1/2 on ties).

    Returns:
        The preference probabilities; P(a > b) + P(b > a) = 1.
    """
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0: deterministic labels), got {temperature}.")
    diff = np.asarray(r_a, np.float64) - np.asarray(r_b, np.float64)
    if temperature == 0:
        return (0.5 + 0.5 * np.sign(diff)).astype(np.float32)
    return (0.5 + 0.5 * np.tanh(diff / (2 * temperature))).astype(np.float32)


def sort_preference(
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    temperature: float = 0.1,
) -> np.ndarray:
    """Bradley-Terry preferences of the sort task: P(a > b | prompt), float32 [N]."""
    _check_lengths(prompts=prompts, responses_a=responses_a, responses_b=responses_b)
    return bradley_terry_probability(
        true_reward(prompts, responses_a), true_reward(prompts, responses_b), temperature
    )


def rps_prompt(favourite: str, strength: float, nonce: int) -> str:
    """The rock-paper-scissors prompt, e.g. rps_prompt("R", 1.0, 427) == "rps R 1.0 0427:"."""
    ok = favourite in RPS_CLASSES and 0 < strength <= 1 and isinstance(nonce, (int, np.integer))
    ok = ok and 0 <= nonce < 10_000
    prompt = f"rps {favourite} {float(strength)!r} {nonce:04d}:" if ok else ""
    if not _RPS_PROMPT.fullmatch(prompt):
        raise ValueError(
            f"rps_prompt needs favourite in {RPS_CLASSES}, 0 < strength <= 1 (not in "
            f"e-notation) and an int 0 <= nonce < 10000, got {favourite!r}, {strength!r}, "
            f"{nonce!r}."
        )
    return prompt


def parse_rps_prompts(prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Favourite class index (int32 [N]) and strength (float32 [N]) of each prompt."""
    favourite, strength = [], []
    for prompt in prompts:
        m = _RPS_PROMPT.fullmatch(prompt)
        if m is None:
            raise ValueError(
                f"{prompt!r:.80} is not a rock-paper-scissors prompt; expected e.g. "
                "'rps R 1.0 0427:' (see rl_lm.rewards.synthetic.rps_prompt)."
            )
        favourite.append(RPS_CLASSES.index(m[1]))
        strength.append(float(m[2]))
    return np.array(favourite, np.int32), np.array(strength, np.float32)


def response_class(responses: Sequence[str]) -> np.ndarray:
    """Index in `RPS_CLASSES` of each response's first character; -1 if invalid. int32 [N]."""
    return np.array(
        [RPS_CLASSES.index(r[:1]) if r[:1] in RPS_CLASSES else -1 for r in responses],
        np.int32,
    )


def rps_reference(prompts: Sequence[str]) -> np.ndarray:
    """Class-level reference distribution over `RPS_CLASSES` per prompt, float32 [N, 3]."""
    favourite, _ = parse_rps_prompts(prompts)
    # Class (f + k) % 3 is the favourite (k=0), the class it beats (1), the one beating it (2).
    k_Nx3 = (np.arange(3)[None, :] - favourite[:, None]) % 3
    return np.asarray(RPS_REF_PROBS, np.float32)[k_Nx3]


def rps_preference_matrix(prompts: Sequence[str]) -> np.ndarray:
    """P[n, i, j] = P(class i > class j | prompt n) = 1/2 + s_n A[i, j] / 2, float32 [N, 3, 3]."""
    _, strength = parse_rps_prompts(prompts)
    return 0.5 + 0.5 * strength[:, None, None] * _A[None]


def intransitive_preference(
    prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
) -> np.ndarray:
    """P(a > b | prompt) of the rock-paper-scissors task, float32 [N].

    Args:
        prompts: rock-paper-scissors prompts (see `rps_prompt`).
        responses_a: first responses; their class is their first character.
        responses_b: second responses.

    Returns:
        1/2 + s A[class a, class b] / 2 between valid responses; 1 (0) where only a
        (only b) is valid; 1/2 where neither is. P(a > b) + P(b > a) = 1.
    """
    n = _check_lengths(prompts=prompts, responses_a=responses_a, responses_b=responses_b)
    p_Nx3x3 = rps_preference_matrix(prompts)
    ca, cb = response_class(responses_a), response_class(responses_b)
    valid_a, valid_b = ca >= 0, cb >= 0
    between = p_Nx3x3[np.arange(n), np.maximum(ca, 0), np.maximum(cb, 0)]
    return np.where(
        valid_a & valid_b, between, 0.5 + 0.5 * (valid_a.astype(np.float32) - valid_b)
    ).astype(np.float32)
