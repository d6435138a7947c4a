"""KL estimators, exact KL and entropy from logits, adaptive KL controller.

Per-token estimators of KL(pi || ref) from the log-probs of a token sampled
from pi, with log r = lp_ref - lp:

- k1 = -log r                    unbiased for KL(pi || ref); can be negative
- k2 = (log r)^2 / 2             biased, low variance
- k3 = exp(log r) - 1 - log r    unbiased, >= 0

Gradients matter as much as values when an estimate enters a loss. With
samples held fixed (their probabilities under a stop-gradient), E_pi of the
gradient through `lp` is
- k1: E_pi[grad lp] = 0 -- k1 belongs in the reward, not in the loss;
- k2: E_pi[(lp - lp_ref) grad lp] = grad KL(pi || ref);
- k3: E_pi[(1 - r) grad lp] = grad KL(ref || pi) (the forward KL), which is
  what GRPO's "k3 in the loss" actually optimizes.
tests/core/test_kl.py checks all three on a small categorical.
"""

import jax
import jax.numpy as jnp


def k1(lp, lp_ref):
    """k1 = lp - lp_ref per token."""
    return lp - lp_ref


def k2(lp, lp_ref):
    """k2 = (lp_ref - lp)^2 / 2 per token."""
    return 0.5 * jnp.square(lp_ref - lp)


def k3(lp, lp_ref):
    """k3 = r - 1 - log r per token, with log r = lp_ref - lp."""
    log_r = lp_ref - lp
    return jnp.exp(log_r) - 1.0 - log_r


KL_ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}


def kl_estimate(name, lp, lp_ref):
    """Per-token KL estimate by estimator name.

    Args:
        name: "k1", "k2" or "k3".
        lp: log-probs of the sampled tokens under the policy, e.g. [N, T].
        lp_ref: log-probs of the same tokens under the reference.

    Returns:
        The estimate per token, shaped like `lp`.
    """
    if name not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {name!r}; choose one of {sorted(KL_ESTIMATORS)}.")
    return KL_ESTIMATORS[name](lp, lp_ref)


def exact_kl_from_logits(logits_p, logits_ref):
    """Exact KL(p || ref) over the vocabulary, per position.

    Callers must chunk long sequences: the inputs are full [..., V] rows.

    Args:
        logits_p: logits of the policy, [..., V].
        logits_ref: logits of the reference, [..., V].

    Returns:
        sum_v p_v (log p_v - log ref_v), shaped [...].
    """
    if jnp.shape(logits_p) != jnp.shape(logits_ref):
        raise ValueError(
            f"logits_p {jnp.shape(logits_p)} and logits_ref {jnp.shape(logits_ref)} "
            "must have the same shape."
        )
    logp = jax.nn.log_softmax(logits_p, axis=-1)
    logref = jax.nn.log_softmax(logits_ref, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logref), axis=-1)


def entropy_from_logits(logits):
    """Entropy of softmax(logits) per position, -sum_v p_v log p_v.

    Args:
        logits: [..., V].

    Returns:
        Entropy in nats, shaped [...].
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def adaptive_kl_update(beta, kl, target, n_steps, horizon):
    """Adaptive KL controller (Ziegler et al. 2019) for PPO's KL penalty.

    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)

    Args:
        beta: current KL coefficient.
        kl: observed KL of the last batch (e.g. mean over sequences of the
            summed per-token k1).
        target: desired KL.
        n_steps: number of samples (or steps) the observation covers.
        horizon: controller horizon, in the same unit as `n_steps`.

    Returns:
        The updated beta.
    """
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return beta * (1.0 + error * n_steps / horizon)
