"""experiments/pure_incentives.py: expected credit of padding, by hand and in closed form."""

import numpy as np
import pytest

from experiments import pure_incentives as pi

P_HAND = (0.8, 0.5)  # outcomes: slip at 1 (0.2), slip at 2 (0.4), all right (0.4)


def test_strict_outcomes_by_hand():
    prob, r = pi.strict_outcomes(P_HAND)
    np.testing.assert_allclose(prob, [0.2, 0.4, 0.4])
    np.testing.assert_array_equal(r, [[-1, -1], [1, -1], [1, 1]])
    assert pi.honest_baseline(P_HAND) == pytest.approx(0.2 * -1 + 0.4 * 0 + 0.4 * 1)


@pytest.mark.parametrize(
    "policy, form, baseline, r_pad, want",
    [
        ("honest", "sum", "none", 0.5, 0.2 * -2 + 0.4 * 0 + 0.4 * 2),
        ("honest", "sum", "loo", 0.5, 0.4 - 2 * 0.2),  # every step loses b = 0.2
        ("honest", "min", "none", 0.5, 2 * 0.4 - 1),
        ("honest+pad", "sum", "none", 0.5, 0.4 + 0.5),
        ("honest+pad", "sum", "loo", 0.5, 0.4 + 0.5 - 3 * 0.2),
        # min(-1, -1, .5), min(1, -1, .5), min(1, 1, .5)
        ("honest+pad", "min", "none", 0.5, 0.2 * -1 + 0.4 * -1 + 0.4 * 0.5),
        ("pad only", "sum", "none", 0.5, 3 * 0.5),
        ("pad only", "min", "none", 0.5, 0.5),
        ("pad only", "min", "loo", -0.25, -0.25 - 0.2),
        # Solve step 1, then pad: [-1, .5, .5] (0.2) or [1, .5, .5] (0.8).
        (1, "sum", "none", 0.5, 0.2 * 0 + 0.8 * 2),
        (1, "min", "none", 0.5, 0.2 * -1 + 0.8 * 0.5),
    ],
)
def test_expected_return_by_hand(policy, form, baseline, r_pad, want):
    got = pi.expected_return(P_HAND, r_pad, 3, policy, form, baseline)
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    "policy, form, want",
    [
        # G_2 of the honest rows (-1, -1), (1, -1), (1, 1): step 2 alone.
        ("honest", "min", 0.6 * -1 + 0.4 * 1),
        ("honest", "sum", 0.6 * -1 + 0.4 * 1),
        # With a 0.5 pad after: min(r_2, .5) and r_2 + .5.
        ("honest+pad", "min", 0.6 * -1 + 0.4 * 0.5),
        ("honest+pad", "sum", 0.6 * -0.5 + 0.4 * 1.5),
    ],
)
def test_return_from_a_later_step_by_hand(policy, form, want):
    got = pi.expected_return(P_HAND, 0.5, 3, policy, form, "none", at_step=2)
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_thresholds_match_the_closed_forms(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.3, 1.0, size=int(rng.integers(1, 6)))
    t = pi.thresholds(list(p), budget=len(p) + 2)
    P_s = np.cumprod(p)
    b = np.mean(2 * P_s - 1)
    assert t["b"] == pytest.approx(b)
    assert t["sum_loo"] == pytest.approx(b, abs=1e-5)
    assert t["sum_gives_up"] == pytest.approx(b, abs=1e-5)
    assert t["sum_none"] == pytest.approx(0.0, abs=1e-5)
    assert t["min"] == pytest.approx(2 * P_s[-1] - 1, abs=1e-5)
    # The structural fact: min-form gives up solving at a padding reward no
    # higher than the one at which sum-form starts padding under PURE's baseline.
    assert t["min"] <= t["sum_loo"] + 1e-6


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("baseline", ["loo", "none"])
def test_drop_gains_match_the_closed_forms(seed, baseline):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.3, 1.0, size=4)
    r_pad = float(rng.uniform(-1, 1))
    P_k = np.concatenate([[1.0], np.cumprod(p)])  # P(first k steps right), k = 0 .. S
    want_sum = [np.sum(r_pad + 1 - 2 * P_k[k + 1 :]) for k in range(5)]
    want_min = [(1 - P_k[-1]) * (r_pad + 1)] * 4 + [0.0]
    np.testing.assert_allclose(pi.drop_gains(p, r_pad, 6, "sum", baseline), want_sum, atol=1e-5)
    np.testing.assert_allclose(pi.drop_gains(p, r_pad, 6, "min", baseline), want_min, atol=1e-5)


def test_swap_gains_by_hand():
    # P_HAND, one for one against honest. k = 0: sum 2 r - E[r1 + r2] = 2 r - (0.6 - 0.2) ...
    r = 0.5
    want_sum = [(r - (2 * 0.8 - 1)) + (r - (2 * 0.4 - 1)), r - (2 * 0.4 - 1)]
    # ... min: r - E[min(r1, r2)] = r - (0.4 - 0.6); from step 2: r - E[r2].
    want_min = [r - (2 * 0.4 - 1), r - (2 * 0.4 - 1)]
    np.testing.assert_allclose(pi.swap_gains(P_HAND, r, "sum", "none"), want_sum, atol=1e-6)
    np.testing.assert_allclose(pi.swap_gains(P_HAND, r, "sum", "loo"), want_sum, atol=1e-6)
    np.testing.assert_allclose(pi.swap_gains(P_HAND, r, "min", "none"), want_min, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_a_one_for_one_swap_never_tempts_sum_form_alone(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        S = int(rng.integers(2, 6))
        p = rng.uniform(0.3, 1.0, S)
        r_pad = float(rng.uniform(-1, 1))
        for baseline in pi.BASELINES:
            total = pi.swap_gains(p, r_pad, "sum", baseline)
            worst = pi.swap_gains(p, r_pad, "min", baseline)
            per_step = total / (S - np.arange(S))  # steps k+1 .. S dropped
            assert np.all(worst >= per_step - 1e-5), (p, r_pad, baseline, total, worst)


def test_no_band_under_loo_and_a_band_without_a_baseline_only_above_half():
    weak, strong = pi.thresholds([0.7] * 4), pi.thresholds([0.95] * 4)
    assert weak["2P-1"] < 0 and weak["min"] < weak["sum_none"]  # no band: P < 1/2
    assert strong["sum_none"] < strong["min"] < strong["sum_loo"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="budget=1"):
        pi.expected_return(P_HAND, 0.0, 1, "honest", "sum", "none")
    with pytest.raises(ValueError, match="probabilities"):
        pi.strict_outcomes([1.5])
    with pytest.raises(ValueError, match="policy"):
        pi.expected_return(P_HAND, 0.0, 3, "lazy", "sum", "none")
    with pytest.raises(ValueError, match="has no step 3"):
        pi.expected_return(P_HAND, 0.0, 3, "honest", "sum", "none", at_step=3)
    with pytest.raises(ValueError, match="k = 0 .. 2"):
        pi.expected_return(P_HAND, 0.0, 3, 3, "sum", "none")


def test_table_and_figure(tmp_path):
    text = pi.table(P_HAND, [1.0, 0.0], budget=3)
    assert len(text.splitlines()) == 2 + 2 * 2 * 2
    assert "| +1.00 | none | min | -0.20 | -0.20 | +1.00 |" in text
    out = tmp_path / "incentives.png"
    pi.figure(list(P_HAND), 1.0, 3, "here").savefig(out)
    assert out.stat().st_size > 0
