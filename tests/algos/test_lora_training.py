"""LoRA training (config `lora`): SFT and DPO train adapters only, on 8 simulated devices.

The frozen base is the reference; checkpoints hold the adapters, and
`launch.export` writes base + (alpha / r) A @ B.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import dpo_synthetic, sft_arith
from rl_lm import parallel
from rl_lm.algos import dpo, sft
from rl_lm.analysis import export
from rl_lm.models import hf, lora
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import init_params
from rl_lm.train import loop
from rl_lm.train.checkpoint import Checkpointer, base_directory, load_base, load_state

CFG = get_model_config("tiny")
MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def _config(module, data, data_dir, rank, mesh=MESH):
    config = module.get_config("runlocal")
    config.unlock()
    config.data.name = data
    config.data.data_dir = data_dir
    config.lora.rank = rank
    config.mesh.update(mesh)
    return config


def _run(make_trainer, config, devices=None, steps=2):
    mesh = parallel.make_mesh(config.mesh, devices=devices)
    trainer = make_trainer(config, mesh, init_from=init_params(CFG, jax.random.PRNGKey(7)))
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches, losses = trainer.batches(0), []
    for _ in range(steps):
        state, metrics = trainer.step(state, next(batches))
        losses.append(float(metrics["loss"]))
    return trainer, state, losses


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """(config, {rank: (trainer, state, losses)}): full fine-tuning (rank 0) and rank 32,
    which covers every targeted matrix of the tiny model (min(in, out) <= 32)."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    name = "arithmetic/d1_n2_add_train200_test20_seed0"
    runs = {r: _run(sft.make_trainer, _config(sft_arith, name, data_dir, r)) for r in (0, 32)}
    return _config(sft_arith, name, data_dir, 32), runs


def test_full_rank_lora_first_step_loss_equals_full_fine_tuning(sft_runs):
    _, runs = sft_runs
    full_losses, lora_losses = runs[0][2], runs[32][2]
    # B = 0 at the start, so the first step sees the full run's model exactly.
    np.testing.assert_allclose(lora_losses[0], full_losses[0], rtol=1e-6)
    assert lora_losses[1] != lora_losses[0]  # ... and the adapters moved it.


def test_only_the_adapters_train(sft_runs):
    _, runs = sft_runs
    _, state, _ = runs[32]
    start = init_params(CFG, jax.random.PRNGKey(7))
    assert set(state) == {"step", "rng", "params", "opt_state", lora.BASE}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state[lora.BASE]), start)
    adapters = jax.device_get(state["params"])
    assert all(np.any(ab["b"]) for ab in adapters["layers"].values())
    # The optimizer's moments are the adapters' shapes, nothing of the base.
    moments = state["opt_state"][1][0]
    assert jax.tree.map(np.shape, moments.mu) == jax.tree.map(np.shape, adapters)
    # Sharded as the rules say: the base like the model, A by W's input axes.
    wq = state[lora.BASE]["layers"]["wq"]
    assert wq.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    a = state["params"]["layers"]["wq"]["a"]
    assert a.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    assert a.addressable_shards[0].data.shape == (2, 16, 32)


def test_sharded_lora_step_equals_single_device(sft_runs):
    config, runs = sft_runs
    config = config.copy_and_resolve_references()
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
    _, state, losses = _run(sft.make_trainer, config, devices=jax.devices()[:1])
    _, sharded, sharded_losses = runs[32]
    np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        jax.device_get(sharded["params"]),
        jax.device_get(state["params"]),
    )


def test_checkpoints_hold_adapters_only_and_the_base_once(sft_runs, tmp_path):
    _, runs = sft_runs
    trainer, state, _ = runs[32]
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=3)
    ckpt.save(2, state, wait=True)
    base_dir = base_directory(tmp_path / "checkpoints")
    written = sorted(p.stat().st_mtime_ns for p in base_dir.rglob("*") if p.is_file())
    ckpt.save(3, state, wait=True)
    assert sorted(p.stat().st_mtime_ns for p in base_dir.rglob("*") if p.is_file()) == written
    saved, _ = load_state(tmp_path / "checkpoints", 3)
    assert set(saved) == {"step", "rng", "params", "opt_state"}
    paths = jax.tree_util.tree_flatten_with_path(saved["params"])[0]
    assert {str(p[-1].key) for p, _ in paths} == {"a", "b"}
    assert {str(p[1].key) for p, _ in paths} == {w for w, _ in lora.TARGETS.values()}
    jax.tree.map(
        np.testing.assert_array_equal,
        load_base(tmp_path / "checkpoints"),
        jax.device_get(state[lora.BASE]),
    )
    # A resumed run restores adapters, optimizer state and the base.
    ckpt.close()
    restored, step = Checkpointer(tmp_path / "checkpoints", keep=3).restore_latest(
        trainer.abstract_state
    )
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_export_writes_the_merged_params(sft_runs, tmp_path):
    config, runs = sft_runs
    _, state, _ = runs[32]
    run = tmp_path / "run"
    loop.check_config(config, run)
    ckpt = Checkpointer(run / "checkpoints", keep=1)
    ckpt.save(2, state, wait=True)
    ckpt.close()
    assert json.loads((run / "config.json").read_text())["lora"]["rank"] == 32
    export.export(str(run), str(tmp_path / "out"))
    written, _ = hf.load_hf_checkpoint(tmp_path / "out")
    host = jax.device_get(state)
    merged = lora.merge(host[lora.BASE], host["params"], lora.from_config(config.lora))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), written, merged)
    assert not np.allclose(written["layers"]["wq"], host[lora.BASE]["layers"]["wq"])


def test_dpo_lora_reference_is_the_base(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("data"))
    name = "sort_pref/pairs_train64_test16"
    config = _config(dpo_synthetic, name, data_dir, 4, {"data": 8, "fsdp": 1, "tensor": 1})
    config.dpo.ref_batch_size = 16
    config.dpo.reference = "online"
    config.train.num_microbatches = 2
    trainer, state, losses = _run(dpo.make_trainer, config)
    assert "ref_params" not in state  # The base is the reference: one copy.
    np.testing.assert_allclose(losses[0], np.log(2), rtol=1e-5)  # At the reference.
    assert losses[1] < losses[0]
    out = trainer.evaluate(state)
    assert np.isfinite(out["loss"]) and 0 <= out["pair_accuracy"] <= 1
    # Precomputed reference log-probs from the base give the same first steps.
    config.dpo.reference = "precompute"
    _, _, precomputed = _run(dpo.make_trainer, config)
    np.testing.assert_allclose(precomputed, losses, rtol=1e-5)


def test_a_lora_run_resumes_from_its_adapters_and_saved_base(sft_runs, tmp_path):
    config, _ = sft_runs
    run = tmp_path / "run"
    loop.train(config, run)  # 6 steps, checkpoints at 3 and 6
    final, _ = load_state(run / "checkpoints", 6)
    shutil.rmtree(run / "checkpoints" / "6")
    result = loop.train(config, run)  # resumes at 3: the base comes from checkpoints_base
    assert result["step"] == 6
    again, _ = load_state(run / "checkpoints", 6)
    jax.tree.map(np.testing.assert_array_equal, again, final)
