"""Stops a diverging run before it saves: a non-finite loss, gradient norm or state.

`Watch` reads each step's loss and gradient norm on the host one step late (after
the next step is launched, so the device never waits for the check), and before
every save makes sure the pending check is done and that the whole train state is
finite (one jitted reduction). A failure raises `RunError` naming the step and
the likely cause, so no checkpoint ever holds a NaN and the last good one stays
the latest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rl_lm.train.report import RunError

WATCHED = ("loss", "grad_norm")


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point value in `tree` is finite (a replicated bool scalar)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.bool_(True)]))


def likely_causes(optim: Mapping[str, Any]) -> str:
    """The usual reasons an optimizer step blows up, given the optim section."""
    causes = [f"the learning rate is too high (optim.lr={optim['lr']:g})"]
    if not optim.get("grad_clip"):
        causes.append(f"gradients are not clipped (optim.grad_clip={optim.get('grad_clip')})")
    elif optim.get("warmup_steps", 1) < 10:
        causes.append(f"the warmup is short (optim.warmup_steps={optim['warmup_steps']})")
    return ", or ".join(causes)


class Watch:
    """Checks a run's steps for divergence (see the module docstring).

    Args:
      optim: the config's optim section (for the likely causes).
      saved: () -> a phrase saying where the latest good checkpoint is.
    """

    def __init__(self, optim: Mapping[str, Any], saved: Callable[[], str]):
        self._optim = optim
        self._saved = saved
        self._pending: tuple[int, dict[str, Any]] | None = None

    def push(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Records `step`'s metrics and checks the previous step's (now computed)."""
        self.flush()
        self._pending = step, {k: metrics[k] for k in WATCHED if k in metrics}

    def flush(self) -> None:
        """Checks the recorded step's loss and gradient norm now."""
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        values = jax.device_get(metrics)
        bad = [f"{k} is {float(values[k])}" for k in metrics if not math.isfinite(values[k])]
        if bad:
            self._stop(step, " and ".join(bad))

    def check_state(self, step: int, state: Any) -> None:
        """Before saving `step`: its metrics and every value of `state` are finite."""
        self.flush()
        if not bool(all_finite(state)):
            self._stop(step, "the train state holds non-finite values")

    def _stop(self, step: int, what: str) -> None:
        raise RunError(
            f"Training diverged at step {step}: {what}. Likely {likely_causes(self._optim)}. "
            f"Stopped before saving it: {self._saved()}."
        )
