"""User reward functions by import path: weighted into the sum, checked at start and at run time."""

import numpy as np
import pytest

from rl_lm.rewards import user

FIXTURE = "tests.rewards.user_reward_fixture"


def test_parse_spec():
    assert user.parse(f"{FIXTURE}:short=0.5, {FIXTURE}:echoes_prompt,math_verify=2") == {
        f"{FIXTURE}:short": 0.5,
        f"{FIXTURE}:echoes_prompt": 1.0,
        "math_verify": 2.0,
    }
    assert user.parse("") == {} and user.parse(" , ") == {}
    with pytest.raises(ValueError, match=r"grpo.reward_fns item 'my_pkg.score=1' is neither"):
        user.parse("my_pkg.score=1", "grpo.reward_fns")
    with pytest.raises(ValueError, match=r"item 'm:f=high': weight 'high' is not a number"):
        user.parse("m:f=high")


def test_user_functions_are_weighted_with_the_builtin_ones():
    fn = user.combine(
        {"exact_match": 1.0}, f"{FIXTURE}:short=0.5,{FIXTURE}:echoes_prompt=0.25", "grpo.reward_fns"
    )
    prompts = ["Say 12", "Say 12", "Say seven", "Say 1000"]
    responses = ["12", "12 or 13", "no", "1000"]
    answers = ["12", "12", "7", "1000"]
    got = fn(prompts, responses, answers)
    # exact_match + 0.5 * short + 0.25 * echoes_prompt
    np.testing.assert_allclose(got, [1 + 0.5 + 0.25, 0 + 0 + 0.25, 0 + 0.5 + 0, 1 + 0 + 0.25])
    assert got.dtype == np.float32 and got.shape == (4,)


def test_builtin_names_join_by_flag_too():
    fn = user.combine({"exact_match": 1.0}, "math_verify=0.5,exact_match")
    np.testing.assert_allclose(fn(["q"], ["\\boxed{\\frac{1}{2}}"], ["0.5"]), [0.5])
    np.testing.assert_allclose(fn(["q"], ["7"], ["7"]), [2.5])
    with pytest.raises(ValueError, match="Unknown reward"):
        user.combine({"exact_mtach": 1.0})


@pytest.mark.parametrize(
    "path, message",
    [
        ("no_such_pkg.rewards:score", "no_such_pkg.rewards:score: cannot import no_such_pkg"),
        (f"{FIXTURE}:missing", f"{FIXTURE}:missing: module {FIXTURE} has no function missing"),
        (f"{FIXTURE}:NOT_A_FUNCTION", "has int, not a function, NOT_A_FUNCTION"),
        (f"{FIXTURE}:one_too_many", f"{FIXTURE}:one_too_many returned shape \\(4,\\) for 3"),
        (f"{FIXTURE}:always_nan", f"{FIXTURE}:always_nan returned nan for response 0"),
        (f"{FIXTURE}:raises", f"{FIXTURE}:raises raised KeyError: 'metadata'"),
        (f"{FIXTURE}:not_numbers", f"{FIXTURE}:not_numbers returned list, not 3 numbers"),
    ],
)
def test_bad_functions_fail_at_start_in_one_line(path, message):
    with pytest.raises(ValueError, match=message) as e:
        user.combine({}, f"{path}=0.5")
    assert "\n" not in str(e.value)


def test_a_non_finite_reward_at_run_time_names_the_function():
    fn = user.combine({}, f"{FIXTURE}:nan_at_runtime")  # passes the probe
    np.testing.assert_array_equal(fn(["p"], ["ok"], ["1"]), [0.0])
    with pytest.raises(
        ValueError, match=f"{FIXTURE}:nan_at_runtime returned nan for response 1"
    ) as e:
        fn(["p", "p"], ["ok", "nan"], ["1", "1"])
    assert "\n" not in str(e.value)
