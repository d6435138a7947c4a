"""RLHF with GRPO on synthetic sorting preferences: SFT, then a reward model, then GRPO.

The chain of configs/ppo_synthetic.py with GRPO in PPO's place, so that PPO,
DPO and GRPO can be compared at matched KL on one task: the same SFT warm start
(stage WORKDIR/warm_start), the same Bradley-Terry reward model
(`reward_model.stage`, trained from that start before the first GRPO step), the
same ~0.9M-parameter decoder and prompts. GRPO scores 8 samples of each prompt
with the learned reward (`grpo.reward_source="reward_model"`), turns them into
group advantages (no critic) and keeps the policy near the SFT model with a k3
KL in the loss (beta 0.05). Training logs the learned and the hidden true reward
of each rollout (reward_learned, reward_true); evaluation reports the held-out
win rate over the SFT model under r*, the mean r* and the sequence KL, as PPO's.

    python -m launch.train --config=configs/grpo_synthetic.py --workdir=runs/grpo_synthetic

Reuse finished SFT and reward-model runs (e.g. those of configs/rm_synthetic.py,
or the warm start and reward model of a PPO run's chain):

    python -m launch.train --config=configs/grpo_synthetic.py --workdir=runs/grpo_synthetic \
        --config.init.workdir=runs/rm/warm_start --config.reward_model.workdir=runs/rm

CPU smoke run:

    python -m launch.train --config=configs/grpo_synthetic.py:runlocal --workdir=/tmp/grpo_rm_smoke

Options: --config.grpo.reward_source=both (learned plus verifiable rewards),
--config.grpo.beta=..., --config.grpo.kl_placement=reward (k1 in the reward),
--config.grpo.advantage=rloo|dr_grpo, --config.grpo.num_minibatches=2 (several
updates per rollout).
"""

import ml_collections

from configs import base, ppo_synthetic
from rl_lm.algos import grpo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=800, rm_steps=600)
    # PPO's chain: its model, prompts, SFT stage, reward model and evaluation.
    ppo = ppo_synthetic.get_config(
        f"runlocal={arg.runlocal},sft_steps={arg.sft_steps},rm_steps={arg.rm_steps}"
    )
    config = base.experiment(
        "grpo",
        model=ppo.model,
        data=ppo.data,  # batch_size prompts per rollout; rows = batch_size * num_generations
        grpo=grpo_loss.default_config(),
        reward_model=ppo.reward_model,
        eval=ppo.eval,
        init=base.init(),
    )
    config.grpo.update(
        reward_source="reward_model",
        num_generations=8,
        max_new_tokens=16,
        beta=0.05,
        kl_placement="loss",
    )
    config.grpo.reward_fns = ""  # "module:function=weight,...": see rl_lm/rewards/user.py
    config.optim = base.optim(lr=3e-5, warmup_steps=10, schedule="constant", grad_clip=1.0)
    config.train = base.train(num_steps=200, log_every=10, eval_every=25, ckpt_every=50)
    config.warm_start = ppo.warm_start
    if arg.runlocal:  # ppo_synthetic's runlocal already shrank the data, eval and stages.
        config.grpo.update(num_generations=4, max_new_tokens=8)
        config.optim.warmup_steps = 2
        config.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    config.lock()
    return config
