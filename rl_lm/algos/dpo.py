"""DPO and its relatives (cDPO, robust, hinge, IPO): the offline preference trainer.

Each step takes a batch of preference pairs, the reference's summed response
log-probs of those pairs, and one jitted optimizer step on
`dpo_loss.loss_fn`. The reference log-probs come one of two ways
(config `dpo.reference`):

- "precompute": one pass of the frozen reference over the whole train split
  before the first step, stored as a small .npz in `dpo.ref_cache_dir` (default:
  the data dir's `ref_logprobs/`). The file name hashes everything the numbers
  depend on (dataset, split and its size on disk, tokenizer, row length, model
  config, and a fingerprint of the reference params), so resumes and reruns
  reuse it and a changed reference or dataset gets a new one. Batch rows are
  matched to table rows by a digest of their tokens and masks.
- "online": the reference params ride in the train state and the reference
  forward pass runs inside the jitted step.

Either way the state keeps "ref_params" (the starting params, `init_from` or the
fresh init): evaluation samples from the reference and measures KL to it. With
LoRA (config `lora`, `rl_lm.models.lora`) the starting params are the frozen
base the adapters train on, and that one copy (state[lora.BASE]) is the
reference: the state has no "ref_params".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from rl_lm import parallel, tasks
from rl_lm.algos import common, dpo_loss, preference_eval
from rl_lm.data import load_source, preference_batches
from rl_lm.data.storage import resolve_data_dir
from rl_lm.models import lora
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import Params, init_params, partition_specs

PAIR_KEYS = ("chosen", "chosen_mask", "rejected", "rejected_mask")
_CACHE_VERSION = 1


def pair_digests(batch: dict[str, np.ndarray]) -> list[bytes]:
    """A 16-byte content key per pair: the bytes of its four rows."""
    rows = [np.ascontiguousarray(batch[k], dtype=np.int32) for k in PAIR_KEYS]
    return [
        hashlib.blake2b(b"".join(r[i].tobytes() for r in rows), digest_size=16).digest()
        for i in range(len(rows[0]))
    ]


def params_fingerprint(params: Params) -> str:
    """A short string that changes when any parameter does.

    Per leaf: the sum, the sum of squares and a fixed pseudo-random projection,
    computed on the devices (nothing is gathered) and printed to 6 significant
    digits, so that a different reduction order on another mesh still matches.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)

    @jax.jit
    def stats(leaves):
        out = []
        for x in leaves:
            x = x.astype(jnp.float32)
            w = jnp.sin(jnp.arange(x.size, dtype=jnp.float32) * 12.9898).reshape(x.shape)
            out.append(jnp.stack([x.sum(), (x * x).sum(), (x * w).sum()]))
        return jnp.stack(out)

    rows = parallel.to_host(stats(leaves))
    text = str(treedef) + "".join(
        f"{x.shape}{x.dtype}:" + ",".join(f"{v:.6e}" for v in row)
        for x, row in zip(leaves, rows, strict=True)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ReferenceTable:
    """The reference's summed log-probs of every pair of a split, by pair digest."""

    path: Path
    index: dict[bytes, int]
    chosen: np.ndarray
    rejected: np.ndarray

    def lookup(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{"ref_chosen", "ref_rejected"} [B] float32 for the rows of `batch`."""
        try:
            rows = np.array([self.index[d] for d in pair_digests(batch)], np.int64)
        except KeyError:
            raise ValueError(
                f"a batch pair is missing from the reference log-prob table {self.path}: the "
                "dataset changed without changing its size on disk. Delete that file to "
                "recompute it."
            ) from None
        return {"ref_chosen": self.chosen[rows], "ref_rejected": self.rejected[rows]}


def reference_table(
    ref_params: Params,
    mesh: Mesh,
    model_cfg: Any,
    tokenizer: Any,
    source: Any,
    *,
    name: str,
    split: str,
    max_len: int,
    truncate: bool = False,
    batch_size: int,
    chunk_size: int,
    cache_dir: str | os.PathLike,
) -> ReferenceTable:
    """Loads, or computes and stores, the reference log-probs of a whole split.

    Every process computes the table (the forward passes are collective) and
    process 0 writes it.

    Args:
      ref_params: the frozen reference.
      mesh: the mesh `ref_params` live on.
      model_cfg: their model config.
      tokenizer: the tokenizer rows are built with.
      source: the split's data source (prompt, chosen, rejected).
      name: the dataset name; split: the split (both part of the cache key).
      max_len: row length T, as in training.
      truncate: cut rows longer than max_len, as in training.
      batch_size: pairs per forward call (a multiple of the mesh's batch shards).
      chunk_size: time chunk of the output projection.
      cache_dir: where tables live.

    Returns:
      The table.
    """
    common.check_batch_size(batch_size, mesh, 1, "dpo.ref_batch_size")
    info = source.dataset_info
    key = {
        "version": _CACHE_VERSION,
        "dataset": info.full_name,
        "name": name,
        "split": split,
        "num_examples": len(source),
        "num_bytes": int(info.splits[split].num_bytes),
        "tokenizer": repr(tokenizer),
        "max_len": max_len,
        "truncate": truncate,
        "model": dataclasses.asdict(model_cfg),
        "reference": params_fingerprint(ref_params),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = Path(cache_dir) / f"{name.replace('/', '_')}-{split}-{digest[:16]}.npz"
    if path.is_file():
        with np.load(path) as f:
            digests, chosen, rejected = f["digests"], f["chosen"], f["rejected"]
        logging.info("Reference log-probs of %s/%s loaded from %s.", name, split, path)
    else:
        digests, chosen, rejected = _compute_table(
            ref_params,
            mesh,
            model_cfg,
            tokenizer,
            source,
            max_len,
            truncate,
            batch_size,
            chunk_size,
        )
        if jax.process_index() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(
                tmp,
                digests=digests,
                chosen=chosen,
                rejected=rejected,
                key=json.dumps(key, default=str),
            )
            os.replace(tmp, path)  # Atomic: a killed run never leaves half a table.
        logging.info(
            "Reference log-probs of %s/%s (%d pairs) saved to %s.", name, split, len(chosen), path
        )
    index = {bytes(d): i for i, d in enumerate(digests)}
    return ReferenceTable(path, index, chosen, rejected)


def _compute_table(
    ref_params, mesh, model_cfg, tokenizer, source, max_len, truncate, batch_size, chunk_size
):
    # One epoch of the shuffled stream covers every pair once (plus a few repeats
    # in the last batch, which land on the same digests).
    stream = preference_batches(
        source, tokenizer, batch_size=batch_size, max_len=max_len, seed=0, truncate=truncate
    )
    sums = jax.jit(
        functools.partial(dpo_loss.pair_logprobs, cfg=model_cfg, chunk_size=chunk_size),
        out_shardings=parallel.batch_sharding(mesh),
    )
    lo, hi = parallel.process_rows(mesh, batch_size)
    digests, chosen, rejected = {}, [], []
    for _ in range(math.ceil(len(source) / batch_size)):
        batch = next(stream)
        arrays = parallel.shard_batch({k: batch[k][lo:hi] for k in PAIR_KEYS}, mesh, batch_size)
        lp_w, lp_l, _, _ = sums(ref_params, arrays)
        for d, w, l in zip(
            pair_digests(batch), parallel.to_host(lp_w), parallel.to_host(lp_l), strict=True
        ):
            if d not in digests:
                digests[d] = len(chosen)
                chosen.append(w)
                rejected.append(l)
    as_bytes = np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), 16)
    return as_bytes, np.asarray(chosen, np.float32), np.asarray(rejected, np.float32)


def _with_reference(update, model_cfg, cfg, num_microbatches, ref_key="ref_params"):
    """Wraps `update` so that the reference log-probs (of state[ref_key]) are computed
    inside the step."""
    sums = functools.partial(dpo_loss.pair_logprobs, cfg=model_cfg, chunk_size=cfg.chunk_size)

    def update_online(state, batch):
        ref = jax.lax.stop_gradient(state[ref_key])
        if num_microbatches == 1:
            lp_w, lp_l, _, _ = sums(ref, batch)
        else:  # One microbatch at a time, as the policy's forward pass runs.
            micro = common.split_microbatches(batch, num_microbatches)
            lp_w, lp_l, _, _ = jax.lax.map(lambda mb: sums(ref, mb), micro)
            # Undo the strided split: microbatch j holds rows j, j + k, ...
            lp_w, lp_l = (x.swapaxes(0, 1).reshape(-1) for x in (lp_w, lp_l))
        return update(state, {**batch, "ref_chosen": lp_w, "ref_rejected": lp_l})

    return update_online


def make_trainer(config: Any, mesh: Mesh, init_from: Params | None = None) -> common.Trainer:
    """The DPO trainer of `config` (fields: see configs/dpo_synthetic.py).

    Args:
      config: the experiment config; its `dpo` section is `dpo_loss.default_config()`.
      mesh: the device mesh.
      init_from: starting policy parameters (e.g. the SFT warm start), which are
        also the reference; None initializes from scratch (the fresh init is then
        the reference). With a `lora` section of nonzero rank they are frozen and
        LoRA adapters on them train.
    """
    cfg, data, train = config.dpo, config.data, config.train
    dpo_loss.validate(cfg)
    model_cfg = common.model_config(config.model)
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, model_cfg.vocab_size)
    common.check_batch_size(data.batch_size, mesh, train.num_microbatches, "data.batch_size")
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)

    optimizer = common.make_optimizer(config.optim, train.num_steps)
    param_specs = partition_specs(model_cfg, config.rules)
    lora_cfg = lora.from_config(config.get("lora"))
    adapter_specs = lora_cfg and lora.partition_specs(lora_cfg, model_cfg, config.rules)
    ref_key = "ref_params" if lora_cfg is None else lora.BASE

    def init_fn(rng):
        params = init_from if init_from is not None else init_params(model_cfg, rng)
        ref = {"ref_params": params} if lora_cfg is None else {}
        return common.new_policy_state(params, optimizer, rng, lora_cfg, **ref)

    init_state, abstract_state, shardings = common.sharded_init(
        mesh,
        init_fn,
        lambda a: common.state_specs(
            a, param_specs, optimizer, ("params", "ref_params"), adapter_specs
        ),
    )
    loss = functools.partial(dpo_loss.loss_fn, model_cfg=model_cfg, cfg=cfg)
    schedule = common.learning_rate_schedule(config.optim, train.num_steps)
    update = common.make_update(loss, optimizer, train.num_microbatches, schedule, lora_cfg)
    if cfg.reference == "online":
        update = _with_reference(update, model_cfg, cfg, train.num_microbatches, ref_key)
    update = common.jit_step(update, mesh, shardings)
    policy = common.jit_policy_params(mesh, param_specs, lora_cfg)
    cache_dir = cfg.ref_cache_dir or resolve_data_dir(data.data_dir) / "ref_logprobs"
    tables: dict[str, ReferenceTable] = {}

    def batches(start_step: int):
        return preference_batches(
            train_source,
            tokenizer,
            batch_size=data.batch_size,
            max_len=data.max_len,
            truncate=data.truncate,
            seed=config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def step(state, batch):
        batch = {k: batch[k] for k in PAIR_KEYS}
        if cfg.reference == "precompute":
            if "train" not in tables:  # First step of this process: load or compute.
                tables["train"] = reference_table(
                    state[ref_key],
                    mesh,
                    model_cfg,
                    tokenizer,
                    train_source,
                    name=data.name,
                    split="train",
                    max_len=data.max_len,
                    truncate=data.truncate,
                    batch_size=cfg.ref_batch_size,
                    chunk_size=cfg.chunk_size,
                    cache_dir=cache_dir,
                )
            batch.update(tables["train"].lookup(batch))
        state, metrics = update(state, parallel.shard_batch(batch, mesh, data.batch_size))
        return state, {**metrics, "tokens": 2 * data.batch_size * data.max_len}

    pair_eval = preference_eval.make_pair_eval(
        mesh,
        tokenizer,
        test_source,
        functools.partial(dpo_loss.pair_logprobs, cfg=model_cfg, chunk_size=cfg.chunk_size),
        num_examples=config.eval.num_examples,
        batch_size=config.eval.batch_size,
        max_len=data.max_len,
        truncate=data.truncate,
        seed=config.eval.seed,
    )
    sample_eval = preference_eval.make_sample_eval(
        mesh,
        model_cfg,
        tokenizer,
        test_source,
        tasks.for_config(config),
        num_examples=config.eval.num_examples,
        batch_size=config.eval.batch_size,
        max_prompt_len=data.max_prompt_len,
        max_new_tokens=config.eval.max_new_tokens,
        truncate=data.truncate,
        greedy=config.eval.greedy,
        seed=config.eval.seed,
    )
    ref_pairs: list = []

    def evaluate(state) -> dict[str, float]:
        if not ref_pairs:  # The reference never changes within a run.
            ref_pairs.append(pair_eval(state[ref_key]))
        params = policy(state)
        lp_w, lp_l, len_w, len_l = pair_eval(params)
        ref_w, ref_l = ref_pairs[0][:2]
        ratio_w, ratio_l = dpo_loss.logratios(
            lp_w, lp_l, ref_w, ref_l, len_w, len_l, cfg.length_average
        )
        h = ratio_w - ratio_l
        loss = dpo_loss.preference_loss(
            jnp.asarray(h), cfg.loss_type, cfg.beta, cfg.label_smoothing
        )
        out = {
            "pair_accuracy": float(np.mean(h > 0)),
            "margin": float(cfg.beta * np.mean(h)),
            "loss": float(jnp.mean(loss)),
        }
        if sample_eval is not None:
            out.update(sample_eval(params, state[ref_key]))
        return out

    return common.Trainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=batches,
        step=step,
        evaluate=evaluate,
    )
