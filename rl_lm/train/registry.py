"""The algorithms a config can name in `config.algo`.

Each entry is `make_trainer(config, mesh, init_from=None) -> rl_lm.algos.common.Trainer`
(`init_from`: starting params, see `rl_lm.train.warm_start`); see
`Trainer` for the contract the loop relies on. Adding an algorithm is one line.
`train.on_device=True` picks GRPO's on-device loop (`rl_lm.algos.grpo_device`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jax.sharding import Mesh

from rl_lm.algos import common, dpo, grpo, grpo_device, nash, ppo, prm, reward_model, sft

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
      ValueError: for an unknown algorithm, listing the known ones, or a config
        that `train.on_device=True` cannot run.
    """
    if config.algo not in ALGOS:
        raise ValueError(
            f"unknown config.algo={config.algo!r}; known algorithms: {', '.join(sorted(ALGOS))}."
        )
    if config.train.get("on_device", False):
        return grpo_device.make_trainer(config, mesh, init_from)
    return ALGOS[config.algo](config, mesh, init_from)
