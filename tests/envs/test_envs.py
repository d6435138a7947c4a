from rl_lm.envs.base import SingleTurn, StepResult


def test_single_turn_is_one_step():
    env = SingleTurn(score=lambda row, text: {"correct": float(text == row["answer"])})
    prompt, state = env.reset({"prompt": "1+1=", "answer": "2"})
    assert prompt == "1+1="
    result = env.step(state, "2")
    assert isinstance(result, StepResult)
    assert result.observation is None and result.done
    assert result.reward_terms == {"correct": 1.0}
    assert result.env_state["turns"] == 1
    assert env.step(state, "3").reward_terms == {"correct": 0.0}
