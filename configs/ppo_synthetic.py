"""RLHF with PPO on synthetic sorting preferences: SFT, then a reward model, then PPO.

"sort 5381=" asks for the digits sorted; the hidden true reward r* in [0, 1]
(rl_lm/rewards/synthetic.py) only labels the preference pairs. The chain is
InstructGPT's: a ~0.9M-parameter decoder imitates a mediocre behaviour policy
(SFT, stage WORKDIR/warm_start, the same stage as configs/dpo_synthetic.py),
a Bradley-Terry reward model is trained from its trunk on the pairs
(`reward_model.stage`, trained before the first PPO step), and PPO maximizes the
learned reward minus beta * KL to the SFT model. Training logs the learned and
the true reward of each rollout separately (reward_learned, reward_true);
evaluation reports the held-out win rate over the SFT model under r*, the mean
r* and the sequence KL.

    python -m launch.train --config=configs/ppo_synthetic.py --workdir=runs/ppo_synthetic

Reuse finished SFT and reward-model runs (e.g. those of configs/rm_synthetic.py):

    python -m launch.train --config=configs/ppo_synthetic.py --workdir=runs/ppo_synthetic \
        --config.init.workdir=runs/rm/warm_start --config.reward_model.workdir=runs/rm

CPU smoke run:

    python -m launch.train --config=configs/ppo_synthetic.py:runlocal --workdir=/tmp/ppo_smoke

Options: --config.ppo.kl.adaptive=True (--config.ppo.kl.target=...),
--config.ppo.critic=separate (a critic initialized from the reward model),
--config.ppo.reward.normalize=batch|running|none, --config.ppo.ent_coef=0.01.
"""

import ml_collections
from ml_collections import config_dict

from configs import base, rm_synthetic
from rl_lm.algos import ppo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=800, rm_steps=600)
    rm = rm_synthetic.get_config(f"runlocal={arg.runlocal},sft_steps={arg.sft_steps}")
    rm.unlock()
    warm = rm.warm_start
    del rm["warm_start"]  # The stage starts from this config's own warm start.
    if not arg.runlocal:
        rm.train.num_steps = arg.rm_steps
    rm.lock()
    # The policy, its SFT stage and the reward model (rm_synthetic's preset) share a trunk.
    preset = "tiny" if arg.runlocal else "cpu"
    warm.unlock()
    warm.model = base.model(preset, max_seq_len=32)
    warm.lock()
    config = base.experiment(
        "ppo",
        model=base.model(preset, max_seq_len=32),
        data=ml_collections.ConfigDict(
            dict(
                name="sort_pref/sft",  # its prompts; responses come from the policy
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=16,  # prompts per rollout; rows = batch_size * num_generations
                max_prompt_len=16,
            )
        ),
        ppo=ppo_loss.default_config(),
        reward_model=ml_collections.ConfigDict(
            dict(model=rm.model, workdir=config_dict.placeholder(str), stage=rm)
        ),
        eval=ml_collections.ConfigDict(
            dict(num_examples=512, batch_size=256, max_new_tokens=16, greedy=True, seed=0)
        ),
        init=base.init(),
    )
    # InstructGPT-like: gamma 1, lambda 0.95, clip 0.2, value clip 0.2, a KL
    # penalty in the reward, several epochs over each rollout.
    config.ppo.update(num_generations=4, max_new_tokens=16, num_epochs=4, num_minibatches=2)
    config.ppo.kl.coef = 0.05
    config.ppo.reward.reward_fns = ""  # "module:function=weight,...": rl_lm/rewards/user.py
    config.ppo.reward.normalize = "running"
    config.optim = base.optim(lr=3e-5, warmup_steps=10, schedule="constant", grad_clip=1.0)
    config.train = base.train(num_steps=200, log_every=10, eval_every=25, ckpt_every=50)
    config.warm_start = warm
    if arg.runlocal:
        config.data.update(name="sort_pref/sft_train256_test32", batch_size=8)
        config.ppo.update(num_generations=2, max_new_tokens=8, num_epochs=2, num_minibatches=1)
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=8)
        config.optim.warmup_steps = 2
        config.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    config.lock()
    return config
