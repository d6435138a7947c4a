"""Learned rewards for the on-policy trainers (PPO, GRPO): the reward model and its evaluation.

A trainer whose reward source is "reward_model" or "both" (the learned score
plus the verifiable rewards) reads the top-level `config.reward_model` section:
`model`, the reward model's fields (scalar_head=True), and either `workdir`, a
finished reward-model run (its latest checkpoint), or `stage`, a reward-model
experiment trained on a fresh start, from the policy's starting trunk (the SFT
warm start), before the first step. The reward model's params ride in the train
state as `rm_params`, so a checkpoint holds them and a resumed run reloads
nothing; `rl_lm.algos.reward_sources.reward_model` scores rollouts with them.
Tasks that name the win-rate evaluation are evaluated by win rate over the
reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Mesh

from rl_lm import parallel, tasks
from rl_lm.algos import common, evaluation, preference_eval, reward_model
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params, init_params, partition_specs

SOURCES = ("reward_model", "verifiable", "both")


def model_config(config: Any, source: str, field: str) -> ModelConfig | None:
    """The reward model's ModelConfig when reward `source` needs one, else None.

    Args:
      config: the experiment config.
      source: one of SOURCES.
      field: the config field `source` came from, for error messages.
    """
    if source == "verifiable":
        return None
    section = config.get("reward_model")
    if section is None:
        raise ValueError(
            f"{field}={source!r} needs a reward_model section "
            "(model, workdir or stage; see configs/ppo_synthetic.py)."
        )
    rm_cfg = common.model_config(section.model)
    if not rm_cfg.scalar_head:
        raise ValueError("reward_model.model needs scalar_head=True.")
    return rm_cfg


def load_reward_model(config: Any, mesh: Mesh, init_from: Params | None) -> Params:
    """The reward model's params: from reward_model.workdir, or trained from reward_model.stage."""
    section = config.reward_model
    rm_cfg = common.model_config(section.model)
    if section.get("workdir"):
        return common.load_run_params(
            section.workdir,
            rm_cfg,
            "reward_model.workdir",
            "give reward_model.model the reward model run's model fields.",
        )
    stage = section.get("stage")
    if stage is None:
        raise ValueError(
            "rewards from a reward model need reward_model.workdir (a finished reward-model "
            "run) or reward_model.stage (a reward-model experiment to train first)."
        )
    if common.model_config(stage.model) != rm_cfg:
        raise ValueError("reward_model.stage.model must equal reward_model.model.")
    trainer = reward_model.make_trainer(stage, mesh, init_from)
    state = trainer.init_state(jax.random.PRNGKey(stage.seed))
    batches = trainer.batches(0)
    for _ in range(stage.train.num_steps):
        state, _ = trainer.step(state, next(batches))
    result = trainer.evaluate(state)
    print(f"Reward model stage ({stage.train.num_steps} steps): held-out {result}", flush=True)
    return jax.device_get(state["params"])


def sharded_init(
    config: Any,
    mesh: Mesh,
    init_fn: Callable[[jax.Array, Params | None], common.State],
    specs_fn: Callable[[common.State], common.State],
    rm_cfg: ModelConfig | None,
    load_rm: Callable[[], Params] | None,
) -> tuple[Callable[[jax.Array], common.State], common.State, common.State]:
    """`common.sharded_init` of a state that holds the reward model's params when rm_cfg is set.

    Args:
      config: the experiment config (its reward_model section).
      mesh: the mesh.
      init_fn: (rng, rm_params or None) -> state, with rm_params as its "rm_params".
      specs_fn: abstract state -> PartitionSpecs of every entry but "rm_params".
      rm_cfg: the reward model's config; None for a state without one.
      load_rm: () -> the reward model's params (the reward-model source's init,
        `load_reward_model`); None without a reward model.

    Returns:
      (init(rng) -> sharded state, abstract state, state shardings). With a
      reward model, init loads or trains it (`load_rm`) first.
    """
    rm_specs = partition_specs(rm_cfg, config.rules) if rm_cfg is not None else None

    def all_specs(abstract):
        specs = specs_fn(abstract)
        if rm_specs is not None:
            specs["rm_params"] = rm_specs
        return specs

    def template_init(rng):  # The shapes of a state; its reward model is a placeholder.
        return init_fn(rng, init_params(rm_cfg, rng) if rm_cfg is not None else None)

    placeholder_init, abstract, shardings = common.sharded_init(mesh, template_init, all_specs)
    if rm_cfg is None:
        return placeholder_init, abstract, shardings
    rm_init = jax.jit(
        init_fn,
        in_shardings=(parallel.replicated(mesh), parallel.named(mesh, rm_specs)),
        out_shardings=shardings,
    )

    def init_state(rng):
        return rm_init(rng, load_rm())

    return init_state, abstract, shardings


def make_scorer(rm_cfg: ModelConfig, mesh: Mesh) -> Callable[[Params, dict[str, jax.Array]], Any]:
    """Jitted (rm_params, sharded rollout rows) -> learned rewards r_N.

    The rows are a dict of the sampler's prompt [N,P], prompt_mask, response [N,T], mask.
    """
    return jax.jit(
        lambda params, batch: reward_model.score_responses(
            params, rm_cfg, batch["prompt"], batch["prompt_mask"], batch["response"], batch["mask"]
        ),
        out_shardings=parallel.batch_sharding(mesh),
    )


def make_policy_eval(
    config: Any,
    mesh: Mesh,
    policy_cfg: ModelConfig,
    tokenizer: Any,
    test_source: Any,
    task: tasks.Task,
) -> Callable[[Params, Params | None], dict[str, float]]:
    """The held-out evaluation of a policy: (params, ref_params) -> {name: float}.

    On tasks that name the win-rate evaluation: the win rate over the reference
    under the task's judge, the mean true reward (where known) and the sequence
    KL (`preference_eval.make_sample_eval`); otherwise greedy exact-match
    accuracy (the reference is not used).
    """
    data, ev = config.data, config.eval
    if tasks.WIN_RATE in task.evals:
        return preference_eval.make_sample_eval(
            mesh,
            policy_cfg,
            tokenizer,
            test_source,
            task,
            num_examples=ev.num_examples,
            batch_size=ev.batch_size,
            max_prompt_len=data.max_prompt_len,
            max_new_tokens=ev.max_new_tokens,
            greedy=ev.greedy,
            seed=ev.seed,
        )
    heldout = evaluation.make_exact_match_eval(
        mesh,
        policy_cfg,
        tokenizer,
        test_source,
        num_examples=ev.num_examples,
        batch_size=ev.batch_size,
        max_prompt_len=data.max_prompt_len,
        max_new_tokens=ev.max_new_tokens,
        seed=ev.seed,
        answer=ev.get("answer", task.answer),
    )
    return lambda params, ref_params: heldout(params)
