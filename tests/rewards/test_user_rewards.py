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


def _one_step(algo, config, data_dir, monkeypatch):
    """The raw rewards of one `algo` step (GRPO's before group advantages, PPO's before
    normalization) and the calls of the recorded user function."""
    import jax

    from rl_lm import parallel
    from rl_lm.algos import grpo, ppo, ppo_loss
    from rl_lm.core import advantages
    from tests.rewards import user_reward_fixture

    config.unlock()
    config.data.data_dir = str(data_dir)
    config.lock()
    seen = []
    if algo == "grpo":
        real = advantages.group_advantages
        spy = lambda r, *a: seen.append(np.asarray(r).reshape(-1)) or real(r, *a)
        monkeypatch.setattr(advantages, "group_advantages", spy)
    else:
        real = ppo_loss.normalize_rewards
        spy = lambda s, *a: seen.append(np.asarray(s)) or real(s, *a)
        monkeypatch.setattr(ppo_loss, "normalize_rewards", spy)
    monkeypatch.setattr(user_reward_fixture, "CALLS", [])
    module = {"grpo": grpo, "ppo": ppo}[algo]
    trainer = module.make_trainer(config, parallel.make_mesh(config.mesh))
    probe, *calls = user_reward_fixture.CALLS  # the probe call when the trainer was built
    assert probe == tuple(map(list, user.PROBE))
    state = trainer.init_state(jax.random.PRNGKey(0))
    trainer.step(state, next(trainer.batches(0)))
    (reward,) = seen
    return reward, user_reward_fixture.CALLS[1:]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_trainers_add_the_weighted_user_reward_of_each_prompt(algo, tmp_path, monkeypatch):
    from configs import grpo_math, ppo_arith
    from rl_lm.rewards import verifiable

    if algo == "grpo":
        config = grpo_math.get_config("runlocal")
        config.grpo.reward_fns = f"{FIXTURE}:recorded=0.5"
        builtin, g = "math_verify", config.grpo.num_generations
    else:
        config = ppo_arith.get_config("runlocal")
        config.ppo.reward.reward_fns = f"{FIXTURE}:recorded=0.5"
        builtin, g = "exact_match", config.ppo.num_generations
    reward, ((prompts, responses, answers),) = _one_step(algo, config, tmp_path, monkeypatch)
    n = config.data.batch_size * g
    assert len(prompts) == len(responses) == len(answers) == n
    # Each prompt ("51+82=") comes with its own answer, once per sample of its group.
    assert all(str(eval(p.rstrip("="))) == a for p, a in zip(prompts, answers, strict=True))
    assert all(prompts[i] == prompts[i - i % g] for i in range(n))
    expected = verifiable.combine({builtin: 1.0})(responses, answers) + 0.5 * np.array(
        [len(p) % 3 for p in prompts], np.float32
    )
    np.testing.assert_allclose(reward, expected, rtol=1e-6)
