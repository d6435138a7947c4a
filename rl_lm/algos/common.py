"""Plumbing every algorithm shares: optimizer, train state, sharded init, the step.

An algorithm module exposes `make_trainer(config, mesh) -> Trainer` (the loop in
`rl_lm.train` drives any Trainer) and builds it from these pieces:

- `make_optimizer(config.optim, num_steps)`: AdamW with warmup and decay.
- `new_state(params, optimizer, rng, **extras)`: the train state, a plain dict
  {"step", "rng", "params", "opt_state", *extras} (extras: frozen reference
  params and the like; they pass through the step unchanged).
  `new_policy_state` is its form for a policy that may train LoRA adapters
  (config `lora`, `rl_lm.models.lora`) on frozen base params instead.
- `sharded_init(mesh, init_fn, specs_fn)`: jitted init with out_shardings, plus
  the abstract state (shapes, dtypes, shardings) that checkpoints restore into.
- `make_update(loss_fn, optimizer, num_microbatches)` then `jit_step(...)`: one
  optimizer step with gradient accumulation, jitted once with explicit
  shardings and the state donated.

Losses are (numerator, denominator) pairs of sums over the rows of a batch, the
denominator independent of the parameters. Accumulating numerator gradients and
denominators over microbatches and shards and dividing once gives exactly the
gradient of the full optimizer batch, whatever the split.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, PartitionSpec

from rl_lm import parallel
from rl_lm.models import lora
from rl_lm.models.config import ModelConfig
from rl_lm.models.saved import load_state
from rl_lm.models.transformer import init_params

State = dict[str, Any]
Batch = dict[str, Any]
# A metric is a (numerator, denominator) pair of sums; its value is num / den.
Ratio = tuple[jax.Array, jax.Array]
LossFn = Callable[[Any, Batch], tuple[Ratio, dict[str, Ratio]]]


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What the generic loop needs from an algorithm.

    Attributes:
      mesh: the device mesh everything is sharded over.
      init_state: rng -> a freshly initialized, sharded train state.
      abstract_state: the state's ShapeDtypeStructs, with shardings (restore target).
      state_shardings: the state's NamedShardings.
      batches: start_step -> iterator of this process's host batches (numpy) for
        steps start_step, start_step + 1, ...; a pure function of (seed, step), so
        resuming at step s is `batches(s)`.
      step: (state, host batch) -> (new state, metrics). The state argument is
        donated. Metrics are scalars (device arrays or numbers); "tokens" (tokens
        processed this step) drives the throughput display. On-policy algorithms
        sample inside `step`.
      evaluate: state -> {name: float}, identical on every process (e.g. held-out
        exact-match "accuracy" with greedy decoding).
    """

    mesh: Mesh
    init_state: Callable[[jax.Array], State]
    abstract_state: State
    state_shardings: State
    batches: Callable[[int], Iterator[Batch]]
    step: Callable[[State, Batch], tuple[State, dict[str, Any]]]
    evaluate: Callable[[State], dict[str, float]]


def learning_rate_schedule(optim: Mapping[str, Any], num_steps: int) -> optax.Schedule:
    """Linear warmup to optim.lr over optim.warmup_steps, then optim.schedule.

    "cosine" decays to optim.lr * optim.end_lr_ratio at num_steps, "linear" does so
    linearly, "constant" stays at optim.lr.
    """
    kinds = ("cosine", "linear", "constant")
    if optim["schedule"] not in kinds:
        raise ValueError(f"optim.schedule={optim['schedule']!r} is not one of {kinds}.")
    peak, warmup, kind = float(optim["lr"]), int(optim["warmup_steps"]), optim["schedule"]
    end = peak * float(optim["end_lr_ratio"])

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum(1.0, (step + 1) / max(warmup, 1))
        progress = jnp.clip((step - warmup) / max(num_steps - warmup, 1), 0.0, 1.0)
        if kind == "cosine":
            decayed = end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
        elif kind == "linear":
            decayed = peak + (end - peak) * progress
        else:
            decayed = jnp.asarray(peak)
        return warm * decayed

    return schedule


def decay_mask(params: Any) -> Any:
    """True for weight matrices, False for norm scales and biases."""

    def is_matrix(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return not (name.endswith("norm") or name in ("bq", "bk", "bv", "b"))

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(optim: Mapping[str, Any], num_steps: int) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the learning-rate schedule of `optim`.

    Args:
      optim: lr, warmup_steps, schedule, end_lr_ratio, b1, b2, eps,
        weight_decay (matrices only), grad_clip (<= 0 disables clipping).
      num_steps: total optimizer steps of the run (the end of the decay).
    """
    adamw = optax.adamw(
        learning_rate_schedule(optim, num_steps),
        b1=float(optim["b1"]),
        b2=float(optim["b2"]),
        eps=float(optim["eps"]),
        weight_decay=float(optim["weight_decay"]),
        mask=decay_mask,
    )
    if float(optim["grad_clip"]) > 0:
        return optax.chain(optax.clip_by_global_norm(float(optim["grad_clip"])), adamw)
    return adamw


def model_config(model: Mapping[str, Any]) -> ModelConfig:
    """The ModelConfig of a config's `model` section (a ConfigDict of its fields)."""
    return ModelConfig(**(model.to_dict() if hasattr(model, "to_dict") else dict(model)))


def new_state(params: Any, optimizer: optax.GradientTransformation, rng: jax.Array, **extras):
    """A train state at step 0. Extras (e.g. ref_params) ride along unchanged."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
        "params": params,
        "opt_state": optimizer.init(params),
        **extras,
    }


def new_policy_state(params, optimizer, rng, lora_cfg: lora.LoraConfig | None, **extras):
    """`new_state` of a policy: `params` trained, or with `lora_cfg` frozen under lora.BASE
    and fresh adapters (from fold_in(rng, 1)) trained as state["params"]."""
    if lora_cfg is None:
        return new_state(params, optimizer, rng, **extras)
    adapters = lora.init_adapters(lora_cfg, params, jax.random.fold_in(rng, 1))
    return new_state(adapters, optimizer, rng, **{lora.BASE: params}, **extras)


def policy_params(state: State, lora_cfg: lora.LoraConfig | None) -> Any:
    """The policy's full params in a state made by `new_policy_state` (traceable)."""
    if lora_cfg is None:
        return state["params"]
    return lora.merge(state[lora.BASE], state["params"], lora_cfg)


def jit_policy_params(mesh: Mesh, param_specs: Any, lora_cfg: lora.LoraConfig | None):
    """state -> `policy_params(state)`, merged on the mesh (for sampling and evaluation)."""
    if lora_cfg is None:
        return lambda state: state["params"]
    merge = jax.jit(
        functools.partial(lora.merge, cfg=lora_cfg), out_shardings=parallel.named(mesh, param_specs)
    )
    return lambda state: merge(state[lora.BASE], state["params"])


def state_specs(
    abstract_state: State,
    param_specs: Any,
    optimizer: optax.GradientTransformation,
    param_keys: tuple[str, ...] = ("params",),
    adapter_specs: Any = None,
) -> State:
    """PartitionSpecs of a train state.

    Entries named in `param_keys` get `param_specs`; optimizer moments get the spec
    of the parameter they belong to; everything else (step, rng, counts) is
    replicated. With `adapter_specs` (a LoRA state of `new_policy_state`),
    state["params"] and its moments get those and lora.BASE gets `param_specs`.
    """
    is_spec = lambda x: isinstance(x, PartitionSpec)
    if adapter_specs is not None:
        param_keys = tuple(k for k in param_keys if k != "params") + (lora.BASE,)
    trained = param_specs if adapter_specs is None else adapter_specs
    specs = {}
    for key, sub in abstract_state.items():
        if key in param_keys:
            specs[key] = param_specs
        elif key == "params":
            specs[key] = trained
        elif key == "opt_state":
            specs[key] = optax.tree_map_params(
                optimizer,
                lambda _, spec: spec,
                sub,
                trained,
                transform_non_params=lambda _: PartitionSpec(),
                is_leaf=is_spec,
            )
        else:
            specs[key] = jax.tree.map(lambda _: PartitionSpec(), sub)
    return specs


def sharded_init(
    mesh: Mesh, init_fn: Callable[[jax.Array], State], specs_fn: Callable[[State], State]
) -> tuple[Callable[[jax.Array], State], State, State]:
    """Jits `init_fn` so that every leaf is created directly in its sharded layout.

    Args:
      mesh: the mesh.
      init_fn: rng -> state (pure, unjitted).
      specs_fn: abstract state -> tree of PartitionSpecs (e.g. via `state_specs`).

    Returns:
      (init(rng) -> sharded state, abstract state with shardings, state shardings).
    """
    abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
    shardings = parallel.named(mesh, specs_fn(abstract))
    init = jax.jit(init_fn, in_shardings=parallel.replicated(mesh), out_shardings=shardings)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return init, abstract, shardings


def ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den, and 0 where den is 0 (e.g. a batch without target tokens)."""
    return jnp.where(den == 0, 0.0, num / jnp.where(den == 0, 1.0, den))


def split_microbatches(batch: Batch, k: int) -> Batch:
    """[B, ...] leaves -> [k, B/k, ...]; microbatch j holds rows j, j + k, j + 2k, ...

    Strided rows keep each microbatch spread over every batch shard (each
    device's contiguous block of rows contributes to every microbatch), so the
    split moves no data between devices.
    """

    def split(x):
        if x.shape[0] % k:
            raise ValueError(
                f"batch of {x.shape[0]} rows does not split into {k} microbatches; make "
                "the batch size a multiple of train.num_microbatches."
            )
        return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def make_update(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    num_microbatches: int = 1,
    schedule: optax.Schedule | None = None,
    lora_cfg: lora.LoraConfig | None = None,
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """One optimizer step on state["params"], accumulating over microbatches.

    Args:
      loss_fn: (params, batch) -> ((loss_num, loss_den), {name: (num, den)}), all
        sums over the rows of `batch`; the denominators must not depend on params.
      optimizer: the optax transformation whose state is state["opt_state"].
      num_microbatches: k; the batch is split with `split_microbatches`.
      schedule: reports the step's learning rate as metric "lr" when given.
      lora_cfg: state["params"] are LoRA adapters (`new_policy_state`): loss_fn
        sees `policy_params(state, lora_cfg)`, and only the adapters move.

    Returns:
      update(state, batch) -> (state, metrics), pure (jit it with `jit_step`);
      metrics are "loss", every metric of loss_fn, "grad_norm" (and "lr").
    """

    def grads_and_sums(params, batch, base):
        def numerator(p):
            (num, den), metrics = loss_fn(
                policy_params({"params": p, lora.BASE: base}, lora_cfg), batch
            )
            return num, (den, metrics)

        (num, (den, metrics)), grads = jax.value_and_grad(numerator, has_aux=True)(params)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        return grads, {"loss": (num, den), **metrics}

    def update(state, batch):
        params, base = state["params"], state.get(lora.BASE)
        if num_microbatches == 1:
            grads, sums = grads_and_sums(params, batch, base)
        else:
            micro = split_microbatches(batch, num_microbatches)
            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(
                lambda s: jnp.zeros(s.shape, s.dtype),
                jax.eval_shape(grads_and_sums, params, first, base),
            )

            def body(carry, mb):
                return _tree_add(carry, grads_and_sums(params, mb, base)), None

            (grads, sums), _ = jax.lax.scan(body, zeros, micro)
        den = sums["loss"][1]
        grads = jax.tree.map(lambda g: ratio(g, den), grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {
            **state,
            "step": state["step"] + 1,
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
        }
        metrics = {name: ratio(num, d) for name, (num, d) in sums.items()}
        metrics["grad_norm"] = optax.global_norm(grads)
        if schedule is not None:
            metrics["lr"] = schedule(state["step"])
        return new_state, metrics

    return update


def jit_step(update: Callable, mesh: Mesh, state_shardings: State) -> Callable:
    """Jits `update(state, batch)` with explicit shardings, donating the state.

    The batch's leading dimension is split over the mesh's batch axes; metrics
    come back replicated.
    """
    return jax.jit(
        update,
        in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )


def check_batch_size(batch_size: int, mesh: Mesh, num_microbatches: int, name: str) -> None:
    """Fails early when a global batch cannot be split evenly over shards and microbatches."""
    shards = parallel.batch_divisor(mesh)
    if batch_size % (shards * num_microbatches):
        raise ValueError(
            f"{name}={batch_size} must be a multiple of the {shards} batch shards of the "
            f"mesh times train.num_microbatches={num_microbatches} "
            f"(= {shards * num_microbatches}); change the batch size, the mesh or the "
            "number of microbatches."
        )
    if batch_size % jax.process_count():
        raise ValueError(f"{name}={batch_size} must be a multiple of the process count.")


def host_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metrics as python floats (blocks on the device)."""
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def minibatch_order(seed: int, rollout_index: int, epoch: int, n: int, minibatches: int):
    """The order of a rollout's n rows in one epoch: a function of (seed, rollout, epoch).

    With one minibatch the rows keep their order (the update sees the whole rollout).
    """
    if minibatches == 1:
        return np.arange(n)
    rng = np.random.default_rng([seed, rollout_index, epoch])
    return rng.permutation(n)


def gather_rows(arrays: dict[str, jax.Array], rows: np.ndarray, mesh: Mesh):
    """The given rows of every array of a rollout, batch-sharded (all of them: the arrays)."""
    if len(rows) == next(iter(arrays.values())).shape[0]:
        return arrays
    return _gather_jit(mesh)(arrays, jnp.asarray(rows))


@functools.lru_cache(maxsize=8)
def _gather_jit(mesh: Mesh):
    return jax.jit(
        lambda tree, idx: jax.tree.map(lambda x: x[idx], tree),
        out_shardings=parallel.batch_sharding(mesh),
    )


def load_run_params(workdir: str, model_cfg: ModelConfig, field: str, hint: str) -> Any:
    """The latest params of a finished run in `workdir`, checked against `model_cfg`'s shapes.

    Args:
      workdir: the run's directory (with checkpoints/).
      model_cfg: the model the params must fit.
      field: the config field that named `workdir`, for the errors.
      hint: what to do when the shapes differ, for the error.
    """
    ckpt = Path(workdir).absolute() / "checkpoints"
    if not ckpt.is_dir():
        raise FileNotFoundError(
            f"{field}={workdir!r} has no checkpoints/; point it at a finished run's workdir."
        )
    state, step = load_state(ckpt)
    params = jax.device_get(state["params"])
    want = jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0)))
    if jax.tree.map(jnp.shape, params) != jax.tree.map(jnp.shape, want):
        raise ValueError(f"the checkpoint of {field}={workdir!r} does not match: {hint}")
    logging.info("%s: step %d of %s.", field, step, workdir)
    return params
