"""The tool-use reward sources by hand: ToolRL's decomposed reward of an episode's calls
against the task's ground-truth call, ReTool's +1 / -1, and how a config names them."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import base, grpo_arith, grpo_tool_arith
from rl_lm import parallel, tasks
from rl_lm.algos import reward_sources, source_spec
from rl_lm.algos.rollout import Rollout
from rl_lm.data import tool_arith
from rl_lm.models.tokenizer import ByteTokenizer
from tests.launch_helpers import last_line, run_launch


def _rollout(texts, answers):
    n, t = len(texts), 4
    zeros = np.zeros((n, t), np.int32)
    return Rollout(
        prompt=jnp.asarray(zeros),
        prompt_mask=jnp.asarray(zeros),
        response=jnp.asarray(zeros),
        mask=jnp.ones((n, t), jnp.int32),
        lp_sample=jnp.zeros((n, t)),
        host_response=zeros,
        host_mask=np.ones((n, t), np.int32),
        texts=list(texts),
        answers=list(answers),
    )


CALL = "<call>calculator(expression='865*673')</call>"
# (sampled text, format, name, param, value, total) against the one call
# calculator(expression='865*673'): S_max = 1 + 1 call + 1 key = 3, and
# correctness = 6 * (name + param + value) / 3 - 3.
CASES = [
    (CALL + "#### 582145", 1, 1, 1, 1, 1 + 3),  # the right call and an answer
    # Names matched as sets (the paper's text): a redundant call costs nothing.
    (CALL + CALL + "#### 582145", 1, 1, 1, 1, 1 + 3),
    ("<call>calculator(expression='865*674')</call>#### 7", 1, 1, 1, 0, 1 + 1),  # wrong value
    ("<call>calculator(expr='865*673')</call>#### 7", 1, 1, 0, 0, 1 - 1),  # wrong key
    ("<call>calculator(expression='865*673')</call>", 0, 1, 1, 1, 0 + 3),  # no answer
    ("#### 582145", 1, 0, 0, 0, 1 - 3),  # no call at all
    ("<call>calculator(expression=</call>#### 5", 0, 0, 0, 0, 0 - 3),  # unparsable
    ("<call>search(query='865*673')</call>#### 5", 1, 0, 0, 0, 1 - 3),  # another tool
]


def test_toolrl_source_scores_each_term_as_by_hand():
    source = reward_sources.toolrl(tool_arith.ground_truth_calls, "compact", "marked")
    r = _rollout([c[0] for c in CASES], ["582145"] * len(CASES))
    _, reward_N, metrics = source.score((), r, ["865*673="] * len(CASES))
    want = np.asarray([c[5] for c in CASES], np.float32)
    np.testing.assert_allclose(reward_N, want, atol=1e-6)
    assert reward_N.dtype == np.float32
    assert metrics["reward_toolrl"] == pytest.approx(want.mean())
    for k, key in enumerate(("format", "name", "param", "value"), start=1):
        assert metrics[f"toolrl/{key}"] == pytest.approx(np.mean([c[k] for c in CASES]))
    assert metrics["toolrl/correctness"] == pytest.approx(np.mean(want - [c[1] for c in CASES]))
    assert -3.0 <= reward_N.min() and reward_N.max() <= 4.0


def test_toolrl_source_reads_each_rows_own_prompt():
    source = reward_sources.toolrl(tool_arith.ground_truth_calls, "compact", "marked")
    r = _rollout([CALL + "#### 1", CALL + "#### 1"], ["1", "1"])
    _, reward_N, _ = source.score((), r, ["865*673=", "111*222="])
    np.testing.assert_allclose(reward_N, [4.0, 2.0])  # the second call has the wrong value


def test_retool_source_is_plus_one_or_minus_one():
    r = _rollout(["#### 4", "#### 5", "4", ""], ["4", "4", "4", "4"])
    _, reward_N, metrics = reward_sources.retool("marked").score((), r, [""] * 4)
    np.testing.assert_array_equal(reward_N, [1.0, -1.0, -1.0, -1.0])  # "4" has no marker
    assert metrics == {"reward_retool": -0.5}


def test_tool_arith_ground_truth_call_of_a_decoded_prompt():
    tok = ByteTokenizer()
    ids = np.asarray([tok.encode("865*673=", add_eos=False)], np.int32)
    prompts = {"prompt": ids, "prompt_mask": np.ones_like(ids)}
    (text,) = reward_sources.prompt_texts(tok, prompts, 1)
    assert tool_arith.ground_truth_calls(text) == [("calculator", {"expression": "865*673"})]
    with pytest.raises(ValueError, match="no tool_arith problem"):
        tool_arith.ground_truth_calls("no problem here")
    chat = "<|im_start|>user\n865*673=<|im_end|>\n<|im_start|>assistant\n"
    assert tool_arith.ground_truth_calls(chat) == [("calculator", {"expression": "865*673"})]
    # The demonstration's own call is the ground truth.
    demo = tool_arith.demonstration("865*673", "582145", 1)
    assert demo[0][0] == CALL


@pytest.mark.parametrize(
    "reward, want",
    [
        ("outcome", [("verifiable", 1.0), ("toolrl", 0.0)]),
        ("retool", [("verifiable", 0.0), ("toolrl", 0.0), ("retool", 1.0)]),
        ("toolrl", [("verifiable", 0.0), ("toolrl", 1.0)]),
        ("toolrl_outcome", [("verifiable", 1.0), ("toolrl", 1.0)]),
    ],
)
def test_config_reward_argument_names_the_sources(reward, want):
    # The other arm's terms are logged at weight 0, in NAMES order.
    config = grpo_tool_arith.get_config(f"runlocal,reward={reward}")
    mesh = parallel.make_mesh(base.mesh())
    task = tasks.for_config(config)
    sources = reward_sources.from_config(config, "grpo", mesh=mesh, init_from=None, task=task)
    assert [(w.name, w.weight) for w in sources] == want


def test_toolrl_needs_a_task_with_ground_truth_calls():
    config = grpo_arith.get_config("runlocal")
    config.unlock()
    config.grpo.reward_sources = "toolrl"
    mesh = parallel.make_mesh(base.mesh())
    with pytest.raises(ValueError, match="no ground-truth tool calls"):
        reward_sources.from_config(
            config, "grpo", mesh=mesh, init_from=None, task=tasks.for_config(config)
        )


def test_config_rejects_an_unknown_reward_and_toolrl_without_the_tool():
    with pytest.raises(ValueError, match="expected one of"):
        grpo_tool_arith.get_config("reward=tool_rl")
    with pytest.raises(ValueError, match="needs tool=1"):
        grpo_tool_arith.get_config("reward=toolrl,tool=0")


def test_listed_sources_keep_the_tool_efficiency_knob():
    # The OTC arm sets grpo.tool_efficiency on the command line over a listed reward.
    config = grpo_tool_arith.get_config("runlocal,reward=toolrl")
    config.unlock()
    config.grpo.tool_efficiency = 0.5
    assert reward_sources.weights(config, "grpo") == {
        "verifiable": 0.0,
        "tool_efficiency": 0.5,
        "toolrl": 1.0,
    }
    config.grpo.reward_sources = "verifiable=1,tool_efficiency=2"
    assert reward_sources.weights(config, "grpo")["tool_efficiency"] == 2.0


def test_a_listing_is_a_string_of_names_and_weights_summed_in_a_fixed_order():
    parse = lambda v: source_spec.parse(v, "grpo.reward_sources")
    assert parse("toolrl=0.5, verifiable") == {"verifiable": 1.0, "toolrl": 0.5}
    assert parse({"retool": 2, "overlong": 1.0}) == {"overlong": 1.0, "retool": 2.0}
    assert parse("") == parse(None) == {}
    assert source_spec.parse(source_spec.format_weights({"toolrl": 0.25}), "f") == {"toolrl": 0.25}
    with pytest.raises(ValueError, match="'toolrl' is listed twice"):
        parse("toolrl=1,toolrl=2")


@pytest.mark.slow
def test_a_listing_is_set_from_the_command_line(tmp_path):
    out = run_launch(
        "launch.train",
        "--config=configs/grpo_arith.py:runlocal",
        f"--workdir={tmp_path / 'run'}",
        "--config.grpo.reward_sources=verifiable=1,learned=2",
    )
    assert out.returncode != 0
    assert "grpo.reward_sources: unknown source(s) ['learned']" in last_line(out)


@pytest.mark.parametrize(
    "value, match",
    [(" , ", "lists no source"), ("verifiable=0,toolrl=0", "weights every source 0")],
)
def test_a_listing_that_scores_nothing_is_refused(value, match):
    with pytest.raises(ValueError, match=match):
        source_spec.parse(value, "grpo.reward_sources")
