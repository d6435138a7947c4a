"""One-step off-policy GRPO: rollout k+1 is sampled with step k's params while update k runs.

With `grpo.off_policy.steps` = 1, step k trains theta_k on rollout k, which was
sampled with theta_{k-1} (staleness one update; at step 0 with theta_0 itself).
While the host decodes and scores rollout k and the devices run update k, the
sampler already draws rollout k+1 with theta_k: JAX dispatches both without
waiting, and the host blocks on rollout k+1's tokens only at the start of step
k+1. With `off_policy.sampler_devices` = S > 0 the sampler runs on its own
sub-mesh (the last S devices along the data axis) and the trainer on the rest,
so the two programs run side by side; with 0 they share the mesh and overlap
only as far as the runtime interleaves them.

The gap between the sampling policy mu = pi_{theta_{k-1}} and the training
policy pi_{theta_k} is corrected by truncated importance sampling
(`rl_lm.core.importance`): each token's policy-gradient term is weighted by
min(pi_{theta_k}(y_t) / mu(y_t), C) (token mode) or the sequence's ratio,
truncated (sequence mode), with C = `off_policy.is_cap`. The clipped ratio of
the loss stays relative to theta_k (the decoupled form of verl's and TRL's
truncated importance sampling): the weight corrects the rollout's distribution,
the clip bounds the update.

Exact resume: the state keeps the trainable params that sample the next
rollout (`behavior_params`: theta_k after step k, adapters only under LoRA), so
the rollout in flight is a pure function of a saved state; a restored run
samples it again, with the same key, and continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel
from rl_lm.algos import rollout
from rl_lm.core import importance

BEHAVIOR = "behavior_params"


def default_config() -> dict[str, Any]:
    return {"steps": 0, "is_mode": "token", "is_cap": 2.0, "sampler_devices": 0}


def enabled(off: Any) -> bool:
    return off is not None and off.steps > 0


def problems(off: Any, cfg: Any, mesh: Mesh | None = None) -> list[str]:
    """What in `grpo.off_policy` (given the rest of the `grpo` section) cannot run."""
    if off is None:
        return []
    out = []
    if off.steps not in (0, 1):
        out.append(
            f"grpo.off_policy.steps={off.steps} not supported: 0 (on-policy) or 1 (one-step"
            " off-policy) only"
        )
    if off.is_mode not in importance.IS_MODES:
        out.append(f"grpo.off_policy.is_mode={off.is_mode!r} not in {importance.IS_MODES}")
    if not off.is_cap >= 1.0:
        out.append(f"grpo.off_policy.is_cap={off.is_cap} must be >= 1")
    sampler_devices = off.get("sampler_devices", 0)
    if sampler_devices and off.steps == 0:
        out.append("grpo.off_policy.sampler_devices needs grpo.off_policy.steps=1")
    if off.steps > 0:
        if cfg.dynamic_sampling:
            out.append(
                "grpo.off_policy.steps=1 does not take grpo.dynamic_sampling (refills sample"
                " inside the step); set one of them off"
            )
        env = cfg.get("env")
        if env is not None and env.get("name"):
            out.append(
                "grpo.off_policy.steps=1 does not take multi-turn episodes (grpo.env.name);"
                " set grpo.off_policy.steps=0"
            )
    if sampler_devices and mesh is not None:
        out += _split_problems(mesh, sampler_devices)
    return out


def _split_problems(mesh: Mesh, sampler_devices: int) -> list[str]:
    per_slice = mesh.devices.size // mesh.shape["data"]
    if jax.process_count() > 1:
        return [
            "grpo.off_policy.sampler_devices > 0 runs in one process only (the sub-meshes"
            " would not span every process); set it to 0 to share the mesh"
        ]
    if sampler_devices % per_slice or not 0 < sampler_devices < mesh.devices.size:
        return [
            f"grpo.off_policy.sampler_devices={sampler_devices} must be a multiple of the"
            f" {per_slice} devices of one data slice (fsdp x tensor) and fewer than the"
            f" mesh's {mesh.devices.size} devices"
        ]
    return []


def split_mesh(mesh: Mesh, sampler_devices: int) -> tuple[Mesh, Mesh]:
    """(trainer mesh, sampler mesh): the last `sampler_devices` devices along the data
    axis sample; both keep the mesh's axes. With 0, both are `mesh`."""
    if not sampler_devices:
        return mesh, mesh
    bad = _split_problems(mesh, sampler_devices)
    if bad:
        raise ValueError(bad[0])
    cut = mesh.shape["data"] - sampler_devices // (mesh.devices.size // mesh.shape["data"])
    sub = lambda d: Mesh(d, mesh.axis_names, axis_types=mesh.axis_types)
    return sub(mesh.devices[:cut]), sub(mesh.devices[cut:])


class _InFlight(NamedTuple):
    index: int
    out: Any  # the sampler's output, on the sampler mesh, maybe not computed yet
    prompts: dict[str, np.ndarray]


class Pipeline:
    """Rollout k for step k, with rollout k+1 dispatched before update k.

    Args:
      sampler: `make_sampler`'s (params, prompt, mask, key).
      sample_mesh: where the sampler runs; train_mesh: where the rollout goes.
      sample_shardings: the sampling params' shardings on the sample mesh.
      key_of: rollout index -> sampling key (the on-policy trainer's keys).
      collect_args: tokenizer and num_generations, as `rollout.from_samples` takes them.
    """

    def __init__(self, sampler, sample_mesh, train_mesh, sample_shardings, key_of, collect_args):
        self._sampler, self._sample_mesh, self._train_mesh = sampler, sample_mesh, train_mesh
        self._shardings, self._key_of, self._args = sample_shardings, key_of, collect_args
        self._in_flight: _InFlight | None = None

    def start(self, params: Any, prompts: dict[str, np.ndarray], index: int) -> None:
        """Dispatches the sampling of rollout `index` with `params`; returns at once."""
        self._dispatch(params, prompts, index)

    def _dispatch(self, params: Any, prompts: dict[str, np.ndarray], index: int) -> None:
        b = len(prompts["prompt"])
        lo, hi = parallel.process_rows(self._sample_mesh, b)
        local = {k: prompts[k][lo:hi] for k in ("prompt", "prompt_mask")}
        arrays = parallel.shard_batch(local, self._sample_mesh, b)
        params = jax.device_put(params, self._shardings)
        out = self._sampler(params, arrays["prompt"], arrays["prompt_mask"], self._key_of(index))
        self._in_flight = _InFlight(index, out, prompts)

    def take(self, behavior: Callable[[], Any], prompts: dict[str, np.ndarray], index: int):
        """Rollout `index`: the one in flight, or (first step, after a restore) sampled now
        with `behavior()`, the params it was dispatched with."""
        if self._in_flight is None or self._in_flight.index != index:
            self._dispatch(behavior(), prompts, index)
        flight, self._in_flight = self._in_flight, None
        return rollout.from_samples(flight.out, flight.prompts, mesh=self._train_mesh, **self._args)


def snapshot(params: Any) -> Any:
    """A copy of the trainable params (the update donates the state's own buffers)."""
    return jax.tree.map(jnp.copy, params)


def weights(off: Any, lp_train: jax.Array, r: rollout.Rollout) -> tuple[jax.Array, dict]:
    """The truncated importance weights of rollout `r` under the training policy's
    log-probs `lp_train`, and their metrics as floats."""
    w, metrics = importance.truncated_weights(
        lp_train, r.lp_sample, r.mask, off.is_cap, off.is_mode
    )
    return w, {k: float(v) for k, v in metrics.items()}


def pairs(batches):
    """(batch k, batch k+1) for every k: the step needs the next prompts to dispatch them."""
    current = next(batches)
    for following in batches:
        yield current, following
        current = following
