"""Multi-turn episodes as on-policy rollouts: an environment per row, the multi-turn sampler.

`config.<algo>.env` names the environment; an empty name keeps the single-turn
sampler. Each of the N = B * G rows gets its own environment state from
`env.reset` on its prompt row; when a row's turn ends, its sampled ids are
decoded, the environment steps (rows in parallel threads, each tool call with
its own timeout) and its observation is encoded on its own and appended, ids
as they are (`rl_lm.sampling.multiturn`).

The prompt ids are those of the data pipeline (`prompt_batches`, with the chat
template where the tokenizer has one); the environment's reset text is not
re-encoded. With Hermes calls and a tokenizer that has a chat template, an
observation is the template's own tool turn (`data.chat.tool_turn`: the end of
the assistant turn, the tool messages, the next assistant header). The
rollout's `texts` are what the model wrote (its sampled tokens only), so an
answer check never credits a tool's output; the environment's reward terms and
tool metrics come per row in `Rollout.episode`.

In a multi-process run every process reads the whole prompt batch and runs the
same sampler loop; each process steps the environments of its own block of rows
only (`own_rows`: every call runs once in the job), and the observations and
the final reward terms are exchanged (`allgather_json`), so every process feeds
every row the same ids and ends with the same terms for all N rows.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from rl_lm.algos import evaluation, rollout
from rl_lm.algos.rollout import Rollout
from rl_lm.data import chat, tool_lookup
from rl_lm.envs.tool_env import ToolEnv
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.parallel.sharding import allgather_json
from rl_lm.rewards import verifiable
from rl_lm.sampling.multiturn import MultiTurnOutput, sample_multiturn
from rl_lm.tools import calculator, sandbox
from rl_lm.tools.calls import COMPACT, HERMES

# Tool names a config may list, and how each is made from the run's dataset name.
TOOLS: dict[str, Callable[[str], Callable[..., str]]] = {
    "calculator": lambda data_name: calculator.calculator,
    "python": lambda data_name: sandbox.make_python_tool(),
    "lookup": lambda data_name: tool_lookup.make_lookup_tool(_lookup_table(data_name)),
}


def _lookup_table(data_name: str) -> str:
    """The tool_lookup config whose table the lookup tool reads: the run's own dataset's,
    or the default table for a run on another dataset."""
    family, _, name = data_name.partition("/")
    return name if family == "tool_lookup" and name else "lookup"


ENVS = ("", "tools")


def default_config() -> ml_collections.ConfigDict:
    """The environment section of an on-policy config; name "" is single-turn."""
    return ml_collections.ConfigDict(
        {
            "name": "",  # "" (single-turn) | "tools"
            "tools": "calculator",  # comma-separated names of TOOLS
            "format": COMPACT,  # compact | hermes (the call format)
            "max_turns": 4,  # turns per episode, the answer turn included
            "max_calls_per_turn": 4,
            "max_turn_tokens": 0,  # sampled tokens per turn; 0 = the whole budget
            "max_observation_tokens": 32,  # ids of one observation at most (head + tail)
            "timeout": 10.0,  # seconds per turn's calls
            "max_output": 200,  # characters of one tool output (middle-truncated)
        }
    )


def enabled(cfg: Any) -> bool:
    return cfg is not None and bool(cfg.get("name", ""))


def problems(cfg: Any, prefix: str) -> list[str]:
    """What is wrong with an env section, one line each (empty when fine)."""
    if cfg is None:
        return []
    out = []
    if cfg.name not in ENVS:
        out.append(f"{prefix}.name={cfg.name!r} not in {ENVS}")
    unknown = sorted(set(_tool_names(cfg)) - set(TOOLS))
    if cfg.name and unknown:
        out.append(f"{prefix}.tools: unknown {unknown}; known: {sorted(TOOLS)}")
    if cfg.format not in (COMPACT, HERMES):
        out.append(f"{prefix}.format={cfg.format!r} not in ({COMPACT!r}, {HERMES!r})")
    for key in ("max_turns", "max_calls_per_turn", "max_observation_tokens", "max_output"):
        if cfg[key] < 1:
            out.append(f"{prefix}.{key}={cfg[key]} must be >= 1")
    if cfg.max_turn_tokens < 0 or not cfg.timeout > 0:
        out.append(f"{prefix}.max_turn_tokens must be >= 0 and {prefix}.timeout > 0")
    return out


def refusals(algo: str, *, process: bool, reward_model_field: str | None) -> list[str]:
    """What an `algo` section (grpo or ppo) with episodes cannot combine, one line each.

    Args:
      algo: the section's name.
      process: whether process rewards are on (their steps split sampled text, not episodes).
      reward_model_field: the field that makes a learned reward model a source, or None.
        The model would score the loss-masked response, which has holes where the
        observations were, unlike anything it was trained on.
    """
    out = []
    if process:
        out.append(f"{algo}.process with {algo}.env: process rewards of episodes are not built")
    if reward_model_field:
        out.append(
            f"{reward_model_field} with {algo}.env: the reward model would score responses "
            "with holes where the observations were; use the verifiable reward"
        )
    return out


def _tool_names(cfg: Any) -> list[str]:
    return [t.strip() for t in cfg.tools.split(",") if t.strip()]


def make_env(cfg: Any, data_name: str = "") -> ToolEnv:
    """The environment an env section names, its tools made for dataset `data_name`."""
    tools = {name: TOOLS[name](data_name) for name in _tool_names(cfg)}
    return ToolEnv(
        tools,
        fmt=cfg.format,
        max_turns=cfg.max_turns,
        max_calls_per_turn=cfg.max_calls_per_turn,
        timeout=cfg.timeout,
        max_output=cfg.max_output,
    )


def collector(cfg: Any, model_cfg: Any, sampler: Any, data_name: str):
    """The rollout of an on-policy section `cfg` (grpo or ppo): `rollout.collect` of the
    single-turn `sampler`, or `collect` of episodes with `cfg.env` set; both called as
    (params, prompts, key, *, mesh, tokenizer, num_generations)."""
    env = cfg.get("env")
    if not enabled(env):
        return functools.partial(rollout.collect, sampler)
    sampling = dict(
        max_tokens=cfg.max_new_tokens,
        max_turn_tokens=env.max_turn_tokens,
        max_observation_tokens=env.max_observation_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
    )
    episode_args = {"model_cfg": model_cfg, "sampling": sampling}
    return functools.partial(collect, episode_args, make_env(env, data_name))


def own_rows(n: int) -> range:
    """The rows of n whose environments this process steps: block `jax.process_index()`
    of `jax.process_count()` contiguous blocks (all n in a single process)."""
    i, p = jax.process_index(), jax.process_count()
    return range(n * i // p, n * (i + 1) // p)


def _shared(mine: dict[int, Any]) -> dict[int, Any]:
    """{row: value} of every process's own rows, on every process (a collective)."""
    if jax.process_count() == 1:
        return mine
    out = {}
    for part in allgather_json({str(i): v for i, v in mine.items()}):
        out.update({int(i): v for i, v in part.items()})
    return out


class Episodes(NamedTuple):
    """A batch of finished episodes: the sampler's output and each row's env outcome."""

    out: MultiTurnOutput
    terms: dict[str, np.ndarray]  # per-row reward terms and tool metrics, [N] each
    tool_seconds: float  # wall time spent stepping environments (the slowest process's)


def run_episodes(
    env: Any,
    tokenizer: Any,
    params: Any,
    model_cfg: Any,
    prompts: dict[str, np.ndarray],
    key: jax.Array,
    *,
    num_generations: int,
    max_tokens: int,
    max_turn_tokens: int = 0,
    max_observation_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    workers: int = 8,
) -> Episodes:
    """Samples G episodes of each prompt row (prompt, prompt_mask, answer, ...).

    Multi-process: called on every process with the same global prompt batch; this
    process steps the environments of `own_rows(N)` only, and the returned Episodes
    (terms of all N rows included) are the same on every process but `tool_seconds`.
    """
    g = num_generations
    b = len(prompts["prompt"])
    mine = own_rows(b * g)
    fields = [k for k in prompts if k not in ("prompt", "prompt_mask")]
    texts = tokenizer.decode_batch(prompts["prompt"], prompts["prompt_mask"], stop_at_eos=False)
    rows = [{**{k: prompts[k][i] for k in fields}, "prompt": texts[i]} for i in range(b)]
    states: list[Any] = [None] * (b * g)
    for i in mine:
        states[i] = env.reset(rows[i // g])[1]
    terms: list[dict | None] = [None] * (b * g)
    spent = [0.0]
    # Hermes calls from a chat checkpoint: observations are its template's tool turns.
    chat_turns = getattr(env, "fmt", None) == HERMES and getattr(tokenizer, "chat_template", None)

    finish = getattr(env, "finish", None)  # ends an episode without running its calls

    def step_row(i: int, ids: np.ndarray, final: bool):
        text = tokenizer.decode(ids)
        result = (finish or env.step)(states[i], text) if final else env.step(states[i], text)
        states[i] = result.env_state
        if result.done or final:
            terms[i] = dict(result.reward_terms)
            return None
        text = result.observation or ""
        if chat_turns:
            text = chat.tool_turn(tokenizer, result.env_state.get("outputs", [text]))
        return np.asarray(tokenizer.encode(text), np.int32)

    pool = ThreadPoolExecutor(max_workers=workers)

    def on_turns(ended, actions, final):
        start = time.perf_counter()
        if jax.process_count() == 1:
            out = list(pool.map(step_row, ended, actions, final))
            spent[0] += time.perf_counter() - start
            return out
        own = [j for j, i in enumerate(ended) if mine.start <= i < mine.stop]
        got = list(pool.map(step_row, ended[own], [actions[j] for j in own], final[own]))
        spent[0] += time.perf_counter() - start
        every = _shared(
            {
                int(ended[j]): None if o is None else o.tolist()
                for j, o in zip(own, got, strict=True)
            }
        )
        return [None if every[i] is None else np.asarray(every[i], np.int32) for i in ended]

    stops = [tokenizer.encode(s) for s in env.stop_strings]
    if any(len(s) > 1 for s in stops) and not isinstance(tokenizer, ByteTokenizer):
        logging.log_first_n(
            logging.WARNING,
            "stop strings %s are matched as the ids they encode to alone; a BPE tokenizer may "
            "merge them with the text before them, and then a turn never stops at its call. "
            "Use format='hermes' with a checkpoint whose call closer is one token.",
            1,
            env.stop_strings,
        )
    try:
        out = sample_multiturn(
            params,
            model_cfg,
            jax.numpy.asarray(prompts["prompt"]),
            jax.numpy.asarray(prompts["prompt_mask"]),
            key,
            on_turns,
            max_tokens=max_tokens,
            max_turn_tokens=max_turn_tokens or None,
            max_observation_tokens=max_observation_tokens,
            stop_sequences=stops,
            num_samples=g,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_ids=tuple(tokenizer.eos_ids),
            pad_id=tokenizer.pad_id,
        )
        # Rows the budget ended before the environment did: one last, empty turn.
        for i in [i for i in mine if terms[i] is None]:
            step_row(i, np.zeros(0, np.int32), True)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if jax.process_count() > 1:
        every = _shared({i: {k: float(v) for k, v in terms[i].items()} for i in mine})
        terms = [every[i] for i in range(b * g)]
        spent[0] = max(allgather_json(spent[0]))
    names = sorted({k for t in terms for k in t})
    per_row = {k: np.asarray([t.get(k, 0.0) for t in terms], np.float32) for k in names}
    return Episodes(out, per_row, spent[0])


def collect(
    episode_args: dict,
    env: Any,
    params: Any,
    prompts: dict[str, np.ndarray],
    key: jax.Array,
    *,
    mesh: Mesh,
    tokenizer: Any,
    num_generations: int,
) -> Rollout:
    """`rollout.collect` for multi-turn episodes; multi-process, called on every process
    with the global prompt batch, as `rollout.collect` (see `run_episodes`)."""
    ep = run_episodes(
        env, tokenizer, params, episode_args["model_cfg"], prompts, key,
        num_generations=num_generations, **episode_args["sampling"],
    )  # fmt: skip
    out = ep.out
    metrics = {
        **{k: ep.terms[k] for k in ep.terms},
        "tool/observation_tokens": out.observation_tokens.astype(np.float32),
        "tool/truncated": out.truncated.astype(np.float32),
    }
    return rollout.from_samples(
        out,
        prompts,
        mesh=mesh,
        tokenizer=tokenizer,
        num_generations=num_generations,
        attention_mask=out.attention_mask,
        episode={**metrics, "time_tools": np.float32(ep.tool_seconds)},
    )


def make_eval(config, env_cfg, mesh, model_cfg, tokenizer, source, answer: str):
    """(params, ref_params) -> held-out greedy episode figures: accuracy, calls per
    episode, call error rate, response and observation tokens, turns."""
    ev, data = config.eval, config.data
    verifiable.check_answer_format(answer)
    batches, batch_size = evaluation.held_out_batches(
        source,
        tokenizer,
        num_examples=ev.num_examples,
        batch_size=ev.batch_size,
        max_prompt_len=data.max_prompt_len,
        seed=ev.seed,
    )
    env = make_env(env_cfg, data.name)
    sampling = dict(
        max_tokens=ev.max_new_tokens,
        max_turn_tokens=env_cfg.max_turn_tokens,
        max_observation_tokens=env_cfg.max_observation_tokens,
        temperature=0.0,
    )
    key = jax.random.key(0)  # unused by greedy decoding

    def evaluate(params, ref_params=None) -> dict[str, float]:
        sums, seen, shown = {}, 0, None
        for batch in batches:
            take = min(batch_size, ev.num_examples - seen)
            ep = run_episodes(
                env, tokenizer, params, model_cfg, batch, key, num_generations=1, **sampling
            )
            texts = tokenizer.decode_batch(ep.out.tokens, ep.out.mask)
            correct = verifiable.exact_match(texts[:take], list(batch["answer"][:take]), answer)
            rows = {
                "accuracy": correct,
                "response_len": ep.out.mask.sum(1),
                "observation_tokens": ep.out.observation_tokens,
                "calls": ep.terms.get("tool/calls", np.zeros(take)),
                "call_errors": ep.terms.get("tool/call_errors", np.zeros(take)),
                "turns": ep.out.turns,
            }
            for k, v in rows.items():
                sums[k] = sums.get(k, 0.0) + float(np.sum(np.asarray(v)[:take]))
            seen += take
            if shown is None:
                full = tokenizer.decode_batch(
                    ep.out.tokens, ep.out.attention_mask, stop_at_eos=False
                )
                shown = list(zip(full, batch["answer"], strict=False))[:2]
        for text, reference in shown:
            logging.info("eval episode: %r (answer %r)", text, reference)
        out = {k: v / seen for k, v in sums.items()}
        out["call_error_rate"] = sums["call_errors"] / max(sums["calls"], 1.0)
        out["num_examples"] = float(seen)
        return out

    return evaluate
