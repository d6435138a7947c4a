"""Table lookup: questions about a made-up table, demonstrations call the lookup tool and
copy from its real output, segments mask the observation out of the loss."""

import json

import numpy as np
import pytest

from configs import grpo_tool_lookup
from rl_lm import tasks
from rl_lm.algos import episodes
from rl_lm.data import pipeline, registry, tool_lookup
from rl_lm.data.pipeline import eval_examples
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards.verifiable import exact_match
from rl_lm.tools import calls
from rl_lm.tools.schema import json_schema

TOK = ByteTokenizer()  # bytes 0..255, PAD=256, BOS=257, EOS=258
EOS = 258
SMALL = dict(train_size=1000, test_size=100)


def _rows(**fields):
    return tool_lookup.make_examples(tool_lookup.tool_lookup_config(**{**SMALL, **fields}))


def test_demonstration_by_hand():
    entry = tool_lookup.Entry("Zorvak", "4821", "Belmo", "1957")
    call = "<call>lookup(name='Zorvak')</call>"
    assert call == calls.format_call("lookup", {"name": "Zorvak"}, calls.COMPACT)
    result = "<result>Zorvak: code 4821, city Belmo, year 1957</result>"
    assert tool_lookup.demonstration(entry, "code") == [(call, 1), (result, 0), ("#### 4821", 1)]
    assert tool_lookup.demonstration(entry, "city")[2] == ("#### Belmo", 1)
    assert tool_lookup.prompt("Zorvak", "year") == "year of Zorvak?"
    assert tool_lookup.ground_truth_calls("year of Zorvak?") == [("lookup", {"name": "Zorvak"})]
    with pytest.raises(ValueError, match="no tool_lookup question"):
        tool_lookup.ground_truth_calls("123*456=")


def test_table_is_deterministic_and_random():
    a, b = tool_lookup.table(), tool_lookup.table(1000, 0)
    assert a == b and len(a) == 1000 and len({e.name for e in a}) == 1000
    assert len({e.name.lower() for e in a}) == 1000  # case-insensitive lookup is unambiguous
    assert tool_lookup.table(1000, 1) != a
    for e in a:
        assert e.name.isalpha() and e.name[0].isupper() and 4 <= len(e.name) <= 6
        assert 1000 <= int(e.code) <= 9999 and 1700 <= int(e.year) <= 1999 and e.city.isalpha()
    # Attributes are spread out: no guess is right for more than a few percent of entities.
    for attr in tool_lookup.ATTRIBUTES:
        values = [getattr(e, attr) for e in a]
        assert max(values.count(v) for v in set(values)) < 20


@pytest.mark.parametrize("fields", [{}, {"entities": 200, "seed": 3}])
def test_observations_are_the_tools_output(fields):
    config = tool_lookup.tool_lookup_config(**{**SMALL, **fields})
    rows = tool_lookup.make_examples(config)
    tool = tool_lookup.make_lookup_tool(config)
    names = {e.name for e in tool_lookup.table(config.entities, config.seed)}
    for r in rows["train"] + rows["test"]:
        attribute, _, rest = r["prompt"].partition(" of ")
        name = rest.removesuffix("?")
        assert attribute in tool_lookup.ATTRIBUTES and name in names
        segments = json.loads(r["segments"])
        assert "".join(t for t, _ in segments) == r["response"]
        parsed = calls.parse_calls(r["response"], calls.COMPACT)
        assert len(parsed) == 1 and parsed[0].error is None
        assert parsed[0].name == "lookup" and parsed[0].arguments == {"name": name}
        assert tool_lookup.ground_truth_calls(r["prompt"]) == [("lookup", {"name": name})]
        # The tool's answer to the call is the observation, appended with no whitespace.
        output = calls.run_calls({"lookup": tool}, parsed, 5.0, 200)[0].output
        assert (
            output == tool(name)
            and f"{parsed[0].raw}</call><result>{output}</result>" in (r["response"])
        )
        assert [t for t, trainable in segments if not trainable] == [f"<result>{output}</result>"]
        assert f" {attribute} {r['answer']}" in output
        assert r["response"].endswith(f"</result>#### {r['answer']}")


def test_the_tool_matches_names_and_says_what_it_does_not_know():
    tool = tool_lookup.make_lookup_tool()
    entry = tool_lookup.table()[0]
    assert tool(entry.name) == tool_lookup.render(entry)
    assert tool(entry.name.upper()) == tool(f" {entry.name.lower()} ") == tool(entry.name)
    assert tool("Qqqq") == "no entry for 'Qqqq'" and tool("") == "no entry for ''"
    assert tool_lookup.make_lookup_tool("lookup_train256_test32")(entry.name) == tool(entry.name)
    other = tool_lookup.make_lookup_tool("lookup_seed1")
    assert other(entry.name) != tool(entry.name)  # another table
    schema = json_schema(tool)["function"]
    assert schema["name"] == "lookup" and schema["parameters"]["required"] == ["name"]
    assert schema["parameters"]["properties"]["name"]["type"] == "string"


def test_the_registered_tool_answers_through_the_environment():
    cfg = episodes.default_config()
    cfg.update(name="tools", tools="lookup", max_observation_tokens=64)
    assert not episodes.problems(cfg, "grpo.env")
    env = episodes.make_env(cfg)
    row = tool_lookup.make_examples(tool_lookup.tool_lookup_config(**SMALL))["test"][0]
    _, state = env.reset(row)
    segments = json.loads(row["segments"])
    step = env.step(state, segments[0][0])
    assert step.observation == segments[1][0] and not step.done
    done = env.step(step.env_state, segments[2][0])
    assert done.done and done.reward_terms["tool/calls"] == 1.0
    assert done.reward_terms["tool/call_errors"] == 0.0
    miss = env.step(state, "<call>lookup(name='Qqqq')</call>")
    assert miss.observation == "<result>no entry for 'Qqqq'</result>"


def test_the_tool_reads_the_runs_own_table():
    cfg = episodes.default_config()
    cfg.update(name="tools", tools="lookup", max_observation_tokens=64)
    fields = dict(entities=50, seed=3, train_size=100, test_size=10)
    name = tool_lookup.dataset_name(**fields)
    row = tool_lookup.make_examples(tool_lookup.tool_lookup_config(**fields))["test"][0]
    call, result = (t for t, _ in json.loads(row["segments"])[:2])
    own = episodes.make_env(cfg, name)
    assert own.step(own.reset(row)[1], call).observation == result
    # The default table (a run on another dataset) does not know this entity's row.
    default = episodes.make_env(cfg, "arithmetic/add3")
    assert default.step(default.reset(row)[1], call).observation != result


def test_the_task_knows_each_prompts_ground_truth_call():
    row = _rows()["test"][0]
    ((name, args),) = tasks.get("tool_lookup").tool_calls(row["prompt"])
    call = json.loads(row["segments"])[0][0]
    assert calls.parse_calls(call, calls.COMPACT)[0][:2] == (name, args)
    with pytest.raises(ValueError, match="no tool_lookup question"):
        tool_lookup.ground_truth_calls("what?")
    chat = "<|im_start|>user\ncode of Zorvak?<|im_end|>\n<|im_start|>assistant\n"
    assert tool_lookup.ground_truth_calls(chat) == [("lookup", {"name": "Zorvak"})]


def test_exact_match_with_the_tasks_format():
    task = tasks.get("tool_lookup")
    assert task.answer == tool_lookup.ANSWER_FORMAT == "marked"
    assert tasks.for_dataset("tool_lookup/lookup_seed1") is task
    rows = _rows()["train"][:100]
    responses, answers = [r["response"] for r in rows], [r["answer"] for r in rows]
    assert exact_match(responses, answers, task.answer).tolist() == [1.0] * 100
    wrong = [a + "0" for a in answers]
    assert exact_match(responses, wrong, task.answer).tolist() == [0.0] * 100
    # A rollout that stops after the observation has not answered, though it holds the answer.
    cut = [r.rsplit("####", 1)[0] for r in responses]
    assert exact_match(cut, answers, task.answer).tolist() == [0.0] * 100


def test_byte_lengths_fit_the_configs_budget():
    rows = tool_lookup.make_examples(tool_lookup.PRESETS["lookup"])
    every = rows["train"] + rows["test"]
    assert max(len(TOK.encode(r["prompt"])) for r in every) + 1 <= grpo_tool_lookup.MAX_PROMPT_LEN
    lengths = [len(TOK.encode(r["prompt"] + r["response"])) + 2 for r in every]
    assert max(lengths) <= 120 <= grpo_tool_lookup.MAX_LEN
    assert max(len(TOK.encode(r["response"])) + 1 for r in every) <= grpo_tool_lookup.BUDGET
    config = grpo_tool_lookup.get_config()
    observations = [len(TOK.encode(tool_lookup.observation(tool_lookup.render(e)))) for e in
                    tool_lookup.table()]  # fmt: skip
    assert max(observations) <= 58 <= config.grpo.env.max_observation_tokens
    assert config.data.max_prompt_len + config.grpo.max_new_tokens <= config.model.max_seq_len


def test_config_names_round_trip():
    assert tool_lookup.tool_lookup_config() is tool_lookup.PRESETS["lookup"]
    config = tool_lookup.tool_lookup_config(entities=800, train_size=256, seed=2)
    assert config.name == "lookup_entities800_train256_seed2"
    for name in (config.name, "lookup", "lookup_train256_test32", "lookup_seed1"):
        assert tool_lookup.config_from_name(name).name == name
        assert registry.dataset_name("tool_lookup", config=name) == f"tool_lookup/{name}"
    fields = dict(test_size=32, entities=500)
    assert registry.dataset_name("tool_lookup", **fields) == "tool_lookup/lookup_entities500_test32"
    with pytest.raises(ValueError, match="should be spelled"):
        tool_lookup.config_from_name("lookup_entities1000")
    with pytest.raises(ValueError, match="unknown tool_lookup config"):
        tool_lookup.config_from_name("lookups")
    with pytest.raises(ValueError, match="unknown tool_lookup config"):
        tool_lookup.config_from_name("lookup_rows5")
    with pytest.raises(ValueError, match="bad value"):
        tool_lookup.config_from_name("lookup_seedx")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"rows": 5}, "unknown tool_lookup fields"),
        ({"entities": "100"}, "entities must be an int"),
        ({"seed": True}, "seed must be an int"),
        ({"entities": 1}, r"entities must be in \[2, 100000\]"),
        ({"train_size": 0}, "must be >= 1"),
        ({"seed": -1}, "seed >= 0"),
        ({"entities": 100, "test_size": 51}, "more than half"),
    ],
)
def test_bad_fields_raise_one_clear_error(fields, match):
    with pytest.raises(ValueError, match=match) as err:
        tool_lookup.tool_lookup_config(**fields)
    assert "\n" not in str(err.value)


def test_prepared_splits_are_disjoint_and_deterministic(tmp_path):
    name = registry.dataset_name("tool_lookup", **SMALL)
    assert name == "tool_lookup/lookup_train1000_test100"
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
    entity = lambda e: e["prompt"].split(" of ")[1]
    test_entities = {entity(e) for e in test}
    assert len(test_entities) == 100 and not test_entities & {entity(e) for e in train}
    assert train == _rows()["train"] and test == _rows()["test"]
    assert {e["prompt"].split(" of ")[0] for e in train} == set(tool_lookup.ATTRIBUTES)
    # The held-out entities depend on the table and test_size, not on train_size.
    assert _rows(train_size=50)["test"] == test
    assert [e["prompt"] for e in _rows(seed=1)["test"]] != [e["prompt"] for e in test]
    batch = next(
        pipeline.sft_batches(
            registry.load_source(name, "train", data_dir=tmp_path / "a"),
            TOK,
            batch_size=4,
            max_len=128,
            seed=0,
        )
    )
    for tokens, mask in zip(batch["tokens"], batch["loss_mask"], strict=True):
        trained = TOK.decode(tokens[(mask == 1) & (tokens != EOS)])
        assert "<result>" not in trained and trained.startswith("<call>lookup(name='")
        assert np.sum(mask) == len(trained.encode()) + 1


@pytest.mark.slow
def test_runlocal_config_runs_through_the_launcher(tmp_path):
    from tests.launch_helpers import run_launch

    done = run_launch(
        "launch.train",
        "--config=configs/grpo_tool_lookup.py:runlocal",
        f"--workdir={tmp_path / 'run'}",
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Finished step 2: held-out accuracy" in done.stdout
    assert (tmp_path / "run" / "warm_start" / "metrics.jsonl").exists()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any("tool/calls" in line for line in lines)
