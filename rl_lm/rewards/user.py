"""Reward functions of the user's own, named by import path, beside the built-in ones.

A user reward function scores N responses to their prompts against the
reference answers (the data's `answer` field), one finite float per response:

    def score(prompts: list[str], responses: list[str], answers: list[str]) -> Sequence[float]:
        '''prompts[i] is the prompt text response i answers; answers[i] its reference.'''
        return [float(len(r) < 200) for r in responses]

It lives in any importable module (`my_pkg/rewards.py`, on PYTHONPATH or in
the directory the run starts from) and joins a run through a string field of
"module:function=weight" items, comma-separated (weight 1 when left out); a
bare name is a built-in reward of `rl_lm.rewards.verifiable.REWARDS`:

    --config.grpo.reward_fns='my_pkg.rewards:score=0.5,my_pkg.rewards:brevity=0.1'
    --config.grpo.reward_fns=math_verify              (a built-in, by flag)
    --config.ppo.reward.reward_fns=...                (PPO's verifiable rewards)

The run's verifiable reward is the weighted sum of these and of the weights
dict (`grpo.rewards`, `ppo.reward.verifiable`). Each user function is imported
and called once on a small probe batch (`PROBE`) when the trainer is built, so
a wrong path, a result of the wrong shape or a non-finite value fails before
the first step with one line naming the function; every later call is checked
the same way. The failures are ValueErrors. In a multi-process run every
process calls the function on the same global batch, so it must be
deterministic (no sampling, no network calls whose answers may differ).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence

import numpy as np

from rl_lm.rewards import verifiable

# (prompts, responses, answers) -> float32 [N]
Reward = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]

_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
PROBE = (
    ["What is 1+1?", "What is 1+1?", "Compute 2+1."],
    ["", "2", "The answer is \\boxed{3}."],
    ["2", "2", "3"],
)


def parse(spec: str, field: str = "reward_fns") -> dict[str, float]:
    """{"module:function" or built-in name: weight} of a spec like "m.rewards:score=0.5,m:f".

    Raises:
      ValueError: naming `field`, for an item that is neither module:function nor a
        built-in reward, or a weight that is not a number.
    """
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        path, has_weight, weight = (s.strip() for s in item.partition("="))
        if not _PATH.fullmatch(path) and path not in verifiable.REWARDS:
            raise ValueError(
                f"{field} item {item!r} is neither module:function[=weight] (e.g. "
                f"'my_pkg.rewards:score=0.5') nor a built-in reward {sorted(verifiable.REWARDS)}."
            )
        try:
            out[path] = out.get(path, 0.0) + (float(weight) if has_weight else 1.0)
        except ValueError:
            raise ValueError(f"{field} item {item!r}: weight {weight!r} is not a number.") from None
    return out


def load(path: str) -> Reward:
    """The function at `path` ("module:function"), probed once and wrapped to check every result.

    Raises:
      ValueError: naming `path`, when the module does not import, has no such
        function, or the function fails on the probe batch.
    """
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- whatever the import raised, the path cannot serve.
        hint = " (is it on PYTHONPATH?)" if isinstance(e, ModuleNotFoundError) else ""
        raise ValueError(
            f"Reward function {path}: cannot import {module_name}{hint}: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        what = "no function" if fn is None else f"{type(fn).__name__}, not a function,"
        raise ValueError(f"Reward function {path}: module {module_name} has {what} {name}.")
    checked = _checked(fn, path)
    checked(*PROBE)
    return checked


def combine(weights: dict[str, float], spec: str = "", field: str = "reward_fns") -> Reward:
    """The weighted sum of the built-in rewards `weights` and the rewards of `spec` (see `parse`).

    Raises:
      ValueError: for an unknown built-in reward, a bad `spec` or a user function
        that fails to load (see `load`).
    """
    named = dict(weights)
    paths = {}
    for key, w in parse(spec, field).items():
        if key in verifiable.REWARDS:
            named[key] = named.get(key, 0.0) + w
        else:
            paths[key] = w
    builtin = verifiable.combine(named)
    user = [(load(path), np.float32(w)) for path, w in paths.items()]

    def fn(prompts: Sequence[str], responses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        total = builtin(responses, answers)
        for f, w in user:
            total = total + w * f(prompts, responses, answers)
        return total

    return fn


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _checked(fn: Callable, path: str) -> Reward:
    """`fn` as a Reward whose failures, wrong shapes and non-finite values raise naming `path`."""

    def call(prompts, responses, answers):
        n = len(responses)
        try:
            out = fn(list(prompts), list(responses), list(answers))
        except Exception as e:  # noqa: BLE001 -- re-raised with the function's name.
            raise ValueError(
                f"Reward function {path} raised {type(e).__name__}: {_first_line(e)} "
                f"(called as {path.partition(':')[2]}(prompts, responses, answers), N={n})."
            ) from e
        try:
            values = np.asarray(out, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(
                f"Reward function {path} returned {type(out).__name__}, not {n} numbers."
            ) from None
        if values.shape != (n,):
            raise ValueError(
                f"Reward function {path} returned shape {values.shape} for {n} responses; "
                "it must return one reward per response."
            )
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"Reward function {path} returned {values[i]} for response {i} "
                f"({responses[i][:80]!r}); rewards must be finite."
            )
        return values

    return call
