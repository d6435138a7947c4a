"""The environment interface: a task as reset / step over action text.

A single-turn task is an environment with one step (`SingleTurn`).
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol


class StepResult(NamedTuple):
    """What one step returns; `observation` is None when nothing is appended."""

    observation: str | None
    done: bool
    reward_terms: dict
    env_state: Any


class Env(Protocol):
    def reset(self, row: dict) -> tuple[str, Any]:
        """Returns the initial prompt text and the initial env state."""

    def step(self, env_state: Any, action_text: str) -> StepResult:
        """Consumes one turn of model text."""


class SingleTurn:
    """One step, done immediately; `score(row, text) -> dict` gives reward terms."""

    def __init__(self, prompt_key: str = "prompt", score: Callable | None = None):
        self.prompt_key = prompt_key
        self.score = score

    def reset(self, row: dict) -> tuple[str, Any]:
        return row[self.prompt_key], {"row": row, "turns": 0}

    def step(self, env_state: Any, action_text: str) -> StepResult:
        terms = self.score(env_state["row"], action_text) if self.score else {}
        state = {**env_state, "turns": env_state["turns"] + 1}
        return StepResult(None, True, dict(terms), state)
