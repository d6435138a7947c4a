"""SLURM launches: tasks find their coordinator from SLURM_* alone and train as one process does."""

import os
import socket

import pytest

from rl_lm import parallel
from tests.train.test_multiprocess import _assert_same, _env, _finish, _launch, _params

# Shorter than test_multiprocess's runs (later overrides win): equality needs no more.
SHORT = ("--config.train.num_steps=20", "--config.train.ckpt_every=10")
# jax's SLURM detector puts the coordinator on port SLURM_JOB_ID % 4096 + _PORT_BASE.
_PORT_BASE = 65535 - 2**12 + 1


def _slurm_env(env: dict[str, str], job_id: int, tasks: int, proc: int) -> dict[str, str]:
    """The variables srun sets in task `proc` of a one-node step of `tasks` tasks."""
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR"))}
    for name in parallel.distributed.ENV_VARS:
        env.pop(name, None)
    env.update(
        SLURM_JOB_ID=str(job_id),
        SLURM_JOB_NODELIST="localhost",
        SLURM_STEP_NODELIST="localhost",
        SLURM_STEP_NUM_NODES="1",
        SLURM_NNODES="1",
        SLURM_NTASKS=str(tasks),
        SLURM_STEP_NUM_TASKS=str(tasks),
        SLURM_PROCID=str(proc),
        SLURM_LOCALID=str(proc),
        SLURM_NODEID="0",
        JAX_PLATFORMS="cpu",
    )
    return env


def _free_slurm_job_id() -> int:
    """A job id whose derived coordinator port is free on this machine right now."""
    for port in range(_PORT_BASE, 65536):
        with socket.socket() as s:
            try:
                s.bind(("localhost", port))
            except OSError:
                continue
        return port - _PORT_BASE + 2**12 * 1000  # A realistic 7-digit job id.
    pytest.skip("no free port in jax's SLURM coordinator range")


@pytest.fixture
def clean_env(monkeypatch):
    for name in [*os.environ]:
        if name.startswith("SLURM_") or name in parallel.distributed.ENV_VARS:
            monkeypatch.delenv(name)
    return monkeypatch


def test_slurm_tasks_reads_srun_steps_only(clean_env):
    assert parallel.distributed.slurm_tasks() is None
    clean_env.setenv("SLURM_JOB_ID", "7")
    clean_env.setenv("SLURM_NTASKS", "8")  # The batch script: no step, one process.
    assert parallel.distributed.slurm_tasks() is None
    assert parallel.initialize() is False
    for name, value in _slurm_env({}, 7, 8, 3).items():
        clean_env.setenv(name, value)
    assert parallel.distributed.slurm_tasks() == (8, 8)  # One task per GPU.
    clean_env.setenv("SLURM_STEP_NUM_NODES", "8")
    assert parallel.distributed.slurm_tasks() == (8, 1)  # One task per node.


def test_one_task_step_is_single_process(clean_env):
    for name, value in _slurm_env({}, 7, 1, 0).items():
        clean_env.setenv(name, value)
    assert parallel.initialize() is False


@pytest.mark.slow
def test_slurm_tasks_find_coordinator_and_equal_one_process(tmp_path):
    data = tmp_path / "data"
    _finish(_launch(tmp_path / "ref", _env(8, data), *SHORT))
    job = _free_slurm_job_id()
    env = _env(4, data)
    procs = [_launch(tmp_path / "run", _slurm_env(env, job, 2, i), *SHORT) for i in range(2)]
    outs = [_finish(p) for p in procs]
    assert "Finished step 20" in outs[0]
    for i, out in enumerate(outs):
        assert f"process {i} of 2" in out, out[-3000:]
    got, step = _params(tmp_path / "run")
    want, ref_step = _params(tmp_path / "ref")
    assert step == ref_step == 20
    _assert_same(got, want, rtol=1e-5, atol=1e-6)


def test_coordinator_is_first_node_on_job_port(clean_env):
    """jax's detector, which `initialize` relies on, on the node lists srun sets."""
    from jax._src.clusters.slurm_cluster import SlurmCluster

    for name, value in _slurm_env({}, 4096 * 3 + 5, 16, 0).items():
        clean_env.setenv(name, value)
    clean_env.setenv("SLURM_STEP_NODELIST", "gpu[017-020,031],login1")
    assert SlurmCluster.is_env_present()
    assert SlurmCluster.get_coordinator_address(None, None) == f"gpu017:{_PORT_BASE + 5}"
    assert SlurmCluster.get_coordinator_address(None, "1234") == "gpu017:1234"


def test_auto_hands_detection_to_jax(clean_env):
    calls = []
    clean_env.setattr(
        parallel.distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw)
    )
    clean_env.setenv(parallel.distributed.AUTO_VAR, "auto")
    assert parallel.initialize() is True
    assert calls == [{}]
    # Explicit coordinates still win over "auto".
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize("localhost:1", 2)
