"""A discriminative process reward model: a transformer trunk plus a scalar head.

The head's logit z_s at the last token of step s (`core.steps.segment_steps`:
the delimiter ending the step, or the final token / EOS of the last step)
scores that step; the model is trained with binary cross-entropy against step
labels y_s in {0, 1}:

    loss = sum_{n,s} m_ns [-y_ns log sigmoid(z_ns) - (1 - y_ns) log sigmoid(-z_ns)] / sum m,

m the step mask, summed over the whole optimizer batch (exact under
microbatching and sharding). Labels come from the programmatic checker
(`rewards.steps.strict_labels`) applied on the host to each row's decoded
prompt and response, so any dataset of chain prompts and responses (e.g.
"chain/prm": canonical and corrupted solutions) trains it. `score_responses`
is the pure scoring function an RL algorithm reuses as its process reward.

Two heads, chosen by the model config:
- scalar (scalar_head=True): z_s is the scalar head at step s's last token;
- token (lm_head=True, scalar_head=False): the LM head read as an on-track
  classifier. The probability that token t keeps an on-track prefix on track
  is the model's own p_t = p(token t | tokens before it), i.e. its logit is
  q_t = logit(p_t), and P(steps 1..s right) = prod_{t <= end of s} p_t, the
  likelihood of the prefix, so z_s = log P_s - log(1 - P_s). The BCE is then
  likelihood on on-track tokens and unlikelihood, -log(1 - p_t), on the first
  slip. Started from the SFT model, it begins as the policy's own next-token
  probabilities, which already tell its slips apart. The softmax matters:
  with raw logits as q_t, tokens the PRM never saw (e.g. an EOS after one
  character) kept whatever logit they had, and GRPO learned to stop after
  one character (README, Results).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel
from rl_lm.algos import common, reward_model
from rl_lm.core import steps as core_steps
from rl_lm.data import load_source, sft_batches
from rl_lm.models.config import ModelConfig
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import (
    Params,
    forward,
    init_params,
    logits,
    partition_specs,
    scalar,
)
from rl_lm.rewards import steps as step_checks

# A token head's p_t and P_s are capped just below 1, so that their logits stay finite.
_LOG_P_MAX = -1e-7


def default_config() -> ml_collections.ConfigDict:
    """PRM options: step slots S, the step delimiter (one token), and `token_weight`,
    the weight of the dense on-track loss (`token_labels`; 0: step labels only)."""
    return ml_collections.ConfigDict({"max_steps": 8, "delimiter": "\n", "token_weight": 0.0})


def bce_loss(
    logits_NxS: jax.Array, labels_NxS: jax.Array, step_mask_NxS: jax.Array
) -> common.Ratio:
    """(sum of step BCE losses, number of steps) over the existing steps."""
    y_NxS = labels_NxS.astype(jnp.float32)
    bce_NxS = -y_NxS * jax.nn.log_sigmoid(logits_NxS) - (1 - y_NxS) * jax.nn.log_sigmoid(
        -logits_NxS
    )
    m_NxS = step_mask_NxS.astype(jnp.float32)
    return jnp.sum(jnp.where(step_mask_NxS, bce_NxS, 0)), jnp.sum(m_NxS)


def step_logits(
    params: Params,
    cfg: ModelConfig,
    tokens_NxT: jax.Array,
    real_NxT: jax.Array,
    response_NxT: jax.Array,
    *,
    delimiter_ids: tuple[int, ...],
    max_steps: int,
    eos_id: int | None,
) -> tuple[jax.Array, core_steps.Steps]:
    """The head's logit at every step end of the response part of each row.

    Args:
      params: PRM parameters (a scalar or a token head, see the module docstring).
      cfg: the model config.
      tokens_NxT: prompt + response token ids, padded on either side.
      real_NxT: 1 on real tokens (attended to).
      response_NxT: 1 on response tokens (and their EOS): where steps are cut.
      delimiter_ids: ids that end a step (static).
      max_steps: S (static).
      eos_id: EOS id, merged into a trailing delimiter's step (static).

    Returns:
      (logits_NxS, 0 on absent steps; the `Steps` of the responses).
    """
    z_NxT = token_logits(params, cfg, tokens_NxT, real_NxT)
    st = core_steps.segment_steps(tokens_NxT, response_NxT, delimiter_ids, max_steps, eos_id)
    return _step_ends(z_NxT, response_NxT, st, token_head=not cfg.scalar_head), st


def token_logits(
    params: Params, cfg: ModelConfig, tokens_NxT: jax.Array, real_NxT: jax.Array
) -> jax.Array:
    """Per-token logits [N, T]: the scalar head's z_t, or for a token head
    q_t = logit p(token t | tokens < t) from the LM head (0 at t = 0)."""
    if not (cfg.scalar_head or cfg.lm_head):
        raise ValueError("a PRM needs a model with scalar_head=True or lm_head=True.")
    hidden_NxTxD, _ = forward(params, tokens_NxT, cfg, mask_NxT=real_NxT)
    if cfg.scalar_head:
        return scalar(params, hidden_NxTxD)
    log_p_NxTxV = jax.nn.log_softmax(logits(params, hidden_NxTxD[:, :-1], cfg), axis=-1)
    log_p_NxT = jnp.take_along_axis(log_p_NxTxV, tokens_NxT[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(_logit_of_log(log_p_NxT), ((0, 0), (1, 0)))  # sigmoid(q_t) = p_t


def _logit_of_log(log_p: jax.Array) -> jax.Array:
    """logit(p) = log p - log(1 - p) from log p, with p capped just below 1."""
    log_p = jnp.minimum(log_p, _LOG_P_MAX)
    return log_p - jnp.log(-jnp.expm1(log_p))


def _step_ends(z_NxT: jax.Array, response_NxT: jax.Array, st: core_steps.Steps, token_head: bool):
    """Step logits: z at each step's end, or for a token head logit(P_s) from the
    running sum of log sigmoid(q_t) over the response."""
    if not token_head:
        return core_steps.values_at_step_ends(z_NxT, st.step_end_NxS, st.step_mask_NxS)
    log_on_NxT = jnp.where(response_NxT > 0, jax.nn.log_sigmoid(z_NxT), 0.0)
    log_p_NxS = core_steps.values_at_step_ends(
        jnp.cumsum(log_on_NxT, axis=1), st.step_end_NxS, st.step_mask_NxS
    )
    return jnp.where(st.step_mask_NxS, _logit_of_log(log_p_NxS), 0.0)


def score_responses(
    params: Params,
    cfg: ModelConfig,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    response_NxR: jax.Array,
    response_mask_NxR: jax.Array,
    **step_args,
) -> tuple[jax.Array, jax.Array]:
    """Step probabilities sigmoid(z) of sampled responses, in the sampler's layout.

    Rows are prompt-major (response row b * G + g follows prompt b).

    Args:
      step_args: delimiter_ids, max_steps, eos_id, as in `step_logits`.

    Returns:
      (p_NxS in (0, 1), 0 on absent steps; step_mask_NxS).
    """
    b, n = prompt_BxP.shape[0], response_NxR.shape[0]
    if n % b:
        raise ValueError(f"{n} response rows is not a multiple of {b} prompts.")
    g = n // b
    tokens = jnp.concatenate([jnp.repeat(prompt_BxP, g, axis=0), response_NxR], axis=1)
    prompt_mask = jnp.repeat(prompt_mask_BxP, g, axis=0)
    real = jnp.concatenate([prompt_mask, response_mask_NxR], axis=1)
    response = jnp.concatenate([jnp.zeros_like(prompt_mask), response_mask_NxR], axis=1)
    z_NxS, st = step_logits(params, cfg, tokens, real, response, **step_args)
    return jnp.where(st.step_mask_NxS, jax.nn.sigmoid(z_NxS), 0), st.step_mask_NxS


def _real_tokens(m_NxT: jax.Array) -> jax.Array:
    """1 up to each right-padded row's last loss-mask entry (its EOS)."""
    t = m_NxT.shape[1]
    last_N = t - 1 - jnp.argmax(jnp.flip(m_NxT > 0, axis=1), axis=1)
    return jnp.arange(t)[None, :] <= last_N[:, None]


def loss_fn(
    params: Params,
    batch: dict[str, jax.Array],
    model_cfg: ModelConfig,
    token_weight: float = 0.0,
    **step_args,
) -> tuple[common.Ratio, dict[str, common.Ratio]]:
    """Step BCE of one (micro)batch of `with_step_labels` rows.

    With token_weight w > 0 the batch also carries "token_labels" / "token_mask"
    (`token_labels`) and the loss adds w times the summed BCE of z_t at every
    response token against them (for a token head, of q_t up to and including the
    first off-track token, since q_t is conditional on an on-track prefix):
    (sum of step BCE + w * sum of token BCE) / number of steps, a sum over rows,
    so exact under microbatching.

    Returns:
      ((loss numerator, number of steps), metrics): "step_accuracy" ((z > 0) == y),
      "label_mean" (share of correct steps), "label_mask_mismatch" (rows whose
      checker steps differ from `segment_steps`'s: should be 0), and with w > 0
      "token_accuracy", as (sum, count) pairs.
    """
    m_NxT = batch["loss_mask"]
    token_head = not model_cfg.scalar_head
    z_NxT = token_logits(params, model_cfg, batch["tokens"], _real_tokens(m_NxT))
    st = core_steps.segment_steps(batch["tokens"], m_NxT, **step_args)
    z_NxS = _step_ends(z_NxT, m_NxT, st, token_head)
    y_NxS = batch["step_labels"]
    num, den = bce_loss(z_NxS, y_NxS, st.step_mask_NxS)
    on_NxS = st.step_mask_NxS.astype(jnp.float32)
    correct_NxS = ((z_NxS > 0) == (y_NxS > 0.5)).astype(jnp.float32) * on_NxS
    mismatch_N = jnp.any(st.step_mask_NxS != (batch["step_mask"] > 0), axis=1)
    rows = jnp.asarray(m_NxT.shape[0], jnp.float32)
    metrics = {
        "step_accuracy": (jnp.sum(correct_NxS), den),
        "label_mean": (jnp.sum(y_NxS * on_NxS), den),
        "label_mask_mismatch": (jnp.sum(mismatch_N.astype(jnp.float32)), rows),
    }
    if token_weight:
        y_NxT, on_NxT = batch["token_labels"], batch["token_mask"] > 0
        if token_head:  # q_t is conditional on an on-track prefix: read up to the first slip
            slips_before_NxT = jnp.cumsum(on_NxT & (y_NxT < 0.5), axis=1) - (on_NxT & (y_NxT < 0.5))
            on_NxT = on_NxT & (slips_before_NxT == 0)
        token_num, token_den = bce_loss(z_NxT, y_NxT, on_NxT)
        num = num + token_weight * token_num
        right_NxT = ((z_NxT > 0) == (y_NxT > 0.5)) & on_NxT
        metrics["token_accuracy"] = (jnp.sum(right_NxT.astype(jnp.float32)), token_den)
    return (num, den), metrics


def token_labels(
    tokenizer: Any, prompt: str, response_ids: Any, eos_ids: tuple[int, ...]
) -> np.ndarray:
    """1 on each response token while the text so far can still become the canonical
    solution (`rewards.steps.solve`), 0 from the first token that leaves it.

    A token is on track when the decoded response up to and including it is a
    prefix of the canonical text plus one delimiter; an EOS is on track when the
    response is the whole canonical text (a trailing delimiter allowed, as
    `strict_labels` allows it). Dense labels that agree with the strict step
    labels at every step's last token.

    Args:
      tokenizer: decodes id prefixes.
      prompt: the chain prompt.
      response_ids: the response's token ids (its EOS included, if any).
      eos_ids: ids that end a response.
    """
    canonical = step_checks.DELIMITER.join(step_checks.solve(prompt))
    target = canonical + step_checks.DELIMITER
    out = np.zeros(len(response_ids), np.float32)
    for j, token in enumerate(response_ids):
        text = tokenizer.decode(response_ids[: j + 1])
        if int(token) in eos_ids:
            out[j] = float(text in (canonical, target))
        elif target.startswith(text):
            out[j] = 1.0
        else:
            break  # 0 from here on
    return out


def with_step_labels(
    batch: dict[str, np.ndarray], tokenizer: Any, max_steps: int, dense: bool = False
) -> dict:
    """Adds the checker's "step_labels" (float32) and "step_mask" (int32) [B, S] to an sft batch.

    The prompt and response of each row are decoded from its tokens (the
    response is where loss_mask is 1), then labelled by `rewards.steps.step_scores`.
    With `dense`, also "token_labels" (float32) and "token_mask" (int32) [B, T]:
    `token_labels` on each response token.
    """
    tokens, m = batch["tokens"], batch["loss_mask"]
    prompt_mask = (np.cumsum(m, axis=1) == 0).astype(np.int32)
    prompts = tokenizer.decode_batch(tokens, prompt_mask)
    responses = tokenizer.decode_batch(tokens, m)
    labels, mask = step_checks.step_scores(prompts, responses, max_steps, "strict")
    out = {**batch, "step_labels": labels, "step_mask": mask.astype(np.int32)}
    if dense:
        eos_ids = tuple(tokenizer.eos_ids)
        out["token_labels"] = np.zeros(tokens.shape, np.float32)
        out["token_mask"] = (m > 0).astype(np.int32)
        for i, prompt in enumerate(prompts):
            at = np.flatnonzero(m[i] > 0)
            out["token_labels"][i, at] = token_labels(tokenizer, prompt, tokens[i, at], eos_ids)
    return out


def make_trainer(config: Any, mesh: Mesh, init_from: Params | None = None) -> common.Trainer:
    """The PRM trainer of `config` (fields: see configs/prm_chain.py).

    Args:
      config: the experiment config; its `prm` section is `default_config()`.
      mesh: the device mesh.
      init_from: params whose trunk starts the PRM (e.g. the SFT warm start).
    """
    cfg, data, train = config.prm, config.data, config.train
    model_cfg = common.model_config(config.model)
    if not (model_cfg.scalar_head or model_cfg.lm_head):
        raise ValueError(
            "a PRM needs model.scalar_head=True (a scalar head) or lm_head=True with "
            "scalar_head=False (a token head)."
        )
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, model_cfg.vocab_size)
    step_args = core_steps.step_args(cfg, tokenizer, "prm")
    common.check_batch_size(data.batch_size, mesh, train.num_microbatches, "data.batch_size")
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)

    optimizer = common.make_optimizer(config.optim, train.num_steps)
    param_specs = partition_specs(model_cfg, config.rules)

    def init_fn(rng):
        key = jax.random.fold_in(rng, 0)
        if init_from is None:
            return common.new_state(init_params(model_cfg, key), optimizer, rng)
        params = reward_model.init_from_trunk(init_from, model_cfg, key)
        return common.new_state(params, optimizer, rng)

    init_state, abstract_state, shardings = common.sharded_init(
        mesh, init_fn, lambda a: common.state_specs(a, param_specs, optimizer)
    )
    if cfg.token_weight < 0:
        raise ValueError(f"prm.token_weight={cfg.token_weight} must be >= 0.")
    loss = functools.partial(
        loss_fn, model_cfg=model_cfg, token_weight=float(cfg.token_weight), **step_args
    )
    schedule = common.learning_rate_schedule(config.optim, train.num_steps)
    update = common.jit_step(
        common.make_update(loss, optimizer, train.num_microbatches, schedule), mesh, shardings
    )

    def labelled(source, batch_size, seed, start_step=0, process_count=None):
        stream = sft_batches(
            source,
            tokenizer,
            batch_size=batch_size,
            max_len=data.max_len,
            truncate=data.truncate,
            seed=seed,
            start_step=start_step,
            process_index=jax.process_index() if process_count is None else 0,
            process_count=jax.process_count() if process_count is None else process_count,
        )
        dense = cfg.token_weight > 0
        return (with_step_labels(b, tokenizer, cfg.max_steps, dense) for b in stream)

    def step(state, batch):
        state, metrics = update(state, parallel.shard_batch(batch, mesh, data.batch_size))
        return state, {**metrics, "tokens": data.batch_size * data.max_len}

    if not 0 < config.eval.num_examples <= len(test_source):
        raise ValueError(
            f"eval.num_examples={config.eval.num_examples} must be in [1, {len(test_source)}] "
            "(the test split's size)."
        )
    heldout = make_step_eval(
        mesh,
        functools.partial(step_logits, cfg=model_cfg, **step_args),
        labelled(
            test_source,
            min(config.eval.batch_size, config.eval.num_examples),
            config.eval.seed,
            process_count=1,
        ),
        num_examples=config.eval.num_examples,
        batch_size=min(config.eval.batch_size, config.eval.num_examples),
    )
    return common.Trainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=lambda start_step: labelled(train_source, data.batch_size, config.seed, start_step),
        step=step,
        evaluate=lambda state: heldout(state["params"]),
    )


def make_step_eval(mesh: Mesh, logits_fn: Any, stream: Any, *, num_examples: int, batch_size: int):
    """Builds params -> held-out step-level figures on the first `num_examples` rows of `stream`.

    Every process holds the whole (global) batches and feeds its own rows, so
    all processes return the same figures: "step_accuracy" (sigmoid(z) > 1/2
    agrees with the label), its value on correct ("step_accuracy_pos") and on
    wrong steps ("step_accuracy_neg"), "response_accuracy" (every step of a
    response right), "loss" (mean step BCE) and "num_steps".
    """
    if batch_size % parallel.batch_divisor(mesh):
        raise ValueError(
            f"eval.batch_size={batch_size} (capped at eval.num_examples) must be a multiple "
            f"of the mesh's {parallel.batch_divisor(mesh)} batch shards."
        )
    batches = list(itertools.islice(stream, math.ceil(num_examples / batch_size)))

    def fn(params, batch):
        z_NxS, st = logits_fn(
            params,
            tokens_NxT=batch["tokens"],
            real_NxT=_real_tokens(batch["loss_mask"]),
            response_NxT=batch["loss_mask"],
        )
        return z_NxS, st.step_mask_NxS

    jitted = jax.jit(fn, out_shardings=parallel.batch_sharding(mesh))
    lo, hi = parallel.process_rows(mesh, batch_size)

    def evaluate(params) -> dict[str, float]:
        z, m, y = [], [], []
        for batch in batches:
            local = {k: batch[k][lo:hi] for k in ("tokens", "loss_mask")}
            out = jitted(params, parallel.shard_batch(local, mesh, batch_size))
            z.append(parallel.to_host(out[0]))
            m.append(parallel.to_host(out[1]))
            y.append(batch["step_labels"])
        z, m, y = (np.concatenate(a)[:num_examples] for a in (z, m, y))
        right = (z > 0) == (y > 0.5)
        bce = np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)
        pos, neg = m & (y > 0.5), m & (y < 0.5)
        return {
            "step_accuracy": float(right[m].mean()),
            "step_accuracy_pos": float(right[pos].mean()) if pos.any() else float("nan"),
            "step_accuracy_neg": float(right[neg].mean()) if neg.any() else float("nan"),
            "response_accuracy": float(np.all(right | ~m, axis=1).mean()),
            "loss": float(bce[m].mean()),
            "num_steps": float(m.sum()),
        }

    return evaluate
