"""The `<algo>.reward_sources` field: which reward sources a run sums, with their weights.

The field is a string of comma-separated `name=weight` items ("verifiable=1,toolrl=0.5";
a bare name weighs 1), so that it can be set from the command line like any
other field: `--config.grpo.reward_sources=verifiable=1,reward_model=0.5`. The
empty string (the default) keeps the older fields (`grpo.reward_source`,
`ppo.reward.source`, ...). The names are those of `rl_lm.algos.reward_sources`;
this module holds them apart from it so that the config checks of the trainers
can read a listing without importing the sources themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The sources a listing may name, in the order their rewards are summed.
NAMES = (
    "overlong",
    "verifiable",
    "reward_model",
    "true_reward",
    "tool_efficiency",
    "toolrl",
    "retool",
)


def parse(value: str | Mapping[str, Any] | None, field: str) -> dict[str, float]:
    """{name: weight}, in NAMES order, of a listing (a string as above, or a mapping).

    Raises:
      ValueError: one line naming `field`, for an unknown source, a weight that is
        not a finite number, a name listed twice, a non-empty value that lists
        nothing, or a listing whose weights are all 0.
    """
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = []
        for item in filter(None, (s.strip() for s in (value or "").split(","))):
            name, has_weight, weight = (s.strip() for s in item.partition("="))
            items.append((name, weight if has_weight else 1.0))
    unknown = sorted({name for name, _ in items} - set(NAMES))
    if unknown:
        raise ValueError(f"{field}: unknown source(s) {unknown}; known sources: {list(NAMES)}.")
    out: dict[str, float] = {}
    for name, weight in items:
        if name in out:
            raise ValueError(f"{field}: {name!r} is listed twice.")
        if isinstance(weight, str):
            try:
                weight = float(weight)
            except ValueError:
                raise ValueError(
                    f"{field}: {name}={weight!r}: a weight must be a number."
                ) from None
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"{field}: {name}={weight!r}: a weight must be a number.")
        if not math.isfinite(weight):
            raise ValueError(f"{field}: {name}={weight}: a weight must be finite.")
        out[name] = float(weight)
    if value and not out:
        raise ValueError(f"{field}={value!r} lists no source; e.g. 'verifiable=1,toolrl=0.5'.")
    if out and not any(out.values()):
        raise ValueError(
            f"{field}={value!r} weights every source 0: the reward would be 0 for every sample."
        )
    return {name: out[name] for name in NAMES if name in out}


def listed(cfg: Any, algo: str) -> dict[str, float]:
    """The parsed `reward_sources` of an algorithm's section `cfg`; {} when it lists none."""
    return parse(cfg.get("reward_sources"), f"{algo}.reward_sources")


def format_weights(weights: Mapping[str, float]) -> str:
    """The field's string of `weights` ({"toolrl": 1.0} -> "toolrl=1.0")."""
    return ",".join(f"{name}={float(w)}" for name, w in weights.items())
