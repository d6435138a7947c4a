"""The launcher's failures: one line on stderr, exit status 1, nothing on disk changed."""

import hashlib
import os
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import sft_arith
from rl_lm.analysis import load_metrics
from rl_lm.train import preflight
from rl_lm.train.checkpoint import load_state, saved_steps
from tests.launch_helpers import last_line, run_launch

CONFIG = "--config=configs/sft_arith.py:runlocal"
# Run the launcher with orbax's file writes for step 4 failing as on a full disk.
FULL_DISK = textwrap.dedent(
    """
    import errno, os
    from orbax.checkpoint._src.path import async_path
    real = async_path.write_text
    async def write_text(path, text, *args, **kwargs):
        if f"{os.sep}4.orbax-checkpoint-tmp" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return await real(path, text, *args, **kwargs)
    async_path.write_text = write_text
    from absl import app
    from launch import train
    app.run(train.main, flags_parser=train.parse_flags)
    """
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _launch(*flags, data_dir, code=None):
    return run_launch("launch.train", *flags, data_dir=data_dir, code=code)


def _hashes(directory):
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).rglob("*"))
        if p.is_file()
    }


def test_a_diverging_run_stops_before_saving_a_nan(data_dir, tmp_path):
    out = _launch(
        CONFIG,
        f"--workdir={tmp_path}",
        "--config.optim.lr=1e9",
        "--config.optim.grad_clip=0",
        "--config.train.ckpt_every=1",
        data_dir=data_dir,
    )
    assert out.returncode == 1
    line = last_line(out)
    assert line.startswith("Training diverged at step 2: "), line
    assert line.endswith(
        ". Likely the learning rate is too high (optim.lr=1e+09), or gradients are not clipped "
        "(optim.grad_clip=0.0). Stopped before saving it: the latest checkpoint, step 1 in "
        f"{tmp_path / 'checkpoints'}, is untouched."
    )
    assert "Finished" not in out.stdout
    assert saved_steps(tmp_path / "checkpoints") == [1]
    state, _ = load_state(tmp_path / "checkpoints", 1)
    floats = [x for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating)]
    assert all(np.isfinite(np.asarray(x)).all() for x in floats)
    # The diverged step's metrics are logged, and read back as nan.
    grad_norm = load_metrics(tmp_path)["grad_norm"]
    assert list(grad_norm.steps) == [2] and not np.isfinite(grad_norm.values).all()


@pytest.mark.slow
def test_a_failed_save_is_one_line_and_leaves_no_partial_checkpoint(data_dir, tmp_path):
    flags = (CONFIG, f"--workdir={tmp_path}", "--config.train.ckpt_every=2")
    out = _launch(*flags, data_dir=data_dir, code=FULL_DISK)
    assert out.returncode == 1
    line = last_line(out)
    assert line.startswith(
        f"Saving checkpoint step 4 to {tmp_path / 'checkpoints' / '4'} failed (OSError: "
        "[Errno 28] No space left on device: "
    ), line
    assert " GiB free. Training stopped and the partial save was removed; " in line
    assert line.endswith("the run resumes from step 2.")
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    before = _hashes(tmp_path / "checkpoints")
    # The same command on the same full disk resumes, fails again, and changes nothing.
    out = _launch(*flags, data_dir=data_dir, code=FULL_DISK)
    assert out.returncode == 1 and "Resumed from step 2 of" in out.stdout
    assert _hashes(tmp_path / "checkpoints") == before


def test_print_config_lists_every_field_and_exits(data_dir):
    out = _launch(CONFIG, "--config.data.batch_size=32", "--print_config", data_dir=data_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    config = sft_arith.get_config("runlocal")
    config.data.batch_size = 32
    expected = [f"{k} = {v!r}" for k, v in preflight.flatten(config).items()]
    assert out.stdout.splitlines() == expected
    assert "data.batch_size = 32" in expected and "optim.lr = 0.001" in expected


def test_an_unknown_override_is_one_line_with_the_close_field(data_dir, tmp_path):
    out = _launch(
        CONFIG, f"--workdir={tmp_path / 'run'}", "--config.optim.lrr=1", data_dir=data_dir
    )
    assert out.returncode == 1
    assert out.stderr == "Unknown config field optim.lrr; did you mean optim.lr?\n"
    assert not (tmp_path / "run").exists()


def test_a_sequence_longer_than_the_context_fails_at_start(data_dir, tmp_path):
    out = _launch(
        CONFIG, f"--workdir={tmp_path / 'run'}", "--config.model.max_seq_len=10", data_dir=data_dir
    )
    assert out.returncode == 1
    assert last_line(out) == (
        "data.max_len=12 exceeds model.max_seq_len=10: training rows would not fit the "
        "model's context; data.max_prompt_len=8 + eval.max_new_tokens=5 = 13 exceeds "
        "model.max_seq_len=10. Raise model.max_seq_len or shorten the sequences."
    )
    assert "train:" not in out.stderr  # Not a single step.
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ("--config=configs/grpo_math.py:runlocal", "--config.grpo.num_generations=1"),
            "config.algo='grpo' cannot start: Invalid GRPO config: grpo.num_generations must "
            "be >= 2 (group advantages need a group).",
        ),
        (
            ("--config=configs/grpo_math.py",),
            "This config starts from a Hugging Face checkpoint: pass --config.init.hf_dir=DIR "
            "(a local model directory with config.json, *.safetensors and tokenizer.json); "
            "without it the run would train a random placeholder model.",
        ),
    ],
)
def test_a_config_that_cannot_start_is_one_line(flags, message, data_dir, tmp_path):
    out = _launch(*flags, f"--workdir={tmp_path / 'run'}", data_dir=data_dir)
    assert out.returncode == 1
    assert last_line(out) == message
    assert not (tmp_path / "run").exists()


def test_a_url_workdir_is_one_line_naming_the_mount(data_dir):
    out = _launch(CONFIG, "--workdir=gs://bucket/runs/x", data_dir=data_dir)
    assert out.returncode == 1
    assert last_line(out).startswith("--workdir=gs://bucket/runs/x is a URL;")
    assert "Mount the bucket" in last_line(out)
