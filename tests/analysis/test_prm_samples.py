"""experiments/prm_samples.py: a policy's samples of its prompts become a jsonl PRM
dataset; experiments/prm_eval.py scores them with a PRM."""

import numpy as np
import pytest

from configs import base, sft_arith
from experiments import prm_eval, prm_samples
from rl_lm import analysis
from rl_lm.data import load_source
from rl_lm.rewards import steps as step_checks
from rl_lm.train import loop


@pytest.mark.slow
def test_samples_of_the_runs_prompts_become_a_labelled_dataset(tmp_path, capsys):
    data_dir = str(tmp_path / "data")
    config = sft_arith.chain_warm_start(
        base.model("cpu", dim=32, num_layers=1, mlp_dim=64, max_seq_len=64), 4, True
    )
    config.unlock()
    config.data.data_dir = data_dir
    config.lock()
    run = tmp_path / "sft"
    loop.train(config, run)

    stats = prm_samples.write_dataset(
        str(run), "onpolicy", train=3, test=2, samples=2, max_new_tokens=12, chunk=2
    )
    train = load_source("jsonl/onpolicy", "train", data_dir=data_dir)
    test = load_source("jsonl/onpolicy", "test", data_dir=data_dir)
    assert (len(train), len(test)) == (6, 4)
    source = load_source(config.data.name, "train", data_dir=data_dir)
    prompts = [source[i]["prompt"].decode() for i in range(3)]
    rows = [{k: train[i][k].decode() for k in ("prompt", "response", "answer")} for i in range(6)]
    assert [r["prompt"] for r in rows] == list(np.repeat(prompts, 2))
    assert [r["answer"] for r in rows[::2]] == [source[i]["answer"].decode() for i in range(3)]
    # The responses are the run's own samples, chunk by chunk with one seed.
    want = analysis.sample(
        run, prompts[:2], num_samples=2, temperature=1.0, max_new_tokens=12, seed=0
    )
    assert [r["response"] for r in rows[:4]] == [t for texts in want for t in texts]
    assert stats["train"] == prm_samples.label_stats(rows, "strict")
    labels = [step_checks.strict_labels(r["prompt"], r["response"]) for r in rows]
    steps = sum(len(y) for y in labels)
    assert stats["train"]["wrong_steps"] == pytest.approx(1 - sum(map(sum, labels)) / steps)

    with pytest.raises(FileExistsError, match="--overwrite"):
        prm_samples.write_dataset(str(run), "onpolicy", train=1, test=1)
    assert len(load_source("jsonl/onpolicy", "train", data_dir=data_dir)) == 6
    with pytest.raises(ValueError, match=r"test=10000 must be in \[1, 32\]"):
        prm_samples.write_dataset(str(run), "onpolicy", train=1, test=10_000, overwrite=True)

    # prm_eval end to end, with the SFT model read as a token-head PRM.
    from absl import flags
    from absl.testing import flagsaver

    flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(
        policy=str(run), prms=[f"self={run}"], prompts=2, samples=2, max_new_tokens=12
    ):
        capsys.readouterr()
        prm_eval.main([])
    out = capsys.readouterr().out
    assert out.startswith(f"4 samples of {run}")
    row = [line for line in out.splitlines() if line.startswith("| self |")]
    assert len(row) == 1 and len(row[0].split("|")) == 2 + 1 + 9


def test_label_stats_by_hand():
    prompt = "12 +5 *3 -7:"  # 12+5=17, 17*3=51, 51-7=44
    rows = [
        {"prompt": prompt, "response": "12+5=17\n17*3=51\n51-7=44\n#### 44"},  # 1111
        {"prompt": prompt, "response": "12+5=18\n18*3=54\n#### 54"},  # 000
    ]
    stats = prm_samples.label_stats(rows, "strict")
    assert stats == pytest.approx(
        {"wrong_steps": 3 / 7, "all_right": 0.5, "steps_per_response": 3.5}
    )
