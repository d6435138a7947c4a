"""Each model family end to end, as a user runs it: a tiny Llama and a tiny Qwen2
checkpoint saved by transformers, SFT on conversations, GRPO on prompts with the
math-verify reward and DPO on preference pairs, each started from
--config.init.hf_dir and a data name alone, exported with launch.export and
reloaded by transformers with the same logits and chat template."""

import json

import numpy as np
import pytest

from rl_lm import analysis
from rl_lm.data import jsonl
from rl_lm.models.transformer import forward, logits
from tests import hf_fixtures
from tests.launch_helpers import run_launch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("math_verify")

ANSWERS = ["\\frac12", "0.5", "3", "x=3", "-4", "10", "7", "2\\pi"]
# algo -> (config, kind of its JSONL rows, prepare's length limits, overrides).
RUNS = {
    "sft": (
        "configs/sft_arith.py:runlocal",
        "sft",
        dict(max_len=48, max_prompt_len=40),
        [
            "--config.model.max_seq_len=64",
            "--config.data.max_len=48",
            "--config.data.max_prompt_len=40",
        ],
    ),
    "grpo": ("configs/grpo_math.py:runlocal", "prompt", dict(max_prompt_len=48), []),
    "dpo": ("configs/dpo_hh.py:runlocal", "preference", dict(max_len=32), []),
}


def _rows(kind, n):
    """n JSONL rows of `kind`: chat conversations, chat prompts with answers, or pairs."""
    rows = []
    for i in range(n):
        a = ANSWERS[i % len(ANSWERS)]
        question = [{"role": "user", "content": f"q{i}: {a}?"}]
        if kind == "sft":
            rows.append({"messages": [*question, {"role": "assistant", "content": a}]})
        elif kind == "prompt":
            rows.append({"messages": question, "answer": a})
        else:
            rows.append({"prompt": f"q{i % 10}?", "chosen": a[:4], "rejected": "no"})
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """family -> its checkpoint directory; and the data dir with jsonl/<algo>_<family>."""
    root = tmp_path_factory.mktemp("families")
    data_dir = root / "data"
    checkpoints = {}
    for family in hf_fixtures.FAMILIES:
        ckpt = checkpoints[family] = hf_fixtures.make_checkpoint(root / family, family)
        for algo, (_, kind, limits, _) in RUNS.items():
            train, test = root / f"{algo}_train.jsonl", root / f"{algo}_test.jsonl"
            train.write_text(_rows(kind, 32))
            test.write_text(_rows(kind, 16))
            jsonl.prepare_jsonl(
                f"{algo}_{family}", kind, train, test, data_dir, tokenizer=str(ckpt), **limits
            )
    return checkpoints, data_dir


def _our_logits(params, cfg, ids):
    hidden, _ = forward(params, np.asarray([ids], np.int32), cfg)
    return np.asarray(logits(params, hidden, cfg))[0]


@pytest.mark.slow
@pytest.mark.parametrize("algo", RUNS)
@pytest.mark.parametrize("family", hf_fixtures.FAMILIES)
def test_train_from_hf_dir_then_export(prepared, family, algo, tmp_path):
    checkpoints, data_dir = prepared
    source, (config, _, _, overrides) = checkpoints[family], RUNS[algo]
    run, out = tmp_path / "run", tmp_path / "export"
    done = run_launch(
        "launch.train",
        f"--config={config}",
        f"--workdir={run}",
        f"--config.init.hf_dir={source}",
        f"--config.data.name=jsonl/{algo}_{family}",
        "--config.train.num_steps=2",
        "--config.train.eval_every=2",
        "--config.train.ckpt_every=2",
        *overrides,
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Starting from the Hugging Face checkpoint {source}." in done.stdout
    assert "Finished step 2: held-out" in done.stdout

    done = run_launch("launch.export", f"--workdir={run}", f"--out={out}", data_dir=data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"Exported step 2 of {run} to {out} (from {source}, ")
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    theirs, mine = (transformers.AutoTokenizer.from_pretrained(p) for p in (source, out))
    chat = [{"role": "user", "content": "1/2 + 1/2?"}]
    text = mine.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = mine(text).input_ids
    params, cfg = analysis.load_params(run), analysis.model_config(run)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits.numpy()[0]
    assert np.abs(ref).max() > 1.0
    np.testing.assert_allclose(_our_logits(params, cfg, ids), ref, atol=1e-5, rtol=0)
