"""load_source: on-demand preparation, error messages, atomicity, data dir."""

from pathlib import Path

import pytest

from rl_lm.data import __main__ as data_main
from rl_lm.data import arithmetic, registry, storage

SMALL = {"max_digits": 1, "train_size": 40, "test_size": 10}


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RL_LM_DATA_DIR", str(tmp_path))
    assert storage.default_data_dir() == tmp_path
    assert storage.resolve_data_dir("~/x") == Path.home() / "x"
    monkeypatch.delenv("RL_LM_DATA_DIR")
    assert storage.default_data_dir() == Path.home() / ".cache/rl_lm/tensorflow_datasets"


def test_env_data_dir_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("RL_LM_DATA_DIR", str(tmp_path))
    name = registry.dataset_name("arithmetic", **SMALL)
    assert len(registry.load_source(name, "test")) == 10
    assert (tmp_path / "arithmetic" / name.split("/")[1] / "1.0.0" / "dataset_info.json").is_file()


def test_not_prepared_error_says_how(tmp_path):
    with pytest.raises(ValueError, match=r"'arithmetic/add2' is not prepared in .*prepare=True"):
        registry.load_source("arithmetic/add2", "train", data_dir=tmp_path, prepare=False)


def test_unknown_dataset_error_says_how(tmp_path):
    with pytest.raises(ValueError) as e:
        registry.load_source("my_data", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert "unknown dataset 'my_data'" in msg
    assert (
        "prepare_jsonl('my_data'" in msg and "python -m rl_lm.data --dataset=jsonl/my_data" in msg
    )
    assert "'jsonl/my_data'" in msg
    with pytest.raises(ValueError, match="unknown data task 'chess'"):
        registry.dataset_name("chess")


def test_unknown_split(tmp_path):
    name = registry.dataset_name("arithmetic", **SMALL)
    with pytest.raises(ValueError, match=r"no split 'validation'; it has \['test', 'train'\]"):
        registry.load_source(name, "validation", data_dir=tmp_path)


def test_interrupted_preparation_leaves_no_dataset(tmp_path, monkeypatch):
    def failing_problems(config):
        def pairs():
            yield "1+1=", "2", "2"
            raise RuntimeError("disk full")

        return {"train": pairs(), "test": pairs()}

    name = registry.dataset_name("arithmetic", **SMALL)
    monkeypatch.setattr(arithmetic, "make_problems", failing_problems)
    with pytest.raises(RuntimeError, match="disk full"):
        registry.load_source(name, "train", data_dir=tmp_path)
    config_dir = tmp_path / "arithmetic" / name.split("/")[1]
    assert [p.name for p in config_dir.iterdir()] == []  # No version dir, no incomplete dir.
    with pytest.raises(ValueError, match="is not prepared"):
        registry.load_source(name, "train", data_dir=tmp_path, prepare=False)
    monkeypatch.undo()
    assert len(registry.load_source(name, "train", data_dir=tmp_path)) == 40


def test_concurrent_preparation_is_tolerated(tmp_path):
    # Two hosts both find the dataset missing; the other one finishes first.
    ours = arithmetic.arithmetic_builder(tmp_path, **SMALL)
    theirs = arithmetic.arithmetic_builder(tmp_path, **SMALL)
    write = ours._download_and_prepare

    def other_host_wins(**kwargs):
        storage.prepare(theirs)
        write(**kwargs)

    ours._download_and_prepare = other_host_wins
    storage.prepare(ours)
    assert storage.is_prepared(ours)
    assert len(ours.as_data_source("train")) == 40
    assert [p.name for p in Path(ours.data_dir).parent.iterdir()] == ["1.0.0"]


def test_command_line_prepares_arithmetic(tmp_path, capsys):
    name = registry.dataset_name("arithmetic", **SMALL)
    data_main.main([f"--dataset={name}", f"--data_dir={tmp_path}"])
    assert f"{name} is prepared in" in capsys.readouterr().out
    assert len(registry.load_source(name, "test", data_dir=tmp_path, prepare=False)) == 10
