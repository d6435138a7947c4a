"""JSONL datasets: round trips, file order, and errors naming file, line and field."""

import json
import re

import pytest

from rl_lm.data import __main__ as data_main
from rl_lm.data import jsonl, registry
from rl_lm.data.pipeline import eval_examples


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
    assert "prepare_jsonl('mine', kind='sft' or 'preference'" in msg
    assert "python -m rl_lm.data --dataset=jsonl/mine --kind=sft" in msg
    assert f"--data_dir={tmp_path}" in msg


def test_command_line(tmp_path, capsys):
    path = _write(tmp_path / "t.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    args = ["--dataset=jsonl/cli", "--kind=preference", f"--train={path}", f"--data_dir={tmp_path}"]
    data_main.main(args)
    assert "jsonl/cli is prepared in" in capsys.readouterr().out
    assert len(registry.load_source("jsonl/cli", "train", data_dir=tmp_path)) == 1
    assert registry.dataset_name("jsonl", name="cli") == "jsonl/cli"
