"""The task registry: shipped datasets resolve, unknown ones fail clearly, new ones plug in."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from rl_lm import tasks
from rl_lm.data import registry
from rl_lm.rewards import synthetic


def _config(name: str, task: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict({"data": {"name": name}})
    if task is not None:
        config.task = task
    return config


@pytest.mark.parametrize("family", registry.TASKS)
def test_every_dataset_family_has_a_task(family):
    task = tasks.for_config(_config(f"{family}/x"))
    assert task.name == family and task.dataset == family


@pytest.mark.parametrize(
    "name, evals, has_reward",
    [
        ("arithmetic", (tasks.EXACT_MATCH,), False),
        ("arithmetic/add3", (tasks.EXACT_MATCH,), False),
        ("chain/sft_train256_test32", (tasks.EXACT_MATCH,), False),
        ("jsonl/math", (tasks.EXACT_MATCH,), False),
        ("sort_pref/sft", (tasks.WIN_RATE,), True),
        ("rps_pref/pairs", (tasks.WIN_RATE, tasks.RPS_CLASSES), False),
    ],
)
def test_shipped_datasets_resolve(name, evals, has_reward):
    task = tasks.for_dataset(name)
    assert task.evals == evals
    assert (task.true_reward is not None) == has_reward
    assert (task.judge is not None) == (tasks.WIN_RATE in evals)


def test_sort_judge_prefers_the_higher_true_reward():
    prompts = [synthetic.sort_prompt("531")] * 3
    a, b = ["135", "531", "135"], ["531", "135", "135"]
    np.testing.assert_array_equal(tasks.get("sort_pref").judge(prompts, a, b), [1.0, 0.0, 0.5])


def test_unknown_task_fails_with_one_line_naming_the_known_ones():
    with pytest.raises(ValueError) as err:
        tasks.for_config(_config("nope/x"))
    message = str(err.value)
    assert "\n" not in message and "'nope'" in message
    assert all(name in message for name in tasks.known())


def test_explicit_task_must_read_the_dataset_family():
    with pytest.raises(ValueError, match="reads 'sort_pref' prompts"):
        tasks.for_config(_config("arithmetic/add2", task="sort_pref"))


def test_win_rate_needs_a_judge():
    with pytest.raises(ValueError, match="needs a judge"):
        tasks.Task("t", "arithmetic", evals=(tasks.WIN_RATE,))


def test_a_new_task_registers_without_touching_algos(monkeypatch):
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    short = tasks.register(
        tasks.Task(
            "arith_short",
            "arithmetic",
            true_reward=lambda prompts, responses: -np.array([len(r) for r in responses], float),
        )
    )
    assert tasks.for_config(_config("arithmetic/add2", task="arith_short")) is short
    assert "arith_short" in tasks.known()
    assert tasks.for_config(_config("arithmetic/add2")).name == "arithmetic"
