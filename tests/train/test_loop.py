"""The loop end to end: outputs in the workdir, SIGTERM, exact resume, config checks."""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import sft_arith
from rl_lm.algos import sft
from rl_lm.train import loop, registry, warm_start
from rl_lm.train.checkpoint import load_state
from rl_lm.train.metrics import read_metrics
from rl_lm.train.report import ConfigError

DATA = "arithmetic/d1_n2_add_train200_test20_seed0"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, **train):
    config = sft_arith.get_config("runlocal")
    config.data.name = DATA
    config.data.data_dir = data_dir
    config.train.update(train)
    return config


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = _config(data_dir, num_steps=6, log_every=2, eval_every=3, ckpt_every=2, keep=2)
    return workdir, config, loop.train(config, workdir)


def test_run_writes_its_outputs(finished_run):
    workdir, config, result = finished_run
    assert result["step"] == 6 and not result["preempted"]
    assert 0.0 <= result["eval/accuracy"] <= 1.0
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [2, 3, 4, 6]
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "wall_time"} <= set(rows[0])
    assert "eval/accuracy" in rows[1] and "loss" not in rows[1]
    assert rows[-1]["eval/accuracy"] == result["eval/accuracy"]
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tb"))
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 6
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]


def test_eval_at_start_logs_step_zero_once(data_dir, tmp_path, capsys):
    config = _config(data_dir, num_steps=2, log_every=2, eval_every=2, ckpt_every=2)
    config.train.eval_at_start = True
    loop.train(config, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [0, 2]
    assert set(rows[0]) == {
        "step",
        "wall_time",
        "eval/accuracy",
        "eval/num_examples",
        "eval/response_len",
        "eval/cut",
    }
    # A from-scratch model gets nothing right; the final line shows both figures.
    assert rows[0]["eval/accuracy"] == 0.0
    if rows[1]["eval/accuracy"] != 0.0:
        assert "(step 0: 0)" in capsys.readouterr().out
    # Killed before its first checkpoint, the run restarts at step 0 but keeps its row.
    shutil.rmtree(tmp_path / "checkpoints")
    loop.train(config, tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 2]


def _sigterm_at(step_to_stop):
    """An SFT trainer whose step sends this process SIGTERM at `step_to_stop`."""

    def make_trainer(config, mesh, init_from=None):
        trainer = sft.make_trainer(config, mesh, init_from)
        calls = []

        def step(state, batch):
            calls.append(None)
            if len(calls) == step_to_stop:
                os.kill(os.getpid(), signal.SIGTERM)
            return trainer.step(state, batch)

        return dataclasses.replace(trainer, step=step)

    return make_trainer


@pytest.mark.slow
def test_sigterm_saves_and_the_resumed_run_is_exact(finished_run, data_dir, tmp_path, monkeypatch):
    ref_workdir, config, _ = finished_run
    monkeypatch.setitem(registry.ALGOS, "sft", _sigterm_at(3))
    result = loop.train(config, tmp_path)
    assert result["step"] == 3 and result["preempted"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
    assert not (tmp_path / "curves.png").exists()
    # The handler is uninstalled afterwards.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    monkeypatch.setitem(registry.ALGOS, "sft", sft.make_trainer)
    result = loop.train(config, tmp_path)
    assert result["step"] == 6 and not result["preempted"]
    resumed, _ = load_state(tmp_path / "checkpoints", 6)
    reference, _ = load_state(ref_workdir / "checkpoints", 6)
    jax.tree.map(np.testing.assert_array_equal, resumed, reference)
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert steps == [r["step"] for r in read_metrics(ref_workdir)] == [2, 3, 4, 6]


def test_metrics_resume_drops_rows_past_the_restored_step(tmp_path):
    writer = loop.MetricsWriter(tmp_path, start_step=0)
    for step in (1, 2, 3, 4):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss"')  # A line cut by a crash.
    writer = loop.MetricsWriter(tmp_path, start_step=2)
    writer.write(3, {"loss": 0.5, "bad": float("nan"), "worse": float("-inf")})
    writer.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # Non-finite values are kept, as standard JSON null, and read back as nan.
    assert rows[-1]["loss"] == 0.5 and math.isnan(rows[-1]["bad"]) and math.isnan(rows[-1]["worse"])
    last = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"bad": null, "worse": null' in last


def test_a_workdir_refuses_another_config(data_dir, tmp_path):
    config = _config(data_dir)
    loop.check_config(config, tmp_path)
    loop.check_config(config, tmp_path)  # Same config: resumes.
    config.optim.lr = 0.5
    with pytest.raises(ConfigError, match=r"different config \(optim.lr: 0.001 -> 0.5\)"):
        loop.check_config(config, tmp_path)


def test_unknown_algo_lists_the_known_ones(data_dir):
    config = _config(data_dir)
    config.algo = "sftt"
    with pytest.raises(ValueError, match="unknown config.algo='sftt'; known algorithms: .*sft"):
        registry.make_trainer(config, None)


@pytest.mark.slow
def test_sigterm_in_a_warm_start_stage_stops_the_run(data_dir, tmp_path, monkeypatch, capsys):
    config = _config(data_dir, num_steps=4, log_every=2, eval_every=4, ckpt_every=2)
    config.unlock()
    config.warm_start = _config(data_dir, num_steps=6, log_every=2, eval_every=6, ckpt_every=2)
    monkeypatch.setitem(registry.ALGOS, "sft", _sigterm_at(3))
    with pytest.raises(warm_start.Preempted, match="rerun the same command"):
        loop.train(config, tmp_path)
    out = capsys.readouterr().out
    assert f"Warm start: running the sft stage in {tmp_path / 'warm_start'} first." in out
    assert "Saved step 3 after SIGTERM; exiting." in out
    # The stage saved where it stopped; the run itself never started.
    assert sorted(os.listdir(tmp_path / "warm_start" / "checkpoints")) == ["2", "3"]
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")

    monkeypatch.setitem(registry.ALGOS, "sft", sft.make_trainer)
    result = loop.train(config, tmp_path)
    assert result["step"] == 4 and not result["preempted"]
    assert "6" in os.listdir(tmp_path / "warm_start" / "checkpoints")


def _listing(directory):
    """Every path under `directory` with its file's hash (None for a directory)."""
    directory = Path(directory)
    if not directory.exists():
        return None
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else None
        for p in sorted(directory.rglob("*"))
    }


def _vocab_too_small(config, finished):
    config.model.vocab_size = 100
    return "the model's vocab_size is 100"


def _init_from_another_shape(config, finished):
    config.init.workdir = str(finished)
    config.model.dim = 64
    return "The parameters of init.workdir=.* do not match config.model"


@pytest.mark.parametrize(
    "break_it, fresh", [(_vocab_too_small, True), (_init_from_another_shape, False)]
)
def test_a_failed_start_leaves_the_workdir_as_it_found_it(
    finished_run, data_dir, tmp_path, break_it, fresh
):
    workdir = tmp_path / "run"
    if not fresh:
        workdir.mkdir()
        (workdir / "notes.txt").write_text("kept")
    before = _listing(workdir)
    config = _config(data_dir, num_steps=2, log_every=2, eval_every=2, ckpt_every=2)
    message = break_it(config, finished_run[0])
    with pytest.raises(ValueError, match=message):
        loop.train(config, workdir)
    assert _listing(workdir) == before
    # So the corrected command runs in the same workdir.
    result = loop.train(_config(data_dir, num_steps=2, log_every=2, eval_every=2), workdir)
    assert result["step"] == 2


def test_lengths_past_the_context_fail_before_anything(data_dir, tmp_path):
    config = _config(data_dir)
    config.model.max_seq_len = 11
    with pytest.raises(ConfigError, match=r"^data.max_len=12 exceeds model.max_seq_len=11: "):
        loop.train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_events_a_user_follows_are_on_stdout(finished_run, tmp_path, capsys):
    ref_workdir, config, _ = finished_run
    workdir = tmp_path / "run"
    shutil.copytree(ref_workdir, workdir)
    (workdir / "checkpoints" / "6" / "default" / "_METADATA").unlink()
    capsys.readouterr()
    assert loop.train(config, workdir)["step"] == 6
    lines = capsys.readouterr().out.splitlines()
    moved = f"Moved unreadable checkpoint step 6 aside to {workdir / 'checkpoints_corrupt'}/6."
    assert lines[0].startswith(moved)
    assert lines[1] == f"Resumed from step 4 of {workdir / 'checkpoints'}."
    assert lines[2].startswith("Finished step 6: held-out accuracy ")


@pytest.mark.parametrize(
    "error, raised",
    [(ValueError("dpo.beta=0 must be > 0"), ConfigError), (TypeError("a bug"), TypeError)],
)
def test_make_trainer_errors_a_config_error_or_a_bug(
    data_dir, tmp_path, monkeypatch, error, raised
):
    def make_trainer(config, mesh, init_from=None):
        raise error

    monkeypatch.setitem(registry.ALGOS, "sft", make_trainer)
    with pytest.raises(raised) as e:
        loop.train(_config(data_dir), tmp_path / "run")
    if raised is ConfigError:
        assert str(e.value) == "config.algo='sft' cannot start: dpo.beta=0 must be > 0"
    else:
        assert e.value is error  # A bug keeps its own type and traceback.
    assert not (tmp_path / "run").exists()
