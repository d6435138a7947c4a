"""A discriminative process reward model on multi-step arithmetic chains.

Prompts like "12 +5 *3 -7:" are solved one step per line ("12+5=17\n...\n#### 44",
rl_lm/data/chain.py). A 2-layer, 64-wide decoder first learns the canonical
solutions (SFT on chain/sft, stage WORKDIR/warm_start); its trunk plus a fresh
scalar head then learns to label steps: on chain/prm (half canonical solutions,
half with one wrong result that later steps build on), binary cross-entropy at
each step's last token against the programmatic checker's labels
(rl_lm/rewards/steps.py; 1 until the first wrong step, 0 from there). The
held-out step-level accuracy is logged. This PRM is a process reward source
for GRPO / PPO.

    python -m launch.train --config=configs/prm_chain.py --workdir=runs/prm_chain

Reuse an SFT run (same model shape):

    python -m launch.train --config=configs/prm_chain.py --workdir=runs/prm_chain \
        --config.init.workdir=runs/prm_chain_a/warm_start

CPU smoke run:

    python -m launch.train --config=configs/prm_chain.py:runlocal --workdir=/tmp/prm_smoke

The token head (head=token) reads the LM head instead of a scalar one: the
model's probability p_t of token t is trained as "token t keeps the solution
on track", and step s scores the prefix's likelihood prod_{t <= end of s} p_t
(rl_lm/algos/prm.py), with the dense per-token loss (prm.token_weight 0.5) and
Adam lr 3e-4. Started from the SFT model, it verifies arithmetic that the scalar
head never learns to (README, Results). Trained on a policy's own samples
(experiments/prm_samples.py), as the PURE runs use it:

    python -m experiments.prm_samples --run=runs/pure_sum/warm_start --name=chain_onpolicy \
        --max_new_tokens=40
    python -m launch.train --config=configs/prm_chain.py:head=token --workdir=runs/prm_token \
        --config.data.name=jsonl/chain_onpolicy --config.init.workdir=runs/pure_sum/warm_start

Options: head=scalar|token, sft_steps=... (config arguments), --config.prm.max_steps=...,
--config.prm.token_weight=..., --config.data.name=chain/prm_steps4 (longer chains;
raise max_len).
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import prm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=1000, head="scalar")
    if arg.head not in ("scalar", "token"):
        raise ValueError(f"head={arg.head!r}: choose scalar or token.")
    token = arg.head == "token"
    shape = dict(dim=64, num_layers=2, mlp_dim=256, max_seq_len=64)
    config = base.experiment(
        "prm",
        model=base.model("cpu", lm_head=token, scalar_head=not token, **shape),
        data=ml_collections.ConfigDict(
            dict(
                name="chain/prm",
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=64,
                max_len=64,  # [BOS] + prompt (12) + a corrupted response (<= 42) + [EOS]
                truncate=False,
            )
        ),
        prm=prm.default_config(),
        eval=ml_collections.ConfigDict(dict(num_examples=512, batch_size=256, seed=0)),
        init=base.init(),
    )
    config.optim = base.optim(lr=3e-4 if token else 1e-3, warmup_steps=50, schedule="cosine")
    config.prm.token_weight = 0.5 if token else 0.0
    config.train = base.train(num_steps=1000, log_every=50, eval_every=200, ckpt_every=500)
    config.warm_start = sft_arith.chain_warm_start(
        base.model("cpu", **shape), arg.sft_steps, arg.runlocal
    )
    if arg.runlocal:
        config.data.update(name="chain/prm_train256_test32", batch_size=16)
        config.eval.update(num_examples=32, batch_size=16)
        config.optim.warmup_steps = 2
        config.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    config.lock()
    return config
