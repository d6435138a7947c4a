"""The DPO family's losses, pure functions of log-prob sums.

A preference pair is a prompt x with a chosen response y_w and a rejected one
y_l. With the summed response log-probs under the policy (lp) and the frozen
reference (lp_ref), the implicit reward of a response is beta * (lp - lp_ref)
and

    h = (lp(y_w) - lp_ref(y_w)) - (lp(y_l) - lp_ref(y_l)).

Each pair's loss, with e = label_smoothing:

- sigmoid (DPO, Rafailov et al. 2023): -log sigmoid(beta h)
- cdpo (conservative DPO, labels flipped with probability e):
  -(1-e) log sigmoid(beta h) - e log sigmoid(-beta h)
- robust (Chowdhury et al. 2024, unbiased under label noise e):
  [-(1-e) log sigmoid(beta h) + e log sigmoid(-beta h)] / (1 - 2e)
- hinge (SLiC-HF): relu(1 - beta h)
- ipo (Azar et al. 2023): (h - 1/(2 beta))^2

With `length_average` every log-ratio is divided by its response's length
before h is formed (TRL's IPO does this); the losses above then see per-token
log-ratios. A constant added to log pi(.|x) for both responses of a prompt
cancels in h, so no loss depends on it (per token with length averaging).

The trainer that feeds these lives in `rl_lm.algos.dpo`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rl_lm.core.masks import masked_sum, safe_denominator
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params
from rl_lm.sampling.logprobs import token_logprobs

LOSS_TYPES = ("sigmoid", "cdpo", "robust", "hinge", "ipo")
REFERENCE_MODES = ("precompute", "online")
_SMOOTHED = ("cdpo", "robust")


def default_config() -> ml_collections.ConfigDict:
    """DPO hyperparameters; the DPO paper's beta."""
    return ml_collections.ConfigDict(
        {
            "loss_type": "sigmoid",  # sigmoid | cdpo | robust | hinge | ipo
            "beta": 0.1,
            "label_smoothing": 0.0,  # e of cdpo and robust
            "length_average": False,  # per-token log-ratios (TRL's IPO)
            # precompute: reference log-probs of the whole train split, once, cached
            # on disk; online: from the frozen reference params at every step.
            "reference": "precompute",
            "ref_cache_dir": ml_collections.config_dict.placeholder(str),  # None: data dir
            "ref_batch_size": 64,  # rows per call when precomputing
            "chunk_size": 128,  # time chunk of the output projection
        }
    )


def validate(cfg: Any) -> None:
    """Fails early, naming the field, on an inconsistent `dpo` config."""
    problems = []
    if cfg.loss_type not in LOSS_TYPES:
        problems.append(f"dpo.loss_type={cfg.loss_type!r} is not one of {LOSS_TYPES}")
    if not cfg.beta > 0:
        problems.append(f"dpo.beta={cfg.beta} must be > 0")
    e = cfg.label_smoothing
    if cfg.loss_type in _SMOOTHED and not 0 <= e < 0.5:
        problems.append(f"dpo.label_smoothing={e} must be in [0, 0.5) for {cfg.loss_type}")
    if cfg.loss_type not in _SMOOTHED and e != 0:
        problems.append(
            f"dpo.label_smoothing={e} only applies to loss_type cdpo or robust, not "
            f"{cfg.loss_type!r}; set it to 0 or change the loss type"
        )
    if cfg.reference not in REFERENCE_MODES:
        problems.append(f"dpo.reference={cfg.reference!r} is not one of {REFERENCE_MODES}")
    if cfg.ref_batch_size < 1 or cfg.chunk_size < 1:
        problems.append("dpo.ref_batch_size and dpo.chunk_size must be >= 1")
    if problems:
        raise ValueError("Invalid DPO config: " + "; ".join(problems) + ".")


def preference_loss(
    h_N: jax.Array, loss_type: str, beta: float, label_smoothing: float = 0.0
) -> jax.Array:
    """The per-pair loss of `loss_type` as a function of h (see the module docstring).

    Args:
      h_N: chosen log-ratio minus rejected log-ratio, per pair.
      loss_type: one of LOSS_TYPES.
      beta: the KL-regularization strength (> 0).
      label_smoothing: e of cdpo and robust, in [0, 0.5).

    Returns:
      loss_N, float32.
    """
    z_N = beta * h_N.astype(jnp.float32)
    e = label_smoothing
    if loss_type == "sigmoid":
        return -jax.nn.log_sigmoid(z_N)
    if loss_type == "cdpo":
        return -(1 - e) * jax.nn.log_sigmoid(z_N) - e * jax.nn.log_sigmoid(-z_N)
    if loss_type == "robust":
        return (-(1 - e) * jax.nn.log_sigmoid(z_N) + e * jax.nn.log_sigmoid(-z_N)) / (1 - 2 * e)
    if loss_type == "hinge":
        return jax.nn.relu(1.0 - z_N)
    if loss_type == "ipo":
        return jnp.square(h_N.astype(jnp.float32) - 1.0 / (2.0 * beta))
    raise ValueError(f"loss_type={loss_type!r} is not one of {LOSS_TYPES}.")


def pair_logprobs(
    params: Params, batch: dict[str, jax.Array], cfg: ModelConfig, *, chunk_size: int = 128
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Summed response log-probs and response lengths of preference rows.

    Chosen and rejected rows go through the model as one batch, interleaved so
    that both rows of a pair stay on the device that holds the pair.

    Args:
      params: model parameters.
      cfg: the model config.
      batch: "chosen", "chosen_mask", "rejected", "rejected_mask", each [B, T]
        ([BOS] + prompt + response + [EOS] rows; masks 1 on response and EOS).
      chunk_size: time chunk of the output projection.

    Returns:
      (lp_chosen_B, lp_rejected_B, len_chosen_B, len_rejected_B), float32.
    """
    b, t = batch["chosen"].shape
    tokens_Nx2xT = jnp.stack([batch["chosen"], batch["rejected"]], axis=1)
    m_Nx2xT = jnp.stack([batch["chosen_mask"], batch["rejected_mask"]], axis=1)
    m_NxT = m_Nx2xT.reshape(2 * b, t).astype(jnp.float32)
    logp_NxT = token_logprobs(params, cfg, tokens_Nx2xT.reshape(2 * b, t), chunk_size=chunk_size)
    sums_Bx2 = masked_sum(logp_NxT, m_NxT, axis=1).reshape(b, 2)
    lens_Bx2 = m_NxT.sum(axis=1).reshape(b, 2)
    return sums_Bx2[:, 0], sums_Bx2[:, 1], lens_Bx2[:, 0], lens_Bx2[:, 1]


def logratios(
    lp_w: jax.Array,
    lp_l: jax.Array,
    ref_w: jax.Array,
    ref_l: jax.Array,
    len_w: jax.Array,
    len_l: jax.Array,
    length_average: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """log(pi / ref) of the chosen and rejected responses (per token with length_average)."""
    ratio_w, ratio_l = lp_w - ref_w, lp_l - ref_l
    if length_average:
        return ratio_w / safe_denominator(len_w), ratio_l / safe_denominator(len_l)
    return ratio_w, ratio_l


def loss_fn(
    params: Params, batch: dict[str, jax.Array], model_cfg: ModelConfig, cfg: Any
) -> tuple[tuple[jax.Array, jax.Array], dict[str, tuple[jax.Array, jax.Array]]]:
    """The DPO-family loss of one (micro)batch of pairs.

    Args:
      params: policy parameters.
      batch: the preference rows of `pair_logprobs` plus "ref_chosen" and
        "ref_rejected" [B], the reference's summed response log-probs.
      model_cfg: the policy's model config.
      cfg: the `dpo` config section (`default_config`).

    Returns:
      ((sum of pair losses, number of pairs), metrics), every metric a (sum over
      pairs, number of pairs) pair: "rewards_chosen" and "rewards_rejected" (the
      implicit rewards beta * log-ratio), "accuracy" (chosen reward strictly
      above rejected), "margin" (their difference), "logp_chosen" and
      "logp_rejected" (policy sequence log-probs), and "logratio_chosen", the
      summed log(pi / ref) of the chosen responses: a proxy for the drift from the
      reference (0 at pi = ref), not KL(pi || ref), since the data are not samples
      of pi (the trainer's evaluate measures that KL on samples).
    """
    lp_w, lp_l, len_w, len_l = pair_logprobs(params, batch, model_cfg, chunk_size=cfg.chunk_size)
    ref_w, ref_l = batch["ref_chosen"], batch["ref_rejected"]
    ratio_w, ratio_l = logratios(lp_w, lp_l, ref_w, ref_l, len_w, len_l, cfg.length_average)
    loss_B = preference_loss(ratio_w - ratio_l, cfg.loss_type, cfg.beta, cfg.label_smoothing)
    reward_w, reward_l = cfg.beta * ratio_w, cfg.beta * ratio_l
    pairs = jnp.asarray(loss_B.shape[0], jnp.float32)
    sums = {
        "rewards_chosen": reward_w,
        "rewards_rejected": reward_l,
        "accuracy": (reward_w > reward_l).astype(jnp.float32),
        "margin": reward_w - reward_l,
        "logp_chosen": lp_w,
        "logp_rejected": lp_l,
        "logratio_chosen": lp_w - ref_w,
    }
    metrics = {k: (jnp.sum(jax.lax.stop_gradient(v)), pairs) for k, v in sums.items()}
    return (jnp.sum(loss_B), pairs), metrics
