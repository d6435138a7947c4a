"""Arithmetic problems: correct answers, disjoint splits, determinism, config names."""

import re

import pytest

from rl_lm.data import arithmetic, registry
from rl_lm.data.pipeline import eval_examples


def _operands(prompt):
    return [int(x) for x in re.findall(r"\d+", prompt)]


@pytest.mark.parametrize(
    "ops,num_operands", [("+", 2), ("-", 2), ("*", 2), ("+-", 2), ("+-*", 3), ("*-+", 4)]
)
def test_answers_equal_python_eval(ops, num_operands):
    cfg = arithmetic.arithmetic_config(
        max_digits=2, num_operands=num_operands, ops=ops, train_size=400, test_size=100
    )
    problems = arithmetic.make_problems(cfg)
    pairs = problems["train"] + problems["test"]
    for prompt, demo, answer in pairs:
        assert demo == answer
        assert prompt.endswith("=")
        assert answer == str(eval(prompt[:-1]))
        assert len(_operands(prompt)) == num_operands
    operands = [x for p, *_ in pairs for x in _operands(p)]
    assert min(operands) >= 0 and max(operands) < 100 and max(operands) >= 10
    assert {c for p, *_ in pairs for c in p if c in "+-*"} == set(ops)


def test_evaluate_precedence():
    assert arithmetic.evaluate([2, 3, 4], "+*") == 14
    assert arithmetic.evaluate([2, 3, 4], "*-") == 2
    assert arithmetic.evaluate([10, 3, 4], "-*") == -2
    assert arithmetic.evaluate([10, 3, 4], "--") == 3


def test_prepared_splits_are_disjoint_and_correct(tmp_path):
    # 200 possible problems: the test set takes 50, train draws 300 from the other 150.
    name = registry.dataset_name(
        "arithmetic", max_digits=1, ops="+-", train_size=300, test_size=50, seed=3
    )
    train = eval_examples(registry.load_source(name, "train", data_dir=tmp_path))
    test = eval_examples(registry.load_source(name, "test", data_dir=tmp_path))
    assert (len(train), len(test)) == (300, 50)
    test_prompts = {e["prompt"] for e in test}
    assert len(test_prompts) == 50
    assert not test_prompts & {e["prompt"] for e in train}
    for e in train + test:
        assert e["response"] == e["answer"] == str(eval(e["prompt"][:-1]))


def test_preparation_is_deterministic(tmp_path):
    name = registry.dataset_name(
        "arithmetic", num_operands=3, ops="+-*", train_size=300, test_size=60
    )
    runs = [
        [
            eval_examples(registry.load_source(name, s, data_dir=tmp_path / d))
            for s in ("train", "test")
        ]
        for d in ("a", "b")
    ]
    assert runs[0] == runs[1]
    other_seed = arithmetic.make_problems(
        arithmetic.arithmetic_config(
            num_operands=3, ops="+-*", train_size=300, test_size=60, seed=1
        )
    )
    assert [e["prompt"] for e in runs[0][1]] != [p for p, *_ in other_seed["test"]]


def test_test_set_is_fixed_by_difficulty_size_and_seed():
    small = arithmetic.make_problems(arithmetic.arithmetic_config(train_size=100, test_size=50))
    large = arithmetic.make_problems(arithmetic.arithmetic_config(train_size=900, test_size=80))
    assert large["test"][:50] == small["test"]
    assert not {p for p, *_ in large["test"]} & {p for p, *_ in large["train"]}


def test_config_names():
    assert arithmetic.arithmetic_config() is arithmetic.PRESETS["add2"]
    assert arithmetic.arithmetic_config(max_digits=3) is arithmetic.PRESETS["add3"]
    assert arithmetic.arithmetic_config(ops="-+").name == "addsub2"
    assert registry.dataset_name("arithmetic", num_operands=3, ops="*+-") == "arithmetic/mix3"
    cfg = arithmetic.arithmetic_config(max_digits=4, num_operands=3, ops="*+", seed=7)
    assert cfg.name == "d4_n3_addmul_train20000_test1000_seed7"
    assert arithmetic.config_from_name(cfg.name).difficulty() == cfg.difficulty()
    assert registry.dataset_name("arithmetic") == "arithmetic/add2"
    assert registry.dataset_name("arithmetic", config="mix3") == "arithmetic/mix3"
    assert registry.dataset_name("arithmetic", max_digits=4, num_operands=3, ops="+*", seed=7) == (
        "arithmetic/" + cfg.name
    )
    builder = arithmetic.arithmetic_builder("/nonexistent", config=cfg.name)
    assert builder.builder_config.difficulty() == cfg.difficulty()


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"ops": "+/"}, "ops must be"),
        ({"ops": ""}, "ops must be"),
        ({"num_operands": 1}, "num_operands must be >= 2"),
        ({"max_digits": 0}, "max_digits must be in"),
        ({"max_digits": 1, "test_size": 60}, "lower test_size"),
        ({"train_size": 0}, "train_size"),
        ({"digits": 2}, "unknown arithmetic fields"),
        ({"max_digits": 2.0}, "must be an int"),
        ({"demo_error": 101}, "percent in"),
        ({"demo_error": 10, "ops": "+-"}, "needs ops='\\+'"),
    ],
)
def test_bad_config_fails_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        arithmetic.arithmetic_config(**fields)


@pytest.mark.parametrize(
    "a,b,expected", [(57, 68, 15), (17, 25, 32), (5, 5, 0), (99, 1, 90), (0, 0, 0), (40, 3, 43)]
)
def test_carryless_sum_by_hand(a, b, expected):
    assert arithmetic.carryless_sum(a, b) == expected


def test_careless_demonstrations_drop_carries_at_the_given_rate():
    clean = arithmetic.make_problems(arithmetic.arithmetic_config(train_size=4000, test_size=100))
    cfg = arithmetic.arithmetic_config(train_size=4000, test_size=100, demo_error=60)
    assert cfg.name == "d2_n2_add_train4000_test100_seed0_err60"
    assert arithmetic.config_from_name(cfg.name).difficulty() == cfg.difficulty()
    careless = arithmetic.make_problems(cfg)
    assert careless["test"] == clean["test"]  # evaluation is unchanged
    assert [(p, a) for p, _, a in careless["train"]] == [(p, a) for p, _, a in clean["train"]]
    wrong, dropped = 0, 0
    for prompt, demo, answer in careless["train"]:
        a, b = _operands(prompt)
        assert answer == str(a + b)
        assert demo in (answer, str(arithmetic.carryless_sum(a, b)))
        if arithmetic.carryless_sum(a, b) != a + b:  # a carry happens
            dropped += 1
            wrong += demo != answer
    assert 0.55 < wrong / dropped < 0.65  # 60% of the problems with a carry are demonstrated wrong
    assert arithmetic.PRESETS["add2_careless"].demo_error == 60


def test_bad_config_names():
    with pytest.raises(ValueError, match="unknown arithmetic config 'add7'"):
        arithmetic.config_from_name("add7")
    with pytest.raises(ValueError, match="should be spelled 'd2_n2_addsub_train9_test1_seed0'"):
        arithmetic.config_from_name("d2_n2_subadd_train9_test1_seed0")
    with pytest.raises(ValueError, match="should be spelled 'addsub2'"):
        arithmetic.config_from_name("d2_n2_addsub_train20000_test1000_seed0")
