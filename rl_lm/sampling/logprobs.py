"""Token log-probabilities computed in time chunks.

The output projection of a language model turns [N, T, D] hidden states into
[N, T, V] logits, which for a real vocabulary (V ~ 150k) dwarfs everything else
in memory. Here the projection, the log-softmax and the gather of the target
token run one time chunk at a time inside `lax.scan`, and each chunk is wrapped
in `jax.checkpoint`, so the backward pass recomputes a chunk's logits instead of
storing them: neither pass holds more than [N, chunk, V] logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import Params, forward, output_embedding

# Default chunk: as many time steps as keep one chunk's logits under 2^26 floats.
LOGITS_BUDGET = 2**26


def default_chunk_size(n: int, vocab_size: int) -> int:
    """Time steps per chunk so that a chunk's [n, chunk, V] logits fit LOGITS_BUDGET."""
    return max(1, LOGITS_BUDGET // (n * vocab_size))


def _check_settings(temperature: float, chunk_size: int | None) -> None:
    if not temperature > 0:
        raise ValueError(
            f"temperature={temperature} must be > 0 for log-probs (a greedy sampler's "
            "log-probs are those of temperature 1)."
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1 (or None for the default).")


def hidden_logprobs(
    params: Params,
    cfg: ModelConfig,
    hidden_NxTxD: jax.Array,
    targets_NxT: jax.Array,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Log-probs of `targets` under the next-token distributions at `hidden`.

    Use this when the trunk's hidden states are at hand anyway (e.g. a value head
    on the policy trunk); `token_logprobs` runs the trunk itself.

    Args:
        params: model parameters (only the output projection is read).
        cfg: the model config.
        hidden_NxTxD: hidden states after the final norm (`forward`'s output).
        targets_NxT: int token ids; targets_NxT[:, t] is scored by hidden_NxTxD[:, t].
        chunk_size: time steps per chunk; any positive value (the last chunk is
            padded); None picks `default_chunk_size`.
        temperature: the distribution is log_softmax(logits / temperature).
        with_entropy: also return the entropy of each distribution.

    Returns:
        logp_NxT in float32, or (logp_NxT, entropy_NxT) when `with_entropy`.
    """
    _check_settings(temperature, chunk_size)
    n, t, d = hidden_NxTxD.shape
    if chunk_size is None:
        chunk_size = default_chunk_size(n, cfg.vocab_size)
    if targets_NxT.shape != (n, t):
        raise ValueError(
            f"targets shape {targets_NxT.shape} does not match hidden states {(n, t, d)}; "
            "pass one target per hidden state."
        )
    c = min(chunk_size, t)
    num = -(-t // c)
    pad = num * c - t
    h_CxNxcxD = jnp.pad(hidden_NxTxD, ((0, 0), (0, pad), (0, 0)))
    h_CxNxcxD = h_CxNxcxD.reshape(n, num, c, d).swapaxes(0, 1)
    y_CxNxc = jnp.pad(targets_NxT, ((0, 0), (0, pad))).reshape(n, num, c).swapaxes(0, 1)
    w_DxV = output_embedding(params, cfg)

    # Saving nothing inside a chunk is the point: its backward recomputes the logits.
    @jax.checkpoint
    def chunk(w_DxV, h_NxcxD, y_Nxc):
        z_NxcxV = jnp.einsum(
            "ntd,dv->ntv", h_NxcxD, w_DxV.astype(h_NxcxD.dtype), preferred_element_type=jnp.float32
        )
        logp_NxcxV = jax.nn.log_softmax(z_NxcxV / temperature, axis=-1)
        logp_Nxc = jnp.take_along_axis(logp_NxcxV, y_Nxc[..., None], axis=-1)[..., 0]
        if not with_entropy:
            return logp_Nxc, None
        return logp_Nxc, -jnp.sum(jnp.exp(logp_NxcxV) * logp_NxcxV, axis=-1)

    _, (logp, ent) = jax.lax.scan(
        lambda _, xs: (None, chunk(w_DxV, *xs)), None, (h_CxNxcxD, y_CxNxc)
    )
    logp_NxT = logp.swapaxes(0, 1).reshape(n, num * c)[:, :t]
    if not with_entropy:
        return logp_NxT
    return logp_NxT, ent.swapaxes(0, 1).reshape(n, num * c)[:, :t]


def _zero_invalid(out, valid_NxT):
    if isinstance(out, tuple):
        return tuple(jnp.where(valid_NxT, x, 0.0) for x in out)
    return jnp.where(valid_NxT, out, 0.0)


def token_logprobs(
    params: Params,
    cfg: ModelConfig,
    tokens_NxT: jax.Array,
    mask_NxT: jax.Array | None = None,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Per-token log-probs log p(tokens[t] | tokens[<t]) of whole sequences.

    A token gets log-prob 0 where it is masked out and where no real token precedes
    it (the first real token of a row has nothing to be conditioned on), so a
    left-padded row scores exactly like the same row unpadded.

    Args:
        params: model parameters.
        cfg: the model config (needs lm_head).
        tokens_NxT: int token ids.
        mask_NxT: 1 on real tokens, 0 on padding (anywhere); defaults to all ones.
        chunk_size: time steps per output-projection chunk (see `hidden_logprobs`).
        temperature: the distribution is log_softmax(logits / temperature).
        with_entropy: also return the entropy of the distribution each token was
            drawn from (0 where the log-prob is 0 by the rule above).

    Returns:
        logp_NxT in float32 (logp_NxT[:, 0] = 0), or (logp_NxT, entropy_NxT).
    """
    _check_settings(temperature, chunk_size)
    if tokens_NxT.ndim != 2:
        raise ValueError(f"tokens must be [N, T], got shape {tokens_NxT.shape}.")
    if mask_NxT is None:
        mask_NxT = jnp.ones(tokens_NxT.shape, jnp.bool_)
    elif mask_NxT.shape != tokens_NxT.shape:
        raise ValueError(
            f"mask shape {mask_NxT.shape} does not match tokens shape {tokens_NxT.shape}."
        )
    mask_NxT = mask_NxT.astype(jnp.bool_)
    hidden_NxTxD, _ = forward(params, tokens_NxT, cfg, mask_NxT=mask_NxT)
    out = hidden_logprobs(
        params,
        cfg,
        hidden_NxTxD[:, :-1],
        tokens_NxT[:, 1:],
        chunk_size=chunk_size,
        temperature=temperature,
        with_entropy=with_entropy,
    )
    out = jax.tree.map(lambda x: jnp.pad(x, ((0, 0), (1, 0))), out)
    seen_before_NxT = jnp.cumsum(mask_NxT, axis=1) - mask_NxT > 0
    return _zero_invalid(out, mask_NxT & seen_before_NxT)


def response_logprobs(
    params: Params,
    cfg: ModelConfig,
    prompt_BxP: jax.Array,
    prompt_mask_BxP: jax.Array,
    response_NxR: jax.Array,
    response_mask_NxR: jax.Array,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    attention_mask_NxR: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Log-probs of response tokens after their prompts, in the sampler's layout.

    Rows are prompt-major: response row b * G + g follows prompt b, G = N // B (a
    `SampleOutput`'s already repeated `prompt` works too, with G = 1). Only the R
    response positions go through the output projection.

    Args:
        params: model parameters.
        cfg: the model config (needs lm_head).
        prompt_BxP: left-padded prompt ids.
        prompt_mask_BxP: 1 on real prompt tokens; every prompt needs at least one.
        response_NxR: response ids.
        response_mask_NxR: 1 on response tokens up to and including EOS.
        chunk_size: time steps per output-projection chunk (see `hidden_logprobs`).
        temperature: the distribution is log_softmax(logits / temperature).
        with_entropy: also return per-token entropies.
        attention_mask_NxR: 1 on every response token the model sees, when that is
            more than the scored ones (a multi-turn response's observation tokens are
            seen, not scored); defaults to `response_mask_NxR`.

    Returns:
        logp_NxR in float32, 0 where response_mask_NxR is 0; or (logp_NxR, entropy_NxR).
    """
    _check_settings(temperature, chunk_size)
    b, p = prompt_BxP.shape
    n, r = response_NxR.shape
    if prompt_mask_BxP.shape != (b, p) or response_mask_NxR.shape != (n, r):
        raise ValueError(
            f"mask shapes {prompt_mask_BxP.shape}, {response_mask_NxR.shape} do not match "
            f"prompt {prompt_BxP.shape} and response {response_NxR.shape}."
        )
    if n % b:
        raise ValueError(
            f"{n} response rows is not a multiple of {b} prompts; rows must be "
            "prompt-major with the same number of samples per prompt."
        )
    if attention_mask_NxR is None:
        attention_mask_NxR = response_mask_NxR
    elif attention_mask_NxR.shape != (n, r):
        raise ValueError(
            f"attention mask shape {attention_mask_NxR.shape} does not match response {(n, r)}."
        )
    g = n // b
    tokens_NxT = jnp.concatenate([jnp.repeat(prompt_BxP, g, axis=0), response_NxR], axis=1)
    mask_NxT = jnp.concatenate(
        [jnp.repeat(prompt_mask_BxP, g, axis=0), attention_mask_NxR.astype(prompt_mask_BxP.dtype)],
        axis=1,
    ).astype(jnp.bool_)
    hidden_NxTxD, _ = forward(params, tokens_NxT, cfg, mask_NxT=mask_NxT)
    out = hidden_logprobs(
        params,
        cfg,
        hidden_NxTxD[:, p - 1 : p + r - 1],
        response_NxR,
        chunk_size=chunk_size,
        temperature=temperature,
        with_entropy=with_entropy,
    )
    return _zero_invalid(out, response_mask_NxR.astype(jnp.bool_))
