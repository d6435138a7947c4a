"""Tasks: what a run learns, as data the algorithms read instead of a dataset's name.

A `Task` names its prompt source (the dataset family `rl_lm.data.load_source`
reads), its answer check (the default `verifiable.exact_match` format), its
hidden true reward and judge where the task has one, and its evaluations. A
config chooses a task with `config.task`, or by default by the family of
`config.data.name` ("sort_pref/sft" -> "sort_pref"). A new task is one
`register(Task(...))`; nothing under `rl_lm.algos` changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rl_lm.data import tool_arith, tool_lookup
from rl_lm.rewards import synthetic

# (prompts, responses_a, responses_b) -> P(a > b) per prompt, float [N].
Judge = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]
# (prompts, responses) -> hidden true reward per response, float [N].
RewardFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]
# prompt text -> the calls a correct episode makes, as (tool name, arguments).
ToolCallsFn = Callable[[str], list[tuple[str, dict[str, Any]]]]

# Evaluations a task may name.
EXACT_MATCH = "exact_match"  # greedy held-out accuracy against the answers
WIN_RATE = "win_rate"  # judged samples of the policy against the reference's
RPS_CLASSES = "rps_classes"  # the class distribution's distance to pi*_beta


@dataclasses.dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
      name: the registry key.
      dataset: the dataset family its prompts come from ("<dataset>/<config>").
      answer: the default answer check of `verifiable.exact_match` ("any",
        "marked", ...); config.eval.answer overrides it.
      true_reward: the hidden true reward, where one is known.
      judge: the ground-truth preference P(a > b), where one is known.
      evals: the held-out evaluations, a subset of (EXACT_MATCH, WIN_RATE,
        RPS_CLASSES); WIN_RATE needs a judge.
      tool_calls: the ground-truth tool calls of a prompt, where the task knows
        them (ToolRL's reward matches an episode's calls against them).
    """

    name: str
    dataset: str
    answer: str = "any"
    true_reward: RewardFn | None = None
    judge: Judge | None = None
    evals: tuple[str, ...] = (EXACT_MATCH,)
    tool_calls: ToolCallsFn | None = None

    def __post_init__(self):
        unknown = set(self.evals) - {EXACT_MATCH, WIN_RATE, RPS_CLASSES}
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown evals {sorted(unknown)}.")
        if WIN_RATE in self.evals and self.judge is None:
            raise ValueError(f"task {self.name!r}: the {WIN_RATE!r} evaluation needs a judge.")


def _sort_judge(prompts, a, b):
    """a is preferred when its true reward is higher (1/2 on ties)."""
    reward = synthetic.true_reward
    return 0.5 + 0.5 * np.sign(reward(prompts, a) - reward(prompts, b))


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Adds `task` to the registry (replacing one of the same name) and returns it."""
    _REGISTRY[task.name] = task
    return task


def known() -> tuple[str, ...]:
    """The registered task names, sorted."""
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Task:
    """The registered task `name`; a ValueError naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known())}.")
    return _REGISTRY[name]


def for_dataset(dataset_name: str) -> Task:
    """The task of a dataset name: the one named by its family ("arithmetic/add3" -> arithmetic)."""
    return get(dataset_name.partition("/")[0])


def for_config(config: Any) -> Task:
    """The task of an experiment config: `config.task` if set, else `for_dataset(config.data.name)`.

    A task named by `config.task` must read data.name's dataset family.
    """
    name = config.get("task")
    if not name:
        return for_dataset(config.data.name)
    task, family = get(name), config.data.name.partition("/")[0]
    if family != task.dataset:
        raise ValueError(
            f"task {name!r} reads {task.dataset!r} prompts; data.name={config.data.name!r} "
            f"is a {family!r} dataset."
        )
    return task


for _task in (
    Task("arithmetic", "arithmetic"),
    Task("chain", "chain"),
    # Answers after "####"; the one call a demonstration makes is known.
    Task("tool_arith", "tool_arith", answer="marked", tool_calls=tool_arith.ground_truth_calls),
    Task("tool_lookup", "tool_lookup", answer="marked", tool_calls=tool_lookup.ground_truth_calls),
    Task("jsonl", "jsonl"),
    Task(
        "sort_pref",
        "sort_pref",
        true_reward=synthetic.true_reward,
        judge=_sort_judge,
        evals=(WIN_RATE,),
    ),
    Task(
        "rps_pref",
        "rps_pref",
        judge=synthetic.intransitive_preference,
        evals=(WIN_RATE, RPS_CLASSES),
    ),
):
    register(_task)
