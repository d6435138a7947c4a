"""The cluster launchers: dry-run command lines (quoting, shared workdirs) and usage errors.

launch/tpu_pod.sh and launch/xpk.sh print their command instead of running it
(--dry_run or DRY_RUN=1); launch/slurm.sbatch runs with `srun` replaced by a
script that records its arguments.
"""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Overrides a shell would split or interpret if they were not quoted.
OVERRIDES = (
    "--config.data.name=jsonl/my math",
    "--config.grpo.reward_fns=my_pkg.rewards:brevity=0.1,len:f=1",
    "--config.eval.answer='x' $HOME",
)
TRAIN = ["-m", "launch.train", "--config=configs/grpo_math.py", "--workdir=/gcs/b/runs/math"]


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "launch" / script), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _remote(argv: list[str], flag: str) -> list[str]:
    """The words of the shell command passed as `flag`=..."""
    (command,) = [a.removeprefix(flag) for a in argv if a.startswith(flag)]
    return shlex.split(command)


@pytest.mark.parametrize("dry", [("--dry_run",), ()])
def test_tpu_pod_dry_run(dry):
    env = {} if dry else {"DRY_RUN": "1"}
    out = _run(
        "tpu_pod.sh",
        *dry,
        "my-v5e-16",
        "us-west4-a",
        "configs/grpo_math.py",
        "/gcs/b/runs/math",
        *OVERRIDES,
        PROJECT="proj",
        REPO_DIR="/opt/rl_lm",
        **env,
    )
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout)
    assert argv[:7] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "my-v5e-16",
        "--zone=us-west4-a",
    ]
    assert "--worker=all" in argv and argv[-1] == "--project=proj"
    words = _remote(argv, "--command=")
    assert words[:5] == ["cd", "/opt/rl_lm", "&&", "RL_LM_DISTRIBUTED=auto", "python3"]
    assert words[5:] == [*TRAIN, *OVERRIDES]


def test_xpk_dry_run():
    out = _run(
        "xpk.sh",
        "--dry_run",
        "my-cluster",
        "v5litepod-16",
        "us-docker.pkg.dev/p/r/rl_lm:1",
        "configs/grpo_math.py",
        "/gcs/b/runs/math",
        *OVERRIDES,
        NUM_SLICES="2",
        ZONE="z",
    )
    assert out.returncode == 0, out.stderr
    argv = shlex.split(out.stdout)
    assert argv[:6] == [
        "xpk",
        "workload",
        "create",
        "--cluster=my-cluster",
        "--workload=rl-lm-math",
        "--tpu-type=v5litepod-16",
    ]
    assert "--num-slices=2" in argv and "--docker-image=us-docker.pkg.dev/p/r/rl_lm:1" in argv
    assert argv[-1] == "--zone=z"
    words = _remote(argv, "--command=")
    assert words[:5] == ["cd", "/app", "&&", "RL_LM_DISTRIBUTED=auto", "python3"]
    assert words[5:] == [*TRAIN, *OVERRIDES]


@pytest.mark.parametrize(
    "script, args",
    [
        ("tpu_pod.sh", ("--dry_run", "pod", "zone", "configs/x.py")),
        ("xpk.sh", ("--dry_run", "cluster", "v5litepod-16", "image", "configs/x.py")),
    ],
)
def test_missing_arguments_print_usage(script, args):
    out = _run(script, *args)
    assert out.returncode == 2 and out.stderr.startswith("usage:"), out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("workdir", ["gs://b/runs/math", "runs/math"])
@pytest.mark.parametrize("script", ["tpu_pod.sh", "xpk.sh"])
def test_workdir_must_be_a_shared_path(script, workdir):
    head = ("pod", "zone") if script == "tpu_pod.sh" else ("cluster", "v5litepod-16", "image")
    out = _run(script, "--dry_run", *head, "configs/x.py", workdir)
    assert out.returncode == 2 and "absolute path" in out.stderr and out.stdout == ""


def test_slurm_sbatch_runs_train_under_srun(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nprintf "%s\\n" "$RL_LM_DATA_DIR" "$PWD" "$@" > "$SRUN_LOG"\n')
    srun.chmod(0o755)
    log = tmp_path / "srun.log"
    env = dict(PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_LOG=str(log), SHARED="/shared/me")
    out = _run(
        "slurm.sbatch",
        "configs/grpo_math.py",
        "math",
        *OVERRIDES,
        SLURM_SUBMIT_DIR=str(ROOT),
        PYTHON="/env/bin/python",
        **env,
    )
    assert out.returncode == 0, out.stderr
    lines = log.read_text().splitlines()
    assert lines == [
        "/shared/me/data",
        str(ROOT),
        "--kill-on-bad-exit=1",
        "/env/bin/python",
        "-m",
        "launch.train",
        "--config=configs/grpo_math.py",
        "--workdir=/shared/me/runs/math",
        *OVERRIDES,
    ]
    text = (ROOT / "launch" / "slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --requeue" in text


def test_slurm_sbatch_needs_shared_and_arguments(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SHARED"}
    out = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm.sbatch"), "configs/x.py", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "SHARED" in out.stderr
    assert _run("slurm.sbatch", "configs/x.py", SHARED="/s").stderr.startswith("usage:")
