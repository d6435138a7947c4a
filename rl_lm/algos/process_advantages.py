"""Token advantages from step scores: transform, baseline, credit form, outcome.

The math of `grpo.process` (see `rl_lm.algos.process_rewards` for the
pipeline and its config): pure and jittable, on the sampled tokens and the
step scores in `core.steps.segment_steps`' slots.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rl_lm.core import credit, step_baselines
from rl_lm.core import steps as core_steps

BASELINES = ("group_norm", "loo", "pure_step", "pure_token", "none")
# Baselines applied to the credit form's returns (PURE's composition).
_AFTER_CREDIT = {
    "pure_step": lambda G, st, m, g: step_baselines.per_step_baseline(G, st.step_mask_NxS, g),
    "pure_token": lambda G, st, m, g: step_baselines.per_token_baseline(
        G,
        st.step_mask_NxS,
        step_baselines.tokens_per_step(st.token_step_NxT, G.shape[1]),
        jnp.sum(m > 0, axis=1),
        g,
    ),
}


def token_advantages(
    scores_NxS: jax.Array,
    tokens_NxT: jax.Array,
    m_NxT: jax.Array,
    outcome_adv_N: jax.Array,
    *,
    group_size: int,
    form: str,
    transform: str = "none",
    gamma: float = 1.0,
    temperature: float = 0.1,
    eta: float = 0.0,
    baseline: str = "group_norm",
    zero_step_ends: bool = False,
    process_weight: float = 1.0,
    outcome_weight: float = 0.0,
    delimiter_ids: tuple[int, ...] = (10,),
    max_steps: int = 8,
    eos_id: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token advantages from step scores; jit with everything after `*` static.

    Args:
        scores_NxS: step scores p in [0, 1] in `segment_steps`' slots (absent
            steps are never read).
        tokens_NxT: sampled response tokens.
        m_NxT: response mask (through EOS).
        outcome_adv_N: sequence advantages of the verifiable reward.
        group_size: G completions per prompt (rows prompt-major).
        form, transform, gamma, temperature, eta: see `credit.step_returns`.
        baseline: one of `BASELINES` (module docstring): "group_norm",
            "loo" and "none" act on the step rewards before the credit form,
            "pure_step" and "pure_token" on its returns.
        zero_step_ends: advantage 0 on every step's last token (PURE).
        process_weight, outcome_weight: weights of the two advantages.
        delimiter_ids, max_steps, eos_id: as in `segment_steps`.

    Returns:
        (adv_NxT, 0 off the mask; per-row stats: num_steps_N, overflow_N,
        return_N = the first step's return of 2p - 1 under `form` and
        `transform` before any baseline, score_sum_N and score_min_N of p).
    """
    st = core_steps.segment_steps(tokens_NxT, m_NxT, delimiter_ids, max_steps, eos_id)
    mask_NxS = st.step_mask_NxS
    r_NxS = jnp.where(mask_NxS, 2.0 * scores_NxS.astype(jnp.float32) - 1.0, 0.0)
    r_NxS = credit.STEP_TRANSFORMS[transform](r_NxS, mask_NxS, eta)
    raw_G_NxS = credit.CREDIT_FORMS[form](r_NxS, mask_NxS, gamma, temperature)
    if baseline in _AFTER_CREDIT:
        G_NxS = _AFTER_CREDIT[baseline](raw_G_NxS, st, m_NxT, group_size)
    else:
        if baseline == "group_norm":
            r_NxS = credit.group_normalize_steps(r_NxS, mask_NxS, group_size)
        elif baseline == "loo":
            r_NxS = credit.subtract_loo_mean(r_NxS, mask_NxS, group_size)
        elif baseline != "none":
            raise ValueError(f"unknown process baseline {baseline!r}; choose one of {BASELINES}.")
        G_NxS = credit.CREDIT_FORMS[form](r_NxS, mask_NxS, gamma, temperature)
    process_NxT = core_steps.steps_to_tokens(G_NxS, st.token_step_NxT)
    adv_NxT = credit.combine_with_outcome(
        process_NxT, outcome_adv_N, m_NxT, process_weight, outcome_weight
    )
    if zero_step_ends:
        ends_NxT = core_steps.at_step_ends(
            mask_NxS.astype(jnp.float32), st.step_end_NxS, st.token_step_NxT
        )
        adv_NxT = jnp.where(ends_NxT > 0, 0.0, adv_NxT)
    return adv_NxT, row_stats(st, scores_NxS, raw_G_NxS[:, 0])


def row_stats(st: Any, scores_NxS: jax.Array, return_N: jax.Array) -> dict[str, jax.Array]:
    """Per-row step statistics for `metrics`: num_steps_N, overflow_N, return_N,
    score_sum_N and score_min_N of p over the existing steps of `st`
    (`segment_steps`' result); jittable."""
    mask_NxS = st.step_mask_NxS
    p_NxS = scores_NxS.astype(jnp.float32)
    return {
        "num_steps_N": st.num_steps_N,
        "overflow_N": st.overflow_N,
        "return_N": return_N,
        "score_sum_N": jnp.sum(jnp.where(mask_NxS, p_NxS, 0), axis=1),
        "score_min_N": jnp.min(jnp.where(mask_NxS, p_NxS, jnp.inf), axis=1),
    }
