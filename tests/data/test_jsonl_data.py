"""JSONL datasets: round trips, file order, and errors naming file, line and field."""

import json
import re

import pytest

from rl_lm.data import __main__ as data_main
from rl_lm.data import jsonl, pipeline, registry
from rl_lm.data.pipeline import eval_examples
from rl_lm.models.tokenizer import ByteTokenizer
from tests import chat_fixtures


def _write(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_sft_round_trip_keeps_order(tmp_path):
    train = _write(
        tmp_path / "train.jsonl",
        [
            {"prompt": "2+2=", "response": "4", "answer": "4"},
            "",
            {"prompt": "héllo ✓", "response": "wörld", "extra": 1},
            {"prompt": "a", "response": ""},
        ],
    )
    test = _write(tmp_path / "test.jsonl", [{"prompt": "q", "response": "r", "answer": "7"}])
    out = jsonl.prepare_jsonl("toy", "sft", train, test, data_dir=tmp_path / "data")
    assert (out / "dataset_info.json").is_file()
    got = eval_examples(registry.load_source("jsonl/toy", "train", data_dir=tmp_path / "data"))
    assert got == [
        {"prompt": "2+2=", "response": "4", "answer": "4"},
        {"prompt": "héllo ✓", "response": "wörld", "answer": ""},
        {"prompt": "a", "response": "", "answer": ""},
    ]
    test_src = registry.load_source("jsonl/toy", "test", data_dir=tmp_path / "data")
    assert eval_examples(test_src) == [{"prompt": "q", "response": "r", "answer": "7"}]


def test_preference_round_trip_without_test_split(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(30)]
    train = _write(tmp_path / "prefs.jsonl", rows)
    jsonl.prepare_jsonl("prefs", "preference", train, data_dir=tmp_path)
    assert eval_examples(registry.load_source("jsonl/prefs", "train", data_dir=tmp_path)) == rows
    with pytest.raises(ValueError, match=r"no split 'test'; it has \['train'\]"):
        registry.load_source("jsonl/prefs", "test", data_dir=tmp_path)


@pytest.mark.parametrize(
    "kind,bad_line,match",
    [
        ("sft", '{"prompt": "a", "response": "b"', r"line 2: invalid JSON \(Expecting"),
        ("sft", {"prompt": "a"}, r"line 2: missing field 'response'; a 'sft' dataset needs"),
        ("preference", {"prompt": "a", "chosen": "b"}, r"line 2: missing field 'rejected'"),
        ("sft", {"prompt": "a", "response": 3}, r"line 2: field 'response' must be a string"),
        ("sft", {"prompt": "a", "response": "b", "answer": None}, r"line 2: field 'answer'"),
        ("sft", [1, 2], r"line 2: expected a JSON object"),
    ],
)
def test_bad_file_names_file_line_and_field(tmp_path, kind, bad_line, match):
    good = {"prompt": "a", "response": "b", "chosen": "c", "rejected": "d"}
    path = _write(tmp_path / "bad.jsonl", [good, bad_line, good])
    with pytest.raises(ValueError, match=re.escape(f"{path}, ") + match):
        jsonl.prepare_jsonl("bad", kind, path, data_dir=tmp_path / "data")
    assert not (tmp_path / "data").exists()  # Nothing written.


def test_bad_arguments(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"prompt": "a", "response": "b"}])
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no examples"):
        jsonl.prepare_jsonl("x", "sft", tmp_path / "empty.jsonl", data_dir=tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        jsonl.prepare_jsonl("x", "rl", path, data_dir=tmp_path)
    with pytest.raises(ValueError, match="must be letters"):
        jsonl.prepare_jsonl("a/b", "sft", path, data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="test file .*missing.jsonl of jsonl dataset 'x'"):
        jsonl.prepare_jsonl("x", "sft", path, tmp_path / "missing.jsonl", data_dir=tmp_path)


def test_existing_dataset_needs_overwrite(tmp_path):
    first = _write(tmp_path / "a.jsonl", [{"prompt": "a", "response": "1"}])
    second = _write(tmp_path / "b.jsonl", [{"prompt": "b", "response": "2"}])
    jsonl.prepare_jsonl("d", "sft", first, data_dir=tmp_path)
    with pytest.raises(ValueError, match="already exists .*overwrite=True"):
        jsonl.prepare_jsonl("d", "sft", second, data_dir=tmp_path)
    jsonl.prepare_jsonl("d", "sft", second, data_dir=tmp_path, overwrite=True)
    got = eval_examples(registry.load_source("jsonl/d", "train", data_dir=tmp_path))
    assert got == [{"prompt": "b", "response": "2", "answer": ""}]


def test_not_prepared_error_says_how(tmp_path):
    with pytest.raises(ValueError) as e:
        registry.load_source("jsonl/mine", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert "jsonl dataset 'jsonl/mine' is not prepared in" in msg
    assert "prepare_jsonl('mine', kind='sft', 'preference' or 'prompt'" in msg
    assert "python -m rl_lm.data --dataset=jsonl/mine --kind=sft" in msg
    assert f"--data_dir={tmp_path}" in msg


def test_command_line(tmp_path, capsys):
    path = _write(tmp_path / "t.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    args = ["--dataset=jsonl/cli", "--kind=preference", f"--train={path}", f"--data_dir={tmp_path}"]
    data_main.main(args)
    assert "jsonl/cli is prepared in" in capsys.readouterr().out
    assert len(registry.load_source("jsonl/cli", "train", data_dir=tmp_path)) == 1
    assert registry.dataset_name("jsonl", name="cli") == "jsonl/cli"


def test_command_line_checks_lengths_with_the_tokenizer(tmp_path):
    path = _write(
        tmp_path / "p.jsonl",
        [{"prompt": "1+1=", "answer": "2"}, {"prompt": "x" * 9, "answer": "1"}],
    )
    args = ["--dataset=jsonl/cli", "--kind=prompt", f"--train={path}", f"--data_dir={tmp_path}"]
    with pytest.raises(SystemExit) as e:
        data_main.main([*args, "--tokenizer=byte", "--max_prompt_len=8"])
    assert str(e.value).startswith(f"jsonl/cli: {path}, line 2: ")
    assert "more than max_prompt_len=8" in str(e.value)
    assert not (tmp_path / "jsonl").exists()


def test_prompt_kind_feeds_prompt_batches_like_arithmetic(tmp_path):
    """A prompt dataset is a drop-in GRPO/PPO source: the fields arithmetic's prompts have."""
    rows = [
        {"prompt": "1+2=", "answer": "3", "metadata": {"id": 7, "tag": "é"}},
        {"prompt": "4+4=", "answer": "8"},
    ]
    train = _write(tmp_path / "train.jsonl", rows)
    jsonl.prepare_jsonl(
        "math", "prompt", train, train, data_dir=tmp_path, tokenizer="byte", max_prompt_len=8
    )
    source = registry.load_source("jsonl/math", "train", data_dir=tmp_path)
    assert eval_examples(source) == [
        {"prompt": "1+2=", "answer": "3", "metadata": '{"id": 7, "tag": "é"}'},
        {"prompt": "4+4=", "answer": "8", "metadata": "{}"},
    ]
    arith = registry.load_source("arithmetic/add2", "train", data_dir=tmp_path)
    tok = ByteTokenizer()
    got, ref = (
        next(pipeline.prompt_batches(s, tok, batch_size=2, max_prompt_len=8, seed=0))
        for s in (source, arith)
    )
    assert {k: (v.dtype, v.shape) for k, v in got.items()} == {
        k: (v.dtype, v.shape) for k, v in ref.items()
    }
    assert sorted(got["answer"]) == ["3", "8"]
    row = list(got["prompt"][list(got["answer"]).index("3")])
    assert row == [tok.pad_id, tok.pad_id, tok.pad_id, tok.bos_id, *b"1+2="]


def test_prompt_kind_renders_messages_with_the_chat_template(tmp_path):
    tok_dir = chat_fixtures.save_chat_tokenizer(tmp_path / "tok", "chatml")
    messages = [{"role": "user", "content": "1+2?"}]
    train = _write(tmp_path / "t.jsonl", [{"messages": messages, "answer": "3"}])
    jsonl.prepare_jsonl("chat", "prompt", train, data_dir=tmp_path, tokenizer=str(tok_dir))
    (ex,) = eval_examples(registry.load_source("jsonl/chat", "train", data_dir=tmp_path))
    assert ex["prompt"] == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (ex["answer"], ex["metadata"], json.loads(ex["messages"])) == ("3", "{}", messages)


def test_prompt_kind_row_errors(tmp_path):
    def fails(row, match, **kw):
        path = _write(tmp_path / "bad.jsonl", [{"prompt": "ok", "answer": "1"}, row])
        with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: ") + match):
            jsonl.prepare_jsonl("bad", "prompt", path, data_dir=tmp_path / "data", **kw)
        assert not (tmp_path / "data").exists()

    fails({"prompt": "q"}, "missing field 'answer'; a 'prompt' dataset needs prompt, answer")
    fails({"prompt": "q", "answer": "1", "metadata": [1]}, "field 'metadata' must be a JSON")
    msgs = [{"role": "user", "content": "q"}]
    fails({"messages": msgs, "prompt": "q", "answer": "1"}, "a row has either messages or prompt")
    fails({"messages": msgs, "answer": "1"}, "rows with messages .* pass the run's tokenizer")
    fails({"messages": [{"role": "user"}], "answer": "1"}, "message 0 .* string 'content'")
    fails({"messages": msgs, "answer": "1"}, "tokenizer .* has no chat template", tokenizer="byte")


@pytest.mark.parametrize(
    "kind,row,limit,match",
    [
        ("prompt", {"prompt": "x" * 8, "answer": "1"}, {"max_prompt_len": 8}, "[BOS] + prompt"),
        ("sft", {"prompt": "ab", "response": "x" * 5}, {"max_len": 8}, "[BOS] + prompt + response"),
        ("sft", {"prompt": "x" * 8, "response": ""}, {"max_prompt_len": 8}, "[BOS] + prompt is"),
        (
            "preference",
            {"prompt": "ab", "chosen": "c", "rejected": "x" * 5},
            {"max_len": 8},
            "[BOS] + prompt + rejected + [EOS]",
        ),
    ],
)
def test_over_long_rows_fail_at_prepare_time(tmp_path, kind, row, limit, match):
    """The row's file, line, length and the limit; and no dataset (not even a partial one)."""
    ok = {"prompt": "a", "answer": "1", "response": "b", "chosen": "c", "rejected": "d"}
    path = _write(tmp_path / "long.jsonl", [ok, "", row])
    ((name, value),) = limit.items()
    with pytest.raises(ValueError) as e:
        jsonl.prepare_jsonl(
            "long", kind, path, data_dir=tmp_path / "data", tokenizer="byte", **limit
        )
    assert str(e.value).startswith(f"{path}, line 3: {match}")
    assert f"is 9 tokens, more than {name}={value}" in str(e.value)
    assert not (tmp_path / "data").exists()
    jsonl.prepare_jsonl("long", kind, path, data_dir=tmp_path / "data", tokenizer="byte")
    with pytest.raises(ValueError, match="line 3"):  # An existing dataset stays as it was.
        jsonl.prepare_jsonl(
            "long",
            kind,
            path,
            data_dir=tmp_path / "data",
            overwrite=True,
            tokenizer="byte",
            **limit,
        )
    assert len(registry.load_source("jsonl/long", "train", data_dir=tmp_path / "data")) == 2
    assert [p.name for p in (tmp_path / "data" / "jsonl" / "long").iterdir()] == ["1.0.0"]
