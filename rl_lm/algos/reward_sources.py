"""Reward sources for the on-policy trainers (GRPO, PPO), in optax's shape.

A `RewardSource` is two functions with explicit state, as optax's
GradientTransformation: `init() -> state` and
`score(state, rollout, prompts_N) -> (state, reward_N, metrics)`, where
`prompts_N` are the N prompt texts (each prompt G times, `prompt_texts`) and
`metrics` are floats to log. The sources:

- `verifiable`: the weighted built-in checks plus the user's functions
  (`rl_lm.rewards.user.combine`); logs reward_verifiable.
- `reward_model`: a learned Bradley-Terry reward model's score
  (`rm_rewards.make_scorer`); its state is the reward model's params, which
  ride in the train state as "rm_params"; logs reward_learned.
- `overlong`: DAPO's soft overlong punishment (`grpo_loss.overlong_penalty`).
- `true_reward`: a task's hidden true reward (`rl_lm.tasks.Task.true_reward`);
  logs reward_true, and by default only that (weight 0).
- `tool_efficiency`: OTC-GRPO's efficiency term r_tool * correctness of
  multi-turn episodes (`rl_lm.rewards.tool_rewards.otc_grpo_rewards`), zero for
  a wrong answer, so with the verifiable reward beside it a correct episode
  scores in [1, 1 + weight] and never less than a wrong one; its weight is
  `grpo.tool_efficiency` (OTC's alpha); logs reward_tool_efficiency.
- `toolrl`: ToolRL's decomposed reward, format in {0, 1} plus the correctness
  6 S / S_max - 3 of an episode's calls against the task's ground-truth calls
  (`rl_lm.tasks.Task.tool_calls`; `tool_rewards.toolrl_reward`), in [-3, 4];
  logs reward_toolrl and each term (toolrl/format, name, param, value,
  correctness).
- `retool`: ReTool's outcome reward, +1 for a correct answer and -1 otherwise;
  logs reward_retool. Under GRPO's group-std normalisation it gives the same
  advantages as `verifiable`'s exact match (an affine map of it); without the
  std (Dr.GRPO) they differ by a factor of 2.

`from_config` builds the weighted list a config asks for, in NAMES order, and
`score` sums it in that order, so GRPO and PPO call the same two functions. A config names its
sources either by the existing fields (`grpo.reward_source`, `grpo.rewards`,
`grpo.reward_fns`, `grpo.overlong_cache`; `ppo.reward.source`,
`ppo.reward.verifiable`, `ppo.reward.reward_fns`) or by the
`<algo>.reward_sources` listing of source names and weights
(`rl_lm.algos.source_spec`), e.g. "verifiable=1,reward_model=0.5", which
replaces the source field; the shaping knobs `overlong_cache` and
`tool_efficiency` still add their sources when the listing does not weight
them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel, tasks
from rl_lm.algos import grpo_loss, rm_rewards, source_spec
from rl_lm.algos.rollout import Rollout
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params
from rl_lm.rewards import tool_rewards, user
from rl_lm.rewards import verifiable as checks
from rl_lm.tools import calls

NAMES = source_spec.NAMES


class RewardSource(NamedTuple):
    """A reward as two functions with explicit state.

    Attributes:
      init: () -> the source's state (() for a stateless source).
      score: (state, rollout, prompts_N) -> (state, reward_N float32 [N], {name: float}).
    """

    init: Callable[[], Any]
    score: Callable[[Any, Rollout, Sequence[str]], tuple[Any, np.ndarray, dict[str, float]]]


class Weighted(NamedTuple):
    """One source of a run's reward.

    Attributes:
      name: one of NAMES.
      weight: its weight in the sum; 0 logs its metrics and adds nothing.
      source: the RewardSource.
      state_key: the train-state entry that holds its state; None for a stateless one.
    """

    name: str
    weight: float
    source: RewardSource
    state_key: str | None = None


def stateless(fn: Callable[[Rollout, Sequence[str]], tuple[np.ndarray, dict[str, float]]]):
    """A RewardSource of `fn(rollout, prompts_N) -> (reward_N, metrics)` whose state is ()."""
    return RewardSource(init=lambda: (), score=lambda state, r, p: (state, *fn(r, p)))


def verifiable(reward_fn: user.Reward) -> RewardSource:
    """`reward_fn(prompts_N, texts, answers)` of the rollout; logs its mean as reward_verifiable."""

    def score(r, prompts_N):
        checked_N = reward_fn(prompts_N, r.texts, r.answers)
        return checked_N, {"reward_verifiable": float(checked_N.mean())}

    return stateless(score)


def reward_model(
    scorer: Callable[[Params, dict[str, Any]], Any], load: Callable[[], Params]
) -> RewardSource:
    """The learned reward of `scorer` (`rm_rewards.make_scorer`); the state is its params.

    Args:
      scorer: jitted (params, sharded rollout rows) -> r_N.
      load: () -> the reward model's params (`rm_rewards.load_reward_model`).
    """

    def score(params, r, prompts_N):
        learned_N = parallel.to_host(scorer(params, r.rows()))
        return params, learned_N, {"reward_learned": float(learned_N.mean())}

    return RewardSource(init=load, score=score)


def overlong(max_len: int, cache: int) -> RewardSource:
    """DAPO's soft overlong punishment of the response lengths (`grpo_loss.overlong_penalty`)."""
    return stateless(
        lambda r, prompts_N: (grpo_loss.overlong_penalty(r.host_mask.sum(1), max_len, cache), {})
    )


def true_reward(reward_fn: tasks.RewardFn) -> RewardSource:
    """A task's hidden true reward of (prompts_N, texts); logs its mean as reward_true."""

    def score(r, prompts_N):
        truth_N = reward_fn(prompts_N, r.texts)
        return truth_N, {"reward_true": float(truth_N.mean())}

    return stateless(score)


def tool_efficiency(group_size: int, answer_format: str) -> RewardSource:
    """OTC's efficiency term of each episode against its group's fewest correct calls."""

    def score(r, prompts_N):
        if r.episode is None or "tool/calls" not in r.episode:
            raise ValueError("the tool_efficiency reward needs multi-turn episodes (grpo.env).")
        calls_N = np.asarray(r.episode["tool/calls"]).astype(int)
        correct_N = checks.exact_match(r.texts, r.answers, answer_format).astype(bool)
        eff_N = np.zeros(len(calls_N), np.float32)
        for lo in range(0, len(calls_N), group_size):
            group = slice(lo, lo + group_size)
            terms = tool_rewards.otc_grpo_rewards(
                calls_N[group].tolist(), correct_N[group].tolist()
            )
            eff_N[group] = [t.efficiency for t in terms]
        return eff_N, {"reward_tool_efficiency": float(eff_N.mean())}

    return stateless(score)


def toolrl(tool_calls: tasks.ToolCallsFn, fmt: str, answer_format: str) -> RewardSource:
    """ToolRL's reward of each episode: its calls against `tool_calls(prompt)`.

    The calls are parsed from the sampled text (observations are not in it);
    the format term is 1 when every call parsed and the text holds an answer
    `verifiable.extract_answer` finds (our reading of ToolRL's "tags in order"
    for the compact and Hermes formats; a call written after the answer is
    not refused). Tool names are matched as sets, as the paper writes
    (`tool_rewards.toolrl_reward`); ToolRL's released code counts them as a
    multiset, so there a repeated call halves r_name.
    """
    keys = ("format", "name", "param", "value", "correctness")

    def score(r, prompts_N):
        rows = []
        for prompt, text in zip(prompts_N, r.texts, strict=True):
            pred = calls.parse_calls(text, fmt)
            ok = all(c.error is None for c in pred)
            ok = ok and checks.extract_answer(text, answer_format) != ""
            rows.append(tool_rewards.toolrl_reward(pred, tool_calls(prompt), ok))
        total_N = np.asarray([t.total for t in rows], np.float32)
        metrics = {"reward_toolrl": float(total_N.mean())}
        metrics.update({f"toolrl/{k}": float(np.mean([getattr(t, k) for t in rows])) for k in keys})
        return total_N, metrics

    return stateless(score)


def retool(answer_format: str) -> RewardSource:
    """ReTool's outcome reward: +1 for an answer that matches, -1 otherwise."""

    def score(r, prompts_N):
        correct_N = checks.exact_match(r.texts, r.answers, answer_format)
        signed_N = np.where(correct_N > 0, 1.0, -1.0).astype(np.float32)
        return signed_N, {"reward_retool": float(signed_N.mean())}

    return stateless(score)


def prompt_texts(tokenizer: Any, prompts: dict[str, np.ndarray], group_size: int) -> list[str]:
    """The N = B * G prompt texts of a global prompt batch, each prompt G times (prompt-major)."""
    texts = tokenizer.decode_batch(prompts["prompt"], prompts["prompt_mask"], stop_at_eos=False)
    return list(np.repeat(np.asarray(texts, dtype=object), group_size))


def weights(config: Any, algo: str) -> dict[str, float]:
    """{source name: weight} of `config`'s `algo` section ("grpo" or "ppo"), in summing order.

    Raises:
      ValueError: one line naming the field, for an unknown source or a bad weight.
    """
    cfg = config[algo]
    listed = source_spec.listed(cfg, algo)
    if listed:
        out = dict(listed)
        # The shaping knobs add their sources unless the listing weights them itself.
        if cfg.get("overlong_cache", 0) > 0:
            out.setdefault("overlong", 1.0)
        if cfg.get("tool_efficiency", 0.0):
            out.setdefault("tool_efficiency", float(cfg.tool_efficiency))
        return {name: out[name] for name in NAMES if name in out}
    source = cfg.reward_source if algo == "grpo" else cfg.reward.source
    out = {}
    if cfg.get("overlong_cache", 0) > 0:
        out["overlong"] = 1.0
    if source != "reward_model":
        out["verifiable"] = 1.0
    if source != "verifiable":
        out["reward_model"] = 1.0
    if cfg.get("tool_efficiency", 0.0):
        out["tool_efficiency"] = float(cfg.tool_efficiency)
    return out


def reward_model_config(config: Any, algo: str) -> ModelConfig | None:
    """The reward model's ModelConfig when `algo`'s sources include it, else None."""
    uses_rm = "reward_model" in weights(config, algo)
    if config[algo].get("reward_sources"):
        field = f"{algo}.reward_sources"
    else:
        field = "grpo.reward_source" if algo == "grpo" else "ppo.reward.source"
    source = "reward_model" if uses_rm else "verifiable"
    return rm_rewards.model_config(config, source, field)


def from_config(
    config: Any, algo: str, *, mesh: Mesh, init_from: Params | None, task: tasks.Task
) -> list[Weighted]:
    """The weighted sources of `config`'s `algo` section ("grpo" or "ppo").

    Args:
      config: the experiment config.
      algo: the section that names the sources.
      mesh: the mesh (the reward model is scored on it).
      init_from: the policy's starting params (a reward-model stage starts from them).
      task: the run's task; its true reward, where known, is logged (weight 0
        unless the config weights it).

    Raises:
      ValueError: one line naming the field, for a source the config cannot feed.
    """
    out = [
        _build(name, weight, config, algo, mesh, init_from, task)
        for name, weight in weights(config, algo).items()
    ]
    if task.true_reward is not None and "true_reward" not in {w.name for w in out}:
        out.append(Weighted("true_reward", 0.0, true_reward(task.true_reward)))
    return out


def _build(name, weight, config, algo, mesh, init_from, task) -> Weighted:
    cfg = config[algo]
    if name == "overlong":
        cache = cfg.get("overlong_cache", 0)
        if not cache > 0:
            raise ValueError(
                f"{algo}.reward_sources names 'overlong', which needs {algo}.overlong_cache > 0."
            )
        return Weighted(name, weight, overlong(cfg.max_new_tokens, cache))
    if name == "verifiable":
        if algo == "grpo":
            spec, field = (dict(cfg.rewards), cfg.get("reward_fns", "")), "grpo.reward_fns"
        else:
            spec = (dict(cfg.reward.verifiable), cfg.reward.get("reward_fns", ""))
            field = "ppo.reward.reward_fns"
        return Weighted(name, weight, verifiable(user.combine(*spec, field)))
    if name == "reward_model":
        rm_cfg = reward_model_config(config, algo)
        load = lambda: rm_rewards.load_reward_model(config, mesh, init_from)
        source = reward_model(rm_rewards.make_scorer(rm_cfg, mesh), load)
        return Weighted(name, weight, source, "rm_params")
    if name == "tool_efficiency":
        env = cfg.get("env")
        if env is None or not env.get("name"):
            raise ValueError(
                f"the tool_efficiency reward needs multi-turn episodes: set {algo}.env.name."
            )
        answer = config.eval.get("answer", task.answer)
        return Weighted(name, weight, tool_efficiency(cfg.num_generations, answer))
    if name == "toolrl":
        if task.tool_calls is None:
            raise ValueError(
                f"{algo}.reward_sources names 'toolrl', but task {task.name!r} has no "
                "ground-truth tool calls (Task.tool_calls)."
            )
        fmt = cfg.env.format if cfg.get("env") is not None else calls.COMPACT
        answer = config.eval.get("answer", task.answer)
        return Weighted(name, weight, toolrl(task.tool_calls, fmt, answer))
    if name == "retool":
        return Weighted(name, weight, retool(config.eval.get("answer", task.answer)))
    if task.true_reward is None:
        raise ValueError(
            f"{algo}.reward_sources names 'true_reward', but task {task.name!r} has none."
        )
    return Weighted(name, weight, true_reward(task.true_reward))


def state_init(sources: Sequence[Weighted], key: str) -> Callable[[], Any] | None:
    """The init of the source whose state is the train state's `key`, None without one."""
    return next((w.source.init for w in sources if w.state_key == key), None)


def score(
    sources: Sequence[Weighted], train_state: dict[str, Any], r: Rollout, prompts_N: Sequence[str]
) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    """Scores a rollout with every source and sums the weighted rewards, in list order.

    Args:
      sources: `from_config`'s list.
      train_state: the train state; a stateful source reads its state_key entry.
      r: the rollout.
      prompts_N: its N prompt texts (`prompt_texts`).

    Returns:
      ({state_key: new state} of the stateful sources, reward_N float32 [N],
      every source's metrics).
    """
    total_N = np.zeros(len(r.texts), np.float32)
    updates, metrics = {}, {}
    for w in sources:
        state = train_state[w.state_key] if w.state_key else ()
        state, reward_N, source_metrics = w.source.score(state, r, prompts_N)
        if w.state_key:
            updates[w.state_key] = state
        if w.weight:
            total_N = total_N + w.weight * reward_N
        metrics.update(source_metrics)
    return updates, total_N, metrics
