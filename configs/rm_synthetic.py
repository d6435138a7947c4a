"""A Bradley-Terry reward model on synthetic sorting preferences.

Pairs of responses to "sort 5381=" are labelled by Bradley-Terry draws from a
hidden true reward (rl_lm/rewards/synthetic.py); the reward model (the ~0.9M
decoder's trunk plus a scalar head, read at EOS) learns to rank them, and its
held-out pair accuracy is logged. The trunk starts from an SFT model of the
behaviour responses (stage WORKDIR/warm_start); this is PPO's learned reward.

    python -m launch.train --config=configs/rm_synthetic.py --workdir=runs/rm_synthetic

Reuse the SFT stage of a DPO run (same data, steps and model shape):

    python -m launch.train --config=configs/rm_synthetic.py --workdir=runs/rm_synthetic \
        --config.init.workdir=runs/dpo_synthetic/warm_start

CPU smoke run:

    python -m launch.train --config=configs/rm_synthetic.py:runlocal --workdir=/tmp/rm_smoke

Options: --config.rm.margin=..., --config.rm.center_coef=0.01 (TRL's centering).
"""

import ml_collections
from ml_collections import config_dict

from configs import base, dpo_synthetic
from rl_lm.algos import reward_model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=800)
    preset = "tiny" if arg.runlocal else "cpu"
    config = base.experiment(
        "reward_model",
        model=base.model(preset, max_seq_len=32, lm_head=False, scalar_head=True),
        data=ml_collections.ConfigDict(
            dict(
                name="sort_pref/pairs",
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=64,  # pairs
                max_len=32,
                truncate=False,  # cut longer rows (their end, EOS included) instead of failing
            )
        ),
        rm=reward_model.default_config(),
        eval=ml_collections.ConfigDict(dict(num_examples=1000, batch_size=250, seed=0)),
        init=base.init(),
    )
    config.optim = base.optim(lr=1e-4, warmup_steps=50, schedule="cosine")
    config.train = base.train(num_steps=600, log_every=50, eval_every=100, ckpt_every=200)
    # The same SFT stage as the DPO experiment's (same data, steps and model).
    dpo = dpo_synthetic.get_config(f"runlocal={arg.runlocal},sft_steps={arg.sft_steps}")
    config.warm_start = dpo.warm_start
    if arg.runlocal:
        config.data.update(name="sort_pref/pairs_train256_test32", batch_size=16)
        config.eval.update(num_examples=32, batch_size=16)
        config.optim.warmup_steps = 2
        config.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    config.lock()
    return config
