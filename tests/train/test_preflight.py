"""Config checks before a run: unknown override paths, sequence lengths, flat listings."""

import importlib
from pathlib import Path

import pytest

from configs import sft_arith
from rl_lm.train import preflight
from rl_lm.train.report import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    p.stem for p in (REPO / "configs").glob("*.py") if p.name not in ("__init__.py", "base.py")
)


@pytest.mark.parametrize(
    "path, message",
    [
        ("optim.lrr", "Unknown config field optim.lrr; did you mean optim.lr?"),
        ("optm.lr", "Unknown config field optm.lr; did you mean optim.lr?"),
        ("train.nun_steps", "Unknown config field train.nun_steps; did you mean train.num_steps?"),
        ("sft.zzz", "Unknown config field sft.zzz; sft has ['chunk_size']."),
        ("optim.lr", None),
        ("model.head_dim", None),  # A placeholder is a field.
        ("rules[0]", None),  # Indexes are left to ml_collections.
    ],
)
def test_unknown_field_names_the_full_path_and_the_close_one(path, message):
    assert preflight.unknown_field(sft_arith.get_config("runlocal"), path) == message


def test_flatten_lists_every_field_once():
    config = sft_arith.get_config("runlocal")
    flat = preflight.flatten(config)
    assert flat["optim.lr"] == 1e-3 and flat["model.head_dim"] is None
    assert flat["data.name"] == "arithmetic/add2" and "data" not in flat
    assert preflight.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {
        "a.b": 1,
        "a.c.d": 2,
        "e": 3,
    }


def test_lengths_past_the_context_name_both_fields():
    config = sft_arith.get_config("runlocal")
    config.model.max_seq_len = 10
    with pytest.raises(ConfigError) as e:
        preflight.check_lengths(config)
    assert str(e.value) == (
        "data.max_len=12 exceeds model.max_seq_len=10: training rows would not fit the "
        "model's context; data.max_prompt_len=8 + eval.max_new_tokens=5 = 13 exceeds "
        "model.max_seq_len=10. Raise model.max_seq_len or shorten the sequences."
    )


def test_a_warm_start_stage_is_checked_too():
    config = sft_arith.get_config("runlocal")
    config.unlock()
    config.warm_start = sft_arith.get_config("runlocal")
    config.warm_start.eval.max_new_tokens = 30
    assert preflight.length_problems(config) == [
        "warm_start.data.max_prompt_len=8 + warm_start.eval.max_new_tokens=30 = 38 exceeds "
        "warm_start.model.max_seq_len=32"
    ]


@pytest.mark.parametrize("arg", [None, "runlocal"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_fits_its_context(name, arg):
    module = importlib.import_module(f"configs.{name}")
    try:
        config = module.get_config(arg)
    except ValueError as e:  # e.g. configs/dpo_hh.py needs a checkpoint path
        pytest.skip(str(e))
    assert preflight.length_problems(config) == []
