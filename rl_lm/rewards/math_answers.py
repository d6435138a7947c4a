"""Math answers checked by Hugging Face's math-verify: boxed answers, fractions, LaTeX.

`math_verify_reward(responses, answers)` (the "math_verify" reward of
`rl_lm.rewards.verifiable`) is 1.0 where math-verify finds the response's final
answer mathematically equal to the reference, else 0.0: ``\\boxed{\\frac{1}{2}}``
equals ``0.5``, ``1/2`` and ``\\frac12``; ``$x=3$`` equals ``3``. The response
is parsed as math-verify parses predictions (a \\boxed{} answer first, then
LaTeX, then the last plain expression); the reference, usually a bare answer
("\\frac12", "2\\pi"), is read as LaTeX math unless it has its own $...$ or
\\boxed{}. It never raises on a response: one that does not parse, or whose
check times out, scores 0.

math-verify bounds each parse and comparison with `signal.alarm`
(`TIMEOUT_SECONDS` here), which works only in the main thread of the process,
where the trainers call their rewards. Elsewhere (a worker thread, a notebook's
executor) the checks run without a time limit rather than fail; a pathological
response (a tower of powers) can then take long.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

TIMEOUT_SECONDS = 3  # per parse and per comparison, in the main thread


def _timeout() -> int | None:
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _parse_reference(answer: str, timeout: int | None) -> list:
    import math_verify

    if "$" in answer or "\\boxed" in answer:
        return math_verify.parse(answer, parsing_timeout=timeout)
    # "$...$" reads "\frac12" and "2\pi" as LaTeX; plain parsing reads "2\pi" as 2.
    return math_verify.parse(f"${answer}$", parsing_timeout=timeout) or math_verify.parse(
        answer, parsing_timeout=timeout
    )


def is_equivalent(response: str, answer: str) -> bool:
    """Whether math-verify finds `response`'s final answer equal to `answer` (False on failure)."""
    import math_verify  # Imported on first use: it pulls in sympy.
    from math_verify.errors import TimeoutException

    if not response.strip() or not answer.strip():
        return False
    timeout = _timeout()
    try:
        gold = _parse_reference(answer.strip(), timeout)
        pred = math_verify.parse(response, parsing_timeout=timeout)
        if not gold or not pred:
            return False
        return bool(math_verify.verify(gold, pred, timeout_seconds=timeout))
    # TimeoutException is a BaseException; math-verify catches its own, but not always.
    except (Exception, TimeoutException):  # noqa: BLE001
        return False  # A response that breaks the checker is simply wrong.


def make() -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """`math_verify_reward`, once math-verify imports (so a missing package fails at start).

    Raises:
      ValueError: when math-verify is not installed.
    """
    try:
        import math_verify  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"The math_verify reward needs math-verify ({e}); pip install 'math-verify>=0.9,<0.10'."
        ) from None
    return math_verify_reward


def math_verify_reward(responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """1.0 where `is_equivalent(response, answer)`, else 0.0; float32 [N]."""
    if len(responses) != len(answers):
        raise ValueError(f"Got {len(responses)} responses but {len(answers)} answers.")
    return np.array(
        [float(is_equivalent(r, a)) for r, a in zip(responses, answers, strict=True)], np.float32
    )
