"""PURE at small scale: sum-form vs min-form credit from a PRM that pays for restating.

The task is the chain of arithmetic steps (rl_lm/data/chain.py): prompts like
"12 +5 *3 -7:", solved one step per line then "#### 44". A 2-layer, 64-wide
decoder is first fine-tuned (SFT, stage WORKDIR/warm_start) on demonstrations
of which `restate`% (default 50) write one step twice in a row (chain/sft_restate50), so the
policy samples a restatement now and then, as human-written solutions do.
GRPO then trains it with process rewards from the "restate" step checker
(rl_lm/rewards/steps.py), a PRM that rewards well-formed, correct-looking
steps: it checks progress like the ground truth, but restating a step already
written also scores 1. Scores p map to step rewards 2p - 1.

PURE's claim (arXiv 2504.15275): with sum-form credit (return = sum of future
step rewards) each restatement earns a step reward, so the policy learns to
pad its solution with them until the response budget (grpo.max_new_tokens)
cuts it off before the answer, and final-answer accuracy drops; with min-form
credit (return = min of future step rewards) a restatement earns nothing and
accuracy keeps improving. The logged `steps_per_response`, `process_return`,
`train_accuracy` and held-out `eval/accuracy` show it (experiments/pure_summary.py
tabulates and plots the runs). Arguments: form=sum|min|soft_min,
outcome_weight=0|0.1 (PRM only vs PRM plus 10% verifiable reward),
source=restate|restate_before|strict|local|lenient, restate=50 (percentage of
demonstrations that restate a line), restate_at=0 (which line: 0 any, k line k),
restate_times=1 (a restatement writes 1 .. n copies), restate_value=0 (1: copies
are the short "=v", the line's result), short_padding (the preset below),
composition=loo|pure_step|pure_token (below), sft_steps=..., runlocal.

How credit and baseline compose (rl_lm/algos/process_rewards.py):
composition=loo (the default, the one every earlier run used) subtracts the
leave-one-out mean of the raw step rewards before the credit form.
composition=pure_token or pure_step is PURE's released code: the credit form
first, then a leave-one-out baseline of the credited rewards charged once per
remaining token (its training script's choice) or step, and advantage 0 on
every step's last token. PURE's own min-form is form=soft_min (T = 0.1):

    python -m launch.train \
        --config=configs/pure_chain.py:form=soft_min,short_padding,composition=pure_token \
        --workdir=runs/short_pure_soft_min --config.init.workdir=runs/short_sum/warm_start

    python -m launch.train --config=configs/pure_chain.py:form=sum --workdir=runs/pure_sum

Both forms from one SFT warm start (train it once with the first command):

    python -m launch.train --config=configs/pure_chain.py:form=min --workdir=runs/pure_min \
        --config.init.workdir=runs/pure_sum/warm_start
    python -m launch.train --config=configs/pure_chain.py:form=sum,outcome_weight=0.1 \
        --workdir=runs/pure_sum_vr --config.init.workdir=runs/pure_sum/warm_start

CPU smoke run:

    python -m launch.train --config=configs/pure_chain.py:runlocal --workdir=/tmp/pure_smoke

Other options: source=prm with --config.grpo.process.prm_workdir=runs/prm_chain (a
configs/prm_chain.py run), --config.grpo.process.transform=clip|delta,
--config.grpo.process.baseline=group_norm|none.

Padding before the answer, from a policy it does not derail (README, "A policy
that pads without derailing"): demonstrations that restate only the last
operation step, a checker that pays restatements before the answer only, and
budget-cut steps judged by their prefix:

    python -m launch.train \
        --config=configs/pure_chain.py:form=sum,source=restate_before,restate_at=3 \
        --workdir=runs/strong_sum --config.grpo.process.cut_step=completed

Padding shorter than the answer line, so that it can push the answer out of
the budget (README, "Short padding that pushes the answer out"): short_padding
sets source=restate_before, demonstrations that restate the last operation's
result as "=v" 1 to 4 times (restate=75,restate_at=3,restate_times=4,
restate_value=1) and a 48-token budget (add --config.grpo.process.cut_step=completed
for a PRM that also pays a line the budget cut):

    python -m launch.train --config=configs/pure_chain.py:form=sum,short_padding \
        --workdir=runs/short_sum
    python -m launch.train --config=configs/pure_chain.py:form=min,short_padding \
        --workdir=runs/short_min --config.init.workdir=runs/short_sum/warm_start

Held-out and training accuracy read the "#### n" line only (eval.answer="marked").
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import grpo_loss
from rl_lm.data import chain

# short_padding: the setup where padding pushes the answer out of the budget
# (README, "Short padding that pushes the answer out").
SHORT_PADDING = dict(
    source="restate_before", restate=75, restate_at=3, restate_times=4, restate_value=1
)
# composition: the group baseline of the step credit (rl_lm's "loo" before the
# credit form, or PURE's after it, with its zeroed step-end advantages).
COMPOSITIONS = ("loo", "pure_step", "pure_token")
SHORT_PADDING_BUDGET = 48  # a solution (<= 31 bytes) with 4 copies of "=v\n" (<= 16) + EOS


def _apply_preset(arg: ml_collections.ConfigDict, given: set[str], preset: dict) -> None:
    """Sets the preset's values; one the user gave differently is an error."""
    for key, value in preset.items():
        if key in given and arg[key] != value:
            raise ValueError(
                f"pure_chain: short_padding sets {key}={value!r}, but the argument gives "
                f"{key}={arg[key]!r}; drop one of them."
            )
        arg[key] = value


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    given = base.given_args(arg)
    arg = base.parse_arg(
        arg,
        runlocal=False,
        sft_steps=1000,
        form="sum",
        outcome_weight=None,
        source="restate",
        restate=50,
        restate_at=0,
        restate_times=1,
        restate_value=0,
        short_padding=False,
        composition="loo",
    )
    if arg.composition not in COMPOSITIONS:
        raise ValueError(
            f"pure_chain: composition={arg.composition!r} is not one of {COMPOSITIONS}."
        )
    if arg.short_padding:
        _apply_preset(arg, given, SHORT_PADDING)
    budget = SHORT_PADDING_BUDGET if arg.short_padding else 40
    outcome_weight = float(arg.outcome_weight or 0.0)
    copy_len = 4 if arg.restate_value else 8  # "=v\n" or a whole "a<op>b=c\n" line
    sft_len = max(64, 48 + copy_len * arg.restate_times)
    shape = dict(dim=64, num_layers=2, mlp_dim=256, max_seq_len=max(96, sft_len))
    restated = dict(
        restate=arg.restate,
        restate_at=arg.restate_at,
        restate_times=arg.restate_times,
        restate_value=arg.restate_value,
    )
    data_name = chain.dataset_name(**restated)
    config = base.experiment(
        "grpo",
        model=base.model("cpu", **shape),
        data=ml_collections.ConfigDict(
            dict(
                name=data_name,  # prompts and answers; the demonstrations are unused here
                data_dir=config_dict.placeholder(str),
                batch_size=16,  # prompts per rollout; rows = batch_size * num_generations
                max_len=48,
                max_prompt_len=16,  # [BOS] + "12 +5 *3 -7:"
            )
        ),
        grpo=grpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            # A chain's answer is its "#### n" line: one cut off by the budget is no answer.
            dict(num_examples=256, batch_size=256, max_new_tokens=budget, seed=0, answer="marked")
        ),
        init=base.init(),
    )
    # A canonical solution is <= 31 bytes, one with a restated step <= 39: the
    # default 40-token budget fits one restatement and EOS; a second one risks
    # the cut-off (short_padding: 48 tokens fit four "=v" copies).
    config.grpo.update(
        num_generations=8,
        max_new_tokens=budget,
        beta=0.01,
        temperature=1.0,
        advantage="rloo",
    )
    # The verifiable reward (outcome_weight > 0) reads a chain's "#### n" line only.
    config.grpo.rewards = ml_collections.ConfigDict({"marked_match": 1.0})
    config.grpo.reward_fns = ""  # "module:function=weight,...": see rl_lm/rewards/user.py
    config.grpo.process.update(
        source=arg.source,
        form=arg.form,
        baseline=arg.composition,
        zero_step_ends=arg.composition != "loo",
        outcome_weight=outcome_weight,
        max_steps=12,
    )
    config.optim = base.optim(lr=5e-5, warmup_steps=10, schedule="constant")
    config.train = base.train(
        num_steps=300, log_every=10, eval_every=50, ckpt_every=100, eval_at_start=True
    )
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=sft_len)
        small = chain.dataset_name(**restated, train_size=256, test_size=32)
        config.data.update(name=small, batch_size=8)
        config.grpo.num_generations = 4
        config.grpo.max_new_tokens = 24
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=24)
        config.train = base.train(
            num_steps=4, log_every=2, eval_every=2, ckpt_every=2, eval_at_start=True
        )
    # [BOS] + prompt (<= 12) + a solution (<= 31) with its copies + [EOS].
    config.warm_start = sft_arith.chain_warm_start(
        config.model,
        arg.sft_steps,
        arg.runlocal,
        name=data_name,
        small_name=chain.dataset_name(**restated, train_size=256, test_size=32),
        max_len=sft_len,
        max_new_tokens=config.grpo.max_new_tokens,
    )
    config.lock()
    return config
