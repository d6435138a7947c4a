"""Synthetic preference datasets: names, behaviour data, labels, splits, pipelines."""

import itertools

import numpy as np
import pytest

from rl_lm.data import pipeline, preference_examples, preference_tasks, registry
from rl_lm.data.pipeline import eval_examples
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards import synthetic

TOK = ByteTokenizer()
TINY = {"train_size": 300, "test_size": 60}


def _examples(task, **fields):
    return preference_examples.make_examples(task, preference_tasks.task_config(task, **fields))


def _load(tmp_path, task, split, **fields):
    name = registry.dataset_name(task, **fields)
    return eval_examples(registry.load_source(name, split, data_dir=tmp_path))


def test_names_round_trip():
    assert registry.dataset_name("sort_pref", kind="pairs") == "sort_pref/pairs"
    assert registry.dataset_name("rps_pref", kind="sft", seed=0) == "rps_pref/sft"
    name = registry.dataset_name("sort_pref", kind="pairs", temperature=0, seed=2, max_digits=5)
    assert name == "sort_pref/pairs_max5_temp0.0_seed2"
    name = registry.dataset_name("rps_pref", kind="pairs", strengths=[1, 0.5], train_size=9)
    assert name == "rps_pref/pairs_str1.0-0.5_train9"
    for full in ["sort_pref/pairs_max5_temp0.0_seed2", "rps_pref/pairs_str1.0-0.5_train9"]:
        task, _, config = full.partition("/")
        cfg = preference_tasks.config_from_name(task, config)
        assert cfg.name == config
    cfg = preference_tasks.config_from_name("rps_pref", "pairs_str1.0-0.5_train9")
    assert (cfg.kind, cfg.strengths, cfg.train_size, cfg.seed) == ("pairs", (1.0, 0.5), 9, 0)


@pytest.mark.parametrize(
    "task,fields,match",
    [
        ("sort_pref", {"kind": "dpo"}, "kind must be one of"),
        ("sort_pref", {"kind": "sft", "temperature": 0.5}, "drop it for kind='sft'"),
        ("sort_pref", {"kind": "pairs", "temperature": -1.0}, "temperature must be a float >= 0"),
        ("sort_pref", {"kind": "sft", "min_digits": 5, "max_digits": 4}, "min_digits <= max"),
        ("sort_pref", {"kind": "sft", "max_digits": 17}, "max_digits <= 16"),
        (
            "sort_pref",
            {"kind": "sft", "min_digits": 2, "max_digits": 2, "test_size": 60},
            "lower test_size",
        ),
        ("sort_pref", {"kind": "sft", "seed": 1.0}, "seed must be an int"),
        ("sort_pref", {"kind": "sft", "strengths": (1.0,)}, "unknown sort_pref fields"),
        ("rps_pref", {"kind": "sft", "strengths": (1.5,)}, r"strengths must be in \(0, 1\]"),
        ("rps_pref", {"kind": "sft", "strengths": (1e-5,)}, "print as decimals"),
        ("rps_pref", {"kind": "sft", "strengths": ()}, "distinct floats"),
        ("rps_pref", {"kind": "sft", "temperature": 0.1}, "unknown rps_pref fields"),
        ("chess", {"kind": "sft"}, "unknown preference task"),
    ],
)
def test_bad_config_fails_naming_the_field(task, fields, match):
    with pytest.raises(ValueError, match=match):
        preference_tasks.task_config(task, **fields)


def test_bad_names(tmp_path):
    with pytest.raises(ValueError, match="should be spelled 'pairs_temp0.05'"):
        preference_tasks.config_from_name("sort_pref", "pairs_temp0.050")
    with pytest.raises(ValueError, match="should be spelled 'pairs'"):
        preference_tasks.config_from_name("sort_pref", "pairs_temp0.1")
    with pytest.raises(ValueError, match="unknown sort_pref config 'pairs_str1.0'"):
        preference_tasks.config_from_name("sort_pref", "pairs_str1.0")
    with pytest.raises(ValueError, match="bad value 'x' of seed"):
        preference_tasks.config_from_name("rps_pref", "sft_seedx")
    with pytest.raises(ValueError, match="'sort_pref/sft' or 'sort_pref/pairs'"):
        registry.load_source("sort_pref", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="is not prepared"):
        registry.load_source("rps_pref/sft", "train", data_dir=tmp_path, prepare=False)


def test_sort_sft_split(tmp_path):
    train, test = (_load(tmp_path, "sort_pref", s, kind="sft", **TINY) for s in ("train", "test"))
    assert (len(train), len(test)) == (300, 60)
    assert set(train[0]) == {"prompt", "response", "answer", "reward"}
    test_prompts = {e["prompt"] for e in test}
    assert len(test_prompts) == 60 and not test_prompts & {e["prompt"] for e in train}
    rows = train + test
    prompts, responses = [e["prompt"] for e in rows], [e["response"] for e in rows]
    assert [e["answer"] for e in rows] == synthetic.sort_target(prompts)
    np.testing.assert_array_equal(
        [e["reward"] for e in rows], synthetic.true_reward(prompts, responses)
    )
    assert all(3 <= len(d) <= 8 for d in synthetic.parse_sort_prompts(prompts))
    assert max(len(y.encode()) for y in responses) <= 24
    rewards = np.array([e["reward"] for e in rows])
    assert (rewards == 1).mean() > 0.05 and (rewards < 0.5).mean() > 0.1


def test_behaviour_policy_is_mediocre():
    rows = _examples("sort_pref", kind="sft", train_size=4000, test_size=10)["train"]
    rewards = np.array([e["reward"] for e in rows])
    # Mean r* about 0.64 (the best response scores 1); about 14% of responses are optimal.
    assert 0.6 < rewards.mean() < 0.68 and 0.1 < (rewards == 1).mean() < 0.18


def test_sort_pairs_split(tmp_path):
    fields = {"kind": "pairs", **TINY}
    train, test = (_load(tmp_path, "sort_pref", s, **fields) for s in ("train", "test"))
    assert set(train[0]) == {
        "prompt", "chosen", "rejected", "answer", "chosen_reward", "rejected_reward"
    }  # fmt: skip
    rows = train + test
    prompts = [e["prompt"] for e in rows]
    for side in ("chosen", "rejected"):
        np.testing.assert_array_equal(
            [e[f"{side}_reward"] for e in rows],
            synthetic.true_reward(prompts, [e[side] for e in rows]),
        )
    assert all(e["chosen"] != e["rejected"] for e in rows)
    assert [e["answer"] for e in rows] == synthetic.sort_target(prompts)
    # Both kinds of one seed hold out the same test prompts.
    sft_test = _load(tmp_path, "sort_pref", "test", kind="sft", **TINY)
    assert [e["prompt"] for e in test] == [e["prompt"] for e in sft_test]
    assert not {e["prompt"] for e in test} & {e["prompt"] for e in train}


@pytest.mark.parametrize("temperature", [0.05, 0.2])
def test_label_frequencies_follow_bradley_terry(temperature):
    rows = _examples(
        "sort_pref", kind="pairs", temperature=temperature, train_size=8000, test_size=10, seed=4
    )["train"]
    d = np.array([e["chosen_reward"] - e["rejected_reward"] for e in rows], np.float64)
    # Whichever response was drawn first, the better one is chosen w.p. sigmoid(|d| / T).
    p_better = 1 / (1 + np.exp(-np.abs(d) / temperature))
    better = d > 0
    keep = d != 0
    z = (better[keep].sum() - p_better[keep].sum()) / np.sqrt(
        (p_better * (1 - p_better))[keep].sum()
    )
    assert abs(z) < 4
    for lo, hi in [(0, 0.05), (0.05, 0.15), (0.15, 0.3)]:
        sel = keep & (np.abs(d) > lo) & (np.abs(d) <= hi)
        assert sel.sum() > 300
        sd = np.sqrt((p_better * (1 - p_better))[sel].sum()) / sel.sum()
        assert abs(better[sel].mean() - p_better[sel].mean()) < 4 * sd + 1e-3


def test_temperature_zero_prefers_the_better_response_and_only_labels_change():
    rows = {
        t: _examples("sort_pref", kind="pairs", temperature=t, **TINY)["train"] for t in (0.0, 1.0)
    }
    assert all(e["chosen_reward"] >= e["rejected_reward"] for e in rows[0.0])
    assert any(e["chosen_reward"] < e["rejected_reward"] for e in rows[1.0])
    for cold, hot in zip(rows[0.0], rows[1.0], strict=True):
        assert cold["prompt"] == hot["prompt"]
        assert {cold["chosen"], cold["rejected"]} == {hot["chosen"], hot["rejected"]}


@pytest.mark.parametrize(
    "task,fields", [("sort_pref", {"kind": "pairs"}), ("rps_pref", {"kind": "pairs"})]
)
def test_preparation_is_deterministic(tmp_path, task, fields):
    runs = [
        [_load(tmp_path / d, task, s, **fields, **TINY) for s in ("train", "test")]
        for d in ("a", "b")
    ]
    assert runs[0] == runs[1]
    other = _examples(task, **fields, **TINY, seed=1)
    assert [e["prompt"] for e in other["test"]] != [e["prompt"] for e in runs[0][1]]


def test_rps_sft_class_frequencies_match_the_reference():
    fields = {"kind": "sft", "strengths": (1.0, 0.5), "train_size": 20_000, "test_size": 10}
    rows = _examples("rps_pref", **fields)["train"]
    prompts = [e["prompt"] for e in rows]
    classes = synthetic.response_class([e["response"] for e in rows])
    ref_Nx3 = synthetic.rps_reference(prompts)
    favourite, strength = synthetic.parse_rps_prompts(prompts)
    assert set(np.unique(strength)) == {0.5, 1.0}
    for f in range(3):
        sel = favourite == f
        freq, ref = np.bincount(classes[sel], minlength=3) / sel.sum(), ref_Nx3[sel][0]
        np.testing.assert_array_less(np.abs(freq - ref), 3.5 * np.sqrt(ref * (1 - ref) / sel.sum()))
    # Pooled over favourites: the class's place relative to the favourite.
    freq = np.bincount((classes - favourite) % 3, minlength=3) / len(rows)
    ref = np.array(synthetic.RPS_REF_PROBS)
    np.testing.assert_array_less(np.abs(freq - ref), 3.5 * np.sqrt(ref * (1 - ref) / len(rows)))
    for c, words in enumerate(synthetic.RPS_WORDS):
        got = [e["response"] for e, k in zip(rows, classes, strict=True) if k == c]
        freq, ref = np.array([got.count(w) for w in words]) / len(got), synthetic.RPS_WORD_PROBS
        np.testing.assert_array_less(np.abs(freq - ref), 0.025)


def test_rps_pairs_are_labelled_by_the_intransitive_preference(tmp_path):
    fields = {"kind": "pairs", "strengths": (1.0, 0.5), "train_size": 2000, "test_size": 60}
    train, test = (_load(tmp_path, "rps_pref", s, **fields) for s in ("train", "test"))
    assert set(train[0]) == {"prompt", "chosen", "rejected", "preference"}
    assert not {e["prompt"] for e in test} & {e["prompt"] for e in train}
    rows = train + test
    prompts = [e["prompt"] for e in rows]
    chosen, rejected = [e["chosen"] for e in rows], [e["rejected"] for e in rows]
    pref = np.array([e["preference"] for e in rows])
    np.testing.assert_array_equal(
        pref, synthetic.intransitive_preference(prompts, chosen, rejected)
    )
    c_cls, r_cls = synthetic.response_class(chosen), synthetic.response_class(rejected)
    assert (c_cls >= 0).all() and (r_cls >= 0).all() and (c_cls != r_cls).all()
    # Every cyclic edge appears in both directions of the labels.
    assert {(int(a), int(b)) for a, b in zip(c_cls, r_cls, strict=True)} == {
        (a, b) for a in range(3) for b in range(3) if a != b
    }
    _, strength = synthetic.parse_rps_prompts(prompts)
    np.testing.assert_array_equal(pref[strength == 1.0], 1.0)
    # At s = 0.5 the winner of the cycle is chosen with probability 3/4.
    won = pref[strength == 0.5] == 0.75
    assert set(pref[strength == 0.5]) == {0.25, 0.75}
    assert abs(won.mean() - 0.75) < 4 * np.sqrt(0.75 * 0.25 / len(won))


def _take(it, n):
    return list(itertools.islice(it, n))


@pytest.mark.parametrize("task", ["sort_pref", "rps_pref"])
def test_datasets_feed_the_pipelines(tmp_path, task):
    sft = registry.load_source(
        registry.dataset_name(task, kind="sft", **TINY), "train", data_dir=tmp_path
    )
    pairs = registry.load_source(
        registry.dataset_name(task, kind="pairs", **TINY), "test", data_dir=tmp_path
    )
    (batch,) = _take(pipeline.sft_batches(sft, TOK, batch_size=8, max_len=32, seed=0), 1)
    assert batch["tokens"].shape == (8, 32)
    rows = {(e["prompt"], e["response"]) for e in eval_examples(sft)}
    for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
        start = int(np.flatnonzero(mask)[0])
        prompt, response = TOK.decode(tokens[:start]), TOK.decode(tokens[mask == 1])
        assert (prompt, response) in rows
    (batch,) = _take(pipeline.preference_batches(pairs, TOK, batch_size=4, max_len=32, seed=0), 1)
    assert batch["chosen"].shape == batch["rejected"].shape == (4, 32)
    chosen = {(e["chosen"], e["rejected"]) for e in eval_examples(pairs)}
    for i in range(4):
        pair = tuple(
            TOK.decode(batch[side][i][batch[f"{side}_mask"][i] == 1])
            for side in ("chosen", "rejected")
        )
        assert pair in chosen
    (batch,) = _take(
        pipeline.prompt_batches(pairs, TOK, batch_size=4, max_prompt_len=16, seed=0), 1
    )
    prompts = [TOK.decode(p) for p in batch["prompt"]]
    answers = batch["answer"].tolist()
    if task == "sort_pref":
        assert answers == synthetic.sort_target(prompts)
    else:
        assert answers == [""] * 4 and synthetic.rps_reference(prompts).shape == (4, 3)
