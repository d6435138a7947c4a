"""PURE at small scale: sum-form vs min-form credit from an exploitable "PRM".

The task is the chain of arithmetic steps (rl_lm/data/chain.py): prompts like
"12 +5 *3 -7:", solved one step per line then "#### 44". A 2-layer, 64-wide
decoder is first fine-tuned on the canonical solutions (SFT on chain/sft,
stage WORKDIR/warm_start, as in configs/prm_chain.py). GRPO then trains it
with process rewards from the lenient step checker (rl_lm/rewards/steps.py),
which plays the role of a PRM that rewards well-formed, correct-looking steps
(any right "a<op>b=c" line scores 1, wherever it is), mapped to 2p - 1.

PURE's claim (arXiv 2504.15275): with sum-form credit (return = sum of future
step rewards) the policy learns to pad or repeat cheap correct-looking steps
and its final-answer accuracy drops; with min-form credit (return = min of
future step rewards) padding earns nothing and accuracy keeps improving.
The logged `steps_per_response`, `process_return`, `train_accuracy` and the
held-out `exact_match` show it. Arguments: form=sum|min (|soft_min),
outcome_weight=0|0.1 (PRM only vs PRM plus 10% verifiable reward),
sft_steps=..., runlocal.

    python -m launch.train --config=configs/pure_chain.py:form=sum --workdir=runs/pure_sum

Both forms from one SFT warm start (train it once with the first command):

    python -m launch.train --config=configs/pure_chain.py:form=min --workdir=runs/pure_min \
        --config.init.workdir=runs/pure_sum/warm_start
    python -m launch.train --config=configs/pure_chain.py:form=sum,outcome_weight=0.1 \
        --workdir=runs/pure_sum_vr --config.init.workdir=runs/pure_sum/warm_start

CPU smoke run:

    python -m launch.train --config=configs/pure_chain.py:runlocal --workdir=/tmp/pure_smoke

Other options: --config.grpo.process.source=strict|prm (prm: with
--config.grpo.process.prm_workdir=runs/prm_chain), --config.grpo.process.transform=clip|delta,
--config.grpo.process.baseline=loo|none.
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import grpo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=1000, form="sum", outcome_weight=None)
    outcome_weight = float(arg.outcome_weight or 0.0)
    shape = dict(dim=64, num_layers=2, mlp_dim=256, max_seq_len=96)
    config = base.experiment(
        "grpo",
        model=base.model("cpu", **shape),
        data=ml_collections.ConfigDict(
            dict(
                name="chain/sft",  # prompts and answers; the demonstrations are unused here
                data_dir=config_dict.placeholder(str),
                batch_size=16,  # prompts per rollout; rows = batch_size * num_generations
                max_len=48,
                max_prompt_len=16,  # [BOS] + "12 +5 *3 -7:"
            )
        ),
        grpo=grpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(num_examples=256, batch_size=256, max_new_tokens=64, seed=0)
        ),
        init=base.init(),
    )
    # A canonical solution is <= 36 bytes; 64 new tokens leave room for ~3 padded steps.
    config.grpo.update(
        num_generations=8, max_new_tokens=64, beta=0.01, temperature=1.0, advantage="rloo"
    )
    config.grpo.process.update(
        source="lenient",
        form=arg.form,
        baseline="group_norm",
        outcome_weight=outcome_weight,
        max_steps=12,
    )
    config.optim = base.optim(lr=2e-4, warmup_steps=10, schedule="constant")
    config.train = base.train(
        num_steps=300, log_every=10, eval_every=50, ckpt_every=100, eval_at_start=True
    )
    warm = sft_arith.get_config()
    warm.unlock()
    warm.model = config.model
    warm.data.update(name="chain/sft", max_len=48, max_prompt_len=16)
    warm.eval.max_new_tokens = 32
    warm.train = base.train(
        num_steps=arg.sft_steps, log_every=50, eval_every=arg.sft_steps, ckpt_every=500
    )
    config.warm_start = warm
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=64)
        config.data.update(name="chain/sft_train256_test32", batch_size=8)
        config.grpo.num_generations = 4
        config.grpo.max_new_tokens = 24
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=24)
        config.train = base.train(
            num_steps=4, log_every=2, eval_every=2, ckpt_every=2, eval_at_start=True
        )
        warm.model = config.model
        warm.data.update(name="chain/sft_train256_test32", batch_size=16)
        warm.eval.update(num_examples=16, batch_size=16)
        warm.optim.warmup_steps = 2
        warm.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    warm.lock()
    config.lock()
    return config
