"""configs/grpo_math.py end to end: JSONL chat prompts, a tiny Hugging Face checkpoint,
the math_verify reward plus a user reward by import path, then launch.export."""

import json

import pytest

from configs import grpo_math
from rl_lm.data import jsonl
from rl_lm.train import preflight
from rl_lm.train.report import ConfigError
from tests import hf_fixtures
from tests.launch_helpers import run_launch

USER_FN = "tests.rewards.user_reward_fixture"


def test_config_scores_with_math_verify():
    config = grpo_math.get_config()
    assert dict(config.grpo.rewards) == {"math_verify": 1.0}
    assert config.eval.answer == "math_verify" and config.data.name == "jsonl/math"
    local = grpo_math.get_config("runlocal")
    assert local.data.max_prompt_len + local.grpo.max_new_tokens <= local.model.max_seq_len


def test_only_runlocal_starts_without_a_checkpoint():
    with pytest.raises(ConfigError, match=r"pass --config.init.hf_dir=DIR \("):
        preflight.check_init(grpo_math.get_config())
    preflight.check_init(grpo_math.get_config("runlocal"))
    config = grpo_math.get_config()
    with config.unlocked():
        config.init.hf_dir = "/models/any"
    preflight.check_init(config)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(checkpoint dir, data dir) of a tiny Qwen2 checkpoint and a jsonl/mathtiny prompt set."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("grpo_math")
    ckpt = hf_fixtures.make_checkpoint(root / "ckpt", "qwen2")
    notations = ["\\frac12", "0.5", "1/2", "3", "x=3", "2\\pi", "-4", "10"]
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}: {a}?"}], "answer": a}
        for i, a in enumerate(notations * 2)
    ]
    path = root / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data_dir = root / "data"
    config = grpo_math.get_config("runlocal")
    jsonl.prepare_jsonl(
        "mathtiny",
        "prompt",
        path,
        path,
        data_dir,
        tokenizer=str(ckpt),
        max_prompt_len=config.data.max_prompt_len,
    )
    return ckpt, data_dir


def test_runlocal_trains_from_a_checkpoint_and_exports(prepared, tmp_path):
    ckpt, data_dir = prepared
    run, out = tmp_path / "run", tmp_path / "export"
    done = run_launch(
        "launch.train",
        "--config=configs/grpo_math.py:runlocal",
        f"--workdir={run}",
        f"--config.init.hf_dir={ckpt}",
        "--config.data.name=jsonl/mathtiny",
        f"--config.grpo.reward_fns={USER_FN}:short=0.25",
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Finished step 4: held-out accuracy" in done.stdout
    saved = json.loads((run / "config.json").read_text())
    assert saved["tokenizer"] == str(ckpt) and saved["model"]["dim"] == 32  # the checkpoint's
    assert saved["grpo"]["reward_fns"] == f"{USER_FN}:short=0.25"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in rows if "reward" in r]
    # math_verify in {0, 1} plus 0.25 * short in {0, 1}: a mean in [0, 1.25].
    assert rewards and all(0.0 <= r <= 1.25 for r in rewards)

    exported = run_launch("launch.export", f"--workdir={run}", f"--out={out}", data_dir=data_dir)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()


def test_a_broken_user_reward_fails_at_start_naming_it(prepared, tmp_path):
    ckpt, data_dir = prepared
    done = run_launch(
        "launch.train",
        "--config=configs/grpo_math.py:runlocal",
        f"--workdir={tmp_path}",
        f"--config.init.hf_dir={ckpt}",
        "--config.data.name=jsonl/mathtiny",
        f"--config.grpo.reward_fns={USER_FN}:one_too_many",
        data_dir=data_dir,
    )
    assert done.returncode != 0
    assert f"Reward function {USER_FN}:one_too_many returned shape (4,) for 3" in done.stderr
    assert not (tmp_path / "config.json").exists()
