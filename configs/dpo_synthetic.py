"""DPO from an SFT start on synthetic sorting preferences with a hidden true reward.

"sort 5381=" asks for the digits sorted ("1358"); the true reward r* in [0, 1]
(rl_lm/rewards/synthetic.py) is never shown to the learner. A ~0.9M-parameter
decoder first imitates a mediocre behaviour policy (SFT on sort_pref/sft), then
DPO trains on pairs of behaviour responses labelled by Bradley-Terry draws from
r*. Evaluation samples the policy and the SFT reference on held-out prompts and
reports the policy's win rate under r* (1/2 at the start), the mean r* of both,
and the sequence KL to the reference.

    python -m launch.train --config=configs/dpo_synthetic.py --workdir=runs/dpo_synthetic

Start from an existing SFT run instead of training one:

    python -m launch.train --config=configs/dpo_synthetic.py --workdir=runs/dpo_synthetic \
        --config.init.workdir=runs/dpo_synthetic_a/warm_start

CPU smoke run:

    python -m launch.train --config=configs/dpo_synthetic.py:runlocal --workdir=/tmp/dpo_smoke

Variants: --config.dpo.loss_type=ipo|cdpo|robust|hinge (label_smoothing for
cdpo/robust), --config.dpo.beta=..., --config.dpo.reference=online.
LoRA on the SFT policy (the reference is that policy, with no second copy):
the argument `lora=8` (configs/dpo_synthetic.py:runlocal,lora=8) or
--config.lora.rank=8 (rl_lm/models/lora.py).
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import dpo_loss
from rl_lm.models import lora


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=800, lora=0)
    config = base.experiment(
        "dpo",
        model=base.model("cpu", max_seq_len=32),
        data=ml_collections.ConfigDict(
            dict(
                name="sort_pref/pairs",
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=64,  # pairs
                max_len=32,  # [BOS] + prompt (<= 14) + response (<= 13) + [EOS]
                truncate=False,  # cut longer rows (their end, EOS included) instead of failing
                max_prompt_len=16,
            )
        ),
        dpo=dpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(num_examples=512, batch_size=256, max_new_tokens=16, greedy=True, seed=0)
        ),
        init=base.init(),
        lora=lora.default_config(),
    )
    config.lora.rank = arg.lora
    # beta 0.5 (not the paper's 0.1): on this small task 0.1 lets the policy drift
    # ~10 nats from the reference and its samples' win rate stalls near 0.7.
    config.dpo.beta = 0.5
    config.optim = base.optim(lr=5e-5, warmup_steps=20, schedule="constant", grad_clip=1.0)
    config.train = base.train(num_steps=600, log_every=20, eval_every=100, ckpt_every=100)
    warm = sft_arith.get_config()
    warm.unlock()
    warm.model = config.model  # the warm start must have the policy's shapes
    warm.data.update(name="sort_pref/sft", max_len=32, max_prompt_len=16)
    warm.eval.max_new_tokens = 16
    warm.train = base.train(num_steps=arg.sft_steps, log_every=50, eval_every=500, ckpt_every=500)
    config.warm_start = warm
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=32)
        config.data.update(name="sort_pref/pairs_train256_test32", batch_size=16)
        config.dpo.ref_batch_size = 32
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=8)
        config.optim.warmup_steps = 2
        config.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
        warm.model = config.model
        warm.data.update(name="sort_pref/sft_train256_test32", batch_size=16)
        warm.eval.update(num_examples=16, batch_size=16, max_new_tokens=8)
        warm.optim.warmup_steps = 2
        warm.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    warm.lock()
    config.lock()
    return config
