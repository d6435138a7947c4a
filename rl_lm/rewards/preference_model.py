"""Pairwise preferences P(a > b | x): one interface for learned and programmatic judges.

Nash learning (rl_lm.algos.nash) needs a judge of pairs, not a reward. A
`Preference` maps `Pairs` (prompts and two responses each, as the sampler
lays them out) to P(a > b | x) per pair, float [N], with
P(a > b) + P(b > a) = 1. Two kinds:

- programmatic: a function of texts (prompts, responses_a, responses_b) ->
  P, wrapped by `from_text_fn`; `programmatic(name)` names the synthetic
  tasks' judges, e.g. the intransitive rock-paper-scissors preference
  (`rl_lm.rewards.synthetic.intransitive_preference`), which no
  Bradley-Terry reward can represent.
- learned: a transformer trunk plus a scalar head reads the pair as one
  sequence [BOS] x a [EOS] b [EOS] and scores it at the last token,
  s(x, a, b). The model is symmetrized over the order of the pair,

      z(x, a, b) = s(x, a, b) - s(x, b, a),      P(a > b | x) = sigmoid(z),

  so z is antisymmetric by construction (z(x, b, a) = -z(x, a, b), exactly
  in floating point) and P(a > b) + P(b > a) = sigmoid(z) + sigmoid(-z) = 1
  for every parameter value, trained or not. Training minimizes the binary
  cross-entropy of the labels: -log P(chosen > rejected) per pair (with an
  antisymmetric z, labelling the swapped pair adds nothing). `from_model`
  wraps trained params as a `Preference`.

Padding inside the joined sequence (the prompt's left padding, each
response's right padding) is masked out, and positions count real tokens
only, so the score does not depend on how the pair was padded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params
from rl_lm.models.transformer import last_token_score as score
from rl_lm.rewards import synthetic

TextPreference = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Pairs:
    """N pairs (x, a, b) to judge, in the sampler's layout (row i: prompt i, a_i, b_i).

    Attributes:
      prompt: [N, P] left-padded prompt ids ([BOS] + prompt).
      prompt_mask: [N, P] 1 on real prompt tokens.
      a: [N, R] first responses; a_mask: [N, R] 1 up to and including EOS.
      b: [N, R] second responses; b_mask: their mask.
      tokenizer: decodes them for judges of texts.
    """

    prompt: np.ndarray
    prompt_mask: np.ndarray
    a: np.ndarray
    a_mask: np.ndarray
    b: np.ndarray
    b_mask: np.ndarray
    tokenizer: Any

    def texts(self) -> tuple[list[str], list[str], list[str]]:
        """(prompts, responses_a, responses_b) as decoded text."""
        decode = self.tokenizer.decode_batch
        return (
            decode(self.prompt, self.prompt_mask),
            decode(self.a, self.a_mask),
            decode(self.b, self.b_mask),
        )


Preference = Callable[[Pairs], np.ndarray]


def from_text_fn(fn: TextPreference) -> Preference:
    """A `Preference` from a judge of texts fn(prompts, responses_a, responses_b) -> P [N]."""

    def preference(pairs: Pairs) -> np.ndarray:
        return np.asarray(fn(*pairs.texts()), np.float32)

    return preference


_PROGRAMMATIC: dict[str, TextPreference] = {
    "intransitive": synthetic.intransitive_preference,  # rps_pref's rock-paper-scissors
    "sort": synthetic.sort_preference,  # sort_pref's Bradley-Terry on the hidden reward
}


def programmatic(name: str) -> Preference:
    """The programmatic judge called `name` ("intransitive" or "sort") as a `Preference`."""
    if name not in _PROGRAMMATIC:
        raise ValueError(
            f"unknown programmatic preference {name!r}; known: {', '.join(sorted(_PROGRAMMATIC))}."
        )
    return from_text_fn(_PROGRAMMATIC[name])


def _check_model(cfg: ModelConfig) -> None:
    if not cfg.scalar_head:
        raise ValueError(
            "a preference model needs model.scalar_head=True (a trunk plus a scalar head)."
        )


def pair_logit(
    params: Params,
    cfg: ModelConfig,
    prompt_NxP: jax.Array,
    prompt_mask_NxP: jax.Array,
    a_NxR: jax.Array,
    a_mask_NxR: jax.Array,
    b_NxR: jax.Array,
    b_mask_NxR: jax.Array,
) -> jax.Array:
    """The antisymmetric logit z(x, a, b) of pairs in the sampler's layout.

    Args:
      params: preference-model parameters (cfg.scalar_head).
      cfg: its model config.
      prompt_NxP: left-padded prompts, one per pair; prompt_mask_NxP their masks.
      a_NxR: first responses; a_mask_NxR 1 up to and including EOS.
      b_NxR: second responses; b_mask_NxR their masks.

    Returns:
      z_N = s(x, a, b) - s(x, b, a), float32; P(a > b | x) = sigmoid(z).
    """
    _check_model(cfg)
    tokens = jnp.concatenate([prompt_NxP, a_NxR, b_NxR], axis=1)
    swapped = jnp.concatenate([prompt_NxP, b_NxR, a_NxR], axis=1)
    mask = jnp.concatenate([prompt_mask_NxP, a_mask_NxR, b_mask_NxR], axis=1)
    mask_swapped = jnp.concatenate([prompt_mask_NxP, b_mask_NxR, a_mask_NxR], axis=1)
    return _antisymmetric(params, cfg, tokens, mask, swapped, mask_swapped)


def _antisymmetric(params, cfg, tokens_NxT, mask_NxT, swapped_NxT, swapped_mask_NxT):
    """s(one order) - s(other order), both orders in one forward pass."""
    n = tokens_NxT.shape[0]
    s_2N = score(
        params,
        cfg,
        jnp.concatenate([tokens_NxT, swapped_NxT]),
        jnp.concatenate([mask_NxT, swapped_mask_NxT]).astype(jnp.int32),
    )
    return s_2N[:n] - s_2N[n:]


def row_pair_logit(params: Params, batch: dict[str, jax.Array], cfg: ModelConfig) -> jax.Array:
    """z(x, chosen, rejected) of `rl_lm.data.preference_batches` rows.

    A row is [BOS] + prompt + response + [EOS], right-padded, its loss mask 1
    on the response and EOS. The joined sequence is the chosen row's real
    tokens followed by the rejected row's response tokens (and swapped).

    Returns:
      z_B, float32.
    """
    _check_model(cfg)
    t = batch["chosen"].shape[1]
    chosen_m, rejected_m = batch["chosen_mask"], batch["rejected_mask"]
    # A row's real tokens run from its start to its last loss-mask entry (EOS).
    last = lambda m: t - 1 - jnp.argmax(jnp.flip(m > 0, axis=1), axis=1)
    chosen_real = jnp.arange(t)[None] <= last(chosen_m)[:, None]
    rejected_real = jnp.arange(t)[None] <= last(rejected_m)[:, None]
    tokens = jnp.concatenate([batch["chosen"], batch["rejected"]], axis=1)
    mask = jnp.concatenate([chosen_real, rejected_m > 0], axis=1)
    swapped = jnp.concatenate([batch["rejected"], batch["chosen"]], axis=1)
    mask_swapped = jnp.concatenate([rejected_real, chosen_m > 0], axis=1)
    return _antisymmetric(params, cfg, tokens, mask, swapped, mask_swapped)


def loss_fn(
    params: Params, batch: dict[str, jax.Array], model_cfg: ModelConfig
) -> tuple[tuple[jax.Array, jax.Array], dict[str, tuple[jax.Array, jax.Array]]]:
    """Binary cross-entropy -log P(chosen > rejected) of a batch of preference rows.

    Args:
      params: preference-model parameters.
      batch: `preference_batches` rows (chosen, chosen_mask, rejected, rejected_mask).
      model_cfg: the model config (scalar_head).

    Returns:
      ((sum of pair losses, number of pairs), metrics), metrics (sum, pairs) of
      "accuracy" (P(chosen > rejected) > 1/2) and "preference" (P(chosen > rejected)).
    """
    z_B = row_pair_logit(params, batch, model_cfg)
    pairs = jnp.asarray(z_B.shape[0], jnp.float32)
    sg = jax.lax.stop_gradient
    metrics = {
        "accuracy": (jnp.sum(sg(z_B) > 0).astype(jnp.float32), pairs),
        "preference": (jnp.sum(jax.nn.sigmoid(sg(z_B))), pairs),
    }
    return (-jnp.sum(jax.nn.log_sigmoid(z_B)), pairs), metrics


def from_model(params: Params, cfg: ModelConfig) -> Preference:
    """A trained preference model as a `Preference` (P = sigmoid(z), jitted)."""
    _check_model(cfg)
    logit = jax.jit(lambda p, *arrays: pair_logit(p, cfg, *arrays))

    def preference(pairs: Pairs) -> np.ndarray:
        arrays = (pairs.prompt, pairs.prompt_mask, pairs.a, pairs.a_mask, pairs.b, pairs.b_mask)
        return np.asarray(jax.nn.sigmoid(logit(params, *arrays)), np.float32)

    return preference
