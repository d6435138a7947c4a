"""The algorithms a config can name in `config.algo`.

Each entry is `make_trainer(config, mesh, init_from=None) -> rl_lm.algos.common.Trainer`
(`init_from`: starting params, see `rl_lm.train.warm_start`); see
`Trainer` for the contract the loop relies on. Adding an algorithm is one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax.sharding import Mesh

from rl_lm.algos import common, dpo, grpo, nash, ppo, prm, reward_model, sft

ALGOS: dict[str, Callable[[Any, Mesh, Any], common.Trainer]] = {
    "sft": sft.make_trainer,
    "grpo": grpo.make_trainer,
    "ppo": ppo.make_trainer,
    "dpo": dpo.make_trainer,
    "reward_model": reward_model.make_trainer,
    "prm": prm.make_trainer,
    "nash_mp": nash.make_trainer,
    "nash_md": nash.make_trainer,
    "online_ipo": nash.make_trainer,
}


def make_trainer(config: Any, mesh: Mesh, init_from: Any = None) -> common.Trainer:
    """The Trainer of `config.algo`, starting from params `init_from` when given.

    Raises:
      ValueError: for an unknown algorithm, listing the known ones.
    """
    if config.algo not in ALGOS:
        raise ValueError(
            f"unknown config.algo={config.algo!r}; known algorithms: {', '.join(sorted(ALGOS))}."
        )
    return ALGOS[config.algo](config, mesh, init_from)
