"""GRPO with a calculator tool over several turns, on 3-digit multiplication.

The task, "tool_arith/tool", is multiplication of two 3-digit numbers: too hard
for a ~0.2M-parameter byte-level decoder in its head, easy with the calculator.
SFT (stage WORKDIR/warm_start) imitates demonstrations that call the tool in
the compact format, read its result and answer ("865*673=" ->
`<call>calculator(expression='865*673')</call><result>582145</result>#### 582145`,
the result not trained on; 20% of them call twice, redundantly). GRPO then
samples multi-turn episodes (rl_lm/algos/episodes.py): each turn stops at
`</call>`, the environment runs the call, its result is appended to the row's
KV cache as ids and the row continues; observation tokens have loss mask 0.
The reward is exact match of the answer after "####".

    python -m launch.train --config=configs/grpo_tool_arith.py --workdir=runs/grpo_tool

Without the tool (the same prompts; demonstrations answer directly; single-turn):

    python -m launch.train --config=configs/grpo_tool_arith.py:tool=0 --workdir=runs/grpo_notool

The reward is a config argument: `reward=outcome` (exact match, the default),
`reward=retool` (ReTool's +1 / -1), `reward=toolrl` (ToolRL's decomposed
format + call-matching reward against the one calculator call the prompt
needs, in [-3, 4]) or `reward=toolrl_outcome` (both, summed). ToolRL's contrast
against the outcome reward, from an under-trained warm start:

    python -m launch.train --config=configs/grpo_tool_arith.py:reward=toolrl,sft_steps=300 \
        --workdir=runs/grpo_tool_toolrl

CPU smoke run:

    python -m launch.train --config=configs/grpo_tool_arith.py:runlocal --workdir=/tmp/tool_smoke
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import grpo_loss

# reward=... -> grpo.reward_sources. Each arm logs the other's terms at weight 0,
# so ToolRL's terms and the exact match are on every arm's curves.
REWARDS = {
    "outcome": "verifiable=1,toolrl=0",
    "retool": "retool=1,verifiable=0,toolrl=0",
    "toolrl": "toolrl=1,verifiable=0",
    "toolrl_outcome": "toolrl=1,verifiable=1",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(
        arg, runlocal=False, sft_steps=1500, tool=1, redundant=20, reward="outcome"
    )
    if arg.reward not in REWARDS:
        raise ValueError(f"reward={arg.reward!r}: expected one of {sorted(REWARDS)}.")
    if arg.reward != "outcome" and not arg.tool:
        raise ValueError(f"reward={arg.reward} scores tool calls and needs tool=1.")
    dataset = "tool" if arg.tool else "notool"
    if arg.tool and arg.redundant != 20:
        dataset += f"_redundant{arg.redundant}"
    budget = 150 if arg.tool else 16  # two calls, their results and the answer fit in 148
    config = base.experiment(
        "grpo",
        model=base.model("cpu", dim=64, num_layers=2, mlp_dim=256, max_seq_len=160),
        data=ml_collections.ConfigDict(
            dict(
                name=f"tool_arith/{dataset}",
                data_dir=config_dict.placeholder(str),
                batch_size=16,  # prompts per rollout; rows = batch_size * num_generations
                # [BOS] prompt, two calls and results, the answer, [EOS]; or the answer alone.
                max_len=160 if arg.tool else 24,
                max_prompt_len=10,
            )
        ),
        grpo=grpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(num_examples=256, batch_size=128, max_new_tokens=budget, seed=0)
        ),
        init=base.init(),
    )
    config.grpo.update(num_generations=8, max_new_tokens=budget, beta=0.04, temperature=1.0)
    if arg.tool:
        config.grpo.env.update(name="tools", tools="calculator", max_turns=4)
    if arg.tool:
        config.grpo.reward_sources = REWARDS[arg.reward]
    config.optim = base.optim(lr=1e-4, warmup_steps=10, schedule="cosine")
    config.train = base.train(
        num_steps=200, log_every=10, eval_every=50, ckpt_every=50, eval_at_start=True
    )
    warm = sft_arith.get_config(f"steps={arg.sft_steps}")
    warm.unlock()
    warm.data.name = config.data.name
    warm.model = config.model
    warm.data.max_prompt_len = config.data.max_prompt_len
    warm.data.max_len = config.data.max_len
    warm.eval.max_new_tokens = budget
    config.warm_start = warm
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=160)
        config.data.batch_size = 8
        config.grpo.num_generations = 2
        config.eval.update(num_examples=8, batch_size=8)
        config.train = base.train(
            num_steps=2, log_every=1, eval_every=2, ckpt_every=2, eval_at_start=True
        )
        warm.model = config.model
        warm.data.batch_size = 8
        warm.eval.update(num_examples=8, batch_size=8)
        warm.optim.warmup_steps = 2
        warm.train = base.train(num_steps=2, log_every=1, eval_every=2, ckpt_every=2)
    warm.lock()
    config.lock()
    return config
