"""Tool arithmetic: demonstrations call the calculator and read its real output, segments
mask the observation out of the loss, the answer check reads the demonstration."""

import json

import numpy as np
import pytest

from rl_lm import tasks
from rl_lm.data import pipeline, registry, tool_arith
from rl_lm.data.pipeline import eval_examples
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards.verifiable import exact_match
from rl_lm.tools import calls
from rl_lm.tools.calculator import calculator

TOK = ByteTokenizer()  # bytes 0..255, PAD=256, BOS=257, EOS=258
PAD, BOS, EOS = 256, 257, 258
SMALL = dict(train_size=1000, test_size=100)
CALL = "<call>calculator(expression='123*456')</call>"


def _rows(**fields):
    return tool_arith.make_examples(tool_arith.tool_arith_config(**{**SMALL, **fields}))


def test_demonstration_by_hand():
    segments = tool_arith.demonstration("123*456", "56088", 1)
    assert CALL == calls.format_call("calculator", {"expression": "123*456"}, calls.COMPACT)
    assert segments == [(CALL, 1), ("<result>56088</result>", 0), ("#### 56088", 1)]
    assert tool_arith.demonstration("123*456", "56088", 2) == segments[:2] * 2 + segments[2:]
    assert tool_arith.demonstration("123*456", "56088", 0) == [("#### 56088", 1)]


@pytest.mark.parametrize("fields", [{}, {"ops": "+-*", "max_digits": 2}])
def test_observations_are_the_calculators_output(fields):
    rows = _rows(**fields)
    for r in rows["train"] + rows["test"]:
        a, b = r["prompt"], r["answer"]
        assert a.endswith("=") and int(b) == eval(a[:-1])  # noqa: S307 (digits and one op)
        segments = json.loads(r["segments"])
        assert "".join(t for t, _ in segments) == r["response"]
        parsed = calls.parse_calls(r["response"], calls.COMPACT)
        assert parsed and all(c.error is None for c in parsed)
        for call in parsed:
            expression = call.arguments["expression"]
            assert call.name == "calculator" and expression == a[:-1]
            # The observation follows its call with no whitespace, as the env appends it.
            assert f"{call.raw}</call><result>{calculator(expression)}</result>" in r["response"]
        assert [t for t, trainable in segments if not trainable] == [
            f"<result>{calculator(a[:-1])}</result>"
        ] * len(parsed)
        assert r["response"].endswith(f"</result>#### {r['answer']}")
        digits = fields.get("max_digits", 3)
        assert all(len(x) == digits for x in a[:-1].replace("*", "+").replace("-", "+").split("+"))


def test_sft_row_masks_exactly_the_prompt_and_the_observation():
    ex = {"prompt": "123*456=", "response": CALL + "<result>56088</result>#### 56088"}
    ex["segments"] = json.dumps(tool_arith.demonstration("123*456", "56088", 1))
    row = pipeline._sft_row(TOK, 96, False, 0, ex)
    text = "123*456=" + ex["response"]
    expected = [BOS] + list(text.encode()) + [EOS]
    assert len(expected) == 1 + 8 + 45 + 22 + 10 + 1 == 87
    np.testing.assert_array_equal(row["tokens"], expected + [PAD] * (96 - 87))
    mask = [0] * 9 + [1] * 45 + [0] * 22 + [1] * 10 + [1] + [0] * 9
    np.testing.assert_array_equal(row["loss_mask"], mask)
    assert TOK.decode(row["tokens"][np.array(mask) == 0][1:9]) == "123*456="
    assert TOK.decode(row["tokens"][9 + 45 : 9 + 45 + 22]) == "<result>56088</result>"
    # Packed rows carry the same mask; without segments the whole response is trained.
    packed = pipeline._sft_segment(TOK, 96, False, 0, ex)
    np.testing.assert_array_equal(packed["loss_mask"], mask[:87])
    plain = pipeline._sft_row(TOK, 96, False, 0, {**ex, "segments": ""})
    np.testing.assert_array_equal(plain["tokens"], row["tokens"])
    np.testing.assert_array_equal(plain["loss_mask"], [0] * 9 + [1] * 78 + [0] * 9)


@pytest.mark.parametrize(
    "segments, match",
    [
        ('[["<call>", 1]]', "do not concatenate"),
        ('[["12", 1], ["4", 0]]', "do not concatenate"),
        ('[["1234", 2]]', r"\[text, trainable\] pairs"),
        ('[["1234"]]', r"\[text, trainable\] pairs"),
        ('{"1234": 1}', r"\[text, trainable\] pairs"),
        ("[[1234, 1]]", r"\[text, trainable\] pairs"),
        ("not json", "not JSON"),
    ],
)
def test_malformed_segments_raise(segments, match):
    ex = {"prompt": b"1*2=", "response": b"1234", "segments": segments.encode()}
    with pytest.raises(ValueError, match=match):
        next(pipeline.sft_batches([ex], TOK, batch_size=1, max_len=16, seed=0))


def test_redundant_share_and_no_tool():
    rows = _rows(redundant=30)["train"]
    twice = np.mean([r["response"].count("<call>") == 2 for r in rows])
    assert {r["response"].count("<call>") for r in rows} == {1, 2} and 0.25 < twice < 0.35
    default = _rows()
    twice = np.mean([r["response"].count("<call>") == 2 for r in default["train"]])
    assert 0.16 < twice < 0.24
    assert all(r["response"].count("<call>") == 1 for r in _rows(redundant=0)["train"])
    plain = _rows(tool=0)
    for r in plain["train"] + plain["test"]:
        assert "<call>" not in r["response"] and "<result>" not in r["response"]
        assert r["response"] == f"#### {r['answer']}"
        assert json.loads(r["segments"]) == [[r["response"], 1]]
    # Same problems with and without the tool: only the demonstrations differ.
    for split in ("train", "test"):
        assert [r["prompt"] for r in plain[split]] == [r["prompt"] for r in default[split]]


def test_exact_match_with_the_tasks_format():
    task = tasks.get("tool_arith")
    assert task.answer == tool_arith.ANSWER_FORMAT == "marked"
    assert tasks.for_dataset("tool_arith/notool") is task
    rows = _rows()["train"][:50] + _rows(tool=0)["train"][:50]
    responses, answers = [r["response"] for r in rows], [r["answer"] for r in rows]
    assert exact_match(responses, answers, task.answer).tolist() == [1.0] * 100
    wrong = [str(int(a) + 1) for a in answers]
    assert exact_match(responses, wrong, task.answer).tolist() == [0.0] * 100
    # A rollout that stops after the observation has not answered.
    cut = [r.rsplit("####", 1)[0] for r in responses[:50]]
    assert exact_match(cut, answers[:50], task.answer).tolist() == [0.0] * 50


def test_byte_lengths():
    rows = _rows()
    lengths = [len(TOK.encode(r["prompt"] + r["response"])) + 2 for r in rows["train"]]
    once = [
        n
        for n, r in zip(lengths, rows["train"], strict=True)
        if "</result><call>" not in r["response"]
    ]
    assert max(once) <= 89 and max(lengths) <= 157
    plain = [len(TOK.encode(r["prompt"] + r["response"])) + 2 for r in _rows(tool=0)["train"]]
    assert max(plain) <= 21


def test_config_names_round_trip():
    assert tool_arith.tool_arith_config() is tool_arith.PRESETS["tool"]
    assert tool_arith.tool_arith_config(tool=0) is tool_arith.PRESETS["notool"]
    assert tool_arith.tool_arith_config(tool=0, redundant=0) is tool_arith.PRESETS["notool"]
    config = tool_arith.tool_arith_config(max_digits=4, ops="*+", train_size=256, redundant=0)
    assert config.name == "tool_digits4_opsaddmul_train256_redundant0"
    for name in (config.name, "tool", "notool", "notool_test32_seed2", "tool_redundant50"):
        assert tool_arith.config_from_name(name).name == name
        assert registry.dataset_name("tool_arith", config=name) == f"tool_arith/{name}"
    fields = dict(tool=0, seed=3, ops="+")
    assert registry.dataset_name("tool_arith", **fields) == "tool_arith/notool_opsadd_seed3"
    with pytest.raises(ValueError, match="should be spelled"):
        tool_arith.config_from_name("tool_digits3")
    with pytest.raises(ValueError, match="unknown tool_arith config"):
        tool_arith.config_from_name("tools")
    with pytest.raises(ValueError, match="unknown tool_arith fields"):
        tool_arith.tool_arith_config(digits=3)
    with pytest.raises(ValueError, match="needs tool=1"):
        tool_arith.tool_arith_config(tool=0, redundant=50)
    with pytest.raises(ValueError, match="ops must be"):
        tool_arith.tool_arith_config(ops="/")
    with pytest.raises(ValueError, match="more than half"):
        tool_arith.tool_arith_config(max_digits=1, test_size=60)


def test_prepared_splits_are_disjoint_and_deterministic(tmp_path):
    name = registry.dataset_name("tool_arith", **SMALL)
    assert name == "tool_arith/tool_train1000_test100"
    runs = [
        [
            eval_examples(registry.load_source(name, s, data_dir=tmp_path / d))
            for s in ("train", "test")
        ]
        for d in ("a", "b")
    ]
    assert runs[0] == runs[1]
    train, test = runs[0]
    assert (len(train), len(test)) == (1000, 100)
    assert set(train[0]) == {"prompt", "response", "answer", "segments"}
    test_prompts = {e["prompt"] for e in test}
    assert len(test_prompts) == 100 and not test_prompts & {e["prompt"] for e in train}
    assert train == _rows()["train"]
    other = _rows(seed=1)["test"]
    assert [e["prompt"] for e in test] != [r["prompt"] for r in other]
    # The prepared source goes through sft_batches with the observation masked out.
    batch = next(
        pipeline.sft_batches(
            registry.load_source(name, "train", data_dir=tmp_path / "a"),
            TOK,
            batch_size=4,
            max_len=160,
            seed=0,
        )
    )
    for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
        trained = TOK.decode(tokens[(mask == 1) & (tokens != EOS)])
        assert "<result>" not in trained and trained.startswith("<call>")
