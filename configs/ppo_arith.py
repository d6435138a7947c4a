"""PPO with a verifiable reward on arithmetic, from an SFT warm start.

The same SFT stage and model as configs/grpo_arith.py (stage WORKDIR/warm_start);
PPO then maximizes exact match minus beta * KL to the SFT model, with a value
head on the policy trunk and GAE instead of GRPO's group baseline.

    python -m launch.train --config=configs/ppo_arith.py --workdir=runs/ppo_arith

Start from an existing SFT run instead of training one:

    python -m launch.train --config=configs/ppo_arith.py --workdir=runs/ppo_arith \
        --config.init.workdir=runs/sft_arith

CPU smoke run:

    python -m launch.train --config=configs/ppo_arith.py:runlocal --workdir=/tmp/ppo_arith_smoke

Options: --config.ppo.critic=separate, --config.ppo.kl.adaptive=True,
--config.ppo.reward.reward_fns=format=0.1 (a reward added to exact_match by name, or
your own by import path: see rl_lm/rewards/user.py).
"""

import ml_collections

from configs import base, grpo_arith
from rl_lm.algos import ppo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=500, task="add2")
    grpo = grpo_arith.get_config(
        f"runlocal={arg.runlocal},sft_steps={arg.sft_steps},task={arg.task}"
    )
    config = base.experiment(
        "ppo",
        model=grpo.model,
        data=grpo.data,
        ppo=ppo_loss.default_config(),
        eval=grpo.eval,
        init=base.init(),
    )
    config.ppo.update(num_generations=4, max_new_tokens=6, num_epochs=4, num_minibatches=2)
    config.ppo.reward.source = "verifiable"
    config.ppo.reward.verifiable = ml_collections.ConfigDict({"exact_match": 1.0})
    config.ppo.reward.reward_fns = ""  # "module:function=weight,...": rl_lm/rewards/user.py
    config.ppo.kl.coef = 0.05
    config.optim = base.optim(lr=1e-4, warmup_steps=10, schedule="constant")
    config.train = base.train(num_steps=200, log_every=10, eval_every=25, ckpt_every=50)
    config.warm_start = grpo.warm_start
    if arg.runlocal:
        config.ppo.update(num_generations=2, num_epochs=2, num_minibatches=1)
        config.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    config.lock()
    return config
