"""launch.export: a run started from a Hugging Face checkpoint goes back to transformers."""

import json
import os

import jax
import numpy as np
import pytest

from configs import ppo_arith, sft_arith
from rl_lm import analysis
from rl_lm.analysis import export
from rl_lm.models import hf
from rl_lm.models.transformer import forward, init_params, logits
from rl_lm.train import hf_start, loop
from rl_lm.train.checkpoint import Checkpointer
from tests import hf_fixtures
from tests.launch_helpers import run_launch

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FAMILIES = {"llama": {"tie_word_embeddings": True}, "qwen2": {}}
TEXTS = ["17+25=42", "99+1=100 and some words"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Family -> a tiny Hugging Face checkpoint directory with its tokenizer."""
    root = tmp_path_factory.mktemp("hf")
    return {
        family: hf_fixtures.make_checkpoint(root / family, family, **overrides)
        for family, overrides in FAMILIES.items()
    }


def _train_from(source, workdir, data_dir):
    """2 SFT steps started from `source` by --config.init.hf_dir alone."""
    done = run_launch(
        "launch.train",
        "--config=configs/sft_arith.py:runlocal",
        f"--config.init.hf_dir={source}",
        f"--workdir={workdir}",
        "--config.train.num_steps=2",
        "--config.train.eval_every=2",
        "--config.train.ckpt_every=2",
        data_dir=data_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Starting from the Hugging Face checkpoint {source}." in done.stdout
    return workdir


def _our_logits(params, cfg, ids):
    hidden, _ = forward(params, np.asarray([ids], np.int32), cfg)
    return np.asarray(logits(params, hidden, cfg))[0]


def _their_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.numpy()[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_run_from_hf_dir_exports_to_transformers(sources, family, tmp_path_factory, tmp_path):
    source = sources[family]
    workdir = _train_from(source, tmp_path / "run", tmp_path_factory.getbasetemp() / "data")
    assert not (workdir / "warm_start").exists()  # sft_arith has none; hf_dir needs none.
    out = tmp_path / "export"
    done = run_launch("launch.export", f"--workdir={workdir}", f"--out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == (
        f"Exported step 2 of {workdir} to {out} (from {source}, max_position_embeddings=64; "
        f"tokenizer files from {source}).\n"
    )
    written = json.loads((out / "config.json").read_text())
    assert written["max_position_embeddings"] == 64 != analysis.model_config(workdir).max_seq_len
    assert written["model_type"] == family
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name

    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    theirs, mine = (transformers.AutoTokenizer.from_pretrained(p) for p in (source, out))
    chat = [{"role": "user", "content": "17+25="}]
    assert mine.apply_chat_template(chat, tokenize=False) == theirs.apply_chat_template(
        chat, tokenize=False
    )
    assert (mine.bos_token_id, mine.eos_token_id, mine.pad_token_id) == (0, 1, 2)
    params, cfg = analysis.load_params(workdir), analysis.model_config(workdir)
    start, _ = hf.load_hf_checkpoint(source)
    assert not np.array_equal(params["embed"], start["embed"])  # The trained weights.
    for text in TEXTS:
        ids = mine(text).input_ids
        assert ids == theirs(text).input_ids
        ours, ref = _our_logits(params, cfg, ids), _their_logits(model, ids)
        assert np.abs(ref).max() > 1.0
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def _fake_run(workdir, config, params, step=3):
    """A run directory holding `config` and one checkpoint whose params are `params`."""
    loop.check_config(config, workdir)
    ckpt = Checkpointer(workdir / "checkpoints", keep=1)
    ckpt.save(step, {"params": params}, wait=True)
    ckpt.close()
    return workdir


def test_a_from_scratch_run_exports_the_model_only(tmp_path):
    config = sft_arith.get_config("runlocal")
    cfg = analysis.model_config(config)
    params = init_params(cfg, jax.random.PRNGKey(0))
    run = _fake_run(tmp_path / "run", config, params)
    message = export.export(str(run), str(tmp_path / "out"))
    assert message == (
        f"Exported step 3 of {run} to {tmp_path / 'out'} (model only: the run's byte tokenizer "
        "has no Hugging Face form)."
    )
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = [257, 1, 2, 3, 250]
    np.testing.assert_allclose(
        _our_logits(params, cfg, ids), _their_logits(model, ids), atol=1e-5, rtol=0
    )


def test_a_ppo_run_exports_its_policy_without_the_value_head(sources, tmp_path):
    source = sources["qwen2"]
    config = ppo_arith.get_config("runlocal")
    config.init.hf_dir = str(source)
    config.ppo.critic = "value_head"
    config = hf_start.resolve(config)
    policy, _ = hf.load_hf_checkpoint(source)
    policy = {**policy, "score": {"w": np.ones((32,), np.float32), "b": np.zeros((), np.float32)}}
    run = _fake_run(tmp_path / "run", config, {"policy": policy})
    export.export(str(run), str(tmp_path / "out"))
    exported, cfg = hf.load_hf_checkpoint(tmp_path / "out")
    assert set(exported) == set(policy) - {"score"} and cfg.max_seq_len == 64
    start, _ = hf.load_hf_checkpoint(source)
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(start), strict=True):
        np.testing.assert_array_equal(a, b)


def test_errors_are_one_line_and_change_nothing(tmp_path):
    config = sft_arith.get_config("runlocal")
    params = init_params(analysis.model_config(config), jax.random.PRNGKey(0))
    workdir = _fake_run(tmp_path / "run", config, params)
    fresh = tmp_path / "fresh"
    loop.check_config(config, fresh)
    out = tmp_path / "out"
    listing = lambda: sorted(str(p) for p in tmp_path.rglob("*"))
    before = listing()
    cases = [
        (tmp_path / "nope", None, f"run directory {tmp_path / 'nope'} does not exist."),
        (workdir, 5, f"{workdir} has no checkpoint of step 5; saved steps: [3] (a run "),
        (fresh, None, f"{fresh} has no checkpoint yet; runs save every train.ckpt_every "),
    ]
    for path, step, message in cases:
        with pytest.raises((FileNotFoundError, ValueError)) as e:
            export.export(str(path), str(out), step)
        assert str(e.value).startswith(message)
    assert listing() == before
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    done = run_launch("launch.export", f"--workdir={workdir}", f"--out={out}")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"--out={out} exists and is not empty; choose a new directory.\n"
    assert os.listdir(out) == ["notes.txt"]
    done = run_launch("launch.convert", f"--params_dir={workdir}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"--params_dir={workdir} is a training run's workdir, not a params directory; export "
        f"it with: python -m launch.export --workdir={workdir} --out=DIR"
    )
