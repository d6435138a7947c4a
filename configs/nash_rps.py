"""Nash learning on intransitive rock-paper-scissors preferences, from an SFT start.

Prompts "rps R 1.0 0427:" name a favourite class; responses are words whose
first letter is their class, and classes beat each other in a cycle, so no
Bradley-Terry reward represents the preferences (rl_lm/rewards/synthetic.py).
A tiny decoder first imitates the reference (SFT on rps_pref/sft, stage
WORKDIR/warm_start; it favours its prompt's class 0.6 / 0.3 / 0.1), then
approximate Nash Mirror Prox (`algo=nash_mp`, the default), Nash-MD
(`algo=nash_md`) or online IPO (`algo=online_ipo`) learns from the
programmatic preference; `algo=dpo` instead runs DPO on the Bradley-Terry
reading of rps_pref/pairs (reference draws labelled by the same preference).
Every variant stops after the same number of preference queries (`budget`).
Evaluation reports the class-level KL(pi*_beta || pi) and exploitability on
held-out prompts (rl_lm/algos/nash_eval.py), the win rate over the reference
and the sequence KL to it.

    python -m launch.train --config=configs/nash_rps.py --workdir=runs/nash_rps

Other methods and budgets:

    python -m launch.train --config=configs/nash_rps.py:algo=nash_md,budget=8192 \
        --workdir=runs/nash_rps_md

CPU smoke run:

    python -m launch.train --config=configs/nash_rps.py:runlocal --workdir=/tmp/nash_smoke

The convergence study (all four methods, one plot): experiments/nash_convergence.py.
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import dpo_loss, nash_loss

ALGOS = (*nash_loss.ALGOS, "dpo")
BETA = 0.1


def queries_per_step(config: ml_collections.ConfigDict) -> int:
    """Preference queries one loop step of `config` makes (or, for DPO, consumes)."""
    if config.algo == "dpo":
        return config.data.batch_size
    n = config.data.batch_size * config.nash.num_generations
    per_rollout = {"nash_mp": 2 * config.nash.inner_rollouts, "nash_md": 1, "online_ipo": 0.5}
    return int(per_rollout[config.algo] * n)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, algo="nash_mp", budget=16384, sft_steps=1500)
    if arg.algo not in ALGOS:
        raise ValueError(f"config argument algo={arg.algo!r} is not one of {ALGOS}.")
    config = base.experiment(
        arg.algo,
        model=base.model("tiny", max_seq_len=32),
        init=base.init(),
        data=ml_collections.ConfigDict(
            dict(
                name="rps_pref/sft",  # prompts only
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=8,  # prompts per update
                max_prompt_len=16,  # [BOS] + "rps R 1.0 0427:"
            )
        ),
        eval=ml_collections.ConfigDict(dict(num_examples=64, batch_size=64, seed=0)),
    )
    if arg.algo == "dpo":
        config.data.update(name="rps_pref/pairs", batch_size=64, max_len=28, truncate=False)
        config.dpo = dpo_loss.default_config()
        config.dpo.update(beta=BETA, reference="online")
        config.eval.update(max_new_tokens=10, greedy=False)
    else:
        config.nash = nash_loss.default_config()
        config.nash.update(beta=BETA, max_new_tokens=10)
    # Settings tuned on the convergence study (experiments/nash_convergence.py) at
    # 16384 queries: the largest learning rates that did not oscillate away.
    lr = {"nash_mp": 2e-3, "nash_md": 2e-4, "online_ipo": 3e-4, "dpo": 1e-3}[arg.algo]
    config.optim = base.optim(lr=lr, warmup_steps=0, schedule="constant", grad_clip=1.0)
    if arg.algo == "nash_mp":
        # eta = 2 beta, the step of the (1 + 2 beta)^-k bound; one rollout of 32 x 16
        # responses per half step, reused (importance-weighted) for 32 updates; the
        # anchor's EMA averages out the rollouts' noise (without it KL(pi* || pi) drops
        # as fast but then wanders between 0.01 and 0.05).
        config.data.batch_size = 32
        config.nash.update(eta=2 * BETA, num_generations=16, num_inner_steps=32, anchor_ema=0.5)
    if arg.algo == "nash_md":
        config.nash.eta = 1.0  # the opponent mixes in ref with weight eta * beta = 0.1
    if arg.algo == "online_ipo":
        config.nash.num_generations = 16  # 64 pairs per update, as many queries as Nash-MD
    config.train = base.train(
        num_steps=max(1, arg.budget // queries_per_step(config)),
        log_every=5,
        eval_every=10,
        ckpt_every=50,
    )
    warm = sft_arith.get_config()
    warm.unlock()
    warm.model = config.model
    warm.data.update(name="rps_pref/sft", batch_size=64, max_len=28, max_prompt_len=16)
    warm.eval.update(num_examples=64, batch_size=64, max_new_tokens=10)
    warm.optim = base.optim(lr=3e-3, warmup_steps=50)
    warm.train = base.train(num_steps=arg.sft_steps, log_every=100, eval_every=500, ckpt_every=500)
    config.warm_start = warm
    if arg.runlocal:
        config.data.name = "rps_pref/sft_train256_test32"
        config.eval.update(num_examples=16, batch_size=16)
        if arg.algo == "dpo":
            config.data.update(name="rps_pref/pairs_train256_test32", batch_size=16)
        else:
            config.data.batch_size = 8
            config.nash.update(num_inner_steps=2, num_generations=2)
        config.train = base.train(num_steps=2, log_every=1, eval_every=2, ckpt_every=2)
        warm.data.update(name="rps_pref/sft_train256_test32", batch_size=16)
        warm.eval.update(num_examples=16, batch_size=16)
        warm.optim.warmup_steps = 2
        warm.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    warm.lock()
    config.lock()
    return config
