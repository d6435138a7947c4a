"""PPO with process rewards on the chain task: step rewards from a checker plus exact match.

The task is the chain of arithmetic steps (rl_lm/data/chain.py). A 2-layer,
64-wide decoder is first fine-tuned on the canonical
solutions (SFT on chain/sft, stage WORKDIR/warm_start). PPO then trains it
with a value head and GAE on token rewards

    r_t = -beta KL_t + outcome_weight * exact_match [last token] + process_weight * r'_t,

where r'_s = G_s - G_{s+1} sits on step s's last token and G is the credit
form's return of the step rewards 2p - 1 from the step checker, so the
undiscounted return from any token of step s is G_s plus the outcome
(rl_lm/algos/ppo_loss.py). Arguments: source=strict|lenient|local|restate
(strict: the ground truth; lenient: PURE's exploitable "PRM"),
form=sum|min|soft_min, outcome_weight=..., sft_steps=..., runlocal.

    python -m launch.train --config=configs/ppo_chain.py --workdir=runs/ppo_chain

PURE's comparison under PPO, both from the SFT stage the first of them trains:

    python -m launch.train --config=configs/ppo_chain.py:source=lenient,form=sum \
        --workdir=runs/ppo_chain_sum
    python -m launch.train --config=configs/ppo_chain.py:source=lenient,form=min \
        --workdir=runs/ppo_chain_min --config.init.workdir=runs/ppo_chain_sum/warm_start

CPU smoke run:

    python -m launch.train --config=configs/ppo_chain.py:runlocal --workdir=/tmp/ppo_chain_smoke

Other options: --config.ppo.process.source=prm with
--config.ppo.process.prm_workdir=runs/prm_chain (a configs/prm_chain.py run),
--config.ppo.process.transform=clip|delta, --config.ppo.process.process_weight=...
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import ppo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(
        arg, runlocal=False, sft_steps=1000, source="strict", form="min", outcome_weight=1.0
    )
    config = base.experiment(
        "ppo",
        model=base.model("cpu", dim=64, num_layers=2, mlp_dim=256, max_seq_len=96),
        data=ml_collections.ConfigDict(
            dict(
                name="chain/sft",  # prompts and answers; the demonstrations are unused here
                data_dir=config_dict.placeholder(str),
                batch_size=32,  # prompts per rollout; rows = batch_size * num_generations
                max_len=48,
                max_prompt_len=16,  # [BOS] + "12 +5 *3 -7:"
            )
        ),
        ppo=ppo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(num_examples=256, batch_size=256, max_new_tokens=64, seed=0, answer="marked")
        ),
        init=base.init(),
    )
    # A canonical solution is <= 36 bytes; 64 new tokens leave room for ~3 padded steps.
    config.ppo.update(
        num_generations=4,
        max_new_tokens=64,
        temperature=1.0,
        gamma=1.0,  # the return identity of min-forms needs undiscounted tokens
        lam=0.95,
        num_epochs=2,
        num_minibatches=2,
    )
    config.ppo.kl.coef = 0.01
    config.ppo.reward.source = "verifiable"
    config.ppo.reward.verifiable = ml_collections.ConfigDict({"marked_match": 1.0})
    config.ppo.reward.reward_fns = ""  # "module:function=weight,...": rl_lm/rewards/user.py
    config.ppo.process.update(
        source=arg.source, form=arg.form, outcome_weight=float(arg.outcome_weight), max_steps=12
    )
    config.optim = base.optim(lr=5e-5, warmup_steps=10, schedule="constant")
    config.train = base.train(
        num_steps=300, log_every=10, eval_every=50, ckpt_every=100, eval_at_start=True
    )
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=64)
        config.data.update(name="chain/sft_train256_test32", batch_size=8)
        config.ppo.update(num_generations=2, max_new_tokens=24, num_epochs=1)
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=24)
        config.train = base.train(
            num_steps=4, log_every=2, eval_every=2, ckpt_every=2, eval_at_start=True
        )
    config.warm_start = sft_arith.chain_warm_start(config.model, arg.sft_steps, arg.runlocal)
    config.lock()
    return config
