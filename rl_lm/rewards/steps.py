"""The "chain" task's step format and its programmatic step checkers.

A chain prompt is a start value and operations applied left to right (no
precedence), e.g. "12 +5 *3 -7:". The canonical solution writes one step per
line, then the final answer in the GSM8K form `verifiable.exact_match` reads:

    12+5=17
    17*3=51
    51-7=44
    #### 44

Steps are the response's lines: every "\\n" ends a step and a last line
without a trailing "\\n" is a step too; a trailing "\\n" adds no empty step,
but an empty response is one (empty, wrong) step. This matches
`rl_lm.core.steps.segment_steps(..., delimiter_ids=10, eos_id=EOS)` on the
byte-tokenized response plus its EOS, so the [N, S] scores here line up with
the step slots of the jitted credit assignment (also when the response was cut
before its EOS). The byte tokenizer matters: a tokenizer that merges "\\n"
with its neighbours would need token-level step ends.

Two checkers, both 1/0 per step:
- strict (the ground truth, the labels of PRM training data): step s is 1 iff
  steps 1..s are exactly the canonical steps 1..s, i.e. its arithmetic is right
  and it is the valid next step of a so-far-correct chain. Labels are 1..1 0..0,
  0 from the first wrong, repeated, skipped or extra step on.
- lenient (an exploitable PRM, as in PURE): a step is 1 whenever it looks right
  on its own: a well-formed "a<op>b=c" with c correct, or "#### n" with n the
  result written on the closest step line above it, wherever it is. Repeating a correct
  step, or padding with "1+1=2", scores 1 per step.
- local (an exploitable PRM that checks each step against its context, not the
  plan): a step "a<op>b=c" is 1 when c is right, a is the previous step's
  result (the start value for the first step) and "<op>b" is one of the
  prompt's operations; "#### n" is 1 when n is the previous step's result.
  Order and count are never checked, so re-applying an operation after the
  answer ("51-7=44", "#### 44", "44-7=37", "#### 37") scores 1 per step, as do
  skipped or reordered operations; "1+1=2" does not.
- restate (a PRM that checks progress but pays for restating, the PURE
  failure in its plainest form): strict on new steps (1 while the response
  follows the canonical solution, 0 from the first slip on), but a verbatim
  repeat of any line already written, or a short "=v" restating a result v
  already written, scores 1, right or wrong, and does not advance the chain:
  it looks like a valid step. Under min-form a restatement
  changes nothing (the min is already set by the other steps); under sum-form
  every restatement earns a step reward, up to the response budget, where the
  cut-off response loses its answer.
- restate_before (restate, with the answer ending the solution): as restate,
  but every line after the first answer line ("#### n", right or wrong)
  scores 0, so the only padding paid is padding before the answer.

A response cut by the budget before its EOS ends in a partial line. By
default (`cut_step="as_written"`) the checker scores that line as written: it
is no valid step, so 0. A PRM does not know the budget, and a PRM that judges
a step by its prefix (as the token-head PRM does) scores a partial line by
whether it is on track. `cut_step="completed"` models that: the partial line
scores 1 when some line the checker would accept in its place starts with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

DELIMITER = "\n"
ANSWER_PREFIX = "#### "
OPS = "+-*"
_PROMPT = re.compile(r"(\d+)((?: [+\-*]\d+)+):")
_PROMPT_OP = re.compile(r" ([+\-*])(\d+)")
_STEP = re.compile(r"(-?\d+)([+\-*])(\d+)=(-?\d+)")
_ANSWER = re.compile(re.escape(ANSWER_PREFIX) + r"(-?\d+)")
_RESULT = re.compile(r"=(-?\d+)")  # a restated result, e.g. "=44"


def apply_op(a: int, op: str, b: int) -> int:
    """a op b for op in "+-*"."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown chain operator {op!r}; the operators are {OPS!r}.")


def format_prompt(start: int, ops: Sequence[tuple[str, int]]) -> str:
    """The prompt of a chain, e.g. format_prompt(12, [("+", 5), ("*", 3)]) == "12 +5 *3:"."""
    if not ops:
        raise ValueError("a chain needs at least one operation.")
    return f"{start}" + "".join(f" {op}{x}" for op, x in ops) + ":"


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    """(start, [(op, operand), ...]) of a chain prompt; ValueError if it is not one."""
    m = _PROMPT.fullmatch(prompt)
    if m is None:
        raise ValueError(
            f"{prompt!r} is not a chain prompt; expected a start value and operations, "
            "e.g. '12 +5 *3 -7:'."
        )
    return int(m[1]), [(op, int(x)) for op, x in _PROMPT_OP.findall(m[2])]


def solution_lines(start: int, ops: Sequence[tuple[str, int]]) -> list[str]:
    """The canonical steps: one "a<op>b=c" line per operation, then "#### answer"."""
    lines, value = [], start
    for op, x in ops:
        result = apply_op(value, op, x)
        lines.append(f"{value}{op}{x}={result}")
        value = result
    return lines + [f"{ANSWER_PREFIX}{value}"]


def solve(prompt: str) -> list[str]:
    """The canonical steps of a chain prompt."""
    return solution_lines(*parse_prompt(prompt))


def split_steps(response: str) -> list[str]:
    """The steps (lines) of a response, as `core.steps.segment_steps` counts them."""
    lines = response.split(DELIMITER)
    return lines[:-1] if len(lines) > 1 and lines[-1] == "" else lines


def strict_labels(prompt: str, response: str) -> list[int]:
    """1 on each step while the response follows the canonical solution, 0 from the first slip."""
    canonical = solve(prompt)
    labels, ok = [], True
    for s, line in enumerate(split_steps(response)):
        ok = ok and s < len(canonical) and line == canonical[s]
        labels.append(int(ok))
    return labels


def lenient_labels(prompt: str, response: str) -> list[int]:
    """1 on each step that looks right on its own (see the module docstring); ignores the prompt."""
    del prompt  # A PRM that never checks progress against the problem.
    labels, last = [], None
    for line in split_steps(response):
        step = _STEP.fullmatch(line)
        if step is not None:
            labels.append(int(apply_op(int(step[1]), step[2], int(step[3])) == int(step[4])))
            last = int(step[4])
            continue
        answer = _ANSWER.fullmatch(line)
        labels.append(int(answer is not None and last is not None and int(answer[1]) == last))
    return labels


def local_labels(prompt: str, response: str) -> list[int]:
    """1 on each step consistent with the line above and the prompt's operations (docstring)."""
    start, ops = parse_prompt(prompt)
    labels, last = [], start
    for line in split_steps(response):
        step, answer = _STEP.fullmatch(line), _ANSWER.fullmatch(line)
        if step is not None:
            a, op, b, c = int(step[1]), step[2], int(step[3]), int(step[4])
            labels.append(int(a == last and (op, b) in ops and apply_op(a, op, b) == c))
            last = c
        else:
            labels.append(int(answer is not None and int(answer[1]) == last))
    return labels


def restated_result(line: str) -> str | None:
    """The "=v" line restating the result v of a step or answer line; None for other lines."""
    m = _STEP.fullmatch(line) or _ANSWER.fullmatch(line)
    return None if m is None else f"={m[m.re.groups]}"


def restated_results(lines: Sequence[str]) -> set[str]:
    """The "=v" lines that restate a result v written on one of `lines`."""
    return {r for r in map(restated_result, lines) if r is not None}


def restate_labels(prompt: str, response: str) -> list[int]:
    """Strict labels on new steps, but repeating an earlier line or its result scores 1."""
    canonical = solve(prompt)
    labels, done, ok, seen = [], 0, True, set()
    for line in split_steps(response):
        if ok and done < len(canonical) and line == canonical[done]:
            done += 1
            labels.append(1)
        elif line in seen or (_RESULT.fullmatch(line) and line in restated_results(seen)):
            labels.append(1)
        else:
            ok = False
            labels.append(0)
        seen.add(line)
    return labels


def restate_before_labels(prompt: str, response: str) -> list[int]:
    """restate's labels up to the first answer line; every line after it scores 0."""
    labels = restate_labels(prompt, response)
    for s, line in enumerate(split_steps(response)):
        if _ANSWER.fullmatch(line):
            return labels[: s + 1] + [0] * (len(labels) - s - 1)
    return labels


CHECKERS: dict[str, Callable[[str, str], list[int]]] = {
    "strict": strict_labels,
    "lenient": lenient_labels,
    "local": local_labels,
    "restate": restate_labels,
    "restate_before": restate_before_labels,
}
CUT_STEPS = ("as_written", "completed")


def _completed_label(checker: str, prompt: str, response: str) -> int:
    """1 when the response's last (partial) line starts some line the checker accepts there.

    The candidate lines are the canonical steps, the lines already written and
    the "=v" restatements of their results.
    """
    lines = split_steps(response)
    done, partial = lines[:-1], lines[-1]
    head = "".join(line + DELIMITER for line in done)
    check = CHECKERS[checker]
    candidates = set(solve(prompt)) | set(done) | restated_results(done)
    return int(
        any(line.startswith(partial) and check(prompt, head + line)[-1] == 1 for line in candidates)
    )


def step_scores(
    prompts: Sequence[str],
    responses: Sequence[str],
    max_steps: int,
    checker: str = "strict",
    cut_N: Sequence[bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step scores of a batch, in `core.steps.segment_steps`'s step slots.

    A response with more than `max_steps` steps has its extra steps merged into
    the last slot, as `segment_steps` merges them; the slot scores the minimum
    of its steps, so steps past the last slot can never raise a score.

    Args:
        prompts: N chain prompts (prompt-major: repeat each for its G responses).
        responses: N response texts (decoded without EOS).
        max_steps: S, the `max_steps` given to `segment_steps`.
        checker: a name in CHECKERS.
        cut_N: with `cut_step="completed"`, which responses the budget cut before
            their EOS; the last line of each such response that does not end
            in the delimiter is judged completed (module docstring). None: every
            line as written.

    Returns:
        (scores_NxS float32 in {0, 1}, 0 on absent steps; step_mask_NxS bool).
    """
    if checker not in CHECKERS:
        raise ValueError(f"unknown step checker {checker!r}; choose one of {sorted(CHECKERS)}.")
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses.")
    if cut_N is not None and len(cut_N) != len(responses):
        raise ValueError(f"got {len(cut_N)} cut flags but {len(responses)} responses.")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}.")
    scores_NxS = np.zeros((len(prompts), max_steps), np.float32)
    mask_NxS = np.zeros((len(prompts), max_steps), bool)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        labels = CHECKERS[checker](prompt, response)
        if cut_N is not None and cut_N[i] and not response.endswith(DELIMITER):
            labels[-1] = max(labels[-1], _completed_label(checker, prompt, response))
        if len(labels) > max_steps:
            labels = labels[: max_steps - 1] + [min(labels[max_steps - 1 :])]
        scores_NxS[i, : len(labels)] = labels
        mask_NxS[i, : len(labels)] = True
    return scores_NxS, mask_NxS
