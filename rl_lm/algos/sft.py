"""Supervised fine-tuning: masked next-token loss on the responses.

loss = -sum_{n,t} m[n,t] log p(x[n,t] | x[n,<t]) / sum_{n,t} m[n,t], where m is the
batch's loss_mask (1 on response tokens and their EOS; for a conversation row of a
JSONL sft dataset, on its assistant turns, rendered with the tokenizer's chat
template: see `rl_lm.data.chat.chat_tokens`). The denominator counts
the target tokens of the whole optimizer batch, so microbatching and sharding
leave the gradient unchanged.

With `data.pack`, each step's examples are packed several to a row
(`rl_lm.data.packing`): the forward pass keeps segments apart, and the loss
sums over the same target tokens, so it and its gradient equal the unpacked
step's (tests/algos/test_sft_packing.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rl_lm import parallel
from rl_lm.algos import common, evaluation
from rl_lm.data import chat, load_source, sft_batches
from rl_lm.models import lora
from rl_lm.models.config import ModelConfig
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import Params, forward, init_params, partition_specs
from rl_lm.sampling.logprobs import hidden_logprobs, token_logprobs


def _packed_logprobs(params, cfg, batch, chunk_size):
    """log p(x[t] | earlier tokens of its segment); 0 at each segment's first token."""
    tokens_NxT, positions_NxT = batch["tokens"], batch["positions"]
    hidden_NxTxD, _ = forward(
        params,
        tokens_NxT,
        cfg,
        positions_NxT=positions_NxT,
        segment_ids_NxT=batch["segment_ids"],
    )
    logp_NxT = hidden_logprobs(
        params, cfg, hidden_NxTxD[:, :-1], tokens_NxT[:, 1:], chunk_size=chunk_size
    )
    logp_NxT = jnp.pad(logp_NxT, ((0, 0), (1, 0)))
    return jnp.where(positions_NxT > 0, logp_NxT, 0.0)


def loss_fn(
    params: Params, batch: dict[str, jax.Array], cfg: ModelConfig, *, chunk_size: int = 128
) -> tuple[common.Ratio, dict[str, common.Ratio]]:
    """Masked next-token negative log-likelihood as a (numerator, denominator) pair.

    Args:
      params: model parameters.
      batch: "tokens" [N, T] and "loss_mask" [N, T] (1 where tokens[t] is a target
        predicted from tokens[<t]); packed rows also hold "segment_ids" and
        "positions" [N, T] (`rl_lm.data.packing.pack`), and then the prediction
        is from the earlier tokens of tokens[t]'s own segment.
      cfg: the model config.
      chunk_size: time chunk of the output projection (full [N, T, V] logits are
        never formed).

    Returns:
      ((sum of target-token NLL, number of target tokens), metrics), where metrics
      holds "target_tokens" per row as (count, rows) (rows of the batch: packed
      rows hold several examples).
    """
    if "segment_ids" in batch:
        logp_NxT = _packed_logprobs(params, cfg, batch, chunk_size)
    else:
        logp_NxT = token_logprobs(params, cfg, batch["tokens"], chunk_size=chunk_size)
    m_NxT = batch["loss_mask"].astype(jnp.float32)
    num, den = -jnp.sum(logp_NxT * m_NxT), jnp.sum(m_NxT)
    rows = jnp.asarray(m_NxT.shape[0], jnp.float32)
    return (num, den), {"target_tokens": (den, rows)}


def make_trainer(config: Any, mesh: Mesh, init_from: Params | None = None) -> common.Trainer:
    """The SFT trainer of `config` (see configs/sft_arith.py for the fields).

    `init_from` (e.g. a Hugging Face checkpoint's params) replaces the random init.
    With a `lora` section of nonzero rank, those params are frozen and only LoRA
    adapters on them train (`rl_lm.models.lora`).
    """
    cfg = common.model_config(config.model)
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, cfg.vocab_size)
    data, train = config.data, config.train
    if data.pack and data.pack_rows is None:
        raise ValueError(
            "data.pack=True needs data.pack_rows, the rows of max_len that hold each "
            "step's data.batch_size examples (see configs/sft_arith.py)."
        )
    rows = data.pack_rows if data.pack else data.batch_size
    common.check_batch_size(
        rows, mesh, train.num_microbatches, "data.pack_rows" if data.pack else "data.batch_size"
    )
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)
    if "messages" in train_source[0]:  # Conversations: fail now, not at the first batch.
        chat.require_template(tokenizer)

    optimizer = common.make_optimizer(config.optim, train.num_steps)
    param_specs = partition_specs(cfg, config.rules)
    lora_cfg = lora.from_config(config.get("lora"))
    adapter_specs = lora_cfg and lora.partition_specs(lora_cfg, cfg, config.rules)

    def init_fn(rng):
        params = (
            init_from if init_from is not None else init_params(cfg, jax.random.fold_in(rng, 0))
        )
        return common.new_policy_state(params, optimizer, rng, lora_cfg)

    init_state, abstract_state, shardings = common.sharded_init(
        mesh,
        init_fn,
        lambda a: common.state_specs(a, param_specs, optimizer, adapter_specs=adapter_specs),
    )
    loss = functools.partial(loss_fn, cfg=cfg, chunk_size=config.sft.chunk_size)
    schedule = common.learning_rate_schedule(config.optim, train.num_steps)
    update = common.make_update(loss, optimizer, train.num_microbatches, schedule, lora_cfg)
    update = common.jit_step(update, mesh, shardings)
    policy = common.jit_policy_params(mesh, param_specs, lora_cfg)

    def batches(start_step: int):
        return sft_batches(
            train_source,
            tokenizer,
            batch_size=data.batch_size,
            max_len=data.max_len,
            seed=config.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            pack_rows=rows if data.pack else None,
        )

    def step(state, batch):
        arrays = parallel.shard_batch(batch, mesh, rows)
        state, metrics = update(state, arrays)
        return state, {**metrics, "tokens": rows * data.max_len}

    heldout = evaluation.make_exact_match_eval(
        mesh,
        cfg,
        tokenizer,
        test_source,
        num_examples=config.eval.num_examples,
        batch_size=config.eval.batch_size,
        max_prompt_len=data.max_prompt_len,
        max_new_tokens=config.eval.max_new_tokens,
        seed=config.eval.seed,
        answer=config.eval.get("answer", "any"),
    )
    return common.Trainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=batches,
        step=step,
        evaluate=lambda state: heldout(policy(state)),
    )
