"""Bradley-Terry reward model: a transformer trunk plus a scalar head.

The reward of a row is the scalar head read at its last real token (the EOS of
a preference row, the last response token of a sampled one). Each pair's loss
(Bradley-Terry, with an optional margin and centering term) is

    -log sigmoid(r_w - r_l - margin) + center_coef * (r_w + r_l)^2,

the second term pinning the rewards' free offset near zero (Eisenstein et al.
2023; TRL's center_rewards_coefficient). `score` and `score_responses` are the
pure scoring functions PPO reuses as its learned reward.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel
from rl_lm.algos import common, preference_eval
from rl_lm.data import load_source, preference_batches
from rl_lm.models.config import ModelConfig
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import (
    Params,
    init_params,
    last_index,
    last_token_score,
    partition_specs,
)

# The reward of each row: the scalar head at its last real token.
score = last_token_score


def default_config() -> ml_collections.ConfigDict:
    """Reward-model loss options."""
    return ml_collections.ConfigDict({"margin": 0.0, "center_coef": 0.0})


def bradley_terry_loss(
    r_w: jax.Array, r_l: jax.Array, margin: float = 0.0, center_coef: float = 0.0
) -> jax.Array:
    """Per-pair loss -log sigmoid(r_w - r_l - margin) + center_coef * (r_w + r_l)^2."""
    return -jax.nn.log_sigmoid(r_w - r_l - margin) + center_coef * jnp.square(r_w + r_l)


def score_responses(
    params: Params,
    cfg: ModelConfig,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    response_NxR: jax.Array,
    response_mask_NxR: jax.Array,
) -> jax.Array:
    """Rewards of sampled responses, in the sampler's layout.

    Rows are prompt-major: response row b * G + g follows prompt b (G = N // B);
    a `SampleOutput`'s repeated prompts work with G = 1. The reward is read at
    the last response token (the prompt's last token for an empty response).

    Returns:
      r_N, float32.
    """
    b, n = prompt_BxP.shape[0], response_NxR.shape[0]
    if n % b:
        raise ValueError(f"{n} response rows is not a multiple of {b} prompts.")
    g = n // b
    tokens_NxT = jnp.concatenate([jnp.repeat(prompt_BxP, g, axis=0), response_NxR], axis=1)
    mask_NxT = jnp.concatenate([jnp.repeat(prompt_mask_BxP, g, axis=0), response_mask_NxR], axis=1)
    return score(params, cfg, tokens_NxT, mask_NxT)


def pair_scores(
    params: Params, batch: dict[str, jax.Array], cfg: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """Rewards (r_chosen_B, r_rejected_B) of preference rows (`preference_batches`).

    A right-padded row's real tokens run up to its last loss-mask entry (EOS).
    """
    b, t = batch["chosen"].shape
    tokens_NxT = jnp.stack([batch["chosen"], batch["rejected"]], axis=1).reshape(2 * b, t)
    m_NxT = jnp.stack([batch["chosen_mask"], batch["rejected_mask"]], axis=1).reshape(2 * b, t)
    real_NxT = jnp.arange(t)[None, :] <= last_index(m_NxT)[:, None]
    r_Bx2 = score(params, cfg, tokens_NxT, real_NxT).reshape(b, 2)
    return r_Bx2[:, 0], r_Bx2[:, 1]


def loss_fn(
    params: Params, batch: dict[str, jax.Array], model_cfg: ModelConfig, cfg: Any
) -> tuple[tuple[jax.Array, jax.Array], dict[str, tuple[jax.Array, jax.Array]]]:
    """Bradley-Terry loss of one (micro)batch of pairs.

    Returns:
      ((sum of pair losses, number of pairs), metrics): "accuracy" (r_w > r_l),
      "margin" (r_w - r_l) and "reward" ((r_w + r_l) / 2), each a (sum, pairs) pair.
    """
    r_w, r_l = pair_scores(params, batch, model_cfg)
    loss_B = bradley_terry_loss(r_w, r_l, cfg.margin, cfg.center_coef)
    pairs = jnp.asarray(r_w.shape[0], jnp.float32)
    sums = {
        "accuracy": (r_w > r_l).astype(jnp.float32),
        "margin": r_w - r_l,
        "reward": 0.5 * (r_w + r_l),
    }
    metrics = {k: (jnp.sum(jax.lax.stop_gradient(v)), pairs) for k, v in sums.items()}
    return (jnp.sum(loss_B), pairs), metrics


def init_from_trunk(init_from: Params, cfg: ModelConfig, rng: jax.Array) -> Params:
    """Reward-model params with every trunk param copied from `init_from` (e.g. SFT).

    The scalar head is fresh (and the output projection too, if `cfg` has one and
    `init_from` does not); everything else must match `cfg`'s shapes.
    """
    fresh = init_params(cfg, rng)
    copied = {k: v for k, v in init_from.items() if k in fresh and k != "score"}
    missing = sorted(k for k in ("embed", "layers", "final_norm") if k not in copied)
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)
    mismatch = [k for k, v in copied.items() if shapes(v) != shapes(fresh[k])]
    if missing or mismatch:
        raise ValueError(
            f"init_from does not fit the reward model's trunk (missing {missing}, shapes "
            f"differ in {mismatch}); give the reward model the SFT model's shape fields "
            "(dim, num_layers, heads, mlp_dim, vocab_size)."
        )
    cast = lambda new, old: new.astype(old.dtype)
    return {**fresh, **{k: jax.tree.map(cast, v, fresh[k]) for k, v in copied.items()}}


def make_trainer(config: Any, mesh: Mesh, init_from: Params | None = None) -> common.Trainer:
    """The reward-model trainer of `config` (fields: see configs/rm_synthetic.py).

    Args:
      config: the experiment config; its `rm` section is `default_config()`.
      mesh: the device mesh.
      init_from: params whose trunk starts the reward model (e.g. the SFT warm
        start); None initializes everything from scratch.
    """
    cfg, data, train = config.rm, config.data, config.train
    model_cfg = common.model_config(config.model)
    if not model_cfg.scalar_head:
        raise ValueError("a reward model needs model.scalar_head=True (and lm_head=False).")
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, model_cfg.vocab_size)
    common.check_batch_size(data.batch_size, mesh, train.num_microbatches, "data.batch_size")
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)

    optimizer = common.make_optimizer(config.optim, train.num_steps)
    param_specs = partition_specs(model_cfg, config.rules)

    def init_fn(rng):
        key = jax.random.fold_in(rng, 0)
        if init_from is None:
            return common.new_state(init_params(model_cfg, key), optimizer, rng)
        return common.new_state(init_from_trunk(init_from, model_cfg, key), optimizer, rng)

    init_state, abstract_state, shardings = common.sharded_init(
        mesh, init_fn, lambda a: common.state_specs(a, param_specs, optimizer)
    )
    loss = functools.partial(loss_fn, model_cfg=model_cfg, cfg=cfg)
    schedule = common.learning_rate_schedule(config.optim, train.num_steps)
    update = common.jit_step(
        common.make_update(loss, optimizer, train.num_microbatches, schedule), mesh, shardings
    )

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
        state, metrics = update(state, parallel.shard_batch(batch, mesh, data.batch_size))
        return state, {**metrics, "tokens": 2 * data.batch_size * data.max_len}

    pair_eval = preference_eval.make_pair_eval(
        mesh,
        tokenizer,
        test_source,
        functools.partial(pair_scores, cfg=model_cfg),
        num_examples=config.eval.num_examples,
        batch_size=config.eval.batch_size,
        max_len=data.max_len,
        truncate=data.truncate,
        seed=config.eval.seed,
    )

    def evaluate(state) -> dict[str, float]:
        r_w, r_l = pair_eval(state["params"])
        loss = bradley_terry_loss(jnp.asarray(r_w), jnp.asarray(r_l), cfg.margin, cfg.center_coef)
        return {
            "accuracy": float(np.mean(r_w > r_l)),
            "margin": float(np.mean(r_w - r_l)),
            "loss": float(jnp.mean(loss)),
        }

    return common.Trainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=batches,
        step=step,
        evaluate=evaluate,
    )
