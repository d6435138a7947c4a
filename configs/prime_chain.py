"""PRIME at small scale: GRPO with an implicit PRM trained online on outcome labels.

The task is the chain of arithmetic steps (rl_lm/data/chain.py): prompts like
"12 +5 *3 -7:", solved one step per line then "#### 44". A 2-layer, 64-wide
decoder is first fine-tuned on the canonical solutions (SFT on chain/sft,
stage WORKDIR/warm_start, as in configs/pure_chain.py, same model shape).
GRPO then trains it with PRIME's process rewards (arXiv 2502.01456,
rl_lm/algos/prime.py): a second copy of the SFT model, the implicit PRM phi,
takes an optimizer step per rollout on BCE(sigmoid(beta_p sum_t (lp_phi -
lp_ref)), correct) against the exact-match outcome, then scores the rollout
with token rewards beta_p (lp_phi - lp_ref). Advantages: leave-one-out within
each group for the token rewards (weight 1) and for the outcome at the last
token (weight 1), reverse cumulative sum, whitened over the batch.

No step labels are used anywhere. Whether outcome labels alone teach phi to
tell right from wrong shows in `prime_accuracy` (the sign of phi's implicit
sequence reward against the outcome) and `prime_rank_accuracy` (how often it
ranks a correct response above a wrong one of the same prompt), both on each
fresh rollout before phi trains on it, and in their `*_updated` twins after;
`process_return` is the mean implicit sequence reward, `train_accuracy` and
held-out `eval/accuracy` the policy's progress. The learning rates are not
tuned. Arguments: prime_lr=..., sft_steps=..., runlocal.

    python -m launch.train --config=configs/prime_chain.py --workdir=runs/prime_chain

From the SFT warm start of a configs/pure_chain.py run (same model shape):

    python -m launch.train --config=configs/prime_chain.py --workdir=runs/prime_chain \
        --config.init.workdir=runs/pure_sum/warm_start

CPU smoke run:

    python -m launch.train --config=configs/prime_chain.py:runlocal --workdir=/tmp/prime_smoke

Other options: --config.grpo.process.prime_beta=0.05, --config.grpo.process.prime_steps=1,
--config.grpo.process.outcome_weight=1.0, --config.grpo.process.process_weight=1.0.
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import grpo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=1000, prime_lr=5e-4)
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
            dict(num_examples=256, batch_size=256, max_new_tokens=64, seed=0, answer="marked")
        ),
        init=base.init(),
    )
    config.grpo.update(num_generations=8, max_new_tokens=64, beta=0.01, temperature=1.0)
    config.grpo.rewards = ml_collections.ConfigDict({"marked_match": 1.0})  # "#### n" only
    config.grpo.reward_fns = ""  # "module:function=weight,...": see rl_lm/rewards/user.py
    config.grpo.process.update(
        source="prime",
        form="sum",
        baseline="loo",
        process_weight=1.0,
        outcome_weight=1.0,
        prime_beta=0.05,  # PRIME's beta_p
        prime_lr=float(arg.prime_lr),
        prime_steps=1,
    )
    # Outcome-only GRPO on this task already loses accuracy at 2e-4 (pure_chain's lr).
    config.optim = base.optim(lr=5e-5, warmup_steps=10, schedule="constant")
    config.train = base.train(
        num_steps=300, log_every=10, eval_every=50, ckpt_every=100, eval_at_start=True
    )
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=64)
        config.data.update(name="chain/sft_train256_test32", batch_size=8)
        config.grpo.num_generations = 4
        config.grpo.max_new_tokens = 24
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=24)
        config.train = base.train(
            num_steps=4, log_every=2, eval_every=2, ckpt_every=2, eval_at_start=True
        )
    config.warm_start = sft_arith.chain_warm_start(config.model, arg.sft_steps, arg.runlocal)
    config.lock()
    return config
