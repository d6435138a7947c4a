"""Every experiment config: loads, documents its launch command, runs 2 steps via the launcher."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import base

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    p.name for p in (REPO / "configs").glob("*.py") if p.name not in ("__init__.py", "base.py")
)


def _launch(*flags, data_dir, timeout=600):
    env = {**os.environ, "RL_LM_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "launch.train", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def test_there_are_configs():
    assert "sft_arith.py" in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_holds_the_launch_command(name):
    text = (REPO / "configs" / name).read_text()
    assert f"python -m launch.train --config=configs/{name}" in text


@pytest.mark.parametrize("arg", ["", ":runlocal"])
@pytest.mark.parametrize("name", CONFIGS)
def test_warm_start_stages_have_the_models_shapes(name, arg):
    # A stage with other shapes would fail the trunk check only after it has trained.
    module = importlib.import_module(f"configs.{name[:-3]}")
    try:
        config = module.get_config(arg[1:] or None)
    except ValueError as e:  # e.g. configs/dpo_hh.py needs a checkpoint path
        assert not arg and "needs" in str(e)
        pytest.skip(str(e))
    trunk = lambda m: {k: v for k, v in m.items() if k not in ("lm_head", "scalar_head")}
    stage = config.get("warm_start")
    while stage is not None:
        assert trunk(stage.model) == trunk(config.model), f"{name}{arg}: warm_start.model differs"
        stage = stage.get("warm_start")


# Config arguments that switch to another trainer or data path than the default's.
VARIANTS = [
    ("nash_rps.py", "algo=dpo"),
    ("nash_rps.py", "algo=nash_md"),
    ("prm_chain.py", "head=token"),
    ("pure_chain.py", "short_padding"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", [(n, "") for n in CONFIGS] + VARIANTS)
def test_runlocal_runs_two_steps(name, arg, data_dir, tmp_path):
    out = _launch(
        f"--config=configs/{name}:runlocal" + (f",{arg}" if arg else ""),
        f"--workdir={tmp_path}",
        "--config.train.num_steps=2",
        data_dir=data_dir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Finished step 2: held-out" in out.stdout
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "curves.png").exists()
    assert "8 global devices" in out.stderr  # conftest's simulated devices: sharded run.


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.nun_steps=2", "nun_steps"),
        ("--config.train.num_steps=two", "num_steps"),
        ("--config.optim.lr=fast", "lr"),
    ],
)
def test_bad_overrides_fail_naming_the_key(flag, message, data_dir, tmp_path):
    out = _launch(
        "--config=configs/sft_arith.py:runlocal", f"--workdir={tmp_path}", flag, data_dir=data_dir
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert not (tmp_path / "config.json").exists()


def test_unknown_algo_fails_listing_the_known_ones(data_dir, tmp_path):
    out = _launch(
        "--config=configs/sft_arith.py:runlocal",
        f"--workdir={tmp_path}",
        "--config.algo=grpoo",
        data_dir=data_dir,
    )
    assert out.returncode != 0
    assert "unknown config.algo='grpoo'; known algorithms: " in out.stderr


def test_parse_arg():
    arg = base.parse_arg("runlocal,steps=10,name=abc", runlocal=False, steps=1, name="x")
    assert arg.runlocal is True and arg.steps == 10 and arg.name == "abc"
    with pytest.raises(ValueError, match="unknown config argument 'runlcoal'"):
        base.parse_arg("runlcoal", runlocal=False)
    with pytest.raises(ValueError, match="steps='ten' should be a int"):
        base.parse_arg("steps=ten", steps=1)


def test_model_section_keeps_preset_shapes():
    section = base.model("cpu")
    assert section.dim == 128 and section.head_dim is None
    assert base.model("qwen3-0.6b").head_dim == 128
    with pytest.raises(ValueError, match="unknown model preset 'cpuu'"):
        base.model("cpuu")


def test_pure_chain_short_padding_preset():
    from configs import pure_chain

    config = pure_chain.get_config("form=min,short_padding")
    assert config.data.name == "chain/sft_restate75_at3_times4_value1"
    assert config.grpo.max_new_tokens == config.eval.max_new_tokens == 48
    assert config.grpo.process.source == "restate_before"
    assert config.grpo.process.cut_step == "as_written"
    assert config.warm_start.data.name == config.data.name
    # A value the preset also sets: the same one is fine, another one is named.
    assert pure_chain.get_config("short_padding,restate_value=1").data.name == config.data.name
    with pytest.raises(ValueError, match="short_padding sets restate=75.*gives restate=50"):
        pure_chain.get_config("short_padding,restate=50")
    assert pure_chain.get_config("").grpo.max_new_tokens == 40  # the default is unchanged
