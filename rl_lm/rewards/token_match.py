"""`verifiable.exact_match` on byte-level token ids, in jnp (jit, vmap and scan safe).

The host check decodes each response (`ByteTokenizer.decode_batch`: the masked
ids up to the first EOS, special ids dropped), extracts its final answer
(`verifiable.extract_answer`: the text after the last "####" up to a newline;
else the last `\\boxed{...}`; else the last number of the regex
`[-+]?\\d[\\d,]*(?:\\.\\d+)?`, found as `re.findall` finds it, left to right
without overlaps), normalizes it (`verifiable.normalize`) and compares it with
the normalized reference. `exact_match` here does the same on the ids: the
answers are normalized and encoded on the host once (`encode_answers`), the
responses never leave the device.

Characters are bytes. On ASCII responses the two checks agree exactly (an ASCII
byte always decodes to itself, whatever invalid bytes surround it). A non-ASCII
byte, or an id past the bytes that is no special token (decoded as U+FFFD),
counts here as a character that is neither a digit nor white space. The host
check sees Unicode: it would read a multi-byte decimal digit (e.g. the
fullwidth "３") as part of a number, and strip non-ASCII white space (U+00A0)
around a marked or boxed answer; only there can the two differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rl_lm.rewards import verifiable

OTHER = 256  # an id past the bytes that is not special: the host decodes it as U+FFFD
_GONE = -1  # an empty slot after the end of a row's characters
_WHITE = np.array([9, 10, 11, 12, 13, 28, 29, 30, 31, 32], np.int32)  # ASCII str.isspace
_MARKER = np.frombuffer(b"####", np.uint8).astype(np.int32)
_BOXED = np.frombuffer(b"\\boxed{", np.uint8).astype(np.int32)
_OUT, _SIGN, _INT, _DOT, _FRAC = range(5)  # states of the number regex
FORMATS = ("any", "marked")


def encode_answers(answers: Sequence[str], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The normalized answers as UTF-8 bytes: (ids [N, width] int32, lengths [N] int32).

    Give `width` at least the responses' length T: an answer longer than `width`
    bytes, which no response of T <= width ids can hold, gets length width + 1,
    which no response's answer has.
    """
    ids = np.full((len(answers), width), _GONE, np.int32)
    lengths = np.zeros(len(answers), np.int32)
    for i, a in enumerate(answers):
        raw = verifiable.normalize(str(a)).encode("utf-8")
        ids[i, : min(len(raw), width)] = np.frombuffer(raw[:width], np.uint8)
        lengths[i] = len(raw) if len(raw) <= width else width + 1
    return ids, lengths


def _compact(c_T: jax.Array, keep_T: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The kept entries of c_T moved to the front, _GONE after them; and their count."""
    t = c_T.shape[0]
    dest_T = jnp.where(keep_T, jnp.cumsum(keep_T) - 1, t)
    out_T = jnp.full((t,), _GONE, c_T.dtype).at[dest_T].set(c_T, mode="drop")
    return out_T, jnp.sum(keep_T, dtype=jnp.int32)


def _chars(ids_T, mask_T, special: np.ndarray, eos: np.ndarray):
    """The decoded response's characters (bytes, OTHER) at the front, _GONE after."""
    live_T = mask_T > 0
    is_eos_T = jnp.isin(ids_T, eos) & live_T
    before_eos_T = jnp.cumsum(is_eos_T) == 0
    keep_T = live_T & before_eos_T & ~jnp.isin(ids_T, special)
    c_T = jnp.where((ids_T >= 0) & (ids_T < 256), ids_T, OTHER)
    return _compact(c_T, keep_T)[0]


def _shifted(c_T: jax.Array, k: int) -> jax.Array:
    """c_T[i + k] at i, _GONE past the end."""
    t = c_T.shape[0]
    return jnp.concatenate([c_T, jnp.full((k,), _GONE, c_T.dtype)])[k : k + t]


def _finds(c_T: jax.Array, pattern: np.ndarray) -> jax.Array:
    """[T] bool: the pattern starts at i."""
    hit_T = jnp.ones(c_T.shape, bool)
    for k, ch in enumerate(pattern.tolist()):
        hit_T = hit_T & (_shifted(c_T, k) == ch)
    return hit_T


def _last(flag_T: jax.Array) -> jax.Array:
    """The last index where flag_T holds, -1 if none."""
    idx_T = jnp.arange(flag_T.shape[0])
    return jnp.max(jnp.where(flag_T, idx_T, -1))


def _first_from(flag_T: jax.Array, start) -> jax.Array:
    """The first index >= start where flag_T holds, T if none."""
    t = flag_T.shape[0]
    idx_T = jnp.arange(t)
    return jnp.min(jnp.where(flag_T & (idx_T >= start), idx_T, t))


def _marked(c_T):
    """(found, start, end): the text after the last "####", up to a newline."""
    at = _last(_finds(c_T, _MARKER))
    start = at + len(_MARKER)
    end = _first_from((c_T == ord("\n")) | (c_T == _GONE), start)
    return at >= 0, start, end


def _boxed(c_T):
    """(found, start, end): the content of the last \\boxed{...} without braces inside."""
    t = c_T.shape[0]
    idx_T = jnp.arange(t)
    brace_T = (c_T == ord("{")) | (c_T == ord("}"))
    # For each start i, the first brace at or after i + 7 (the pattern's length).
    after_TxT = brace_T[None, :] & (idx_T[None, :] >= idx_T[:, None] + len(_BOXED))
    close_T = jnp.min(jnp.where(after_TxT, idx_T[None, :], t), axis=1)
    closed_T = c_T[jnp.minimum(close_T, t - 1)] == ord("}")
    valid_T = _finds(c_T, _BOXED) & (close_T < t) & closed_T
    at = _last(valid_T)
    return at >= 0, at + len(_BOXED), close_T[jnp.maximum(at, 0)]


def _last_number(c_T):
    """(found, start, end) of the last match of [-+]?\\d[\\d,]*(?:\\.\\d+)? by re.findall."""
    t = c_T.shape[0]
    c_U = jnp.concatenate([c_T, jnp.full((1,), _GONE, c_T.dtype)])  # the end closes a match

    def step(carry, x):
        st, start, dot, last_s, last_e = carry
        i, c = x
        digit = (c >= ord("0")) & (c <= ord("9"))
        sign = (c == ord("+")) | (c == ord("-"))
        comma, period = c == ord(","), c == ord(".")
        closes = ((st == _INT) & ~(digit | comma | period)) | (
            ((st == _FRAC) | (st == _DOT)) & ~digit
        )
        close_end = jnp.where(st == _DOT, dot, i)
        last_s = jnp.where(closes, start, last_s)
        last_e = jnp.where(closes, close_end, last_e)
        fresh_st = jnp.where(sign, _SIGN, jnp.where(digit, _INT, _OUT))
        cont = {
            _OUT: (fresh_st, i),
            _SIGN: (jnp.where(digit, _INT, fresh_st), jnp.where(digit, start, i)),
            _INT: (
                jnp.where(digit | comma, _INT, jnp.where(period, _DOT, fresh_st)),
                jnp.where(digit | comma | period, start, i),
            ),
            _DOT: (jnp.where(digit, _FRAC, fresh_st), jnp.where(digit, start, i)),
            _FRAC: (jnp.where(digit, _FRAC, fresh_st), jnp.where(digit, start, i)),
        }
        new_st, new_start = cont[_OUT]
        for s, (s_st, s_start) in cont.items():
            new_st = jnp.where(st == s, s_st, new_st)
            new_start = jnp.where(st == s, s_start, new_start)
        dot = jnp.where((st == _INT) & period, i, dot)
        return (new_st, new_start, dot, last_s, last_e), None

    init = tuple(jnp.int32(v) for v in (_OUT, 0, 0, -1, -1))
    xs = (jnp.arange(t + 1, dtype=jnp.int32), c_U.astype(jnp.int32))
    (_, _, _, last_s, last_e), _ = jax.lax.scan(step, init, xs)
    return last_s >= 0, last_s, last_e


def _normalize(c_T, start, end):
    """`verifiable.normalize` of c_T[start:end]: (characters at the front, length)."""
    t = c_T.shape[0]
    idx_T = jnp.arange(t)
    inside_T = (idx_T >= start) & (idx_T < end)
    solid_T = inside_T & ~jnp.isin(c_T, _WHITE)
    lo, hi = _first_from(solid_T, 0), _last(solid_T) + 1
    keep_T = (idx_T >= lo) & (idx_T < hi) & (c_T != ord(",")) & (c_T != ord(" "))
    d_T, m = _compact(c_T, keep_T)
    plus = (m > 0) & (d_T[0] == ord("+"))
    d_T = jnp.where(plus, _shifted(d_T, 1), d_T)
    m = m - plus
    # fullmatch -?\d+\.0* keeps what is before the period.
    neg = (m > 0) & (d_T[0] == ord("-"))
    digit_T = (d_T >= ord("0")) & (d_T <= ord("9"))
    period = _first_from(~digit_T, neg.astype(jnp.int32))
    zeros_T = (idx_T <= period) | (idx_T >= m) | (d_T == ord("0"))
    integral = (period > neg) & (period < m) & (d_T[jnp.minimum(period, t - 1)] == ord("."))
    integral = integral & jnp.all(zeros_T)
    d_T = jnp.where(integral & (idx_T >= period), _GONE, d_T)
    m = jnp.where(integral, period, m)
    minus_zero = (m == 2) & neg & (d_T[1] == ord("0"))
    d_T = jnp.where(minus_zero, _shifted(d_T, 1), d_T)
    return d_T, m - minus_zero


def _row_match(ids_T, mask_T, answer_A, answer_len, special, eos, answer: str):
    c_T = _chars(ids_T, mask_T, special, eos)
    found, start, end = _marked(c_T)
    if answer == "any":
        for other in (_boxed, _last_number):
            o_found, o_start, o_end = other(c_T)
            start = jnp.where(found, start, o_start)
            end = jnp.where(found, end, o_end)
            found = found | o_found
    d_T, m = _normalize(c_T, start, end)
    a = answer_A.shape[0]
    if a < d_T.shape[0]:
        answer_A = jnp.concatenate([answer_A, jnp.full((d_T.shape[0] - a,), _GONE, jnp.int32)])
    else:
        d_T = jnp.concatenate([d_T, jnp.full((a - d_T.shape[0],), _GONE, d_T.dtype)])
    same = jnp.all(d_T == answer_A) & (m == answer_len)
    return (found & same & (answer_len > 0)).astype(jnp.float32)


def exact_match(
    response_NxT: jax.Array,
    mask_NxT: jax.Array,
    answer_NxA: jax.Array,
    answer_len_N: jax.Array,
    *,
    pad_id: int,
    bos_id: int | None,
    eos_ids: Sequence[int],
    answer: str = "any",
) -> jax.Array:
    """float32 [N]: 1 where the response's final answer equals the reference (see the module).

    Args:
      response_NxT: sampled byte-level ids (`SampleOutput.tokens`).
      mask_NxT: their loss mask (1 up to and including the first EOS).
      answer_NxA, answer_len_N: `encode_answers` of the references.
      pad_id, bos_id, eos_ids: the tokenizer's special ids (dropped, EOS ends a row).
      answer: "any" (`verifiable.exact_match`) or "marked" (only a "####" marker counts).
    """
    if answer not in FORMATS:
        raise ValueError(f"answer={answer!r}: the on-device exact match reads {FORMATS}.")
    eos = np.asarray(tuple(eos_ids), np.int32)
    special = np.asarray([pad_id, *eos_ids] + ([bos_id] if bos_id is not None else []), np.int32)
    row = lambda *a: _row_match(*a, special=special, eos=eos, answer=answer)
    return jax.vmap(row)(
        jnp.asarray(response_NxT, jnp.int32),
        jnp.asarray(mask_NxT),
        jnp.asarray(answer_NxA, jnp.int32),
        jnp.asarray(answer_len_N, jnp.int32),
    )
