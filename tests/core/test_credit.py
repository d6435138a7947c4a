"""Tests for rl_lm.core.credit against loop references written here."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.core import credit, steps

# Three rows with 3, 1 and 4 steps; padded slots hold garbage that must never be read.
ROWS = [[0.5, -0.2, 0.8], [0.3], [0.9, 0.1, 0.4, -0.6]]
S = 5


def padded(rows, fill):
    p = np.full((len(rows), S), fill, np.float32)
    mask = np.zeros((len(rows), S), bool)
    for i, row in enumerate(rows):
        p[i, : len(row)] = row
        mask[i, : len(row)] = True
    return p, mask


def ref_sum(row, gamma):
    return [sum(gamma ** (k - s) * row[k] for k in range(s, len(row))) for s in range(len(row))]


def ref_min(row):
    return [min(row[s:]) for s in range(len(row))]


def ref_soft_min(row, temperature):
    e = [np.exp(-(x - min(row)) / temperature) for x in row]
    w = [v / sum(e) for v in e]
    return ref_sum([wi * x for wi, x in zip(w, row, strict=True)], 1.0)


def ref_delta(row):
    """Gao et al.'s Delta: K - 1 adjacent differences, the last step dropped."""
    return [row[s] - row[s + 1] for s in range(len(row) - 1)] + [0.0]


def ref_delta_keep_last(row):
    return [row[s] - (row[s + 1] if s + 1 < len(row) else 0.0) for s in range(len(row))]


def ref_clip(row, eta):
    return [min(x - eta, 0.0) for x in row]


def to_padded(ref_rows):
    out = np.zeros((len(ref_rows), S))
    for i, row in enumerate(ref_rows):
        out[i, : len(row)] = row
    return out


FORMS = {
    "sum_g1": (functools.partial(credit.sum_form_returns, gamma=1.0), lambda r: ref_sum(r, 1.0)),
    "sum_g09": (functools.partial(credit.sum_form_returns, gamma=0.9), lambda r: ref_sum(r, 0.9)),
    "min": (credit.strict_min_returns, ref_min),
    "soft_min_t01": (
        functools.partial(credit.soft_min_returns, temperature=0.1),
        lambda r: ref_soft_min(r, 0.1),
    ),
    "soft_min_t1": (
        functools.partial(credit.soft_min_returns, temperature=1.0),
        lambda r: ref_soft_min(r, 1.0),
    ),
    "clip": (functools.partial(credit.clip_transform, eta=0.2), lambda r: ref_clip(r, 0.2)),
    "delta": (credit.delta_transform, ref_delta),
    "delta_keep_last": (credit.delta_keep_last_transform, ref_delta_keep_last),
}


@pytest.mark.parametrize("name", sorted(FORMS))
def test_forms_match_loop_reference_and_ignore_padding(name):
    fn, ref = FORMS[name]
    expected = to_padded([ref(row) for row in ROWS])
    p, mask = padded(ROWS, np.nan)
    np.testing.assert_allclose(fn(p, mask), expected, rtol=1e-5, atol=1e-6)
    # Zeros, large negative garbage or NaN in the padded slots change nothing.
    for fill in [0.0, -1e9, np.nan]:
        p, mask = padded(ROWS, fill)
        np.testing.assert_allclose(jax.jit(fn)(p, mask), expected, rtol=1e-5, atol=1e-6)


def test_strict_min_hand_values_and_garbage():
    p, mask = padded([[0.5, -0.2, 0.8]], -1e9)
    np.testing.assert_allclose(credit.strict_min_returns(p, mask), [[-0.2, -0.2, 0.8, 0, 0]])
    np.testing.assert_allclose(credit.sum_form_returns(p, mask), [[1.1, 0.6, 0.8, 0, 0]], rtol=1e-6)


def test_soft_min_limits():
    p, mask = padded(ROWS, -1e9)
    mins = [min(r) for r in ROWS]
    means = [np.mean(r) for r in ROWS]
    cold = credit.soft_min_returns(p, mask, temperature=1e-4)
    hot = credit.soft_min_returns(p, mask, temperature=1e5)
    np.testing.assert_allclose(cold[:, 0], mins, rtol=1e-5)
    np.testing.assert_allclose(hot[:, 0], means, rtol=1e-4)
    # Weights: one-hot on the argmin when cold, uniform when hot, 0 on padding.
    w_cold = credit.soft_min_weights(p, mask, 1e-4)
    np.testing.assert_allclose(w_cold[2], [0, 0, 0, 1, 0], atol=1e-6)
    w_hot = credit.soft_min_weights(p, mask, 1e5)
    np.testing.assert_allclose(w_hot[2], [0.25, 0.25, 0.25, 0.25, 0], rtol=1e-4)


def test_soft_min_weights_of_an_empty_row_are_zero():
    w = credit.soft_min_weights(np.zeros((1, 3)), np.zeros((1, 3), bool), 0.1)
    np.testing.assert_array_equal(w, np.zeros((1, 3)))


def test_delta_by_hand():
    """p = [0.7, 0.2, 0.4, 0.8]: deltas [0.5, -0.2, -0.4] and the last step struck
    out, so the returns are p_k - p_K = [-0.1, -0.6, -0.4, 0]; keeping the last
    step adds p_K = 0.8 to every return."""
    p, mask = padded([[0.7, 0.2, 0.4, 0.8]], np.nan)
    np.testing.assert_allclose(
        credit.delta_transform(p, mask), [[0.5, -0.2, -0.4, 0, 0]], atol=1e-6
    )
    np.testing.assert_allclose(
        credit.step_returns(p, mask, "sum", transform="delta"),
        [[-0.1, -0.6, -0.4, 0, 0]],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        credit.step_returns(p, mask, "sum", transform="delta_keep_last"),
        [[0.7, 0.2, 0.4, 0.8, 0]],
        atol=1e-6,
    )


def test_delta_returns_telescope():
    """Delta's sum-form returns are p_s - p_K; with the last step kept, p_s."""
    p, mask = padded(ROWS, np.nan)
    last = np.array([row[-1] for row in ROWS])[:, None]
    returns = credit.step_returns(p, mask, "sum", transform="delta")
    np.testing.assert_allclose(returns, np.where(mask, p - last, 0), rtol=1e-6, atol=1e-6)
    kept = credit.step_returns(p, mask, "sum", transform="delta_keep_last")
    np.testing.assert_allclose(kept, np.where(mask, p, 0), rtol=1e-6, atol=1e-6)


def test_repeating_a_high_step_raises_sum_form_but_not_delta_or_min():
    honest, mask_h = padded([[0.9, 0.2]], 0.0)
    # The same answer with its good first step repeated twice more.
    padded_out, mask_p = padded([[0.9, 0.9, 0.9, 0.2]], 0.0)

    def first_return(p, mask, form, transform="none"):
        return float(credit.step_returns(p, mask, form, transform)[0, 0])

    assert first_return(padded_out, mask_p, "sum") > first_return(honest, mask_h, "sum") + 1.0
    cases = [("sum", "delta"), ("sum", "delta_keep_last"), ("min", "none"), ("min", "delta")]
    for form, transform in cases:
        assert (
            first_return(padded_out, mask_p, form, transform)
            <= first_return(honest, mask_h, form, transform) + 1e-6
        )
    assert first_return(padded_out, mask_p, "sum", "delta") == pytest.approx(0.7)
    assert first_return(padded_out, mask_p, "sum", "delta_keep_last") == pytest.approx(0.9)


def test_step_returns_dispatch_and_bad_names():
    p, mask = padded(ROWS, 0.0)
    np.testing.assert_allclose(
        credit.step_returns(p, mask, "soft_min", "clip", temperature=0.5, eta=0.1),
        credit.soft_min_returns(credit.clip_transform(p, mask, 0.1), mask, 0.5),
    )
    with pytest.raises(ValueError, match="credit form"):
        credit.step_returns(p, mask, "max")
    with pytest.raises(ValueError, match="transform"):
        credit.step_returns(p, mask, "sum", "log")
    with pytest.raises(ValueError, match="temperature"):
        credit.soft_min_returns(p, mask, 0.0)
    with pytest.raises(ValueError, match="step_mask_NxS"):
        credit.strict_min_returns(p, mask[:, :2])


def test_grpo_process_supervision_matches_token_level_reference():
    # Group of G = 2 responses, byte tokens, steps split at newlines.
    texts = ["1+2=3\n3*4=12\n#### 12", "1+2=4\n#### 4"]
    t = 24
    tokens = np.full((2, t), 256, np.int32)
    m = np.zeros((2, t), np.int32)
    for i, text in enumerate(texts):
        tokens[i, : len(text)] = list(text.encode())
        m[i, : len(text)] = 1
    seg = steps.segment_steps(tokens, m, 10, max_steps=4)
    p_rows = [[1.0, 1.0, 1.0], [0.0, 0.0]]
    p = np.array([[1.0, 1.0, 1.0, -7.0], [0.0, 0.0, -7.0, -7.0]], np.float32)
    adv = steps.steps_to_tokens(
        credit.grpo_process_returns(p, seg.step_mask_NxS, group_size=2, eps=0.0),
        seg.token_step_NxT,
    )
    flat = np.concatenate(p_rows)
    normalized = [(np.array(r) - flat.mean()) / flat.std(ddof=1) for r in p_rows]
    ends = [[5, 12, 19], [5, 11]]
    expected = np.zeros((2, t))
    for i in range(2):
        for j in range(len(texts[i])):
            expected[i, j] = sum(normalized[i][s] for s, e in enumerate(ends[i]) if e >= j)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)


def test_group_normalize_equal_rewards_give_zero():
    p, mask = padded([[0.3, 0.3], [0.3], [0.1, 0.5], [0.2]], -1e9)
    out = credit.group_normalize_steps(p, mask, group_size=2)
    np.testing.assert_array_equal(out[:2], np.zeros((2, S)))
    assert np.all(out[2:][mask[2:]] != 0)


def test_leave_one_out_hand_values_and_sum_zero():
    r = jnp.array([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])
    a = credit.leave_one_out(r, 4)
    np.testing.assert_allclose(a[:4], [1.0, -1 / 3, -1 / 3, -1 / 3], rtol=1e-6)
    np.testing.assert_allclose(a[4], 2.0 - 6.0, rtol=1e-6)
    np.testing.assert_allclose(a.reshape(2, 4).sum(1), [0, 0], atol=1e-6)
    with pytest.raises(ValueError, match="group_size"):
        credit.leave_one_out(r, 3)


def test_subtract_loo_mean():
    x = np.array([[1.0, 3.0, 99.0], [4.0, 99.0, 99.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    # Row means are 2 and 4; each row loses the other row's mean.
    np.testing.assert_allclose(
        credit.subtract_loo_mean(x, mask, 2), [[-3.0, -1.0, 0.0], [2.0, 0.0, 0.0]]
    )


def test_outcome_at_last_step_has_return_to_go_semantics():
    p, mask = padded(ROWS, -1e9)
    x = np.array([1.0, -2.0, 0.5], np.float32)
    with_outcome = credit.add_to_last_step(p, x, mask)
    base = credit.sum_form_returns(p, mask, 0.5)
    lengths = mask.sum(1)
    gained = (0.5 ** (lengths[:, None] - 1 - np.arange(S))) * x[:, None] * mask
    np.testing.assert_allclose(
        credit.sum_form_returns(with_outcome, mask, 0.5), base + gained, rtol=1e-5, atol=1e-6
    )
    # With gamma = 1 it is the same as adding the outcome to every token.
    seg_steps = np.array([[0, 0, 1, 2, -1], [0, -1, -1, -1, -1], [0, 1, 2, 3, 3]])
    m = (seg_steps >= 0).astype(np.int32)
    at_eos = steps.steps_to_tokens(credit.sum_form_returns(with_outcome, mask), seg_steps)
    everywhere = credit.combine_with_outcome(
        steps.steps_to_tokens(credit.sum_form_returns(p, mask), seg_steps), x, m
    )
    np.testing.assert_allclose(at_eos, everywhere, rtol=1e-5, atol=1e-6)


def test_combine_with_outcome_weights():
    proc = np.array([[1.0, 2.0, 5.0]], np.float32)
    m = np.array([[1, 1, 0]])
    out = credit.combine_with_outcome(proc, np.array([3.0]), m, 0.5, 0.1)
    np.testing.assert_allclose(out, [[0.8, 1.3, 0.0]], rtol=1e-6)


def test_prime_phi_equal_ref_gives_zero_rewards_and_log2_loss():
    rng = np.random.default_rng(0)
    lp = rng.normal(size=(4, 6)).astype(np.float32)
    m = (np.arange(6)[None] < np.array([[6], [3], [1], [4]])).astype(np.int32)
    np.testing.assert_array_equal(credit.implicit_process_rewards(lp, lp, m), np.zeros((4, 6)))
    num, den = credit.implicit_prm_bce_loss(lp, lp, m, np.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_allclose(num / den, np.log(2.0), rtol=1e-6)


def test_prime_bce_value_and_gradient():
    lp_phi = np.array([[-1.0, -2.0, 7.0], [-0.5, -0.5, -0.5]], np.float32)
    lp_ref = np.array([[-2.0, -1.0, 0.0], [-1.0, -2.0, -3.0]], np.float32)
    m = np.array([[1, 1, 0], [1, 1, 1]])
    y = np.array([1.0, 0.0])
    beta = 0.5
    z = beta * np.array([(-1 + 2) + (-2 + 1), 0.5 + 1.5 + 2.5])
    sig = 1 / (1 + np.exp(-z))
    bce = -(y * np.log(sig) + (1 - y) * np.log(1 - sig))

    def loss(lp):
        num, den = credit.implicit_prm_bce_loss(lp, lp_ref, m, y, beta)
        return num / den

    np.testing.assert_allclose(loss(lp_phi), bce.mean(), rtol=1e-6)
    grad = jax.grad(loss)(lp_phi)
    np.testing.assert_allclose(grad, beta * m * (sig - y)[:, None] / 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_prime_advantages_match_loop_reference(gamma):
    rng = np.random.default_rng(1)
    g, n, t = 3, 6, 5
    r = rng.normal(size=(n, t)).astype(np.float32)
    lengths = np.array([5, 2, 4, 1, 5, 3])
    m = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    r_garbage = np.where(m > 0, r, 1e6).astype(np.float32)
    outcome = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], np.float32)
    adv = credit.prime_advantages(r_garbage, outcome, m, g, gamma, 0.7, 2.0)
    expected = np.zeros((n, t))
    for i in range(n):
        others = [j for j in range(i // g * g, i // g * g + g) if j != i]
        base = sum(r[j, : lengths[j]].mean() for j in others) / (g - 1)
        out_adv = outcome[i] - sum(outcome[j] for j in others) / (g - 1)
        last = lengths[i] - 1
        for k in range(lengths[i]):
            proc = sum(gamma ** (u - k) * (r[i, u] - base) for u in range(k, lengths[i]))
            expected[i, k] = 0.7 * proc + 2.0 * gamma ** (last - k) * out_adv
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
    # Per source, leave-one-out advantages of a group sum to zero.
    sums = np.asarray(credit.prime_advantages(r, outcome, m, g, 1.0, 0.0, 1.0))[:, 0]
    np.testing.assert_allclose(sums.reshape(2, 3).sum(1), [0, 0], atol=1e-6)


def test_min_form_token_advantages_end_to_end_under_jit():
    text = "1+2=3\n3*4=12\n#### 12"
    tokens = np.full((1, 24), 256, np.int32)
    tokens[0, : len(text)] = list(text.encode())
    m = (tokens != 256).astype(np.int32)

    @jax.jit
    def token_advantages(tokens, m, p):
        seg = steps.segment_steps(tokens, m, 10, max_steps=4)
        return steps.steps_to_tokens(
            credit.strict_min_returns(p, seg.step_mask_NxS), seg.token_step_NxT
        )

    adv = token_advantages(tokens, m, jnp.array([[0.9, -0.5, 0.7, -100.0]]))
    np.testing.assert_allclose(adv[0], [-0.5] * 13 + [0.7] * 7 + [0.0] * 4)


RETURN_FORMS = {
    "sum_g1": lambda p, m: credit.sum_form_returns(p, m, 1.0),
    "sum_g09": lambda p, m: credit.sum_form_returns(p, m, 0.9),
    "min": credit.strict_min_returns,
    "soft_min": lambda p, m: credit.soft_min_returns(p, m, 0.1),
    "min_delta": lambda p, m: credit.step_returns(p, m, "min", "delta"),
}


@pytest.mark.parametrize("name", sorted(RETURN_FORMS))
def test_step_rewards_sum_back_to_the_returns_of_every_form(name):
    """sum_{s' >= s} r'_s' = G_s on existing steps; padded slots never read, r' 0 there."""
    expected = to_padded([ref_rows for ref_rows in _returns_of(name)])
    for fill in [0.0, -1e9, np.nan]:
        p, mask = padded(ROWS, fill)
        G = jax.jit(RETURN_FORMS[name])(p, mask)
        np.testing.assert_allclose(G, expected, rtol=1e-5, atol=1e-6)
        # Garbage in the returns' padded slots is never read either.
        r = jax.jit(credit.returns_to_step_rewards)(np.where(mask, G, fill), mask)
        assert not np.asarray(r)[~mask].any()
        reverse_cumsum = np.flip(np.cumsum(np.flip(np.asarray(r), 1), 1), 1)
        np.testing.assert_allclose(np.where(mask, reverse_cumsum, 0), expected, atol=1e-6)


def _returns_of(name):
    refs = {
        "sum_g1": lambda r: ref_sum(r, 1.0),
        "sum_g09": lambda r: ref_sum(r, 0.9),
        "min": ref_min,
        "soft_min": lambda r: ref_soft_min(r, 0.1),
        "min_delta": lambda r: ref_min(ref_delta(r)),
    }
    return [refs[name](row) for row in ROWS]


def test_step_rewards_by_hand():
    p, mask = padded([[0.5, -0.2, 0.8]], np.nan)
    # sum-form, gamma = 1: the step rewards themselves.
    np.testing.assert_allclose(
        credit.returns_to_step_rewards(credit.sum_form_returns(p, mask), mask),
        np.where(mask, p, 0),
        atol=1e-6,
    )
    # min: G = -0.2, -0.2, 0.8, so r' = 0, -1.0, 0.8: min(r_s - G_{s+1}, 0), r on the last step.
    np.testing.assert_allclose(
        credit.returns_to_step_rewards(credit.strict_min_returns(p, mask), mask),
        [[0.0, -1.0, 0.8, 0, 0]],
        atol=1e-6,
    )
    # soft min: r'_s = w_s r_s.
    w = credit.soft_min_weights(p, mask, 0.1)
    np.testing.assert_allclose(
        credit.returns_to_step_rewards(credit.soft_min_returns(p, mask, 0.1), mask),
        w * np.where(mask, p, 0),
        rtol=1e-5,
        atol=1e-7,
    )


def test_min_form_step_rewards_pay_nothing_for_a_repeated_good_step():
    honest, mask_h = padded([[0.9, 0.2]], 0.0)
    repeated, mask_r = padded([[0.9, 0.9, 0.9, 0.2]], 0.0)
    r_h = credit.returns_to_step_rewards(credit.strict_min_returns(honest, mask_h), mask_h)
    r_r = credit.returns_to_step_rewards(credit.strict_min_returns(repeated, mask_r), mask_r)
    np.testing.assert_allclose(r_h[0, :2], [0.0, 0.2], atol=1e-6)
    np.testing.assert_allclose(r_r[0, :4], [0.0, 0.0, 0.0, 0.2], atol=1e-6)


def test_step_end_rewards_under_jit_return_G_from_every_token():
    text = "1+2=3\n3*4=12\n#### 12"
    tokens = np.full((2, 24), 256, np.int32)
    tokens[0, : len(text)] = list(text.encode())
    tokens[1, :5] = list(b"7\n8\n9")  # 3 steps in 2 slots: the last slot merges "8\n9"
    m = (tokens != 256).astype(np.int32)

    @jax.jit
    def rewards(tokens, m, p):
        seg = steps.segment_steps(tokens, m, 10, max_steps=2 if p.shape[1] == 2 else 4)
        r_NxT, G_NxS = credit.step_end_rewards(p, seg, "min")
        back_NxS = steps.values_at_step_ends(r_NxT, seg.step_end_NxS, seg.step_mask_NxS)
        return r_NxT, G_NxS, back_NxS, steps.steps_to_tokens(G_NxS, seg.token_step_NxT)

    r, G, back, G_tokens = rewards(tokens[:1], m[:1], jnp.array([[0.9, -0.5, 0.7, -100.0]]))
    np.testing.assert_allclose(G[0], [-0.5, -0.5, 0.7, 0.0], atol=1e-6)
    # r' on the ends (positions 5, 12, 19): -0.5 - (-0.5) = 0, -0.5 - 0.7, 0.7.
    want = np.zeros(24)
    want[[5, 12, 19]] = [0.0, -1.2, 0.7]
    np.testing.assert_allclose(r[0], want, atol=1e-6)
    np.testing.assert_allclose(back[0], [0.0, -1.2, 0.7, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.flip(np.cumsum(np.flip(r[0]))), G_tokens[0], atol=1e-6)
    # Overflow: the merged last slot's reward sits on the row's last token; G = 0.5, 0.8 (min).
    r, G, _, G_tokens = rewards(tokens[1:], m[1:], jnp.array([[0.5, 0.8]]))
    np.testing.assert_allclose(r[0, :5], [0.0, -0.3, 0.0, 0.0, 0.8], atol=1e-6)
    np.testing.assert_allclose(np.flip(np.cumsum(np.flip(r[0]))), G_tokens[0], atol=1e-6)
