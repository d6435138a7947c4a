"""Starting a run from a Hugging Face checkpoint: the model and tokenizer come from it alone."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import dpo_hh, grpo_arith, grpo_synthetic, prm_chain, sft_arith
from rl_lm.algos import common
from rl_lm.models.hf_config import config_from_hf
from rl_lm.models.tokenizer import load_tokenizer
from rl_lm.train import hf_start, preflight, warm_start
from rl_lm.train.report import ConfigError
from tests import hf_fixtures

pytest.importorskip("transformers")
pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Family -> a tiny checkpoint directory with its tokenizer."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "llama": hf_fixtures.make_checkpoint(root / "llama", "llama", tie_word_embeddings=True),
        "qwen2": hf_fixtures.make_checkpoint(root / "qwen2", "qwen2"),
    }


def _from(module, path, arg="runlocal"):
    config = module.get_config(arg)
    config.init.hf_dir = str(path)
    return config


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_model_sections_and_tokenizer_come_from_the_checkpoint(checkpoints, family):
    path = checkpoints[family]
    source = config_from_hf(path)
    config = _from(grpo_synthetic, path)
    before = preflight.flatten(config)
    resolved = hf_start.resolve(config)
    assert preflight.flatten(config) == before  # The config given is not changed.
    policy = source.replace(max_seq_len=32)  # The config's 32 fits the checkpoint's 64.
    assert common.model_config(resolved.model) == policy
    assert common.model_config(resolved.warm_start.model) == policy
    # The reward model and its stage keep their scalar head on the checkpoint's trunk.
    rm = policy.replace(lm_head=False, scalar_head=True, tie_embeddings=False)
    assert common.model_config(resolved.reward_model.model) == rm
    assert common.model_config(resolved.reward_model.stage.model) == rm
    tokenizers = {k: v for k, v in preflight.flatten(resolved).items() if k.endswith("tokenizer")}
    assert tokenizers == dict.fromkeys(
        ["tokenizer", "reward_model.stage.tokenizer", "warm_start.tokenizer"], str(path)
    )
    assert preflight.length_problems(resolved) == []
    tokenizer = load_tokenizer(resolved.tokenizer)
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2)
    hf_start.check_tokenizer(resolved)
    assert source.qkv_bias == (family == "qwen2") and source.tie_embeddings == (family == "llama")


def test_without_hf_dir_nothing_changes():
    config = sft_arith.get_config("runlocal")
    assert hf_start.resolve(config, {"model.dim": 8}) is config


def test_heads_and_a_longer_context_stay_the_configs(checkpoints):
    config = _from(prm_chain, checkpoints["qwen2"], None)  # A scalar-head PRM, 64 positions.
    config.model.max_seq_len = 1000  # A default past the checkpoint's context is cut to it.
    resolved = hf_start.resolve(config)
    model = common.model_config(resolved.model)
    assert (model.lm_head, model.scalar_head, model.max_seq_len) == (False, True, 64)
    assert resolved.warm_start.model.lm_head


def test_explicit_values_that_agree_or_are_the_runs_own_are_kept(checkpoints):
    config = _from(grpo_arith, checkpoints["qwen2"])
    assert config.warm_start.model is config.model  # As an override sets them: both.
    config.model.update(param_dtype="bfloat16", max_seq_len=16, remat="full")
    explicit = {"model.param_dtype": "bfloat16", "model.max_seq_len": 16, "model.dim": 32}
    explicit["tokenizer"] = str(checkpoints["llama"])  # Same vocabulary, another directory.
    resolved = hf_start.resolve(config, explicit)
    assert (resolved.model.param_dtype, resolved.model.dtype) == ("bfloat16", "float32")
    assert (resolved.model.max_seq_len, resolved.model.remat) == (16, "full")
    assert resolved.warm_start.model.to_dict() == resolved.model.to_dict()
    assert resolved.tokenizer == str(checkpoints["llama"])


def test_a_contradicting_model_flag_fails_naming_both_values(checkpoints):
    path = checkpoints["qwen2"]
    with pytest.raises(ConfigError) as e:
        hf_start.resolve(_from(sft_arith, path), {"model.dim": 64})
    assert str(e.value) == (
        f"--config.model.dim=64 contradicts the checkpoint init.hf_dir={path} (dim=32); drop "
        "the flag: the checkpoint fixes the model's shape."
    )
    with pytest.raises(ConfigError, match=r"warm_start.model.qkv_bias=False contradicts .*=True"):
        hf_start.resolve(_from(grpo_arith, path), {"warm_start.model.qkv_bias": False})


def test_a_max_seq_len_past_the_checkpoints_context_fails(checkpoints):
    path = checkpoints["llama"]
    with pytest.raises(ConfigError) as e:
        hf_start.resolve(_from(sft_arith, path), {"model.max_seq_len": 128})
    assert str(e.value) == (
        f"--config.model.max_seq_len=128 exceeds the context of the checkpoint init.hf_dir="
        f"{path} (max_position_embeddings=64); use at most 64."
    )


def test_a_missing_or_unsupported_checkpoint_is_one_line(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match=r"^init.hf_dir='.*nope': .*nope not found; pass a local"):
        hf_start.resolve(_from(sft_arith, tmp_path / "nope"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ConfigError, match=r"^init.hf_dir=.*model_type='gpt2'"):
        hf_start.resolve(_from(sft_arith, tmp_path))


def test_the_tokenizer_check_names_the_flag(checkpoints, tmp_path):
    config = sft_arith.get_config("runlocal")
    config.model.vocab_size = 100
    with pytest.raises(ConfigError, match=r"^--config.tokenizer='byte' produces ids up to 258 "):
        hf_start.check_tokenizer(config)
    config.tokenizer = str(tmp_path)  # No tokenizer.json there.
    with pytest.raises(ConfigError, match=r"^--config.tokenizer='.*': .*tokenizer.json not found"):
        hf_start.check_tokenizer(config)


def test_the_warm_start_stage_does_not_run(checkpoints, tmp_path):
    config = hf_start.resolve(_from(grpo_arith, checkpoints["qwen2"]))
    params = warm_start.initial_params(config, tmp_path, resuming=False)
    assert params["embed"].shape == (320, 32)
    assert not (tmp_path / warm_start.WARM_START_DIR).exists()


def test_dpo_hh_checkpoint_argument_sets_hf_dir(checkpoints):
    path = checkpoints["llama"]
    config = dpo_hh.get_config(f"checkpoint={path}")
    assert config.init.hf_dir == config.tokenizer == str(path)
    assert common.model_config(config.model) == config_from_hf(path).replace(
        max_seq_len=64, remat="full"
    )


def _launch(*flags, data_dir=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if data_dir is not None:
        env["RL_LM_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "launch.train", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_launcher_prints_the_resolved_config_and_rejects_a_contradiction(checkpoints):
    path = checkpoints["qwen2"]
    flags = ("--config=configs/sft_arith.py:runlocal", f"--config.init.hf_dir={path}")
    out = _launch(*flags, "--print_config")
    assert out.returncode == 0, out.stderr[-3000:]
    expected = hf_start.resolve(_from(sft_arith, path))
    assert out.stdout.splitlines() == [
        f"{k} = {v!r}" for k, v in preflight.flatten(expected).items()
    ]
    assert f"tokenizer = {str(path)!r}" in out.stdout and "model.qkv_bias = True" in out.stdout
    out = _launch(*flags, "--config.model.num_layers=3", "--print_config")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        f"--config.model.num_layers=3 contradicts the checkpoint init.hf_dir={path} "
        "(num_layers=2); drop the flag: the checkpoint fixes the model's shape.\n"
    )


# One config per algorithm family that has an init section (nash_rps has none).
ALGO_CONFIGS = ["grpo_synthetic", "ppo_arith", "dpo_synthetic", "rm_synthetic", "prm_chain"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ALGO_CONFIGS)
def test_every_algorithm_starts_from_hf_dir_alone(checkpoints, name, tmp_path):
    out = _launch(
        f"--config=configs/{name}.py:runlocal",
        f"--config.init.hf_dir={checkpoints['qwen2']}",
        f"--workdir={tmp_path / 'run'}",
        "--config.train.num_steps=1",
        data_dir=tmp_path / "data",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Starting from the Hugging Face checkpoint {checkpoints['qwen2']}." in out.stdout
    assert "Finished step 1" in out.stdout
    assert not (tmp_path / "run" / warm_start.WARM_START_DIR).exists()
