"""What sum-form and min-form credit pay for padding, in expectation.

    python -m experiments.pure_incentives --out=docs/pure_incentives.png

A small exact model of the chain task's PURE runs. A solution has S real
steps. Step s is right with probability p_s when the steps before it were
right, and every step from the first slip on is wrong (the strict checker).
So a right step earns +1 and a wrong one -1 (rewards 2p - 1). A padding step
(a restatement) earns r_pad whatever happens. A response has K step slots. A
policy solves the first k steps and then pads to the budget, or solves all S
and stops ("honest"). Named ones: "honest + pad" (k = S), "pad only" (k = 0).

For each one, the expected return is computed under the credit form
(`rl_lm.core.credit.step_returns`), with the group baseline applied first.
"loo" is rl_lm's baseline="loo" (not PURE's own composition, which baselines
the credited rewards once per remaining step: `rl_lm.core.step_baselines`):
every raw step reward loses b, the mean step reward of the honest peers
(`credit.subtract_loo_mean` in expectation). "none" subtracts nothing. Peers
are honest, so the question is whether the first padding a policy samples is
reinforced. GRPO credits each token of step s with G_s, the
return from step s on, so two policies that first differ at step s are
compared by E[G_s].

What it shows (`thresholds`, `drop_gains`; the tests check the closed forms):
- sum-form pays for padding after the answer iff r_pad > b (loo) or r_pad > 0
  (none), where b = mean_s (2 P_s - 1) and P_s = p_1 ... p_s;
- to give up the whole solution for padding, sum-form needs r_pad > b and
  min-form only r_pad > 2 P_S - 1 <= b: min-form, whose return is its worst
  step, is the more tempted to swap a risky solution for a sure score;
- padding in place of steps k+1 .. S (against solving them, then padding)
  gains sum_{s > k} (r_pad + 1 - 2 P_s) under sum-form, one term per dropped
  step, but (1 - P_S)(r_pad + 1) under min-form, whatever k is. In place of
  the answer alone (k = S - 1) the two are equal. Min-form's return from step
  k+1 is the worst step ahead, so dropping one risky step or all of them pays
  the same; sum-form is paid for every step it drops;
- against a policy that stops after its answer (`swap_gains`), padding that
  replaces real steps one for one never tempts sum-form alone: min-form is
  paid at least sum-form's gain per dropped step. What sum-form pays for and
  min-form does not is padding that adds steps, and that costs accuracy only
  where the budget makes padding displace the answer, more padding steps in
  the answer's room than the one answer step they push out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from rl_lm.core import credit

POLICIES = ("honest", "honest+pad", "pad only")
BASELINES = ("loo", "none")
# A figure evaluates thousands of small cases of a few shapes: compile once per shape.
_step_returns = jax.jit(credit.step_returns, static_argnames=("form",))


def strict_outcomes(p_S) -> tuple[np.ndarray, np.ndarray]:
    """The S + 1 outcomes of an honest solution under the strict checker.

    Outcome k < S slips first at step k + 1. Outcome S is all right.

    Returns:
        (prob_O, r_OxS): each outcome's probability and its step rewards in {+1, -1}.
    """
    p_S = np.asarray(p_S, np.float64)
    if p_S.ndim != 1 or p_S.size == 0 or np.any((p_S < 0) | (p_S > 1)):
        raise ValueError(f"p must be a non-empty list of probabilities in [0, 1], got {p_S}.")
    S = p_S.size
    reach_S = np.concatenate([[1.0], np.cumprod(p_S)[:-1]])  # P(steps 1..s-1 right)
    prob_O = np.append(reach_S * (1 - p_S), np.prod(p_S))
    r_OxS = np.where(np.arange(S)[None, :] < np.arange(S + 1)[:, None], 1.0, -1.0)
    return prob_O, r_OxS


def honest_baseline(p_S) -> float:
    """b, the expected mean step reward of an honest peer (the "loo" baseline)."""
    prob_O, r_OxS = strict_outcomes(p_S)
    return float(prob_O @ r_OxS.mean(axis=1))


def _policy(policy: str | int, S: int) -> tuple[int, bool]:
    """(steps solved, whether padding fills the budget) of a named policy or of k."""
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES} or a k.")
        return {"honest": (S, False), "honest+pad": (S, True), "pad only": (0, True)}[policy]
    if not 0 <= policy <= S:
        raise ValueError(f"a policy solves k = 0 .. {S} steps before padding, got {policy}.")
    return int(policy), True


def expected_return(
    p_S, r_pad: float, budget: int, policy: str | int, form: str, baseline: str, at_step: int = 1
) -> float:
    """E[G_s] of `policy` under credit `form` after `baseline` ("loo" or "none"), s = `at_step`.

    Args:
        p_S: per-step success probabilities, each given the steps before were right.
        r_pad: the reward of a padding step, in [-1, 1].
        budget: K, the step slots of a response (>= S).
        policy: one of POLICIES, or k: solve steps 1 .. k, then pad to the budget.
        form: a credit form of `credit.step_returns` ("sum", "min", "soft_min").
        baseline: one of BASELINES.
        at_step: s, 1-based. GRPO credits every token of step s with G_s, so two
            policies that first differ at step s are told apart by E[G_s].
    """
    prob_O, r_OxS = strict_outcomes(p_S)
    S = r_OxS.shape[1]
    if budget < S:
        raise ValueError(f"budget={budget} step slots cannot hold the {S} steps of a solution.")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {BASELINES}.")
    k, pad = _policy(policy, S)
    # Outcomes that differ only after step k give the same rows: merge them.
    outcome_O = np.minimum(np.arange(S + 1), k)
    prob_O = np.bincount(outcome_O, weights=prob_O, minlength=k + 1)
    r_OxK = np.zeros((k + 1, budget))
    mask_OxK = np.zeros((k + 1, budget), bool)
    r_OxK[:, :k] = np.where(np.arange(k)[None, :] < np.arange(k + 1)[:, None], 1.0, -1.0)
    mask_OxK[:, :k] = True
    if pad:
        r_OxK[:, k:], mask_OxK[:, k:] = r_pad, True
    if baseline == "loo":
        r_OxK = np.where(mask_OxK, r_OxK - honest_baseline(p_S), 0.0)
    G_OxK = _step_returns(jnp.asarray(r_OxK, jnp.float32), jnp.asarray(mask_OxK), form=form)
    if not 1 <= at_step <= int(mask_OxK[0].sum()):
        raise ValueError(f"policy {policy!r} has no step {at_step}.")
    return float(prob_O @ np.asarray(G_OxK[:, at_step - 1], np.float64))


def drop_gains(p_S, r_pad: float, budget: int, form: str, baseline: str = "loo") -> np.ndarray:
    """[S + 1]: what padding in place of steps k+1 .. S gains over solving them, k = 0 .. S.

    The two policies first differ at step k + 1, so the gain is that step's
    credit: E[G_{k+1}] of solving k steps then padding, minus that of honest + pad
    (0 at k = S, where they are the same policy).
    """
    S = len(p_S)
    return np.array(
        [
            expected_return(p_S, r_pad, budget, k, form, baseline, at_step=min(k + 1, S))
            - expected_return(p_S, r_pad, budget, "honest+pad", form, baseline, min(k + 1, S))
            for k in range(S + 1)
        ]
    )


def swap_gains(p_S, r_pad: float, form: str, baseline: str = "loo") -> np.ndarray:
    """[S]: what padding in place of steps k+1 .. S, one for one, gains over solving them.

    Against the honest policy (which stops after its answer), with the same
    number of steps, so that nothing but the swap differs. E[G_{k+1}] of solving
    k steps then padding to S steps, minus that of honest, k = 0 .. S - 1.
    Under sum-form that is sum_{s > k} (r_pad - E[r_s]); under min-form
    r_pad - E[min_{s > k} r_s] >= r_pad - E[r_s] for every s > k. So min-form
    is paid at least the mean per-step gain of sum-form: whenever sum-form is
    paid to swap real steps for padding, so is min-form (any step rewards, not
    just the strict chain's; the loo baseline shifts both sides alike).
    """
    S = len(p_S)
    return np.array(
        [
            expected_return(p_S, r_pad, S, k, form, baseline, at_step=k + 1)
            - expected_return(p_S, r_pad, S, "honest", form, baseline, at_step=k + 1)
            for k in range(S)
        ]
    )


def _crossing(gain) -> float:
    """The r_pad where gain(r_pad), linear in r_pad, changes sign."""
    g0, g1 = gain(0.0), gain(1.0)
    return float("inf") if g1 == g0 else -g0 / (g1 - g0)


def thresholds(p_S, budget: int | None = None) -> dict[str, float]:
    """The padding rewards above which each form is paid to pad.

    Returns:
        {"sum_loo", "sum_none"}: r_pad above which sum-form pays for padding
        after the answer (honest + pad over honest), with each baseline;
        "sum_gives_up": above which sum-form prefers pad only to honest + pad;
        "min": r_pad above which min-form prefers pad only to honest (either
        baseline: the min commutes with it); "b" and "2P-1" for reference.
    """
    S = len(p_S)
    K = budget or S + 1

    def gain(form, better, worse, baseline):
        return lambda r: (
            expected_return(p_S, r, K, better, form, baseline)
            - expected_return(p_S, r, K, worse, form, baseline)
        )

    return {
        "sum_loo": _crossing(gain("sum", "honest+pad", "honest", "loo")),
        "sum_none": _crossing(gain("sum", "honest+pad", "honest", "none")),
        "sum_gives_up": _crossing(gain("sum", "pad only", "honest+pad", "none")),
        "min": _crossing(gain("min", "pad only", "honest", "none")),
        "b": honest_baseline(p_S),
        "2P-1": 2 * float(np.prod(p_S)) - 1,
    }


def table(p_S, r_pads, budget: int) -> str:
    """Markdown: per r_pad and baseline, each named policy's E[G_1] under sum- and min-form."""
    lines = ["| r_pad | baseline | form | " + " | ".join(POLICIES) + " |", "|---" * 6 + "|"]
    for r in r_pads:
        for baseline in BASELINES:
            for form in ("sum", "min"):
                cells = [
                    f"{expected_return(p_S, r, budget, q, form, baseline):+.2f}" for q in POLICIES
                ]
                lines.append(f"| {r:+.2f} | {baseline} | {form} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(p_S, r_pad: float, budget: int, mark: str) -> Figure:
    """Left: the thresholds against P_S (equal per-step rates), `mark` at (P_S, r_pad).
    Right: `drop_gains` of each form at p_S."""
    S = len(p_S)
    fig = Figure(figsize=(12, 4.2))
    ax, bx = fig.subplots(1, 2)
    P = np.linspace(0.01, 0.99, 99)
    rows = [thresholds([x ** (1 / S)] * S) for x in P]
    sum_loo, sum_none = [t["sum_loo"] for t in rows], [t["sum_none"] for t in rows]
    min_line = [t["min"] for t in rows]
    ax.plot(P, sum_loo, label="sum-form pays padding (loo), and gives up solving, above")
    ax.plot(P, sum_none, label="sum-form pays padding above (no baseline)")
    ax.plot(P, min_line, color="k", label="min-form gives up solving above")
    ax.plot([np.prod(p_S)], [r_pad], "o", color="C3")
    ax.annotate(
        mark, (np.prod(p_S), r_pad), textcoords="offset points", xytext=(6, -12), fontsize=8
    )
    ax.set_xlabel(f"P(all {S} steps right), equal per-step rates")
    ax.set_ylabel("padding step reward r_pad")
    ax.set_title("giving up the whole solution", fontsize=10)
    ax.set_ylim(-1.05, 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    k = np.arange(S + 1)
    for i, form in enumerate(("sum", "min")):
        bx.bar(
            k + (i - 0.5) * 0.38, drop_gains(p_S, r_pad, budget, form), 0.38, label=f"{form}-form"
        )
    bx.axhline(0, color="k", lw=0.8)
    bx.set_xticks(k, [f"{j}" for j in k])
    bx.set_xlabel(f"real steps kept before padding (the answer is step {S})")
    bx.set_ylabel("gain in E[return from step k+1]")
    bx.set_title(f"giving up the last steps ({mark}, r_pad = {r_pad:g}, loo)", fontsize=10)
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


# The restate warm start (runs/pure4/sum/warm_start) at T = 1: conditional
# per-step success of 1000 fresh samples with restated lines removed
# (P_s = 0.774, 0.497, 0.265, 0.213; jsonl/chain_onpolicy's test split).
_P = flags.DEFINE_list("p", ["0.774", "0.642", "0.533", "0.804"], "Per-step success rates.")
_R_PAD = flags.DEFINE_list("r_pad", ["1", "0.5", "0", "-0.5"], "Padding step rewards.")
_BUDGET = flags.DEFINE_integer("budget", 5, "Step slots per response (the 40-token budget: 5).")
_OUT = flags.DEFINE_string("out", "docs/pure_incentives.png", "PNG to write ('' for none).")


def main(argv):
    del argv
    p_S = [float(x) for x in _P.value]
    r_pads = [float(r) for r in _R_PAD.value]
    print(table(p_S, r_pads, _BUDGET.value))
    t = thresholds(p_S, _BUDGET.value)
    print("thresholds on r_pad: " + ", ".join(f"{k} {v:+.3f}" for k, v in t.items()))
    for form in ("sum", "min"):
        gains = drop_gains(p_S, r_pads[0], _BUDGET.value, form)
        print(
            f"{form}-form, r_pad {r_pads[0]:g}, gain of keeping k = 0.. steps then padding: "
            + " ".join(f"{g:+.2f}" for g in gains)
        )
    if _OUT.value:
        figure(p_S, r_pads[0], _BUDGET.value, "chain warm start").savefig(_OUT.value, dpi=110)
        print(f"figure: {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
