"""Multi-turn tool episodes for PPO (`ppo.env`, `rl_lm.algos.episodes`).

With `ppo.env.name` set, PPO's rollout is `episodes.collect` instead of the
single-turn sampler: each row is an episode whose response holds the model's
turns and, between them, the environment's observations (tool results). The
Rollout carries two masks: `attention_mask` (1 on every response token the
model sees, observations included) and `mask` (the loss mask, 0 on
observations). Every forward that reads the response (lp_old and V_old, the
reference log-probs, the update's log-probs, entropies and values) attends
with `attention_mask`, so a turn after a tool call is conditioned on its
result; the KL, the token rewards, GAE, the whitening and every loss term use
`mask` alone.

The MDP is the sequence of the model's own tokens: an observation is part of
the environment's transition from the call's last token to the next action
token, not an action. `ppo_loss.rollout_targets` (through `core.gae.gae`)
therefore bridges mask holes: the advantages and returns at the action tokens
are exactly those of the same episode with the observation tokens deleted
(tests/algos/test_ppo_tools.py).

What does not work together with episodes is refused by `problems`, one line
each: process rewards (their steps are segmented over sampled text, not
episodes), and a learned reward model (it scores the loss-masked response,
which has holes where the observations were, unlike anything it was trained
on).
"""

from __future__ import annotations

from typing import Any

from rl_lm.algos import episodes, process_rewards, rm_rewards, source_spec


def problems(cfg: Any) -> list[str]:
    """What is wrong with the `ppo` section's env and its combinations (empty when fine)."""
    env = cfg.get("env")
    out = episodes.problems(env, "ppo.env")
    if not episodes.enabled(env):
        return out
    listed = source_spec.listed(cfg, "ppo")
    uses_rm = "reward_model" in listed if listed else cfg.reward.source != "verifiable"
    field = "ppo.reward_sources" if listed else f"ppo.reward.source={cfg.reward.source!r}"
    process = process_rewards.enabled(cfg.get("process"))
    return out + episodes.refusals(
        "ppo", process=process, reward_model_field=field if uses_rm else None
    )


def make_eval(config, mesh, policy_cfg, tokenizer, test_source, task):
    """(params, ref_params) -> held-out figures: greedy episodes with the same tools when
    ppo.env is set (`episodes.make_eval`), else `rm_rewards.make_policy_eval`."""
    env = config.ppo.get("env")
    if not episodes.enabled(env):
        return rm_rewards.make_policy_eval(config, mesh, policy_cfg, tokenizer, test_source, task)
    answer = config.eval.get("answer", task.answer)
    return episodes.make_eval(config, env, mesh, policy_cfg, tokenizer, test_source, answer)
