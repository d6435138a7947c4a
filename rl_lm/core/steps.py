"""Step segmentation of responses for process rewards.

A response is split into reasoning steps by delimiter tokens (by default the
newline; with the byte tokenizer that is id 10). Every delimiter token ends a
step, and the last response token ends the final step when it is not a
delimiter, so a response without a trailing delimiter still has its last
step. The EOS token is part of the last step: with `eos_id` given, an EOS
right after a trailing delimiter joins that delimiter's step instead of
forming a step of its own.

Everything is computed on padded batches with a static number of step slots
S, so it runs under `jax.jit`. Rows with more than S steps have their extra
steps merged into slot S - 1 (its end moves to the row's last response
token) and are flagged in `overflow_N`; pick S large enough that this is
rare, and log the flag.

Two consecutive delimiters ("\\n\\n" with a byte tokenizer) make the second
one a step of its own; a multi-token delimiter is not recognised as one unit.
"""

from typing import Any, NamedTuple

import jax.numpy as jnp


class Steps(NamedTuple):
    """Step structure of a batch of responses (a pytree: returnable from jit).

    Attributes:
        step_end_NxS: index of each step's last token, -1 for absent steps.
        step_mask_NxS: True on the steps that exist (a prefix of each row).
        num_steps_N: number of steps per row, at most S.
        token_step_NxT: step index of each response token, -1 off the response.
        overflow_N: True where the row had more than S steps (merged into the last).
    """

    step_end_NxS: jnp.ndarray
    step_mask_NxS: jnp.ndarray
    num_steps_N: jnp.ndarray
    token_step_NxT: jnp.ndarray
    overflow_N: jnp.ndarray


def _delimiter_tuple(delimiter_ids):
    ids = (delimiter_ids,) if isinstance(delimiter_ids, int) else tuple(delimiter_ids)
    if not ids or not all(isinstance(i, int) for i in ids):
        raise ValueError(
            f"delimiter_ids must be a token id or a non-empty sequence of ids, got "
            f"{delimiter_ids!r}; e.g. 10 for the newline byte."
        )
    return ids


def last_token_mask(m_NxT):
    """True on the last response token of each row (none for an empty row).

    Args:
        m_NxT: response mask.

    Returns:
        bool [N, T]; holes in the mask are allowed.
    """
    on_NxT = m_NxT > 0
    # Response tokens from t to the end, counted right to left.
    on_from_NxT = jnp.flip(jnp.cumsum(jnp.flip(on_NxT.astype(jnp.int32), 1), 1), 1)
    return on_NxT & (on_from_NxT == 1)


def segment_steps(tokens_NxT, m_NxT, delimiter_ids=10, max_steps=32, eos_id=None):
    """Splits each response into steps at delimiter tokens.

    Args:
        tokens_NxT: response token ids (padding anywhere off the mask).
        m_NxT: response mask, 1 on generated tokens up to and including EOS.
        delimiter_ids: a token id or a sequence of ids that each end a step
            (Python ints: they are static).
        max_steps: S, the static number of step slots.
        eos_id: optional EOS id; an EOS directly after a trailing delimiter is
            then merged into the delimiter's step.

    Returns:
        A `Steps` tuple. Example with "1+2=3\\n3*4=12\\n#### 12" (bytes): step
        ends at the two newlines and at the final "2"; three steps.
    """
    if jnp.ndim(tokens_NxT) != 2 or jnp.shape(tokens_NxT) != jnp.shape(m_NxT):
        raise ValueError(
            f"tokens_NxT {jnp.shape(tokens_NxT)} and m_NxT {jnp.shape(m_NxT)} must both be [N, T]."
        )
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a Python int >= 1 (it is static), got {max_steps!r}.")
    delims = _delimiter_tuple(delimiter_ids)
    n, t = jnp.shape(tokens_NxT)

    on_NxT = m_NxT > 0
    is_delim_NxT = on_NxT & jnp.isin(tokens_NxT, jnp.asarray(delims, jnp.int32))
    is_last_NxT = last_token_mask(m_NxT)
    if eos_id is not None:
        after_delim_NxT = jnp.pad(is_delim_NxT[:, :-1], ((0, 0), (1, 0)))
        eos_joins_NxT = is_last_NxT & (tokens_NxT == eos_id) & after_delim_NxT
        is_delim_NxT = is_delim_NxT & ~jnp.pad(eos_joins_NxT[:, 1:], ((0, 0), (0, 1)))
    is_end_NxT = is_delim_NxT | is_last_NxT

    ends_NxT = is_end_NxT.astype(jnp.int32)
    total_ends_N = jnp.sum(ends_NxT, axis=1)
    # Number of step ends strictly before t = the step index of t.
    raw_step_NxT = jnp.cumsum(ends_NxT, axis=1) - ends_NxT
    slot_NxT = jnp.minimum(raw_step_NxT, max_steps - 1)
    token_step_NxT = jnp.where(on_NxT, slot_NxT, -1)

    # Scatter-max of end positions: a merged last slot keeps its latest end.
    rows_NxT = jnp.broadcast_to(jnp.arange(n)[:, None], (n, t))
    end_pos_NxT = jnp.where(is_end_NxT, jnp.arange(t, dtype=jnp.int32)[None, :], -1)
    step_end_NxS = jnp.full((n, max_steps), -1, jnp.int32).at[rows_NxT, slot_NxT].max(end_pos_NxT)

    num_steps_N = jnp.minimum(total_ends_N, max_steps)
    step_mask_NxS = jnp.arange(max_steps)[None, :] < num_steps_N[:, None]
    return Steps(
        step_end_NxS=step_end_NxS,
        step_mask_NxS=step_mask_NxS,
        num_steps_N=num_steps_N,
        token_step_NxT=token_step_NxT,
        overflow_N=total_ends_N > max_steps,
    )


def values_at_step_ends(x_NxT, step_end_NxS, step_mask_NxS):
    """Reads a per-token quantity at each step's last token (e.g. PRM scores).

    Args:
        x_NxT: per-token values (e.g. a PRM head's output).
        step_end_NxS: from `segment_steps`.
        step_mask_NxS: from `segment_steps`.

    Returns:
        x_NxS, 0 on absent steps.
    """
    if jnp.ndim(x_NxT) != 2 or jnp.shape(step_end_NxS) != jnp.shape(step_mask_NxS):
        raise ValueError(
            f"x_NxT {jnp.shape(x_NxT)} must be [N, T] and step_end_NxS {jnp.shape(step_end_NxS)} "
            f"the shape of step_mask_NxS {jnp.shape(step_mask_NxS)}."
        )
    x_NxS = jnp.take_along_axis(x_NxT, jnp.maximum(step_end_NxS, 0), axis=1)
    return jnp.where(step_mask_NxS, x_NxS, jnp.zeros_like(x_NxS))


def steps_to_tokens(x_NxS, token_step_NxT):
    """Gives every token the value of its step: token t in step s gets x_s.

    Args:
        x_NxS: per-step values (e.g. step returns G_s).
        token_step_NxT: from `segment_steps` (-1 off the response).

    Returns:
        x_NxT, 0 off the response.
    """
    if (
        jnp.ndim(x_NxS) != 2
        or jnp.ndim(token_step_NxT) != 2
        or x_NxS.shape[0] != (token_step_NxT.shape[0])
    ):
        raise ValueError(
            f"x_NxS {jnp.shape(x_NxS)} and token_step_NxT {jnp.shape(token_step_NxT)} must be "
            "[N, S] and [N, T]."
        )
    x_NxT = jnp.take_along_axis(x_NxS, jnp.maximum(token_step_NxT, 0), axis=1)
    return jnp.where(token_step_NxT >= 0, x_NxT, jnp.zeros_like(x_NxT))


def at_step_ends(x_NxS, step_end_NxS, token_step_NxT):
    """Puts each step's value on its last token, 0 on every other token.

    The inverse of `values_at_step_ends`: reading the result back at the step
    ends gives x, and its sum over the tokens of step s is x_s (a merged
    overflow slot ends at the row's last response token).

    Args:
        x_NxS: per-step values (e.g. step rewards).
        step_end_NxS: from `segment_steps`.
        token_step_NxT: from `segment_steps` (-1 off the response).

    Returns:
        x_NxT, 0 off the step ends.
    """
    end_NxT = steps_to_tokens(step_end_NxS, token_step_NxT)
    t = jnp.shape(token_step_NxT)[1]
    is_end_NxT = (token_step_NxT >= 0) & (end_NxT == jnp.arange(t)[None, :])
    x_NxT = steps_to_tokens(x_NxS, token_step_NxT)
    return jnp.where(is_end_NxT, x_NxT, jnp.zeros_like(x_NxT))


def sum_per_step(x_NxT, token_step_NxT, max_steps):
    """Sums a per-token quantity over the tokens of each step.

    For example the implicit-PRM token rewards of PRIME summed into step
    rewards, or token log-probs into step log-probs.

    Args:
        x_NxT: per-token values; entries off the response are ignored.
        token_step_NxT: from `segment_steps` (-1 off the response).
        max_steps: S, as passed to `segment_steps`.

    Returns:
        x_NxS, 0 on absent steps.
    """
    if jnp.shape(x_NxT) != jnp.shape(token_step_NxT) or jnp.ndim(x_NxT) != 2:
        raise ValueError(
            f"x_NxT {jnp.shape(x_NxT)} and token_step_NxT {jnp.shape(token_step_NxT)} must both "
            "be [N, T]."
        )
    x_NxT = jnp.asarray(x_NxT)
    n, t = x_NxT.shape
    on_NxT = token_step_NxT >= 0
    rows_NxT = jnp.broadcast_to(jnp.arange(n)[:, None], (n, t))
    vals_NxT = jnp.where(on_NxT, x_NxT, jnp.zeros_like(x_NxT))
    return (
        jnp.zeros((n, max_steps), x_NxT.dtype)
        .at[rows_NxT, jnp.maximum(token_step_NxT, 0)]
        .add(vals_NxT)
    )


def step_args(cfg: Any, tokenizer: Any, section: str = "grpo.process") -> dict[str, Any]:
    """segment_steps' static arguments: delimiter_ids, max_steps, eos_id.

    `cfg` has `delimiter` and `max_steps` (a process section, or `prm`);
    `section` names it in the error.
    """
    ids = tokenizer.encode(cfg.delimiter)
    if len(ids) != 1:
        raise ValueError(
            f"{section}.delimiter={cfg.delimiter!r} is {len(ids)} tokens with {tokenizer!r}; "
            "a step delimiter must be exactly one token (e.g. '\\n' with the byte tokenizer)."
        )
    return {
        "delimiter_ids": tuple(ids),
        "max_steps": int(cfg.max_steps),
        "eos_id": tokenizer.eos_id,
    }
