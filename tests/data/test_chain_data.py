"""Chain datasets: every demonstration step passes the checker, corrupted responses are
labelled 1..1 0..0 at their error, splits are disjoint, generation is deterministic."""

import numpy as np
import pytest

from rl_lm.data import chain, registry
from rl_lm.data.pipeline import eval_examples
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards import steps
from rl_lm.rewards.verifiable import exact_match

SMALL = dict(train_size=300, test_size=60)


@pytest.mark.parametrize(
    "fields",
    [{}, {"num_ops": 5, "ops": "+-"}, {"max_digits": 3, "operand_digits": 2}, {"ops": "*"}],
)
def test_demonstrations_are_correct_short_and_in_range(fields):
    rows = chain.make_examples(chain.chain_config(**SMALL, **fields))
    num_ops = fields.get("num_ops", 3)
    top = 10 ** fields.get("max_digits", 2)
    for r in rows["train"] + rows["test"]:
        start, ops = steps.parse_prompt(r["prompt"])
        assert len(ops) == num_ops and {o for o, _ in ops} <= set(fields.get("ops", "+-*"))
        assert steps.strict_labels(r["prompt"], r["response"]) == [1] * (num_ops + 1)
        assert exact_match([r["response"]], [r["answer"]])[0] == 1.0
        values = [start] + [int(line.split("=")[1]) for line in r["response"].split("\n")[:-1]]
        assert all(0 <= v < top for v in values)
    if not fields:  # The default fits a 64-token row with room to spare.
        tok = ByteTokenizer()
        lengths = [len(tok.encode(r["prompt"] + r["response"])) + 2 for r in rows["train"]]
        assert max(lengths) <= 48


def test_prm_rows_are_labelled_by_the_checker_with_one_error():
    rows = chain.make_examples(chain.chain_config(kind="prm", **SMALL))
    sft = chain.make_examples(chain.chain_config(kind="sft", **SMALL))
    assert [r["prompt"] for r in rows["test"]] == [r["prompt"] for r in sft["test"]]
    clean = 0
    errors_at = set()
    for r in rows["train"] + rows["test"]:
        labels = steps.strict_labels(r["prompt"], r["response"])
        assert r["labels"] == "".join(map(str, labels)) and len(labels) == 4
        k = labels.index(0) if 0 in labels else None
        if k is None:
            clean += 1
            assert r["response"] == "\n".join(steps.solve(r["prompt"]))
            continue
        errors_at.add(k)
        assert labels == [1] * k + [0] * (4 - k)
        # One wrong result; every other step is right arithmetic on what it was given.
        lenient = steps.lenient_labels(r["prompt"], r["response"])
        assert lenient == [int(s != k) for s in range(4)]
        assert exact_match([r["response"]], [r["answer"]])[0] == 0.0
    assert 0.35 < clean / 360 < 0.65 and errors_at == {0, 1, 2, 3}


def test_corrupt_by_hand():
    assert chain.corrupt("12 +5 *3 -7:", 1, -1) == "12+5=17\n17*3=50\n50-7=43\n#### 43"
    assert chain.corrupt("12 +5 *3 -7:", 3, 2) == "12+5=17\n17*3=51\n51-7=44\n#### 46"
    with pytest.raises(ValueError, match="nonzero offset"):
        chain.corrupt("12 +5 *3 -7:", 1, 0)


def test_config_names_round_trip():
    assert chain.chain_config() is chain.PRESETS["sft"]
    assert chain.chain_config(kind="prm") is chain.PRESETS["prm"]
    config = chain.chain_config(kind="prm", num_ops=4, ops="+-", train_size=256, seed=1)
    assert config.name == "prm_steps4_opsaddsub_train256_seed1"
    assert chain.config_from_name(config.name).name == config.name
    assert registry.dataset_name("chain", kind="prm", num_ops=4) == "chain/prm_steps4"
    assert registry.dataset_name("chain", config="prm_steps4") == "chain/prm_steps4"
    with pytest.raises(ValueError, match="should be spelled"):
        chain.config_from_name("sft_steps3")
    with pytest.raises(ValueError, match="unknown chain config"):
        chain.config_from_name("sft_foo3")
    with pytest.raises(ValueError, match="unknown chain fields"):
        chain.chain_config(steps=3)
    with pytest.raises(ValueError, match="ops must be"):
        chain.chain_config(ops="/")


def test_prepared_splits_are_disjoint_and_deterministic(tmp_path):
    name = registry.dataset_name("chain", kind="prm", **SMALL)
    runs = [
        [
            eval_examples(registry.load_source(name, s, data_dir=tmp_path / d))
            for s in ("train", "test")
        ]
        for d in ("a", "b")
    ]
    assert runs[0] == runs[1]
    train, test = runs[0]
    assert (len(train), len(test)) == (300, 60) and set(train[0]) == {
        "prompt",
        "response",
        "answer",
        "labels",
    }
    test_prompts = {e["prompt"] for e in test}
    assert len(test_prompts) == 60 and not test_prompts & {e["prompt"] for e in train}
    other = chain.make_examples(chain.chain_config(kind="prm", seed=1, **SMALL))
    assert [e["prompt"] for e in test] != [r["prompt"] for r in other["test"]]


@pytest.mark.parametrize(
    "restate_at, name, lines_restated",
    [
        (0, "sft_train300_test60_restate30", {0, 1, 2, 3}),  # the answer line too
        (3, "sft_train300_test60_restate30_at3", {2}),  # the last operation step only
    ],
)
def test_restated_demonstrations_repeat_one_step_and_keep_the_rest(
    restate_at, name, lines_restated
):
    plain = chain.make_examples(chain.chain_config(**SMALL))
    config = chain.chain_config(restate=30, restate_at=restate_at, **SMALL)
    assert config.name == name and chain.config_from_name(name).restate_at == restate_at
    rows = chain.make_examples(config)
    restated, restated_at = 0, set()
    for r, p in zip(rows["train"] + rows["test"], plain["train"] + plain["test"], strict=True):
        assert r["prompt"] == p["prompt"] and r["answer"] == p["answer"]
        lines, canonical = r["response"].split("\n"), p["response"].split("\n")
        if lines == canonical:
            continue
        restated += 1
        # One line written twice in a row; dropping it gives the canonical lines.
        k = next(i for i, c in enumerate([*canonical, None]) if lines[i] != c) - 1
        assert lines[k] == lines[k + 1]
        restated_at.add(k)
        assert lines[: k + 1] + lines[k + 2 :] == canonical
        assert steps.restate_labels(r["prompt"], r["response"]) == [1] * len(lines)
        assert steps.strict_labels(r["prompt"], r["response"])[k + 1] == 0
    assert 0.2 < restated / 360 < 0.4
    assert restated_at == lines_restated
    with pytest.raises(ValueError, match="restate_at=5"):
        chain.chain_config(restate=30, restate_at=5)
    with pytest.raises(ValueError, match="needs restate > 0"):
        chain.chain_config(restate_at=2)
    with pytest.raises(ValueError, match="percentage"):
        chain.chain_config(restate=101)
    with pytest.raises(ValueError, match="kind='sft'"):
        chain.chain_config(kind="prm", restate=10)


def test_restate_times_writes_one_to_n_copies_of_the_line():
    plain = chain.make_examples(chain.chain_config(**SMALL))
    config = chain.chain_config(restate=60, restate_at=3, restate_times=3, **SMALL)
    assert config.name == "sft_train300_test60_restate60_at3_times3"
    assert chain.config_from_name(config.name).restate_times == 3
    rows = chain.make_examples(config)
    copies = []
    for r, p in zip(rows["train"] + rows["test"], plain["train"] + plain["test"], strict=True):
        lines, canonical = r["response"].split("\n"), p["response"].split("\n")
        extra = len(lines) - len(canonical)
        # The last operation step (line 3), then `extra` copies of it, then the answer.
        assert lines == canonical[:3] + [canonical[2]] * extra + canonical[3:]
        assert steps.restate_before_labels(r["prompt"], r["response"]) == [1] * len(lines)
        copies.append(extra)
    counts = np.bincount(copies, minlength=4)
    assert len(counts) == 4 and all(counts[1:] > 0.12 * len(copies)), counts
    assert 0.3 < counts[0] / len(copies) < 0.5  # 40% write no copy
    with pytest.raises(ValueError, match="restate_times=9"):
        chain.chain_config(restate=30, restate_times=9)
    with pytest.raises(ValueError, match="needs restate > 0"):
        chain.chain_config(restate_times=2)


def test_restate_value_writes_short_copies_of_the_result():
    plain = chain.make_examples(chain.chain_config(**SMALL))
    config = chain.chain_config(restate=60, restate_at=3, restate_times=2, restate_value=1, **SMALL)
    assert config.name == "sft_train300_test60_restate60_at3_times2_value1"
    assert chain.config_from_name(config.name).restate_value == 1
    rows = chain.make_examples(config)
    seen = set()
    for r, p in zip(rows["train"] + rows["test"], plain["train"] + plain["test"], strict=True):
        lines, canonical = r["response"].split("\n"), p["response"].split("\n")
        extra = len(lines) - len(canonical)
        value = canonical[2].split("=")[1]  # line 3's result is the answer
        assert value == r["answer"]
        assert lines == canonical[:3] + ["=" + value] * extra + canonical[3:]
        assert steps.restate_before_labels(r["prompt"], r["response"]) == [1] * len(lines)
        seen.add(extra)
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="restate_value=2"):
        chain.chain_config(restate=30, restate_value=2)
    with pytest.raises(ValueError, match="needs restate > 0"):
        chain.chain_config(restate_value=1)
