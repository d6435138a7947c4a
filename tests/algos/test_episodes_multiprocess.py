"""Multi-turn episodes in a multi-process job: 2 processes x 4 devices equal 1 x 8.

A tiny GRPO tool run (configs/grpo_tool_arith.py:runlocal) through the launcher,
its environment a scripted one that answers most first turns with an
observation made from the turn's text (so every process's rows get observations
from the first step on, whatever the barely warm-started policy writes) and its
reward one that varies by row (so the updates are not zero). Each process steps its own
rows' environments only; the scripted environment logs every step it runs to
its process's file, so the test sees that each call ran exactly once in the job.
"""

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from rl_lm.analysis import load_metrics
from rl_lm.train.checkpoint import load_state

ROOT = Path(__file__).resolve().parents[2]
# The launcher, its environment patched to a scripted one that logs each step it runs.
CODE = textwrap.dedent(
    """
    import itertools, json, os
    import jax
    import numpy as np
    from rl_lm.algos import episodes
    from rl_lm.rewards import verifiable
    from rl_lm.envs.base import StepResult

    class LoggedEnv:
        stop_strings = ("</call>",)
        ids = itertools.count()

        def reset(self, row):
            return row["prompt"], {"turns": 0, "id": next(self.ids), "prompt": row["prompt"]}

        def step(self, state, text):
            turns = state["turns"] + 1
            line = [jax.process_index(), state["id"], turns, state["prompt"]]
            path = os.path.join(os.environ["ENV_LOG"], f"steps.{jax.process_index()}")
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\\n")
            state = {**state, "turns": turns}
            code = sum(text.encode())
            if turns == 1 and code % 4:  # an observation that depends on the turn's text
                return StepResult(f"<result>{code}</result>", False, {}, state)
            return StepResult(None, True, {"tool/calls": float(turns - 1)}, state)

    def score(responses, answers):  # the run's reward: one that varies from row to row
        return np.asarray([sum(r.encode()) % 5 / 4 for r in responses], np.float32)

    episodes.make_env = lambda cfg, data_name="": LoggedEnv()
    verifiable.REWARDS["exact_match"] = lambda: score
    make_eval = episodes.make_eval

    def logged_eval(*args, **kwargs):  # every process prints its held-out figures
        evaluate = make_eval(*args, **kwargs)

        def run(*a, **k):
            out = evaluate(*a, **k)
            print("EVAL", json.dumps(out, sort_keys=True), flush=True)
            return out

        return run

    episodes.make_eval = logged_eval
    from absl import app
    from launch import train
    app.run(train.main, flags_parser=train.parse_flags)
    """
)
# Two processes run `run_episodes` with a scripted sampler (two turns of all 6 rows).
EXCHANGE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from rl_lm.parallel import initialize
    initialize(sys.argv[1], 2, int(sys.argv[2]))
    from rl_lm.algos import episodes
    from rl_lm.envs.base import StepResult
    from rl_lm.models.tokenizer import ByteTokenizer

    tok, stepped = ByteTokenizer(), []

    class Env:
        stop_strings = ()

        def reset(self, row):
            return row["prompt"], {"turns": 0}

        def step(self, state, text):
            stepped.append(text)
            i, turns = int(text[3:]), state["turns"] + 1
            if turns == 1 and i % 3:
                return StepResult(f"obs{i}", False, {}, {"turns": turns})
            terms = {"tool/calls": float(turns - 1), **({"extra": 0.5} if i == 5 else {})}
            return StepResult(None, True, terms, {"turns": turns})

    def sample(params, model_cfg, prompt, mask, key, on_turns, **kw):
        rows = np.arange(6)
        obs = on_turns(rows, [np.asarray(tok.encode(f"row{i}")) for i in rows], np.zeros(6, bool))
        live = np.asarray([i for i in rows if obs[i] is not None])
        on_turns(live, [np.asarray(tok.encode(f"row{i}")) for i in live], np.ones(len(live), bool))
        return [None if o is None else tok.decode(o) for o in obs]

    episodes.sample_multiturn = sample
    prompts = {"prompt": np.asarray([tok.encode(f"p{i}") for i in range(3)])}
    prompts["prompt_mask"] = np.ones_like(prompts["prompt"])
    ep = episodes.run_episodes(Env(), tok, None, None, prompts, None, num_generations=2,
                               max_tokens=8)
    terms = {k: v.tolist() for k, v in ep.terms.items()}
    print("RESULT", json.dumps({"obs": ep.out, "terms": terms, "stepped": stepped}))
    """
)
FLAGS = (
    "--config=configs/grpo_tool_arith.py:runlocal",
    "--config.grpo.max_new_tokens=32",
    "--config.grpo.env.max_turn_tokens=6",
    "--config.eval.max_new_tokens=32",
)


def test_each_process_steps_its_own_rows_and_all_get_every_observation():
    port = portpicker.pick_unused_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    cmd = lambda i: [sys.executable, "-c", EXCHANGE, f"localhost:{port}", str(i)]
    procs = [
        subprocess.Popen(cmd(i), cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    got = [json.loads(o.split("RESULT ", 1)[1]) for o in outs]
    want_obs = [None, "obs1", "obs2", None, "obs4", "obs5"]
    want_terms = {"extra": [0, 0, 0, 0, 0, 0.5], "tool/calls": [0, 1, 1, 0, 1, 1]}
    for g in got:
        assert g["obs"] == want_obs and g["terms"] == want_terms
    # Process 0 steps rows 0-2, process 1 rows 3-5: each turn once in the job.
    assert sorted(got[0]["stepped"]) == ["row0", "row1", "row1", "row2", "row2"]
    assert sorted(got[1]["stepped"]) == ["row3", "row4", "row4", "row5", "row5"]


def _launch(workdir: Path, devices: int, data_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env.update(
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}",
        RL_LM_DATA_DIR=str(data_dir),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
        ENV_LOG=str(workdir.parent),
    )
    cmd = [sys.executable, "-c", CODE, *FLAGS, f"--workdir={workdir}", *extra]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _steps(root: Path) -> list[list]:
    return [json.loads(line) for p in sorted(root.glob("steps.*")) for line in p.open()]


@pytest.mark.slow
def test_two_processes_of_episodes_equal_one(tmp_path):
    data_dir = tmp_path / "data"
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    ref_out = _finish(_launch(one / "run", 8, data_dir))  # Also prepares the data, once.
    port = portpicker.pick_unused_port()
    procs = [
        _launch(
            two / "run",
            4,
            data_dir,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [_finish(p) for p in procs]
    assert "Finished step 2" in outs[0]

    want, ref_step = load_state(one / "run" / "checkpoints")
    got, step = load_state(two / "run" / "checkpoints")
    assert step == ref_step == 2
    for x, y in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(want["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    m1, m2 = load_metrics(one / "run"), load_metrics(two / "run")
    for key in ("tool/calls", "tool/observation_tokens"):
        assert list(m1[key].steps) == list(m2[key].steps) == [1, 2]
        np.testing.assert_allclose(m2[key].values, m1[key].values, rtol=1e-6)
    assert np.all(m1["tool/observation_tokens"].values > 0)  # the tools were exercised
    # The held-out episodes give the same figures on every process, and as on one.
    evals = [[line for line in out.splitlines() if line.startswith("EVAL")] for out in outs]
    want_evals = [line for line in ref_out.splitlines() if line.startswith("EVAL")]
    assert len(want_evals) == 2 and evals[0] == evals[1] == want_evals

    # Every row's environment stepped once per turn in the job, each process its own rows.
    ref, steps = _steps(one), _steps(two)
    assert {s[0] for s in steps} == {0, 1}
    turns = [(pid, row, turn) for pid, row, turn, _ in steps]
    assert len(set(turns)) == len(turns)
    rows = lambda s: len({(pid, row) for pid, row, _, _ in s})
    assert rows(steps) == rows(ref)
    count = lambda s: collections.Counter((turn, prompt) for _, _, turn, prompt in s)
    assert count(steps) == count(ref)
