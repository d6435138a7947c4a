"""PRMs judged on a policy's fresh samples, the steps GRPO will ask them to score.

    python -m experiments.prm_eval --policy=runs/pure_sum/warm_start \
        --prms=scalar=runs/prm_chain,token=runs/prm_token

A PRM's held-out accuracy is measured on its own test split; what matters to
RL is how it scores the policy's own steps. This samples --samples completions
(temperature 1, --max_new_tokens) of the first --prompts held-out prompts of
the policy run's dataset, labels every step with the strict checker
(`rl_lm.rewards.steps`), scores them with each PRM (`prm.score_responses`, the
GRPO scoring path; responses re-encoded with an EOS), and prints a markdown
table: step accuracy (p > 1/2 agrees with the label), its value on right and on
wrong steps, recall on each response's first wrong step, and the AUC of p for
right against wrong steps, overall and within each step position (a PRM can
score well overall by learning that later steps are more often wrong; the
within-position AUC removes that prior).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from rl_lm import analysis
from rl_lm.algos import prm, prm_runs
from rl_lm.core import steps as core_steps
from rl_lm.models.tokenizer import load_tokenizer
from rl_lm.rewards import steps as step_checks

_POLICY = flags.DEFINE_string("policy", None, "The policy run's workdir (latest checkpoint).")
_PRMS = flags.DEFINE_list("prms", None, "label=workdir of finished PRM runs.")
_PROMPTS = flags.DEFINE_integer("prompts", 128, "Held-out prompts sampled.")
_SAMPLES = flags.DEFINE_integer("samples", 8, "Completions per prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 40, "Sampling budget (GRPO's).")
_POSITIONS = flags.DEFINE_integer("positions", 4, "Step positions with a within-position AUC.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a right step's score > a wrong step's), ties counted half; nan without both."""
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def step_metrics(
    p_NxS: np.ndarray, mask_NxS: np.ndarray, labels_NxS: np.ndarray, positions: int = 4
) -> dict[str, float]:
    """The table's figures for step scores p against 0/1 labels on the masked steps."""
    m = mask_NxS.astype(bool)
    right, wrong = m & (labels_NxS > 0.5), m & (labels_NxS < 0.5)
    call = p_NxS > 0.5
    first = wrong & (np.cumsum(wrong, axis=1) == 1)
    out = {
        "steps": int(m.sum()),
        "wrong_share": float(wrong.sum() / max(m.sum(), 1)),
        "accuracy": float((call == right)[m].mean()),
        "accuracy_right": float(call[right].mean()) if right.any() else float("nan"),
        "accuracy_wrong": float((~call)[wrong].mean()) if wrong.any() else float("nan"),
        "first_wrong_recall": float((~call)[first].mean()) if first.any() else float("nan"),
        "auc": auc(p_NxS[right], p_NxS[wrong]),
    }
    for s in range(min(positions, p_NxS.shape[1])):
        out[f"auc_step{s + 1}"] = auc(p_NxS[right[:, s], s], p_NxS[wrong[:, s], s])
    return out


def encode_responses(tokenizer, responses: list[str], max_new_tokens: int):
    """Right-padded [N, max_new_tokens] response tokens and mask, as the sampler returned them.

    A response that ended before the budget gets its EOS back. One the budget
    cut (max_new_tokens tokens, no EOS) gets none, so the PRM scores it as GRPO
    does: its last step unfinished. Decoding is lossy for byte sequences that
    are not UTF-8 (an untrained model's), which re-encode longer: those count as
    cut and keep their first max_new_tokens tokens.
    """
    tokens = np.full((len(responses), max_new_tokens), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(responses), max_new_tokens), np.int32)
    for i, text in enumerate(responses):
        ids = tokenizer.encode(text)
        if len(ids) < max_new_tokens:
            ids = ids + [tokenizer.eos_id]
        ids = ids[:max_new_tokens]
        tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1
    return tokens, mask


def score(prm_workdir: str, policy_config, prompts: list[str], responses: list[str]):
    """(p_NxS, mask_NxS) of a PRM run on prompt-major responses (the same number per prompt)."""
    tokenizer = load_tokenizer(policy_config.tokenizer)
    params, prm_cfg = prm_runs.load_prm(prm_workdir, policy_config.model, "--prms")
    step_args = core_steps.step_args(prm.default_config(), tokenizer, "prm")
    bos = tokenizer.bos_id is not None
    longest = max(len(tokenizer.encode(p, add_bos=bos)) for p in prompts)
    width = max(policy_config.data.get("max_prompt_len") or 0, longest)
    prompt, prompt_mask = tokenizer.encode_batch(prompts, width, "left", add_bos=bos)
    response, response_mask = encode_responses(tokenizer, responses, _MAX_NEW.value)
    p, m = prm.score_responses(
        params, prm_cfg, prompt, prompt_mask, response, response_mask, **step_args
    )
    return np.asarray(p), np.asarray(m)


def main(argv):
    del argv
    if not _POLICY.value or not _PRMS.value:
        raise app.UsageError("--policy and --prms are required.")
    prms = dict(item.partition("=")[::2] for item in _PRMS.value)
    if any(not w for w in prms.values()):
        raise app.UsageError(f"--prms takes label=workdir items, got {_PRMS.value}.")
    config = analysis.load_config(_POLICY.value)
    examples = analysis.heldout_examples(config, _PROMPTS.value)
    prompts = [e["prompt"] for e in examples]
    outs = analysis.sample(
        _POLICY.value,
        prompts,
        num_samples=_SAMPLES.value,
        temperature=1.0,
        max_new_tokens=_MAX_NEW.value,
        seed=_SEED.value,
    )
    flat_prompts = [p for p in prompts for _ in range(_SAMPLES.value)]
    responses = [t for texts in outs for t in texts]
    rows = []
    for label, workdir in prms.items():
        p, m = score(workdir, config, prompts, responses)
        labels, host_mask = step_checks.step_scores(flat_prompts, responses, p.shape[1], "strict")
        if (host_mask != m).any():
            raise RuntimeError("checker and PRM step segmentations differ; is '\\n' the delimiter?")
        rows.append((label, step_metrics(p, m, labels, _POSITIONS.value)))
    first = rows[0][1]
    print(
        f"{len(responses)} samples of {_POLICY.value}, {first['steps']} steps, "
        f"{first['wrong_share']:.1%} wrong (strict checker)\n"
    )
    keys = [k for k in first if k not in ("steps", "wrong_share")]
    print("| PRM | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, row in rows:
        print(f"| {label} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    app.run(main)
