"""rl_lm.analysis on two tiny SFT runs, and experiments/analysis.ipynb executed on them."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import sft_arith
from rl_lm import analysis, parallel
from rl_lm.algos import common
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.sampling.sampler import make_sampler
from rl_lm.train import loop, registry
from rl_lm.train.checkpoint import Checkpointer

DATA = "arithmetic/d1_n2_add_train200_test20_seed0"
NOTEBOOK = Path(__file__).resolve().parents[2] / "experiments" / "analysis.ipynb"


def _config(data_dir, lr):
    config = sft_arith.get_config("runlocal")
    config.data.name = DATA
    config.data.data_dir = data_dir
    config.optim.lr = lr
    config.train.update(num_steps=4, log_every=1, eval_every=2, ckpt_every=2, keep=5)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """label -> workdir of two finished 4-step runs (checkpoints at steps 2 and 4)."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    out = {}
    for label, lr in (("a", 1e-3), ("b", 3e-3)):
        out[label] = tmp_path_factory.mktemp(f"run_{label}")
        loop.train(_config(data_dir, lr), out[label])
    return out


def test_load_metrics_returns_every_logged_value(runs):
    workdir = runs["a"]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    curves = analysis.load_metrics(workdir)
    assert set(curves) == {k for r in rows for k in r} - {"step"}
    for name, curve in curves.items():
        logged = [(r["step"], r[name]) for r in rows if name in r]
        np.testing.assert_array_equal(curve.steps, [s for s, _ in logged])
        np.testing.assert_array_equal(curve.values, [v for _, v in logged])
    assert curves["loss"].steps.tolist() == [1, 2, 3, 4]
    assert curves["eval/accuracy"].steps.tolist() == [2, 4]


def test_config_and_model_config_are_the_runs(runs):
    config = analysis.load_config(runs["b"])
    assert config.optim.lr == 3e-3 and config.train.num_steps == 4
    expected = common.model_config(sft_arith.get_config("runlocal").model)
    assert analysis.model_config(runs["b"]) == analysis.model_config(config) == expected


def test_params_at_two_steps_equal_the_checkpointer_restore(runs):
    workdir = runs["a"]
    config = analysis.load_config(workdir)
    assert analysis.checkpoint_steps(workdir) == [2, 4]
    trainer = registry.make_trainer(config, parallel.make_mesh(config.mesh))
    checkpointer = Checkpointer(workdir / "checkpoints", keep=5)
    loaded = {}
    for step in (2, 4):
        loaded[step] = analysis.load_params(workdir, step)
        restored = checkpointer.restore(step, trainer.abstract_state)["params"]
        jax.tree.map(np.testing.assert_array_equal, loaded[step], restored)
    checkpointer.close()
    leaves2, leaves4 = jax.tree.leaves(loaded[2]), jax.tree.leaves(loaded[4])
    assert all(not np.array_equal(a, b) for a, b in zip(leaves2, leaves4, strict=True))
    latest = analysis.load_params(workdir)
    jax.tree.map(np.testing.assert_array_equal, latest, loaded[4])
    assert {d.platform for x in jax.tree.leaves(latest) for d in x.devices()} == {"cpu"}


def test_bad_workdirs_and_steps_fail_naming_what_exists(runs, tmp_path):
    with pytest.raises(ValueError, match=r"no checkpoint of step 3; saved steps: \[2, 4\]"):
        analysis.load_params(runs["a"], 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analysis.load_metrics(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        analysis.checkpoint_steps(tmp_path)
    with pytest.raises(FileNotFoundError, match="Pass the run's workdir"):
        analysis.load_params(runs["a"] / "checkpoints")
    loop.check_config(_config("unused", 1e-3), tmp_path / "fresh")  # A run before its first save.
    assert analysis.checkpoint_steps(tmp_path / "fresh") == []
    assert analysis.load_metrics(tmp_path / "fresh") == {}
    with pytest.raises(FileNotFoundError, match="has no checkpoint yet"):
        analysis.load_params(tmp_path / "fresh")


def test_sample_tokenizes_as_training_and_decodes_the_sampler(runs):
    workdir, prompts = runs["b"], ["1+2=", "7+5=", "0+0="]
    out = analysis.sample(workdir, prompts, num_samples=2, seed=3)
    assert [len(row) for row in out] == [2, 2, 2]
    assert all(isinstance(text, str) for row in out for text in row)
    assert analysis.sample(workdir, prompts, num_samples=2, seed=3) == out
    assert analysis.sample(workdir, prompts, num_samples=2, seed=4) != out

    # The same as the sampler on hand-made rows: [BOS=257] + bytes, left-padded to
    # data.max_prompt_len = 8 with pad 256; eval.max_new_tokens = 5 new tokens.
    params = analysis.load_params(workdir)
    prompt_BxP = np.full((3, 8), 256, np.int32)
    mask_BxP = np.zeros((3, 8), np.int32)
    for i, text in enumerate(prompts):
        row = [257, *text.encode()]
        prompt_BxP[i, -len(row) :], mask_BxP[i, -len(row) :] = row, 1
    cfg = analysis.model_config(workdir)
    sampler = make_sampler(cfg, max_new_tokens=5, temperature=0.0, eos_ids=(258,), pad_id=256)
    out = sampler(params, prompt_BxP, mask_BxP, jax.random.PRNGKey(0))
    expected = ByteTokenizer().decode_batch(out.tokens, out.mask)
    greedy = analysis.sample(params, prompts, config=workdir, temperature=0.0)
    assert greedy == [[text] for text in expected]


def test_sample_rejects_ambiguous_calls(runs):
    params = analysis.load_params(runs["a"])
    with pytest.raises(ValueError, match="needs config="):
        analysis.sample(params, ["1+1="])
    with pytest.raises(ValueError, match="step selects a checkpoint"):
        analysis.sample(params, ["1+1="], config=runs["a"], step=2)
    with pytest.raises(TypeError, match="single str"):
        analysis.sample(runs["a"], "1+1=")


def _hand_run(path: Path, rows: list[dict]) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_summary_takes_final_and_best_values(tmp_path):
    a = _hand_run(
        tmp_path / "a",
        [
            {"step": 1, "loss": 3.0},
            {"step": 2, "loss": 1.0, "eval/accuracy": 0.5},
            {"step": 3, "loss": 2.0, "eval/accuracy": 0.25},
        ],
    )
    b = _hand_run(tmp_path / "b", [{"step": 5, "loss": 4.0}])
    rows = analysis.summarize([a, b], ["loss", "eval/accuracy"])
    assert rows == [
        {"metric": "loss", "run": "a", "final": 2.0, "final_step": 3, "best": 1.0, "best_step": 2},
        {"metric": "loss", "run": "b", "final": 4.0, "final_step": 5, "best": 4.0, "best_step": 5},
        {
            "metric": "eval/accuracy",
            "run": "a",
            "final": 0.25,
            "final_step": 3,
            "best": 0.5,
            "best_step": 2,
        },
    ]
    lowest = analysis.summarize({"x": a}, ["eval/accuracy"], higher_is_better=())
    assert lowest[0]["best"] == 0.25
    table = analysis.format_table(rows).splitlines()
    assert table[0].split() == ["metric", "run", "final", "final_step", "best", "best_step"]
    assert table[2].split() == ["loss", "a", "2", "3", "1", "2"]
    with pytest.raises(ValueError, match=r"\['los'\]; logged metrics: \['eval/accuracy', 'loss'"):
        analysis.summarize([a], ["los"])


def test_compare_runs_overlays_each_runs_curve(runs):
    fig = analysis.compare_runs(runs, ["loss", "eval/accuracy"])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "eval/accuracy"]
    for ax, name in zip(fig.axes, ["loss", "eval/accuracy"], strict=True):
        assert [line.get_label() for line in ax.lines] == ["a", "b"]
        for line, workdir in zip(ax.lines, runs.values(), strict=True):
            np.testing.assert_array_equal(line.get_ydata(), analysis.load_metrics(workdir)[name][1])
    with pytest.raises(ValueError, match="logged metrics"):
        analysis.compare_runs(runs, ["reward"])


@pytest.mark.slow
def test_notebook_runs_on_two_runs(runs):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs"
    (params,) = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    workdirs = {label: str(path) for label, path in runs.items()}
    params.source = f"WORKDIRS = {workdirs!r}\nMETRICS = ['loss', 'eval/accuracy']\n"
    params.source += "EARLY_STEP = None\nNUM_PROMPTS = 4\n"
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK.parent}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # One figure per run, then the comparison.
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    for label in runs:
        assert f"{label}: checkpoints at steps [2, 4]" in text
    assert text.count("held-out exact match") == 4
