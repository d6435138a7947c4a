"""Process rewards for GRPO: step scores to token advantages.

The `grpo.process` config section (off by default, `source="none"`) replaces
GRPO's one advantage per response by token advantages [N, T] built from
per-step scores p_s in [0, 1]:

1. Scores come from a programmatic checker of the chain task
   (`source="strict"`: the ground truth; `"lenient"`: an exploitable "PRM"
   that pays every correct-looking step; `"local"`: one that checks each
   step against the line above and the prompt's operations but not their
   order or count; `"restate"`: strict, but restating an earlier step also
   scores 1, `rl_lm.rewards.steps`) or from a
   learned discriminative PRM (`"prm"`, the checkpoint of a
   configs/prm_chain.py run in `prm_workdir`; p = sigmoid of its head).
   `"prime"` is the odd one out: PRIME's implicit PRM, a language model
   trained online on the outcome labels whose token rewards
   beta_p (lp_phi - lp_ref) take the place of steps 1-4
   (`rl_lm.algos.prime`; fields prime_*, process_weight, outcome_weight and
   gamma, per token).
2. Step reward r_s = 2 p_s - 1 in [-1, 1]: PURE's p(+) - p(-) for a binary
   PRM, so a step judged wrong costs as much as a right one earns.
3. Transform ("none", "clip", "delta" = Gao et al.'s with the last step
   dropped, "delta_keep_last"), then a baseline within each prompt's group.
   Two compositions exist, and they differ:
   - before the credit form (rl_lm's): "group_norm" (DeepSeekMath's GRPO
     process supervision: all step rewards of the group normalized by their
     mean and std), "loo" (each row's raw step rewards lose the mean step
     reward of the other rows, then the credit form runs), or "none". Both
     are per-group affine maps of r, so under the strict min-form they
     commute with the min: the return is the min of the normalized rewards.
   - after the credit form (PURE's released code, `core.step_baselines`):
     "pure_step" and "pure_token", a leave-one-out baseline of the credited
     rewards subtracted once per remaining step or token. With
     `zero_step_ends=True` every step's last token gets advantage 0, as in
     PURE. PURE's composition is form="soft_min" (or "sum"),
     baseline="pure_token" (its script's) or "pure_step", zero_step_ends=True.
4. Credit form over steps ("sum", "min", "soft_min"): returns G_s, and every
   token of step s gets A_t = G_s (`core.steps.steps_to_tokens`); the PURE
   baselines apply to G here.
5. Outcome: A_t += outcome_weight * the GRPO sequence advantage of the
   verifiable reward (estimator `grpo.advantage`; PURE used leave-one-out,
   `grpo.advantage="rloo"`), on every response token, i.e. added at EOS with
   gamma = 1. PURE's "PRM + 10% verifiable rewards" is taken here as
   outcome_weight = 0.1 on top of process_weight = 1.

Steps are segmented in jitted code on the sampled tokens (`segment_steps`),
which is the truth for the step slots; host scores are read into those slots.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from rl_lm import parallel
from rl_lm.algos import prm
from rl_lm.algos.prm_runs import load_prm
from rl_lm.algos.process_advantages import BASELINES, token_advantages
from rl_lm.core import credit
from rl_lm.core import steps as core_steps
from rl_lm.rewards import steps as step_checkers
from rl_lm.sampling.sampler import cut_by_budget

SOURCES = ("none", *step_checkers.CHECKERS, "prm", "prime")


def default_config() -> ml_collections.ConfigDict:
    """The `grpo.process` section; `source="none"` keeps plain GRPO."""
    return ml_collections.ConfigDict(
        {
            "source": "none",  # none | a checker (rl_lm.rewards.steps) | prm | prime
            "form": "sum",  # sum | min | soft_min
            "transform": "none",  # none | clip | delta
            "gamma": 1.0,  # sum-form discount per step
            "temperature": 0.1,  # soft_min temperature (PURE: 0.1)
            "eta": 0.0,  # Clip threshold
            "baseline": "group_norm",  # group_norm | loo | pure_step | pure_token | none
            "zero_step_ends": False,  # PURE: advantage 0 on each step's last token
            "process_weight": 1.0,
            "outcome_weight": 0.0,  # weight of the verifiable reward's advantage
            "max_steps": 8,  # step slots S; extra steps merge into the last
            "delimiter": "\n",  # one token ends a step
            # A checker's view of a step the budget cut: "as_written" | "completed"
            # (rl_lm.rewards.steps; a learned PRM scores the prefix itself).
            "cut_step": "as_written",
            "prm_workdir": config_dict.placeholder(str),  # source="prm": a prm_chain run
            # source="prime": the implicit PRM's beta_p, learning rate and updates per rollout.
            "prime_beta": 0.05,
            "prime_lr": 1e-6,
            "prime_steps": 1,
        }
    )


def enabled(cfg: Any) -> bool:
    """Whether `cfg` (a `grpo.process` section, or None) turns process rewards on."""
    return cfg is not None and cfg.source != "none"


def validate(cfg: Any, grpo_cfg: Any = None, section: str = "grpo.process") -> list[str]:
    """The problems of a process section named `section` (empty when fine).

    `grpo_cfg`, the enclosing `grpo` section, adds the GRPO-only checks.
    """
    problems = []
    if cfg.source not in SOURCES:
        problems.append(f"{section}.source={cfg.source!r} not in {SOURCES}")
    if cfg.form not in credit.CREDIT_FORMS:
        problems.append(f"{section}.form={cfg.form!r} not in {sorted(credit.CREDIT_FORMS)}")
    if cfg.transform not in credit.STEP_TRANSFORMS:
        problems.append(
            f"{section}.transform={cfg.transform!r} not in {sorted(credit.STEP_TRANSFORMS)}"
        )
    if cfg.baseline not in BASELINES:
        problems.append(f"{section}.baseline={cfg.baseline!r} not in {BASELINES}")
    if cfg.temperature <= 0:
        problems.append(f"{section}.temperature={cfg.temperature} must be > 0")
    if not isinstance(cfg.get("zero_step_ends", False), bool):
        problems.append(f"{section}.zero_step_ends={cfg.zero_step_ends!r} must be True or False")
    if not isinstance(cfg.max_steps, int) or cfg.max_steps < 1:
        problems.append(f"{section}.max_steps={cfg.max_steps!r} must be an int >= 1")
    if cfg.cut_step not in step_checkers.CUT_STEPS:
        problems.append(f"{section}.cut_step={cfg.cut_step!r} not in {step_checkers.CUT_STEPS}")
    if not enabled(cfg):
        return problems
    if cfg.cut_step != "as_written" and cfg.source in ("prm", "prime"):
        problems.append(
            f"{section}.cut_step={cfg.cut_step!r} applies to the step checkers; a learned PRM "
            f"(source={cfg.source!r}) scores a cut step's prefix itself"
        )
    if cfg.source == "prm" and not cfg.get("prm_workdir"):
        problems.append(
            f"{section}.source='prm' needs {section}.prm_workdir (a configs/prm_chain.py run)"
        )
    if cfg.source == "prime":
        problems += _prime_problems(cfg, grpo_cfg, section)
    if grpo_cfg is None:
        return problems
    if grpo_cfg.dynamic_sampling:
        problems.append(
            "grpo.dynamic_sampling filters groups by the outcome reward; turn it off with "
            "process rewards"
        )
    if grpo_cfg.kl_placement == "reward":
        problems.append(
            "grpo.kl_placement='reward' is a sequence reward; with process rewards put the KL "
            "in the loss (kl_placement='loss')"
        )
    return problems


def _prime_problems(cfg: Any, grpo_cfg: Any, section: str) -> list[str]:
    """What source="prime" supports: sum-form token returns after leave-one-out baselines,
    trained on and mixed with a verifiable outcome."""
    fixed = {"form": "sum", "transform": "none", "baseline": "loo"}
    problems = [
        f"{section}.source='prime' takes token returns of leave-one-out rewards (PRIME); "
        f"set {section}.{name}={want!r} (got {cfg[name]!r})"
        for name, want in fixed.items()
        if cfg[name] != want
    ]
    if not cfg.prime_beta > 0:
        problems.append(f"{section}.prime_beta={cfg.prime_beta} must be > 0 (PRIME: 0.05)")
    if not cfg.prime_lr > 0:
        problems.append(f"{section}.prime_lr={cfg.prime_lr} must be > 0")
    if not isinstance(cfg.prime_steps, int) or cfg.prime_steps < 1:
        problems.append(f"{section}.prime_steps={cfg.prime_steps!r} must be an int >= 1")
    if grpo_cfg is None:
        problems.append(
            f"{section}.source='prime' trains its PRM inside the GRPO loop only "
            "(rl_lm.algos.prime); use it with algo='grpo'"
        )
    elif grpo_cfg.reward_source != "verifiable":
        problems.append(
            f"{section}.source='prime' learns from and adds the verifiable outcome; set "
            f"grpo.reward_source='verifiable' (got {grpo_cfg.reward_source!r})"
        )
    return problems


def read_into_slots(scores_NxS: np.ndarray, host_mask_NxS: np.ndarray, num_steps_N: np.ndarray):
    """Host scores placed in the jitted step slots, and the rows whose step counts differ.

    The two agree except where a response ends in tokens the text decoding drops
    (a special token after a final newline, say): the tokens' extra step then
    scores 0, a wrong step.

    Returns:
        (scores_NxS with 0 where the host had no step, mismatch_N bool).
    """
    return np.where(host_mask_NxS, scores_NxS, 0).astype(np.float32), (
        host_mask_NxS.sum(1) != np.asarray(num_steps_N)
    )


def advantage_kwargs(cfg: Any, group_size: int, step_arguments: dict[str, Any]) -> dict[str, Any]:
    """`token_advantages`' static keyword arguments from a `grpo.process` section."""
    return dict(
        group_size=group_size,
        form=cfg.form,
        transform=cfg.transform,
        gamma=cfg.gamma,
        temperature=cfg.temperature,
        eta=cfg.eta,
        baseline=cfg.baseline,
        zero_step_ends=cfg.get("zero_step_ends", False),
        process_weight=cfg.process_weight,
        outcome_weight=cfg.outcome_weight,
        **step_arguments,
    )


def make(
    proc: Any,
    group_size: int,
    model: Any,
    tokenizer: Any,
    mesh: Any,
    section: str = "grpo.process",
) -> dict[str, Any] | None:
    """The jitted pieces of process rewards, or None when `proc` is off.

    Args:
        proc: a `process` section (`default_config`), or None.
        group_size: G completions per prompt.
        model: the policy's `model` section (the PRM shares its vocabulary).
        tokenizer: the policy's tokenizer (the step delimiter must be one token).
        mesh: the device mesh.
        section: the config path of `proc`, for error messages.

    Returns:
        {"checker": a `rl_lm.rewards.steps` checker name or None, "step_args",
        "advantages": jitted `token_advantages`, and for source="prm"
        "prm_params", "prm_score"}; pass it to `advantages` or `step_scores`.
    """
    if not enabled(proc):
        return None
    if proc.source == "prime":
        raise ValueError("process source 'prime' is built by rl_lm.algos.prime.make, not here.")
    step_args = core_steps.step_args(proc, tokenizer, section)
    kwargs = advantage_kwargs(proc, group_size, step_args)
    out = {
        "checker": proc.source if proc.source != "prm" else None,
        "cut_step": proc.cut_step,
        "step_args": step_args,
        "advantages": jax.jit(functools.partial(token_advantages, **kwargs)),
    }
    if proc.source == "prm":
        params, prm_cfg = load_prm(proc.prm_workdir, model, section)
        out["prm_params"] = jax.device_put(params, parallel.replicated(mesh))
        out["prm_score"] = jax.jit(
            lambda params, *batch: prm.score_responses(params, prm_cfg, *batch, **step_args),
            out_shardings=parallel.batch_sharding(mesh),
        )
    return out


def score_on_host(
    process: dict[str, Any] | None,
    host: dict[str, np.ndarray],
    prompt_texts: list[str],
    texts: list[str],
    group_size: int,
) -> None:
    """Fills host["step_scores"] / host["step_mask"] with the checker's scores of
    the decoded rollout (prompt-major, `group_size` responses per prompt text);
    nothing for a learned PRM or with process rewards off."""
    if process is None or process["checker"] is None:
        return
    cut_N = None
    if process["cut_step"] == "completed":
        eos_ids = (process["step_args"]["eos_id"],)
        cut_N = cut_by_budget(host["response"], host["mask"], eos_ids)
    host["step_scores"], host["step_mask"] = step_checkers.step_scores(
        list(np.repeat(np.asarray(prompt_texts, dtype=object), group_size)),
        texts,
        process["step_args"]["max_steps"],
        checker=process["checker"],
        cut_N=cut_N,
    )


def step_scores(
    process: dict[str, Any], host: dict[str, np.ndarray], arrays: dict[str, jax.Array]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Step scores [N, S] of the global batch: the checker's (read on the host into
    host["step_scores"] / host["step_mask"] by the rollout) or the learned PRM's on
    the sharded rollout `arrays`; the host step mask, None for the PRM."""
    if process["checker"] is not None:
        return host["step_scores"], host["step_mask"]
    p_NxS, _ = process["prm_score"](
        process["prm_params"],
        arrays["prompt"],
        arrays["prompt_mask"],
        arrays["response"],
        arrays["mask"],
    )
    return parallel.to_host(p_NxS), None


def advantages(
    process: dict[str, Any],
    host: dict[str, np.ndarray],
    arrays: dict[str, jax.Array],
    outcome_adv_N: np.ndarray,
) -> tuple[np.ndarray, dict[str, float]]:
    """Token advantages [N, T] of the global batch (on every process) and their metrics."""
    scores_NxS, host_mask_NxS = step_scores(process, host, arrays)
    adv_NxT, stats = process["advantages"](
        jnp.asarray(scores_NxS, jnp.float32),
        jnp.asarray(host["response"]),
        jnp.asarray(host["mask"]),
        jnp.asarray(outcome_adv_N, jnp.float32),
    )
    stats = jax.tree.map(np.asarray, stats)
    return np.asarray(adv_NxT), metrics(stats, scores_NxS, host_mask_NxS)


def metrics(
    stats: dict[str, np.ndarray], scores_NxS: np.ndarray, host_mask_NxS: np.ndarray | None
) -> dict[str, float]:
    """The logged process metrics from per-row stats (`token_advantages`' or PPO's).

    steps_per_response, step_overflow (rows with more steps than slots),
    process_return (the first step's return before any baseline),
    process_score_sum / _min (of p), and, for checker scores, step_mismatch
    (rows whose host step count differs from the jitted segmentation).
    """
    num_steps_N = stats["num_steps_N"]
    out = {
        "steps_per_response": float(num_steps_N.mean()),
        "step_overflow": float(stats["overflow_N"].mean()),
        "process_return": float(stats["return_N"].mean()),
        "process_score_sum": float(stats["score_sum_N"].mean()),
        "process_score_min": float(np.where(num_steps_N > 0, stats["score_min_N"], 0).mean()),
    }
    if host_mask_NxS is not None:
        _, mismatch_N = read_into_slots(scores_NxS, host_mask_NxS, num_steps_N)
        out["step_mismatch"] = float(mismatch_N.mean())
    return out
