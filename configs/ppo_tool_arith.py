"""PPO with a calculator tool over several turns, on 3-digit multiplication.

The task, model, SFT warm start (stage WORKDIR/warm_start: demonstrations that
call the calculator, read its result and answer) and held-out evaluation are
configs/grpo_tool_arith.py's. PPO then samples multi-turn episodes
(rl_lm/algos/ppo_episodes.py): each turn stops at `</call>`, the environment
runs the call and its result is appended as ids; the policy, the value head
and the reference all attend to the observation tokens, while the KL, GAE and
the loss skip them (the MDP is the model's own tokens: an observation is part
of the transition). The reward is exact match of the answer after "####" minus
beta * KL to the SFT model, with a value head on the policy trunk.

    python -m launch.train --config=configs/ppo_tool_arith.py --workdir=runs/ppo_tool

Without the tool (the same prompts; demonstrations answer directly; single-turn):

    python -m launch.train --config=configs/ppo_tool_arith.py:tool=0 --workdir=runs/ppo_notool

The reward is a config argument as in configs/grpo_tool_arith.py: `reward=outcome`
(exact match, the default), `reward=retool`, `reward=toolrl` or `reward=toolrl_outcome`.
Start from an existing SFT run instead of training one:

    python -m launch.train --config=configs/ppo_tool_arith.py --workdir=runs/ppo_tool \
        --config.init.workdir=runs/grpo_tool/warm_start

CPU smoke run:

    python -m launch.train --config=configs/ppo_tool_arith.py:runlocal --workdir=/tmp/ppo_tool_smoke
"""

import ml_collections

from configs import base, grpo_tool_arith
from rl_lm.algos import ppo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=1500, tool=1, reward="outcome")
    grpo = grpo_tool_arith.get_config(
        f"runlocal={arg.runlocal},sft_steps={arg.sft_steps},tool={arg.tool},reward={arg.reward}"
    )
    config = base.experiment(
        "ppo",
        model=grpo.model,
        data=grpo.data,
        ppo=ppo_loss.default_config(),
        eval=grpo.eval,
        init=base.init(),
    )
    budget = grpo.grpo.max_new_tokens  # an episode's whole response: calls, results, answer
    config.ppo.update(
        num_generations=4, max_new_tokens=budget, num_epochs=4, num_minibatches=2, temperature=1.0
    )
    config.ppo.reward.source = "verifiable"
    config.ppo.reward.verifiable = ml_collections.ConfigDict({"exact_match": 1.0})
    config.ppo.kl.coef = 0.05
    if arg.tool:
        config.ppo.env.update(name="tools", tools="calculator", max_turns=4)
        config.ppo.reward_sources = grpo.grpo.reward_sources
    config.optim = base.optim(lr=1e-4, warmup_steps=10, schedule="cosine")
    config.train = base.train(
        num_steps=200, log_every=10, eval_every=50, ckpt_every=50, eval_at_start=True
    )
    config.warm_start = grpo.warm_start
    if arg.runlocal:
        config.ppo.update(num_generations=2, num_epochs=2, num_minibatches=1)
        config.train = base.train(
            num_steps=2, log_every=1, eval_every=2, ckpt_every=2, eval_at_start=True
        )
    config.lock()
    return config
