"""Class-level distance to pi*_beta on the rock-paper-scissors task (rps_pref), exactly.

A response's class is its first character (`rl_lm.rewards.synthetic`), so a
policy's class distribution pi(c | x) is the mass its first-token
distribution puts on the tokens whose text starts with c: one forward pass
over the prompts, no sampling noise. Every other first token (EOS, a
non-class character) makes the response invalid, a fourth class that loses
to every valid one and ties with itself. (A first token that decodes to
nothing, such as BOS, is counted invalid although the judge would read past
it; models trained on the task do not emit those.)

Preferences depend only on classes, so the sequence-level regularized Nash
equilibrium is pi*(y | x) = pi*(c(y) | x) ref(y | c(y), x), its class-level
part the fixed point of the 4-class game (P, ref's class distribution)
(`nash_tabular.nash_fixed_point`). The reference is the learner's frozen
reference (the SFT model), which only approximates the task's data
distribution `synthetic.rps_reference`; pi* is computed from it.

Metrics, means over the held-out prompts: "nash_kl" = KL(pi* || pi),
"exploitability" = 2 beta KL(pi || best response to pi) (the regularized
duality gap, `nash_tabular.exploitability`), "invalid" = pi's invalid mass,
"ref_nash_kl" = KL(pi* || ref), the starting distance of a run from ref.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rl_lm import parallel
from rl_lm.algos import nash_tabular
from rl_lm.data import prompt_batches
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params, forward, logits
from rl_lm.rewards import synthetic

CLASSES = (*synthetic.RPS_CLASSES, "invalid")


def first_token_logprobs(
    params: Params, cfg: ModelConfig, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array
) -> jax.Array:
    """log pi(first response token | prompt), [B, V], for left-padded prompts."""
    hidden_BxPxD, _ = forward(params, prompt_BxP, cfg, mask_NxT=prompt_mask_BxP)
    return jax.nn.log_softmax(logits(params, hidden_BxPxD[:, -1:], cfg)[:, 0], axis=-1)


def class_token_mask(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """[3, V] bool: token v starts a response of class c (its text starts with c)."""
    texts = [tokenizer.decode([v]) for v in range(vocab_size)]
    return np.array([[t.startswith(c) for t in texts] for c in synthetic.RPS_CLASSES])


def class_distribution(logp_BxV: jax.Array, class_mask_CxV: np.ndarray) -> jax.Array:
    """[B, 4] probabilities of (R, S, P, invalid) from first-token log-probs."""
    p_BxV = jnp.exp(logp_BxV)
    rest_V = ~np.any(class_mask_CxV, axis=0)
    valid_BxC = p_BxV @ jnp.asarray(class_mask_CxV.T, p_BxV.dtype)
    return jnp.concatenate([valid_BxC, p_BxV @ jnp.asarray(rest_V, p_BxV.dtype)[:, None]], axis=1)


def class_game(prompts: Sequence[str]) -> np.ndarray:
    """P[b, i, j] = P(class i > class j | prompt b) over (R, S, P, invalid), [B, 4, 4]."""
    p_Bx3x3 = synthetic.rps_preference_matrix(prompts)
    p_Bx4x4 = np.full((len(prompts), 4, 4), 0.5, np.float32)
    p_Bx4x4[:, :3, :3] = p_Bx3x3
    p_Bx4x4[:, :3, 3], p_Bx4x4[:, 3, :3] = 1.0, 0.0  # Invalid loses to every valid class.
    return p_Bx4x4


def class_metrics(P, ref, beta: float, pi, pi_star=None) -> dict[str, jax.Array]:
    """Per-prompt "nash_kl", "exploitability", "invalid" of class distributions pi [B, 4].

    pi_star (the fixed point of (P, ref, beta)) is solved for when not given.
    """
    if pi_star is None:
        pi_star = nash_tabular.nash_fixed_point(P, ref, beta)
    return {
        "nash_kl": nash_tabular.kl(pi_star, pi),
        "exploitability": nash_tabular.exploitability(P, ref, beta, pi),
        "invalid": pi[..., 3],
    }


def make_class_eval(
    mesh: Mesh,
    model_cfg: ModelConfig,
    tokenizer: Any,
    source: Any,
    *,
    beta: float,
    num_examples: int,
    batch_size: int,
    max_prompt_len: int,
    seed: int = 0,
) -> Callable[[Params, Params], dict[str, float]]:
    """Builds (params, ref_params) -> class-level metrics on fixed held-out prompts.

    The prompts are the first `num_examples` of the `seed` shuffle of `source`
    (rps_pref prompts). The reference is taken to be frozen: its class
    distribution and pi* are computed at the first call and reused.

    Returns:
      evaluate(params, ref_params) -> {"nash_kl", "exploitability", "invalid",
      "ref_nash_kl"}, each a mean over the prompts.
    """
    if not 0 < num_examples <= len(source):
        raise ValueError(f"eval.num_examples={num_examples} must be in [1, {len(source)}].")
    batch_size = min(batch_size, num_examples)
    stream = prompt_batches(
        source, tokenizer, batch_size=batch_size, max_prompt_len=max_prompt_len, seed=seed
    )
    batches = list(itertools.islice(stream, math.ceil(num_examples / batch_size)))
    texts = [
        t
        for b in batches
        for t in tokenizer.decode_batch(b["prompt"], b["prompt_mask"], stop_at_eos=False)
    ]
    P = jnp.asarray(class_game(texts[:num_examples]))
    mask_CxV = class_token_mask(tokenizer, model_cfg.vocab_size)
    if not all(mask_CxV.any(axis=1)):
        raise ValueError("the tokenizer has no token starting with one of the classes R, S, P.")
    probs = jax.jit(
        lambda p, x, m: class_distribution(first_token_logprobs(p, model_cfg, x, m), mask_CxV),
        out_shardings=parallel.batch_sharding(mesh),
    )
    lo, hi = parallel.process_rows(mesh, batch_size)

    def distribution(params) -> jax.Array:
        parts = []
        for batch in batches:
            local = {k: batch[k][lo:hi] for k in ("prompt", "prompt_mask")}
            arrays = parallel.shard_batch(local, mesh, batch_size)
            parts.append(parallel.to_host(probs(params, arrays["prompt"], arrays["prompt_mask"])))
        return jnp.asarray(np.concatenate(parts)[:num_examples])

    cache: dict[str, Any] = {}

    def evaluate(params, ref_params) -> dict[str, float]:
        if "ref" not in cache:  # The reference is frozen within a run.
            cache["ref"] = distribution(ref_params)
            cache["pi_star"] = nash_tabular.nash_fixed_point(P, cache["ref"], beta)
        ref, pi_star = cache["ref"], cache["pi_star"]
        out = class_metrics(P, ref, beta, distribution(params), pi_star)
        out["ref_nash_kl"] = nash_tabular.kl(pi_star, ref)
        return {k: float(jnp.mean(v)) for k, v in out.items()}

    return evaluate
