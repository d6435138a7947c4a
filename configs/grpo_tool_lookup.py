"""GRPO with a lookup tool over several turns, on questions about a made-up table.

The task, "tool_lookup/lookup", asks one attribute (a 4-digit code, a city, a
year) of one of 1000 made-up entities whose attributes are random: a
~0.2M-parameter byte-level decoder cannot know them, and the held-out
questions name entities no train question names. The table is reachable only
through the `lookup(name)` tool (rl_lm/data/tool_lookup.py). SFT (stage
WORKDIR/warm_start) imitates demonstrations that call the tool in the compact
format, read its result and answer ("code of Zorvak?" ->
`<call>lookup(name='Zorvak')</call><result>Zorvak: code 4821, city Belmo, year
1957</result>#### 4821`, the result not trained on). GRPO then samples
multi-turn episodes (rl_lm/algos/episodes.py): each turn stops at `</call>`,
the environment runs the call, its result is appended to the row's KV cache as
ids and the row continues; observation tokens have loss mask 0. The reward is
exact match of the answer after "####".

    python -m launch.train --config=configs/grpo_tool_lookup.py --workdir=runs/grpo_lookup

Longer or shorter SFT warm start (the argument `sft_steps`):

    python -m launch.train --config=configs/grpo_tool_lookup.py:sft_steps=3000 --workdir=runs/lk3k

CPU smoke run:

    python -m launch.train --config=configs/grpo_tool_lookup.py:runlocal --workdir=/tmp/lookup_smoke

The registered "lookup" tool reads the table of the run's own data.name. The
SFT stage's dataset is copied into config.warm_start when the config is built,
so another table needs both: --config.data.name=tool_lookup/lookup_entities200_seed3
--config.warm_start.data.name=tool_lookup/lookup_entities200_seed3.
"""

import ml_collections
from ml_collections import config_dict

from configs import base, sft_arith
from rl_lm.algos import grpo_loss

# [BOS] prompt (<= 15 bytes) [call (<= 34)][result (<= 58)][#### answer (<= 11)] [EOS]:
# at most 120 ids, 104 of them after the prompt.
MAX_LEN, MAX_PROMPT_LEN, BUDGET = 128, 16, 112


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, sft_steps=1500)
    config = base.experiment(
        "grpo",
        model=base.model("cpu", dim=64, num_layers=2, mlp_dim=256, max_seq_len=MAX_LEN),
        data=ml_collections.ConfigDict(
            dict(
                name="tool_lookup/lookup",
                data_dir=config_dict.placeholder(str),
                batch_size=16,  # prompts per rollout; rows = batch_size * num_generations
                max_len=MAX_LEN,
                max_prompt_len=MAX_PROMPT_LEN,
            )
        ),
        grpo=grpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(num_examples=256, batch_size=128, max_new_tokens=BUDGET, seed=0)
        ),
        init=base.init(),
    )
    config.grpo.update(num_generations=8, max_new_tokens=BUDGET, beta=0.04, temperature=1.0)
    # One observation holds up to 58 ids ("<result>Zorvak: code ..., year 1957</result>").
    config.grpo.env.update(name="tools", tools="lookup", max_turns=4, max_observation_tokens=64)
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
    warm.eval.max_new_tokens = BUDGET
    config.warm_start = warm
    if arg.runlocal:
        # The default table, fewer rows.
        config.data.name = "tool_lookup/lookup_train256_test32"
        config.model = base.model("tiny", max_seq_len=MAX_LEN)
        config.data.batch_size = 8
        config.grpo.num_generations = 2
        config.eval.update(num_examples=8, batch_size=8)
        config.train = base.train(
            num_steps=2, log_every=1, eval_every=2, ckpt_every=2, eval_at_start=True
        )
        warm.data.name = config.data.name
        warm.model = config.model
        warm.data.batch_size = 8
        warm.eval.update(num_examples=8, batch_size=8)
        warm.optim.warmup_steps = 2
        warm.train = base.train(num_steps=2, log_every=1, eval_every=2, ckpt_every=2)
    warm.lock()
    config.lock()
    return config
