"""The memory plan against the real thing: exact state bytes, the compiled SFT step's memory.

What is compared: per-device bytes of the SFT trainer's initialized, sharded
train state (device 0's shards) with the plan's state lines; and the plan's
peak (state + update) with the compiled update step of the trainer (the jitted
`common.make_update` of `sft.loss_fn`, built as `sft.make_trainer` builds it,
the state donated) as `memory_analysis()` reports it: arguments + outputs -
aliased (donated) bytes + temporaries.
"""

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from configs import sft_arith
from rl_lm import parallel
from rl_lm.algos import common, sft
from rl_lm.train import memory

ROOT = Path(__file__).resolve().parents[2]
GB80 = 80 * memory.GIB


def _config(tmp_path, *, data=-1, fsdp=1, remat="none", batch=64, max_len=32):
    config = sft_arith.get_config("runlocal")
    with config.unlocked():
        config.mesh.update(data=data, fsdp=fsdp)
        config.model.remat = remat
        config.data.update(batch_size=batch, max_len=max_len, data_dir=str(tmp_path))
    return config


def _compiled_peak(config) -> int:
    mesh = parallel.make_mesh(config.mesh)
    cfg = common.model_config(config.model)
    optimizer = common.make_optimizer(config.optim, config.train.num_steps)
    specs = sft.partition_specs(cfg, config.rules)
    _, abstract, shardings = common.sharded_init(
        mesh,
        lambda rng: common.new_state(sft.init_params(cfg, rng), optimizer, rng),
        lambda a: common.state_specs(a, specs, optimizer),
    )
    loss = functools.partial(sft.loss_fn, cfg=cfg, chunk_size=config.sft.chunk_size)
    update = common.jit_step(
        common.make_update(loss, optimizer, config.train.num_microbatches), mesh, shardings
    )
    rows = jax.ShapeDtypeStruct(
        (config.data.batch_size, config.data.max_len),
        jnp.int32,
        sharding=parallel.batch_sharding(mesh),
    )
    m = update.lower(abstract, {"tokens": rows, "loss_mask": rows}).compile().memory_analysis()
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )


def test_state_lines_equal_the_sharded_train_state(tmp_path):
    config = _config(tmp_path, data=1, fsdp=8)
    trainer = sft.make_trainer(config, parallel.make_mesh(config.mesh))
    state = trainer.init_state(jax.random.PRNGKey(0))
    dev0 = lambda tree: sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))
    plan = memory.plan(config, 8, GB80)
    assert plan.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
    assert plan.get("params") == dev0(state["params"])
    assert plan.get("optimizer") == dev0(state["opt_state"])
    assert plan.phase(memory.STATE) == dev0(state)
    # Replicated, a device holds all of it: 8x, but for the (replicated) norm scales.
    replicated = memory.plan(_config(tmp_path), 8, GB80).get("params")
    assert 7 * plan.get("params") < replicated < 8 * plan.get("params")


@pytest.mark.parametrize("remat", ["none", "dots", "full"])
def test_peak_within_20_percent_of_compiled_step(tmp_path, remat):
    config = _config(tmp_path, data=8, fsdp=1, remat=remat)
    plan = memory.plan(config, 8, GB80)
    peak = plan.phase(memory.STATE) + plan.phase(memory.UPDATE)
    compiled = _compiled_peak(config)
    assert 0.8 <= peak / compiled <= 1.2, (peak, compiled)


@pytest.mark.parametrize("fsdp", [2, 8])
def test_fsdp_plan_is_an_upper_bound(tmp_path, fsdp):
    """Activations are planned unsplit over fsdp (the compiled step gathers the batch)."""
    config = _config(tmp_path, fsdp=fsdp, remat="full")
    plan = memory.plan(config, 8, GB80)
    peak = plan.phase(memory.STATE) + plan.phase(memory.UPDATE)
    compiled = _compiled_peak(config)
    assert compiled <= peak <= 2.0 * compiled, (peak, compiled)


def test_remat_and_microbatches_shrink_activations(tmp_path):
    acts = {
        r: memory.plan(_config(tmp_path, remat=r), 8, GB80).get("activations")
        for r in ("none", "dots", "full")
    }
    assert acts["none"] > acts["dots"] > acts["full"]
    config = _config(tmp_path, remat="full")
    with config.unlocked():
        config.train.num_microbatches = 2
    halved = memory.plan(config, 8, GB80)
    assert halved.get("activations") < acts["full"]
    assert halved.get("gradients") == 2 * memory.plan(_config(tmp_path), 8, GB80).get("gradients")


def _memory_cli(*args):
    cmd = [sys.executable, "-m", "launch.memory", "--config=configs/grpo_math.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_fits_or_names_the_change():
    ok = _memory_cli(
        "--preset=llama3.2-1b", "--devices=8", "--device_memory_gb=80", "--config.mesh.fsdp=8"
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "1.24B trainable" in ok.stdout and ": fits" in ok.stdout
    assert "ref_params" in ok.stdout and "kv cache" in ok.stdout
    tight = _memory_cli(
        "--preset=llama3.2-1b", "--devices=4", "--device_memory_gb=16", "--config.mesh.fsdp=4"
    )
    assert tight.returncode == 1 and "DOES NOT FIT" in tight.stdout
    last = tight.stderr.strip().splitlines()[-1]
    assert last.startswith("needs ") and "--config.grpo.num_microbatches=16 brings it to" in last
    one = _memory_cli("--preset=llama3.2-1b", "--devices=1", "--device_memory_gb=16")
    assert one.returncode == 1
    assert one.stderr.strip().splitlines()[-1].endswith("use more or larger devices.")
