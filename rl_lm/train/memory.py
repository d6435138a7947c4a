"""Per-device memory plan of a config on a mesh, computed before anything is allocated.

`plan(config, num_devices, device_bytes)` adds up what one device holds:

- the train state: parameters, AdamW moments, frozen copies (the reference of
  GRPO/PPO/DPO/Nash, a reward model), exact per-device bytes of the shapes
  `jax.eval_shape` gives, split by the config's sharding rules on the mesh
  (fsdp and tensor split parameters; ceil division, as XLA pads);
- the update's transients: float32 gradients (twice with microbatches: the
  accumulator and one microbatch's), the all-gathered weights in use when
  parameters are sharded, and activations of one microbatch under
  `model.remat` ("none" keeps every layer's intermediates, "dots" its matmul
  outputs, "full" only its input; the layer being recomputed or
  differentiated is whole), plus one time chunk of float32 logits;
- sampling's transients: the KV cache of rollouts (or of the greedy
  evaluation) and the decoder's unstacked copy of the weights.

Per-row figures (activations, logits, KV cache) are split over the data axis
only: the batch is sharded over data and fsdp, but with the parameters split
along "embed" over fsdp and no sharding constraint on the activations, the
compiled step all-gathers the batch over fsdp (measured: its temporaries grow
with fsdp at a fixed number of rows per device). The peak is the
state plus the larger of the update and sampling, which never overlap.
Activation figures are estimates (XLA fuses and reorders); state figures are
exact.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from rl_lm import parallel
from rl_lm.algos import common, rm_rewards
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import abstract_params, partition_specs

GIB = 2**30
STATE, UPDATE, SAMPLING = "state", "update", "sampling"
# The section and microbatch field of each algorithm's rollouts or batches.
_RL = {"grpo": "grpo", "ppo": "ppo", "nash_mp": "nash", "nash_md": "nash", "online_ipo": "nash"}
_PAIRS = ("dpo", "reward_model")  # Two sequences (chosen, rejected) per example.


@dataclasses.dataclass(frozen=True)
class Line:
    """One entry of the plan: `bytes` per device during `phase`."""

    phase: str
    name: str
    bytes: int
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The lines of a plan, the mesh it assumes and the device's capacity."""

    mesh: dict[str, int]
    lines: tuple[Line, ...]
    device_bytes: int

    def phase(self, phase: str) -> int:
        return sum(line.bytes for line in self.lines if line.phase == phase)

    def get(self, name: str) -> int:
        return sum(line.bytes for line in self.lines if line.name == name)

    @property
    def total(self) -> int:
        return self.phase(STATE) + max(self.phase(UPDATE), self.phase(SAMPLING))

    @property
    def fits(self) -> bool:
        return self.total <= self.device_bytes


def shard_bytes(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec, axes: Mapping) -> int:
    """Bytes of the largest shard of an array of `shape` split by `spec` over mesh `axes`."""
    dims = list(shape)
    for i, entry in enumerate(tuple(spec)[: len(dims)]):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        ways = math.prod(int(axes[n]) for n in names)
        dims[i] = -(-dims[i] // ways)
    return math.prod(dims) * np.dtype(dtype).itemsize


def tree_bytes(abstract: Any, specs: Any, axes: Mapping) -> int:
    """Per-device bytes of a tree of ShapeDtypeStructs under a matching tree of specs."""
    leaves = jax.tree.leaves(abstract)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return sum(
        shard_bytes(a.shape, a.dtype, s, axes) for a, s in zip(leaves, spec_leaves, strict=True)
    )


def _elements(cfg: ModelConfig, names: tuple[str, ...] | None = None) -> int:
    """Parameters of `cfg` (only the top-level entries `names` when given)."""
    tree = abstract_params(cfg)
    if names is not None:
        tree = {k: v for k, v in tree.items() if k in names}
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What an algorithm holds and computes, read off its config."""

    trainable: dict[str, ModelConfig]  # One model, or {"policy", "critic"} for PPO.
    frozen: dict[str, ModelConfig]  # State entries that are parameter copies.
    rows: int  # Sequences per optimizer update (all microbatches).
    seq_len: int
    microbatches: int
    microbatch_field: str
    chunk: int  # Time chunk of the output projection.
    sample_rows: int  # Rows the sampler decodes at once.
    sample_slots: int
    sample_models: int  # Caches kept at once (two for Nash's mixture).


def _shape(config: Any) -> _Shape:
    algo, data = config.algo, config.data
    model = common.model_config(config.model)
    ev = config.get("eval")
    eval_rows = int(ev.batch_size) if ev is not None and "batch_size" in ev else 0
    eval_new = int(ev.max_new_tokens) if ev is not None and "max_new_tokens" in ev else 0
    prompt_len = int(data.get("max_prompt_len", 0) or 0)
    if algo in _RL:
        sec = config[_RL[algo]]
        g, b = int(sec.num_generations), int(data.batch_size)
        rows = b * g // (2 if algo == "online_ipo" else 1) // int(sec.get("num_minibatches", 1))
        seq = prompt_len + int(sec.max_new_tokens)
        trainable, frozen = {"params": model}, {}
        if algo == "grpo":
            if float(sec.beta) > 0 and sec.get("kl_placement", "loss") != "none":
                frozen["ref_params"] = model
            rm = rm_rewards.model_config(config, sec.reward_source, "grpo.reward_source")
        elif algo == "ppo":
            policy = model.replace(scalar_head=sec.critic == "value_head")
            rm = rm_rewards.model_config(config, sec.reward.source, "ppo.reward.source")
            trainable = {"policy": policy}
            if sec.critic == "separate":
                critic = model.replace(lm_head=False, scalar_head=True, tie_embeddings=False)
                trainable["critic"] = rm or critic
            frozen["ref_params"] = policy
        else:
            keys = ("ref_params", "anchor_params", "half_params")
            frozen = {k: model for k in keys[: 3 if algo == "nash_mp" else 1]}
            rm = None
        if rm is not None:
            frozen["rm_params"] = rm
        return _Shape(
            trainable,
            frozen,
            rows,
            seq,
            int(sec.num_microbatches),
            f"{_RL[algo]}.num_microbatches",
            int(sec.get("logprob_chunk", 128)),
            b * g,
            seq - 1,
            2 if algo == "nash_mp" else 1,
        )
    chunk = int(config.get(algo, {}).get("chunk_size", 128)) if algo in ("sft", "dpo") else 128
    frozen = {"ref_params": model} if algo == "dpo" else {}
    return _Shape(
        {"params": model},
        frozen,
        int(data.batch_size) * (2 if algo in _PAIRS else 1),
        int(data.max_len),
        int(config.train.num_microbatches),
        "train.num_microbatches",
        chunk,
        eval_rows if model.lm_head else 0,
        max(prompt_len + eval_new - 1, 0),
        1,
    )


def _layer_bytes(cfg: ModelConfig, rows: int, t: int, tensor: int) -> dict[str, int]:
    """Activation bytes of one layer of `rows` x `t` tokens: what each remat policy saves.

    "none" is every intermediate (float32 where the norms and RoPE compute in
    float32, the attention scores and probabilities); "dots" the projections'
    outputs; "full" the layer's input.
    """
    b = np.dtype(cfg.dtype).itemsize
    d, f, dh = cfg.dim, cfg.mlp_dim // tensor, cfg.head_dim
    h, k = -(-cfg.num_heads // tensor), -(-cfg.num_kv_heads // tensor)
    full = b * d
    dots = full + b * ((h + 2 * k) * dh + 2 * d + 2 * f)
    none = dots + b * (2 * d + (h + k) * dh + h * dh + 2 * f) + 4 * (2 * d + (h + k) * dh)
    none += h * t * (4 + b) + t  # Scores, probabilities, the mask.
    return {p: rows * t * v for p, v in (("none", none), ("dots", dots), ("full", full))}


def plan(config: Any, num_devices: int, device_bytes: int) -> Plan:
    """The per-device memory plan of `config` on `num_devices` devices of `device_bytes`.

    Args:
      config: an experiment config (overrides and init.hf_dir already applied).
      num_devices: devices of the mesh (`config.mesh` is resolved against them).
      device_bytes: memory of one device.

    Raises:
      ValueError: for a mesh that does not cover the devices (see
        `parallel.mesh_shape`).
    """
    axes = dict(zip(parallel.AXES, parallel.mesh_shape(config.mesh, num_devices), strict=True))
    s = _shape(config)
    optimizer = common.make_optimizer(config.optim, int(config.train.num_steps))
    specs = {k: partition_specs(c, config.rules) for k, c in {**s.trainable, **s.frozen}.items()}
    # The train state exactly as `common.new_state` builds it (one trainable tree).
    params = {k: abstract_params(c) for k, c in s.trainable.items()}
    params_specs = {k: specs[k] for k in s.trainable}
    if list(params) == ["params"]:
        params, params_specs = params["params"], params_specs["params"]
    state = jax.eval_shape(
        lambda: common.new_state(
            jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), params),
            optimizer,
            jax.random.PRNGKey(0),
        )
    )
    state_specs = common.state_specs(state, params_specs, optimizer)
    rest = {k: v for k, v in state.items() if k not in ("params", "opt_state")}
    param_b = tree_bytes(state["params"], state_specs["params"], axes)
    lines = [
        Line(STATE, "params", param_b, f"{_count(s.trainable)} trainable, {_dtypes(s)}"),
        Line(STATE, "optimizer", tree_bytes(state["opt_state"], state_specs["opt_state"], axes)),
        Line(
            STATE,
            "step, rng",
            tree_bytes(rest, jax.tree.map(lambda _: PartitionSpec(), rest), axes),
        ),
    ]
    for key, cfg in s.frozen.items():
        lines.append(Line(STATE, key, tree_bytes(abstract_params(cfg), specs[key], axes)))

    # The update: gradients, gathered weights, one microbatch's activations.
    grad_b = tree_bytes(
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, np.float32), state["params"]),
        state_specs["params"],
        axes,
    )
    copies = 2 if s.microbatches > 1 else 1
    lines.append(Line(UPDATE, "gradients", copies * grad_b, f"float32 x{copies}"))
    models = list(s.trainable.values())
    if axes["fsdp"] * axes["tensor"] > 1:
        gathered = 0
        for cfg in models:
            b = np.dtype(cfg.dtype).itemsize
            outer = _elements(cfg, ("embed", "lm_head", "score", "final_norm"))
            layer = (_elements(cfg) - outer) // cfg.num_layers
            gathered += outer * b + layer * (b + 4)
        lines.append(Line(UPDATE, "gathered weights", gathered, "embedding + one layer"))
    rows = -(-s.rows // s.microbatches // axes["data"])
    for cfg in models:
        per_layer = _layer_bytes(cfg, rows, s.seq_len, axes["tensor"])
        acts = cfg.num_layers * per_layer[cfg.remat] + per_layer["none"]
        acts += 3 * rows * s.seq_len * cfg.dim * np.dtype(cfg.dtype).itemsize  # Embed, norm.
        note = f"{rows} rows x {s.seq_len} tokens, remat={cfg.remat}"
        lines.append(Line(UPDATE, "activations", acts, note))
        if cfg.lm_head:
            c = min(s.chunk, s.seq_len)
            vocab = -(-cfg.vocab_size // axes["tensor"])
            lines.append(Line(UPDATE, "logits", 3 * rows * c * vocab * 4, f"chunk of {c}"))

    # Sampling: KV caches and the decoder's unstacked weights.
    if s.sample_rows:
        policy = models[0]
        n = -(-s.sample_rows // axes["data"])
        kv_heads = -(-policy.num_kv_heads // axes["tensor"])
        kv = 2 * policy.num_layers * n * s.sample_slots * kv_heads * policy.head_dim
        kv *= np.dtype(policy.dtype).itemsize * s.sample_models
        lines.append(Line(SAMPLING, "kv cache", kv, f"{n} rows x {s.sample_slots} slots"))
        param_one = tree_bytes(abstract_params(policy), specs[next(iter(s.trainable))], axes)
        lines.append(Line(SAMPLING, "decode weights", param_one * s.sample_models, "unstacked"))
    return Plan(axes, tuple(lines), device_bytes)


def _count(models: Mapping[str, ModelConfig]) -> str:
    n = sum(c.num_params() for c in models.values())
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _dtypes(s: _Shape) -> str:
    cfg = next(iter(s.trainable.values()))
    return f"{cfg.param_dtype} params, {cfg.dtype} compute"


def _gib(n: int, unit: int = GIB) -> str:
    return f"{n / unit:8.2f} {'GiB' if unit == GIB else 'MiB'}"


def format_plan(p: Plan) -> str:
    """The plan as a table: one line per entry, phase totals, the peak against capacity."""
    mesh = " x ".join(f"{a}={n}" for a, n in p.mesh.items())
    out = [f"mesh {mesh}, {p.device_bytes / GIB:.1f} GiB per device"]
    unit = GIB if p.total >= GIB // 4 else 2**20  # Small plans in MiB.
    for phase in (STATE, UPDATE, SAMPLING):
        for line in (x for x in p.lines if x.phase == phase):
            out.append(
                f"  {phase:9s} {line.name:17s} {_gib(line.bytes, unit)}  {line.note}".rstrip()
            )
        out.append(f"  {phase:9s} {'= total':17s} {_gib(p.phase(phase), unit)}")
    verdict = "fits" if p.fits else "DOES NOT FIT"
    out.append(
        f"  peak      state + max(update, sampling) {_gib(p.total, unit).strip()}: {verdict}"
    )
    return "\n".join(out)


def _variant(config: Any, changes: Mapping[str, Any]) -> Any:
    config = copy.deepcopy(config)
    with config.unlocked():
        for path, value in changes.items():
            section, _, field = path.rpartition(".")
            config[section][field] = value
    return config


def advice(config: Any, num_devices: int, device_bytes: int) -> str | None:
    """None when the config fits; else one line naming the first change that makes it fit.

    Tried in order: more fsdp (data=-1), model.remat=full, more microbatches,
    a smaller batch (data.batch_size halved, at most 3 times).
    """
    base = plan(config, num_devices, device_bytes)
    if base.fits:
        return None
    s = _shape(config)
    tries = []
    fsdp = base.mesh["fsdp"]
    for ways in (n for n in range(fsdp + 1, num_devices + 1) if num_devices % n == 0):
        tries.append({"mesh.fsdp": ways, "mesh.data": -1})
    remat = {} if config.model.remat == "full" else {"model.remat": "full"}
    if remat:
        tries.append(remat)
    shards = math.prod(base.mesh[a] for a in parallel.BATCH_AXES)
    micro, batch = s.microbatches, int(config.data.batch_size)
    for k in (micro * 2, micro * 4, micro * 8):
        if s.rows % (k * shards) == 0:
            tries.append({**remat, s.microbatch_field: k})
    for half in (batch // 2, batch // 4, batch // 8):
        if half and half % shards == 0:
            tries.append({**remat, "data.batch_size": half})
    head = f"needs {base.total / GIB:.1f} GiB per device, {device_bytes / GIB:.1f} available"
    for changes in tries:
        try:
            p = plan(_variant(config, changes), num_devices, device_bytes)
        except ValueError:
            continue
        if p.fits:
            flags = " ".join(f"--config.{k}={v}" for k, v in changes.items())
            return f"{head}: {flags} brings it to {p.total / GIB:.1f} GiB."
    return (
        f"{head}: fsdp over all devices, remat=full, more microbatches and smaller "
        "batches are not enough; use more or larger devices."
    )
