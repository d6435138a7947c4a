"""Multi-turn tool use: the model writes calls, the environment answers them, until an answer.

One episode: the prompt; then per turn the model's text (the sampler stops it
at one of `stop_strings`, which must stay in the text passed to `step`), and,
if that text holds calls, the observation of their results appended after it.
A turn without calls is the answer and ends the episode; so does a turn with
calls once `max_turns` turns have been taken (those calls stay unanswered).

Observation formats (`render_results`):

- compact: `<result>OUTPUT</result>` per call, in call order, nothing between.
- hermes: `<tool_response>\\nOUTPUT\\n</tool_response>` per call, joined by "\\n"
  (the layout of the Qwen chat template's tool turn, without its chat tokens).

Every output is a string; failed calls (unparsable, unknown tool, wrong
arguments, a tool that raised or timed out, one over the per-turn limit) are
outputs starting "error" (the sandbox's own failures end with an "error: ..."
line instead), so no model text raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rl_lm.envs.base import StepResult
from rl_lm.tools.calls import (
    COMPACT,
    HERMES,
    ToolCall,
    ToolResult,
    parse_calls,
    run_calls,
    truncate_middle,
)
from rl_lm.tools.schema import json_schema

STOP_STRINGS = {COMPACT: ("</call>",), HERMES: ("</tool_call>",)}


def render_results(results: Sequence[ToolResult | str], fmt: str = COMPACT) -> str:
    """The observation text of one turn's results (ToolResults or plain output strings)."""
    outputs = [r.output if isinstance(r, ToolResult) else str(r) for r in results]
    if fmt == COMPACT:
        return "".join(f"<result>{o}</result>" for o in outputs)
    if fmt == HERMES:
        return "\n".join(f"<tool_response>\n{o}\n</tool_response>" for o in outputs)
    raise ValueError(f"unknown fmt {fmt!r}; expected {COMPACT!r} or {HERMES!r}")


def _parse(text: str, fmt: str) -> list[ToolCall]:
    """`parse_calls`, with any exception it lets escape turned into one call with an error."""
    try:
        return parse_calls(text, fmt)
    except Exception as e:  # e.g. RecursionError on deeply nested JSON
        message = truncate_middle(f"{type(e).__name__}: {e}", 200)
        return [ToolCall(None, {}, text, f"calls could not be parsed: {message}")]


def _failed(result: ToolResult) -> bool:
    """A call that failed: refused or raised, or a tool's own "error:" output (calculator)."""
    return not result.ok or result.output.startswith("error")


class ToolEnv:
    """An Env whose model calls `tools` for up to `max_turns` turns before it must answer.

    State (a plain dict, never mutated by `step`): row, turns, calls (the
    ToolCalls answered so far), errors (answered calls whose output starts
    "error"; the sandbox's "error: ..." last line does not count), tool_seconds,
    obs_chars (observation characters appended), transcript (every action
    text and observation, in order, without the prompt), and after a turn with
    calls, outputs (that turn's raw outputs, for a chat template's tool turns).

    Reward terms, on the final step only: `score(row, state)` of the final
    state if given, plus "tool/turns", "tool/calls", "tool/call_errors",
    "tool/tool_seconds" and "tool/unanswered" (calls of the last turn when the
    turn limit cut them off).
    """

    def __init__(
        self,
        tools: Mapping[str, Callable[..., Any]],
        fmt: str = COMPACT,
        max_turns: int = 4,
        max_calls_per_turn: int = 4,
        timeout: float = 10.0,
        max_output: int = 500,
        prompt_key: str = "prompt",
        score: Callable[[dict, dict], Mapping[str, float]] | None = None,
    ):
        if not isinstance(tools, Mapping):
            raise ValueError(f"tools must be a mapping of name to function, got {type(tools)}")
        for name, fn in tools.items():
            if not callable(fn):
                raise ValueError(f"tool {name!r} is not callable")
            try:
                json_schema(fn)
            except (TypeError, ValueError) as e:
                raise ValueError(f"tool {name!r} has no usable schema: {e}") from None
        if fmt not in STOP_STRINGS:
            raise ValueError(f"unknown fmt {fmt!r}; expected {COMPACT!r} or {HERMES!r}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if max_calls_per_turn < 1:
            raise ValueError(f"max_calls_per_turn must be >= 1, got {max_calls_per_turn}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_output < 1:
            raise ValueError(f"max_output must be >= 1, got {max_output}")
        if score is not None and not callable(score):
            raise ValueError("score must be a function score(row, state) -> dict, or None")
        self.tools = dict(tools)
        self.fmt = fmt
        self.max_turns = max_turns
        self.max_calls_per_turn = max_calls_per_turn
        self.timeout = timeout
        self.max_output = max_output
        self.prompt_key = prompt_key
        self.score = score
        self.stop_strings: tuple[str, ...] = STOP_STRINGS[fmt]

    def reset(self, row: dict) -> tuple[str, dict]:
        state = {
            "row": row,
            "turns": 0,
            "calls": [],
            "errors": 0,
            "tool_seconds": 0.0,
            "obs_chars": 0,
            "transcript": "",
        }
        return row[self.prompt_key], state

    def _run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Results of one turn's calls: the first `max_calls_per_turn` run, the rest refused."""
        limit = self.max_calls_per_turn
        results = run_calls(self.tools, calls[:limit], self.timeout, self.max_output)
        refused = f"error: more than {limit} calls in one turn; this call was not run"
        return results + [ToolResult(c, refused, False, 0.0) for c in calls[limit:]]

    def step(self, env_state: dict, action_text: str) -> StepResult:
        calls = _parse(action_text, self.fmt)
        turns = env_state["turns"] + 1
        state = {
            **env_state,
            "turns": turns,
            "calls": list(env_state["calls"]),
            "transcript": env_state["transcript"] + action_text,
        }
        if calls and turns < self.max_turns:
            results = self._run(calls)
            observation = render_results(results, self.fmt)
            state["calls"] += calls
            state["errors"] = env_state["errors"] + sum(map(_failed, results))
            state["tool_seconds"] = env_state["tool_seconds"] + sum(r.seconds for r in results)
            state["obs_chars"] = env_state["obs_chars"] + len(observation)
            state["transcript"] += observation
            state["outputs"] = [r.output for r in results]  # this turn's, for chat templates
            return StepResult(observation, False, {}, state)
        return StepResult(None, True, self._terms(state, len(calls)), state)

    def finish(self, env_state: dict, action_text: str) -> StepResult:
        """Ends the episode without running anything (the sampler's budget ran out):
        the last turn's calls, if any, count as unanswered; an empty turn is not a turn."""
        calls = _parse(action_text, self.fmt) if action_text else []
        state = {
            **env_state,
            "turns": env_state["turns"] + (1 if action_text else 0),
            "calls": list(env_state["calls"]),
            "transcript": env_state["transcript"] + action_text,
        }
        return StepResult(None, True, self._terms(state, len(calls)), state)

    def _terms(self, state: dict, unanswered: int) -> dict:
        terms = dict(self.score(state["row"], state)) if self.score else {}
        turns = state["turns"]
        terms.update(
            {
                "tool/turns": float(turns),
                "tool/calls": float(len(state["calls"])),
                "tool/call_errors": float(state["errors"]),
                "tool/tool_seconds": float(state["tool_seconds"]),
                "tool/unanswered": float(unanswered),
            }
        )
        return terms
