"""Reward sources: each source's rewards and metrics by hand, their weighted sum in list
order, the stateful source's state in the train state, and the config's two forms."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base, grpo_arith, grpo_synthetic, ppo_arith, ppo_synthetic
from rl_lm import parallel, tasks
from rl_lm.algos import reward_sources, rm_rewards
from rl_lm.algos.rollout import Rollout
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards import user


def _rollout(texts, answers, lengths, t=6):
    """A Rollout of N rows whose only device fields that matter are the response masks."""
    n = len(texts)
    mask_NxT = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    zeros = np.zeros((n, t), np.int32)
    return Rollout(
        prompt=jnp.asarray(zeros),
        prompt_mask=jnp.asarray(zeros),
        response=jnp.asarray(zeros),
        mask=jnp.asarray(mask_NxT),
        lp_sample=jnp.zeros((n, t)),
        host_response=zeros,
        host_mask=mask_NxT,
        texts=list(texts),
        answers=list(answers),
    )


def _score(source, r, prompts_N=None, state=()):
    return source.score(state, r, prompts_N or [""] * len(r.texts))


def test_verifiable_source_weights_the_builtin_checks():
    # exact_match 1 where the last number is the answer, format 0.5 where the text is a number.
    fn = user.combine({"exact_match": 1.0, "format": 0.5})
    r = _rollout(["4", "so 4", "5", "x"], ["4", "4", "4", "4"], [1, 4, 1, 1])
    state, reward_N, metrics = _score(reward_sources.verifiable(fn), r)
    assert state == ()
    np.testing.assert_array_equal(reward_N, [1.5, 1.0, 0.5, 0.0])
    assert reward_N.dtype == np.float32
    assert metrics == {"reward_verifiable": 0.75}


def test_verifiable_source_passes_each_row_its_prompt():
    seen = []
    fn = lambda prompts, responses, answers: seen.append(prompts) or np.zeros(2, np.float32)
    _score(reward_sources.verifiable(fn), _rollout(["a", "b"], ["", ""], [1, 1]), ["p", "q"])
    assert seen == [["p", "q"]]


def test_overlong_source_is_dapos_soft_punishment():
    # max_len 6, cache 2: free up to 4 tokens, then (4 - L) / 2, -1 at 6.
    r = _rollout(["", "", "", ""], ["", "", "", ""], [3, 4, 5, 6])
    _, reward_N, metrics = _score(reward_sources.overlong(6, 2), r)
    np.testing.assert_array_equal(reward_N, [0.0, 0.0, -0.5, -1.0])
    assert metrics == {}


def test_reward_model_source_scores_with_its_state_and_keeps_it():
    # A "reward model" paying w per response token: lengths 1, 2, 3 -> 2, 4, 6.
    scorer = lambda params, rows: params["w"] * rows["mask"].sum(1)
    source = reward_sources.reward_model(scorer, load=lambda: {"w": jnp.float32(2.0)})
    params = source.init()
    state, reward_N, metrics = _score(
        source, _rollout(["", "", ""], ["", "", ""], [1, 2, 3]), state=params
    )
    assert state is params
    np.testing.assert_array_equal(reward_N, [2.0, 4.0, 6.0])
    assert metrics == {"reward_learned": 4.0}


def test_true_reward_source_reads_prompts_and_texts():
    fn = lambda prompts, responses: np.array(
        [float(p == r) for p, r in zip(prompts, responses, strict=True)], np.float32
    )
    r = _rollout(["ab", "ba"], ["", ""], [2, 2])
    _, reward_N, metrics = _score(reward_sources.true_reward(fn), r, ["ab", "ab"])
    np.testing.assert_array_equal(reward_N, [1.0, 0.0])
    assert metrics == {"reward_true": 0.5}


def _constant(values, name):
    values = np.asarray(values, np.float32)
    return reward_sources.stateless(lambda r, p: (values, {name: float(values.mean())}))


def test_score_sums_weighted_sources_in_order_and_weight_zero_only_logs():
    sources = [
        reward_sources.Weighted("a", 1.0, _constant([1.0, 2.0], "reward_a")),
        reward_sources.Weighted("b", 0.5, _constant([4.0, -2.0], "reward_b")),
        reward_sources.Weighted("c", 0.0, _constant([100.0, 100.0], "reward_c")),
    ]
    updates, reward_N, metrics = reward_sources.score(
        sources, {}, _rollout(["", ""], ["", ""], [1, 1]), ["", ""]
    )
    np.testing.assert_array_equal(reward_N, [3.0, 1.0])  # 1 + 0.5 * 4, 2 + 0.5 * -2
    assert reward_N.dtype == np.float32
    assert metrics == {"reward_a": 1.5, "reward_b": 1.0, "reward_c": 100.0}
    assert list(metrics) == ["reward_a", "reward_b", "reward_c"] and updates == {}


def test_score_reads_and_returns_a_stateful_sources_train_state_entry():
    def score(state, r, prompts_N):  # A source that counts the rollouts it has scored.
        return state + 1, np.full(len(r.texts), float(state), np.float32), {}

    counter = reward_sources.RewardSource(init=lambda: 0, score=score)
    sources = [reward_sources.Weighted("count", 2.0, counter, "count")]
    train_state = {"params": None, "count": 3}
    updates, reward_N, _ = reward_sources.score(
        sources, train_state, _rollout(["", ""], ["", ""], [1, 1]), ["", ""]
    )
    assert updates == {"count": 4}
    np.testing.assert_array_equal(reward_N, [6.0, 6.0])
    assert reward_sources.state_init(sources, "count")() == 0
    assert reward_sources.state_init(sources, "rm_params") is None


def test_prompt_texts_repeat_each_prompt_per_generation():
    tok = ByteTokenizer()
    ids = [tok.encode("1+2=", add_eos=False), tok.encode("3+4=", add_eos=False)]
    prompts = {"prompt": np.asarray(ids, np.int32), "prompt_mask": np.ones((2, 4), np.int32)}
    assert reward_sources.prompt_texts(tok, prompts, 3) == ["1+2="] * 3 + ["3+4="] * 3


def _names(sources):
    return [(w.name, w.weight, w.state_key) for w in sources]


@pytest.mark.parametrize(
    "source, want",
    [
        ("verifiable", [("verifiable", 1.0, None)]),
        ("reward_model", [("reward_model", 1.0, "rm_params")]),
        ("both", [("verifiable", 1.0, None), ("reward_model", 1.0, "rm_params")]),
    ],
)
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_existing_fields_name_the_same_sources_in_grpo_and_ppo(algo, source, want):
    config = {"grpo": grpo_synthetic, "ppo": ppo_synthetic}[algo].get_config("runlocal")
    config.unlock()
    if algo == "grpo":
        config.grpo.reward_source = source
    else:
        config.ppo.reward.source = source
    mesh = parallel.make_mesh(base.mesh())
    task = tasks.for_config(config)
    sources = reward_sources.from_config(config, algo, mesh=mesh, init_from=None, task=task)
    # sort_pref has a hidden true reward: logged, not added.
    assert _names(sources) == [*want, ("true_reward", 0.0, None)]
    uses_rm = source != "verifiable"
    assert (reward_sources.reward_model_config(config, algo) is not None) == uses_rm


def test_grpo_overlong_cache_adds_dapos_shaping_first():
    config = grpo_arith.get_config("runlocal")
    config.unlock()
    config.grpo.overlong_cache = 2
    sources = reward_sources.from_config(
        config, "grpo", mesh=None, init_from=None, task=tasks.for_config(config)
    )
    assert _names(sources) == [("overlong", 1.0, None), ("verifiable", 1.0, None)]


def test_ppo_verifiable_source_reads_ppos_fields(monkeypatch):
    config = ppo_arith.get_config("runlocal")
    config.unlock()
    config.ppo.reward.verifiable = ml_collections.ConfigDict({"exact_match": 1.0})
    config.ppo.reward.reward_fns = "format=0.5"
    (source,) = reward_sources.from_config(
        config, "ppo", mesh=None, init_from=None, task=tasks.for_config(config)
    )
    _, reward_N, _ = _score(source.source, _rollout(["4", "so 4"], ["4", "4"], [1, 4]))
    np.testing.assert_array_equal(reward_N, [1.5, 1.0])


def test_listed_sources_replace_the_source_field_and_sum_in_a_fixed_order():
    config = grpo_synthetic.get_config("runlocal")
    config.unlock()
    config.grpo.overlong_cache = 2
    config.grpo.reward_sources = "reward_model=0.5, overlong,true_reward=2"
    want = {"overlong": 1.0, "reward_model": 0.5, "true_reward": 2.0}
    assert list(reward_sources.weights(config, "grpo").items()) == list(want.items())
    sources = reward_sources.from_config(
        config,
        "grpo",
        mesh=parallel.make_mesh(base.mesh()),
        init_from=None,
        task=tasks.for_config(config),
    )
    assert _names(sources) == [
        ("overlong", 1.0, None),
        ("reward_model", 0.5, "rm_params"),
        ("true_reward", 2.0, None),
    ]


@pytest.mark.parametrize(
    "listed, match",
    [
        ("learned=1", r"grpo.reward_sources: unknown source\(s\) \['learned'\]"),
        ("verifiable=one", "grpo.reward_sources: verifiable='one': a weight must be a number"),
        ("verifiable=nan", "grpo.reward_sources: verifiable=nan: .* finite"),
        ("verifiable=1,verifiable=2", "grpo.reward_sources: 'verifiable' is listed twice"),
        ("overlong=1", "names 'overlong', which needs grpo.overlong_cache > 0"),
        ("true_reward", "names 'true_reward', but task 'arithmetic' has none"),
    ],
)
def test_listed_sources_fail_in_one_line_naming_the_field(listed, match):
    config = grpo_arith.get_config("runlocal")
    config.unlock()
    config.grpo.reward_sources = listed
    with pytest.raises(ValueError, match=match) as e:
        reward_sources.from_config(
            config, "grpo", mesh=None, init_from=None, task=tasks.for_config(config)
        )
    assert "\n" not in str(e.value)


def test_listed_reward_model_needs_a_reward_model_section():
    config = grpo_arith.get_config("runlocal")
    config.unlock()
    config.grpo.reward_sources = "reward_model=1"
    with pytest.raises(ValueError, match="grpo.reward_sources='reward_model' needs a reward_model"):
        reward_sources.reward_model_config(config, "grpo")
    assert rm_rewards.model_config(config, "verifiable", "grpo.reward_source") is None
