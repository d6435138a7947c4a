"""Supervised fine-tuning of a small from-scratch model on 2-digit addition.

A randomly initialized ~0.19M-parameter decoder learns "17+25=" -> "42" from
demonstrations; greedy held-out exact-match accuracy is logged during training.

    python -m launch.train --config=configs/sft_arith.py --workdir=runs/sft_arith

CPU smoke run (tiny model, a few steps):

    python -m launch.train --config=configs/sft_arith.py:runlocal --workdir=/tmp/sft_smoke

Other difficulties: --config.data.name=arithmetic/add3 (see rl_lm/data/arithmetic.py).
Packed rows (same loss and gradient, fewer padding slots): --config.data.pack=True
--config.data.max_len=48 --config.data.pack_rows=32.
LoRA adapters of rank 8 on a frozen start (rl_lm/models/lora.py): the argument
`lora=8` (e.g. configs/sft_arith.py:runlocal,lora=8), or --config.lora.rank=8.
"""

import ml_collections
from ml_collections import config_dict

from configs import base
from rl_lm.models import lora


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, steps=3000, lora=0)
    config = base.experiment(
        "sft",
        # A 2-layer, 64-wide decoder (~0.19M params): 98.6% held-out after 3000 steps.
        model=base.model("cpu", dim=64, num_layers=2, mlp_dim=256, max_seq_len=32),
        data=ml_collections.ConfigDict(
            dict(
                name="arithmetic/add2",
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=128,
                max_len=12,  # [BOS] 99+99= 198 [EOS]
                max_prompt_len=8,
                # Pack each step's batch_size examples into pack_rows rows of max_len
                # (rl_lm.data.packing); e.g. max_len=48, pack_rows=32 holds 128 sums.
                pack=False,
                pack_rows=config_dict.placeholder(int),
            )
        ),
        sft=ml_collections.ConfigDict(dict(chunk_size=128)),
        eval=ml_collections.ConfigDict(
            dict(num_examples=512, batch_size=256, max_new_tokens=5, seed=0)
        ),
        init=base.init(),
        lora=lora.default_config(),
    )
    config.lora.rank = arg.lora
    config.optim = base.optim(lr=1e-3, warmup_steps=100)
    config.train = base.train(
        num_steps=arg.steps, log_every=50, eval_every=min(500, arg.steps), ckpt_every=500
    )
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=32)
        config.data.batch_size = 16
        config.eval.num_examples = 16
        config.eval.batch_size = 16
        config.optim.warmup_steps = 2
        config.train = base.train(num_steps=6, log_every=2, eval_every=3, ckpt_every=3)
    config.lock()
    return config


def chain_warm_start(
    model: ml_collections.ConfigDict,
    sft_steps: int,
    runlocal: bool,
    *,
    name: str = "chain/sft",
    small_name: str = "chain/sft_train256_test32",
    max_len: int = 48,
    max_new_tokens: int = 32,
) -> ml_collections.ConfigDict:
    """The SFT warm-start stage of the chain configs (PRM, PURE, PRIME, PPO).

    Args:
      model: the model section, the later stage's (so the params fit it).
      sft_steps: SFT steps.
      runlocal: the CPU smoke version (4 steps on `small_name`).
      name: the chain dataset of demonstrations.
      small_name: its 256-example version for runlocal.
      max_len: SFT row length ([BOS] + prompt + response + [EOS]).
      max_new_tokens: held-out greedy decoding budget.
    """
    warm = get_config()
    warm.unlock()
    warm.model = model
    warm.data.update(name=small_name if runlocal else name, max_len=max_len, max_prompt_len=16)
    warm.eval.max_new_tokens = max_new_tokens
    warm.eval.answer = "marked"  # a chain's answer is its "#### n" line
    if runlocal:
        warm.data.batch_size = 16
        warm.eval.update(num_examples=16, batch_size=16)
        warm.optim.warmup_steps = 2
        warm.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    else:
        warm.train = base.train(
            num_steps=sft_steps, log_every=50, eval_every=sft_steps, ckpt_every=500
        )
    warm.lock()
    return warm
