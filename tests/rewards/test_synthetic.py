"""Synthetic tasks: the sort task's true reward, Bradley-Terry and intransitive preferences."""

import numpy as np
import pytest

from rl_lm.rewards import synthetic

PROMPT = "sort 5381="  # target "1358"


@pytest.mark.parametrize(
    "response,expected",
    [
        ("1358", 1.0),
        ("5381", 1 / 3),  # the copy: 1 of 3 adjacent pairs in order
        ("8531", 0.0),  # decreasing
        ("135", 6 / 7),  # one digit missing: Dice 2*3/(4+3)
        ("13588", 8 / 9),  # one digit extra
        ("1538", 2 / 3),  # a swap: 2 of 3 pairs in order
        ("1358 ok", 8 / 11),  # filler only dilutes content; order skips non-digits
        ("1 3 5 8", 8 / 11),
        ("\u00e91358", 0.8),  # a 2-byte character counts as 2 bytes
        ("1", 0.4),  # a single digit: Dice 2/5, order vacuously 1
        ("7", 0.0),
        ("", 0.0),
        ("abc", 0.0),
        ("0123456789", 8 / 14),  # sorted but the wrong multiset
        ("1358" * 5000, 8 / 20004 * 15000 / 19999),  # 3 of every 4 steps in order
    ],
)
def test_true_reward_by_hand(response, expected):
    r = synthetic.true_reward([PROMPT], [response])
    assert r.dtype == np.float32 and r.shape == (1,)
    np.testing.assert_allclose(r, [expected], rtol=1e-6)


def test_sort_reward_on_answers_equals_true_reward():
    prompts = ["sort 5381=", "sort 000=", "sort 9210=", "sort 77=", "sort 1="]
    responses = ["1358", "00", "0129", "77 77", "1"]
    answers = synthetic.sort_target(prompts)
    assert answers == ["1358", "000", "0129", "77", "1"]
    np.testing.assert_array_equal(
        synthetic.sort_reward(responses, answers), synthetic.true_reward(prompts, responses)
    )
    np.testing.assert_allclose(synthetic.sort_reward(responses, answers), [1, 0.8, 1, 4 / 7, 1])
    # Only the multiset of the answer matters.
    np.testing.assert_array_equal(
        synthetic.sort_reward(responses, ["8531", "000", "9210", "77", "1"]),
        synthetic.sort_reward(responses, answers),
    )


def test_reward_is_one_exactly_at_the_target():
    rng = np.random.default_rng(0)
    for _ in range(200):
        digits = "".join(map(str, rng.integers(10, size=rng.integers(2, 9))))
        prompt = synthetic.sort_prompt(digits)
        (target,) = synthetic.sort_target([prompt])
        perturbed = [
            target[1:],
            target + str(rng.integers(10)),
            target[::-1] if len(set(target)) > 1 else target + "x",
            target + " ",
        ]
        shuffled = "".join(rng.permutation(list(target)))
        r = synthetic.true_reward([prompt] * 6, [target, *perturbed, shuffled])
        assert r[0] == 1.0
        assert (r[1:] >= 0).all() and (r[1:5] < 1).all()
        assert (r[5] == 1.0) == (shuffled == target)


def test_reward_bad_input_fails_early():
    with pytest.raises(ValueError, match="'sort 12 3=' is not a sort prompt"):
        synthetic.true_reward(["sort 12 3="], ["123"])
    with pytest.raises(ValueError, match="batch sizes differ"):
        synthetic.true_reward([PROMPT, PROMPT], ["1358"])
    with pytest.raises(ValueError, match="answers that are digit strings"):
        synthetic.sort_reward(["1358"], [""])
    with pytest.raises(ValueError, match="non-empty string of digits"):
        synthetic.sort_prompt("12a")


def test_bradley_terry_probability():
    r_a, r_b = np.array([0.8, 0.5, 0.2, 0.5]), np.array([0.5, 0.5, 0.5, 0.8])
    p = synthetic.bradley_terry_probability(r_a, r_b, 0.1)
    assert p.dtype == np.float32
    s3 = 1 / (1 + np.exp(-3.0))
    np.testing.assert_allclose(p, [s3, 0.5, 1 - s3, 1 - s3], rtol=1e-6)
    np.testing.assert_allclose(p + synthetic.bradley_terry_probability(r_b, r_a, 0.1), 1)
    np.testing.assert_array_equal(
        synthetic.bradley_terry_probability(r_a, r_b, 0.0), [1.0, 0.5, 0.0, 0.0]
    )
    np.testing.assert_allclose(synthetic.bradley_terry_probability([1.0], [0.0], 1e-4), [1.0])
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        synthetic.bradley_terry_probability(r_a, r_b, -0.1)


def test_sort_preference_is_bradley_terry_on_the_true_reward():
    p = synthetic.sort_preference([PROMPT] * 3, ["1358", "5381", "135"], ["8531", "1358", "135"])
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-10)), 1 / (1 + np.exp(20 / 3)), 0.5], rtol=1e-5)


def test_rps_prompts_round_trip():
    prompts = [synthetic.rps_prompt("R", 1.0, 427), synthetic.rps_prompt("P", 0.25, 9999)]
    assert prompts == ["rps R 1.0 0427:", "rps P 0.25 9999:"]
    favourite, strength = synthetic.parse_rps_prompts(prompts)
    np.testing.assert_array_equal(favourite, [0, 2])
    np.testing.assert_allclose(strength, [1.0, 0.25])
    for args in [("X", 1.0, 0), ("R", 0.0, 0), ("R", 1.5, 0), ("R", 1e-5, 0), ("R", 1.0, 10**4)]:
        with pytest.raises(ValueError, match="rps_prompt needs"):
            synthetic.rps_prompt(*args)
    with pytest.raises(ValueError, match="not a rock-paper-scissors prompt"):
        synthetic.parse_rps_prompts(["rps R 1 0427:"])


def test_reference_favours_the_prompt_class():
    prompts = [synthetic.rps_prompt(c, 1.0, 0) for c in synthetic.RPS_CLASSES]
    ref = synthetic.rps_reference(prompts)
    # Classes (R, S, P); each favourite gets .6, the class it beats .3, its nemesis .1.
    np.testing.assert_allclose(ref, [[0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6]])


def _all_pairs(strength):
    prompt = synthetic.rps_prompt("S", strength, 1)
    words = [w for ws in synthetic.RPS_WORDS for w in ws] + ["", "rock", "xyz", " Rock"]
    a = [x for x in words for _ in words]
    b = [y for _ in words for y in words]
    return [prompt] * len(a), a, b


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_intransitive_preference_invariants(strength):
    prompts, a, b = _all_pairs(strength)
    p_ab = synthetic.intransitive_preference(prompts, a, b)
    p_ba = synthetic.intransitive_preference(prompts, b, a)
    assert p_ab.dtype == np.float32
    np.testing.assert_allclose(p_ab + p_ba, 1.0)
    np.testing.assert_array_equal(p_ab[np.array(a) == np.array(b)], 0.5)
    win = 0.5 + strength / 2
    cases = {
        ("Rock", "Shears"): win,  # rock beats scissors
        ("Snip", "Page"): win,  # scissors beat paper
        ("Pulp", "Rubble"): win,  # paper beats rock
        ("Rock", "Paper"): 1 - win,
        ("Rock", "Rubble"): 0.5,  # same class
        ("Scissors", "rock"): 1.0,  # an invalid response loses to every valid one
        (" Rock", "Snip"): 0.0,
        ("", "xyz"): 0.5,
    }
    got = synthetic.intransitive_preference(
        [prompts[0]] * len(cases), [k[0] for k in cases], [k[1] for k in cases]
    )
    np.testing.assert_allclose(got, list(cases.values()))


def test_preference_matrix_is_the_design_fixture():
    prompts = [synthetic.rps_prompt("R", 1.0, 0), synthetic.rps_prompt("P", 0.5, 0)]
    p = synthetic.rps_preference_matrix(prompts)
    a = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]])
    np.testing.assert_allclose(p[0], 0.5 + a / 2)
    np.testing.assert_allclose(p[1], 0.5 + a / 4)
    np.testing.assert_array_equal(
        synthetic.response_class(["Rock", "Snip", "Page", "x", ""]), [0, 1, 2, -1, -1]
    )


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _nash_mp(p, ref, beta, iters=300):
    """Exact tabular Nash-MP with eta = 2 beta."""
    eta, pi = 2 * beta, ref
    for _ in range(iters):
        half = _softmax(
            eta / (beta * (1 + eta)) * p @ pi + (eta * np.log(ref) + np.log(pi)) / (1 + eta)
        )
        pi = _softmax(
            eta / (beta * (1 + eta)) * p @ half + (eta * np.log(ref) + np.log(pi)) / (1 + eta)
        )
    return pi


@pytest.mark.parametrize(
    "beta,expected", [(0.1, [0.4321, 0.2303, 0.3376]), (0.5, [0.6435, 0.1932, 0.1633])]
)
def test_class_level_nash_matches_the_design_table(beta, expected):
    # The favourite's game is test_nash_tabular.py's fixture, rotated to put the favourite first.
    for fav in range(3):
        prompt = [synthetic.rps_prompt(synthetic.RPS_CLASSES[fav], 1.0, 5)]
        p, ref = synthetic.rps_preference_matrix(prompt)[0], synthetic.rps_reference(prompt)[0]
        pi = _nash_mp(p.astype(np.float64), ref.astype(np.float64), beta)
        np.testing.assert_allclose(np.roll(pi, -fav), expected, atol=1e-4)
        # The fixed-point equation pi* ~ ref exp(P(. > pi*) / beta).
        np.testing.assert_allclose(pi, _softmax(np.log(ref) + p @ pi / beta), atol=1e-6)


def _fit_bradley_terry(p, steps=3000, lr=0.5):
    """Scores r minimizing the cross-entropy of sigmoid(r_i - r_j) to p[i, j], i != j."""
    r = np.array([1.0, -0.5, 0.3])
    off = ~np.eye(len(r), dtype=bool)
    for _ in range(steps):
        q = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
        g = np.where(off, q - p, 0.0)
        r -= lr * (g.sum(1) - g.sum(0)) / len(r)
    return 1 / (1 + np.exp(-(r[:, None] - r[None, :]))), off


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_no_bradley_terry_reward_represents_the_cycle(strength):
    p = synthetic.rps_preference_matrix([synthetic.rps_prompt("R", strength, 0)])[0]
    q, off = _fit_bradley_terry(p.astype(np.float64))
    # The best fit is indifference, off by s/2 on every pair.
    np.testing.assert_allclose(q, 0.5, atol=1e-6)
    assert np.abs(q - p)[off].max() >= strength / 2 - 1e-6
    # And every reward misses some step of the cycle by at least s/2.
    for r in np.random.default_rng(0).normal(size=(1000, 3)) * 5:
        bt = 1 / (1 + np.exp(-(r[:, None] - r[None, :])))
        assert np.abs(bt - p)[off].max() >= strength / 2 - 1e-6
    # The same fit recovers transitive preferences exactly.
    r_true = np.array([0.9, 0.2, 0.5])
    transitive = 1 / (1 + np.exp(-(r_true[:, None] - r_true[None, :])))
    q, _ = _fit_bradley_terry(transitive)
    np.testing.assert_allclose(q, transitive, atol=1e-4)
