"""GRPO with a verifiable reward on arithmetic, from an SFT warm start.

The default experiment of `python -m launch.train` (no flags). The task,
"arithmetic/add2_careless", is 2-digit addition demonstrated by a careless
teacher: 60% of the SFT demonstrations drop every carry ("57+68=" -> "15").
A randomly initialized ~0.19M-parameter decoder is first fine-tuned on those
demonstrations (SFT, stage WORKDIR/warm_start) and imitates the mistake: it
answers problems with a carry wrong, about 70% of them. GRPO then trains on
the same prompts with a reward that only checks the final answer
(exact match), and raises greedy held-out exact-match accuracy well above
the SFT start. With `task=add2` (right demonstrations) SFT alone gets to
~90% in the same steps and GRPO has little left to fix.

    python -m launch.train --config=configs/grpo_arith.py --workdir=runs/grpo_arith

Start from an existing SFT run instead of training one:

    python -m launch.train --config=configs/grpo_arith.py --workdir=runs/grpo_arith \
        --config.init.workdir=runs/sft_arith

CPU smoke run:

    python -m launch.train --config=configs/grpo_arith.py:runlocal --workdir=/tmp/grpo_smoke

The whole loop on the device (sampling, the exact-match reward on token ids,
advantages, reference log-probs and updates compiled together, train.chunk_steps
steps per call; see rl_lm/algos/grpo_device.py):

    python -m launch.train --config=configs/grpo_arith.py:on_device --workdir=runs/grpo_dev

LoRA adapters of rank 8 on the frozen SFT start, which is also the KL reference
(rl_lm/models/lora.py): `:lora=8` or --config.lora.rank=8.

Variants of the loss (see configs/grpo_paper.py for the papers' settings):
--config.grpo.advantage=dr_grpo|rloo|batch_std, --config.grpo.aggregation=token-mean,
--config.grpo.eps_hi=0.28, --config.grpo.dynamic_sampling=True, ...
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import grpo_loss
from rl_lm.models import lora


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(
        arg, runlocal=False, sft_steps=2000, task="add2_careless", on_device=False, lora=0
    )
    config = base.experiment(
        "grpo",
        model=base.model("cpu", dim=64, num_layers=2, mlp_dim=256, max_seq_len=32),
        data=ml_collections.ConfigDict(
            dict(
                name=f"arithmetic/{arg.task}",
                data_dir=config_dict.placeholder(str),
                batch_size=32,  # prompts per rollout; rows = batch_size * num_generations
                max_len=16,  # [BOS] 999+999= 1998 [EOS]
                max_prompt_len=10,
            )
        ),
        grpo=grpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(num_examples=512, batch_size=256, max_new_tokens=6, seed=0)
        ),
        init=base.init(),
        lora=lora.default_config(),
    )
    config.lora.rank = arg.lora
    config.grpo.update(num_generations=8, max_new_tokens=6, beta=0.04, temperature=1.0)
    config.grpo.reward_fns = ""  # "module:function=weight,...": see rl_lm/rewards/user.py
    # RL needs a much smaller step than SFT (the warm start's lr is 1e-3): at 2e-4
    # greedy accuracy oscillates, at 3e-5 it barely moves in 400 steps.
    config.optim = base.optim(lr=1e-4, warmup_steps=10, schedule="cosine")
    config.train = base.train(
        num_steps=400, log_every=10, eval_every=50, ckpt_every=100, eval_at_start=True
    )
    # GRPO's loop on the device (rl_lm/algos/grpo_device.py), chunk_steps steps per call.
    config.train.on_device = arg.on_device
    config.train.chunk_steps = 10
    warm = sft_arith.get_config(f"steps={arg.sft_steps}")
    warm.unlock()
    warm.data.name = config.data.name
    warm.model = config.model
    warm.data.max_prompt_len = config.data.max_prompt_len
    warm.data.max_len = config.data.max_len
    warm.eval.max_new_tokens = config.eval.max_new_tokens
    config.warm_start = warm
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=32)
        config.data.batch_size = 8
        config.grpo.num_generations = 4
        config.eval.num_examples = 16
        config.eval.batch_size = 16
        config.train = base.train(
            num_steps=4, log_every=2, eval_every=2, ckpt_every=2, eval_at_start=True
        )
        config.train.update(on_device=arg.on_device, chunk_steps=2)
        warm.model = config.model
        warm.data.batch_size = 16
        warm.eval.update(num_examples=16, batch_size=16)
        warm.optim.warmup_steps = 2
        warm.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    warm.lock()
    config.lock()
    return config
