import itertools
import math
import random

import pytest

from rl_lm.rewards.tool_rewards import otc_grpo_rewards, otc_r_tool, retool_reward, toolrl_reward
from rl_lm.tools.calls import ToolCall

WEATHER = ("get_weather", {"city": "Paris", "unit": "C"})  # S_max = 1 + 1 + 2 = 4


def test_toolrl_maximum_is_4():
    terms = toolrl_reward([WEATHER], [WEATHER], format_ok=True)
    assert (terms.name, terms.param, terms.value, terms.s_max) == (1.0, 1.0, 2.0, 4.0)
    assert (terms.format, terms.correctness, terms.total) == (1.0, 3.0, 4.0)


def test_toolrl_minimum_is_minus_3():
    assert toolrl_reward([], [WEATHER], format_ok=False).total == -3.0
    wrong_tool = ("search", {"city": "Paris", "unit": "C"})  # same arguments, other tool: 0
    assert toolrl_reward([wrong_tool], [WEATHER], format_ok=False).total == -3.0


def test_toolrl_partial_match_by_hand():
    # name 1, param Jaccard({city, unit}, {city, days}) = 1/3, one value matches:
    # S = 7/3, correctness = 6 * (7/3) / 4 - 3 = 0.5.
    pred = [("get_weather", {"city": "Paris", "days": 3})]
    terms = toolrl_reward(pred, [WEATHER], format_ok=True)
    assert math.isclose(terms.param, 1 / 3) and terms.value == 1.0
    assert math.isclose(terms.correctness, 0.5) and math.isclose(terms.total, 1.5)


def test_toolrl_extra_call_halves_the_name_term():
    # name Jaccard({get_weather}, {get_weather, search}) = 1/2; S = 0.5 + 1 + 2 = 3.5.
    terms = toolrl_reward([WEATHER, ("search", {"q": "x"})], [WEATHER], format_ok=True)
    assert terms.name == 0.5
    assert math.isclose(terms.correctness, 6 * 3.5 / 4 - 3)


def test_toolrl_matches_calls_in_any_order():
    gt = [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]  # S_max = 1 + 2 + 4 = 7
    terms = toolrl_reward(gt[::-1], gt, format_ok=True)
    assert (terms.param, terms.value, terms.correctness) == (2.0, 4.0, 3.0)


def test_toolrl_no_call_expected_and_none_made():
    assert toolrl_reward([], [], format_ok=True).total == 4.0


def test_toolrl_unparsed_call_counts_as_none():
    bad = ToolCall(None, {}, "{oops", error="invalid JSON")
    good = ToolCall("get_weather", {"city": "Paris", "unit": "C"}, "")
    assert toolrl_reward([bad], [WEATHER], format_ok=False).total == -3.0
    assert toolrl_reward([bad, good], [WEATHER], format_ok=False).correctness == 3.0


def test_toolrl_range_on_random_calls():
    rng = random.Random(0)
    names, keys = ["f", "g", "h"], ["x", "y", "z"]

    def calls():
        return [
            (rng.choice(names), {k: rng.randint(0, 1) for k in rng.sample(keys, rng.randint(0, 3))})
            for _ in range(rng.randint(0, 3))
        ]

    for _ in range(300):
        terms = toolrl_reward(calls(), calls(), format_ok=rng.random() < 0.5)
        assert -3.0 - 1e-9 <= terms.total <= 4.0 + 1e-9


def test_retool():
    assert (retool_reward(True), retool_reward(False)) == (1.0, -1.0)


def test_otc_by_hand():
    terms = otc_grpo_rewards(calls=[2, 3, 1, 5], correct=[True, True, False, False])
    assert {t.optimal_calls for t in terms} == {2}
    # m = n = 2: sin(pi/2) = 1. m = 3: f = 2*2*3/5 = 2.4, sin(2.4 pi / 4) = sin(0.6 pi).
    assert terms[0].r_tool == 1.0 and terms[0].total == 2.0
    assert math.isclose(terms[1].r_tool, math.sin(0.6 * math.pi))
    # An incorrect sample keeps its r_tool for logging (m = 1: f = 4/3, sin(pi/3)) but earns 0.
    assert math.isclose(terms[2].r_tool, math.sin(math.pi / 3))
    assert (terms[2].efficiency, terms[2].total) == (0.0, 0.0)


def test_otc_zero_optimal_calls():
    terms = otc_grpo_rewards(calls=[0, 2], correct=[True, True], c=1.0)
    assert terms[0].r_tool == 1.0
    assert math.isclose(terms[1].r_tool, math.cos(2 * math.pi / 5))


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_otc_more_calls_score_less(n):
    values = [otc_r_tool(m, n) for m in range(n, n + 12)]
    assert values[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(values))


def test_otc_incorrect_never_beats_correct():
    rng = random.Random(0)
    for _ in range(300):
        size = rng.randint(1, 8)
        calls = [rng.randint(0, 6) for _ in range(size)]
        correct = [rng.random() < 0.5 for _ in range(size)]
        terms = otc_grpo_rewards(calls, correct, alpha=rng.uniform(0, 2))
        worst_right = min((t.total for t in terms if t.correctness), default=math.inf)
        best_wrong = max((t.total for t in terms if not t.correctness), default=-math.inf)
        assert best_wrong < worst_right
