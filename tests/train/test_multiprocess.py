"""Whole runs through the launcher: multi-host equivalence and SIGKILL resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from rl_lm.train.checkpoint import load_state

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "--config=configs/sft_arith.py:runlocal"
# Long enough that the run is still going when its first checkpoint lands.
STEPS = (
    "--config.train.num_steps=200",
    "--config.train.ckpt_every=50",
    "--config.train.eval_every=0",
    "--config.train.log_every=50",
)


def _env(devices: int, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"
    env["RL_LM_DATA_DIR"] = str(data_dir)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _launch(workdir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "launch.train", CONFIG, *STEPS, f"--workdir={workdir}", *extra]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _params(workdir: Path):
    state, step = load_state(workdir / "checkpoints")
    return state["params"], step


def _assert_same(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run: 1 process x 8 devices."""
    root = tmp_path_factory.mktemp("reference")
    env = _env(8, root / "data")
    _finish(_launch(root / "run", env))
    return root / "run", env


@pytest.mark.slow
def test_two_processes_equal_one(reference_run, tmp_path):
    ref_dir, env1 = reference_run
    env = _env(4, Path(env1["RL_LM_DATA_DIR"]))
    port = portpicker.pick_unused_port()
    procs = [
        _launch(
            tmp_path / "run",
            env,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
        for i in range(2)
    ]
    outs = [_finish(p) for p in procs]
    assert "Finished step 200" in outs[0]
    got, step = _params(tmp_path / "run")
    want, ref_step = _params(ref_dir)
    assert step == ref_step == 200
    _assert_same(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sigkill_then_restart_equals_uninterrupted(reference_run, tmp_path):
    ref_dir, env = reference_run
    workdir = tmp_path / "run"
    proc = _launch(workdir, env)
    deadline = time.time() + 600
    # Kill hard as soon as the first checkpoint (step 50) is complete.
    while not (workdir / "checkpoints" / "50").is_dir():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        if time.time() > deadline:  # A hang guard, not a speed check.
            proc.kill()
            pytest.fail("no checkpoint after 600 s: the run hangs")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    out = _finish(_launch(workdir, env))  # The same command resumes.
    assert "Resumed from step" in out, out[-3000:]
    got, step = _params(workdir)
    want, _ = _params(ref_dir)
    assert step == 200
    _assert_same(got, want, rtol=0, atol=0)
