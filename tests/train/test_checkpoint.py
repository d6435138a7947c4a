"""Checkpoints: exact sharded round trip, keep-last-K, fallback from damaged steps, failed saves."""

import errno
import hashlib
import logging
import os
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P
from orbax.checkpoint._src.path import async_path

from rl_lm import parallel
from rl_lm.algos import common
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import init_params, partition_specs
from rl_lm.train.checkpoint import Checkpointer, load_state
from rl_lm.train.report import RunError

CFG = get_model_config("tiny")
RULES = (("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"))
OPTIM = dict(
    lr=1e-3,
    warmup_steps=2,
    schedule="cosine",
    end_lr_ratio=0.1,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.1,
    grad_clip=1.0,
)


@pytest.fixture(scope="module")
def setup():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    optimizer = common.make_optimizer(OPTIM, 10)
    specs = partition_specs(CFG, RULES)

    def init_fn(rng):
        return common.new_state(init_params(CFG, rng), optimizer, rng)

    init, abstract, _ = common.sharded_init(
        mesh, init_fn, lambda a: common.state_specs(a, specs, optimizer)
    )
    # A state with non-trivial optimizer moments, step and rng.
    bump = jax.jit(
        lambda s: {
            **jax.tree.map(lambda x: x + 0.5 if x.dtype == jnp.float32 else x, s),
            "step": s["step"] + 7,
        }
    )
    return init, abstract, bump


def _assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _steps_on_disk(directory):
    return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit())


def test_round_trip_is_exact_and_sharded(setup, tmp_path):
    init, abstract, bump = setup
    state = bump(init(jax.random.PRNGKey(3)))
    expected = jax.device_get(state)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(7, state)
    # The caller may donate the state right after an async save.
    jax.jit(lambda s: jax.tree.map(lambda x: x * 0, s), donate_argnums=0)(state)
    ckpt.wait()
    restored, step = ckpt.restore_latest(abstract)
    assert step == 7 and int(restored["step"]) == 7
    _assert_same(restored, expected)
    assert type(restored["opt_state"]) is type(expected["opt_state"])
    same = jax.tree.map(lambda x, a: x.sharding == a.sharding, restored, abstract)
    assert all(jax.tree.leaves(same))
    assert restored["params"]["embed"].sharding.spec == P("tensor", "fsdp")
    loaded, step = load_state(tmp_path / "ckpt")
    assert step == 7
    _assert_same(loaded["params"], expected["params"])
    ckpt.close()


def test_keeps_the_last_k_and_starts_empty(setup, tmp_path):
    init, abstract, _ = setup
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    assert ckpt.restore_latest(abstract) == (None, None)
    state = init(jax.random.PRNGKey(0))
    for step in (1, 2, 3):
        ckpt.save(step, state)
    ckpt.wait()
    assert ckpt.steps() == [2, 3] == _steps_on_disk(tmp_path / "ckpt")
    ckpt.close()


def _truncate_arrays(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            if "ocdbt" in root or name.startswith("_METADATA"):
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(7)


def _delete_one_file(step_dir):
    (step_dir / "default" / "_METADATA").unlink()


@pytest.mark.parametrize("damage", [_truncate_arrays, _delete_one_file])
def test_damaged_latest_falls_back_to_previous(setup, tmp_path, caplog, damage):
    init, abstract, bump = setup
    first = init(jax.random.PRNGKey(1))
    expected = jax.device_get(first)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3)
    ckpt.save(1, first)
    ckpt.save(2, bump(first))
    ckpt.wait()
    damage(tmp_path / "ckpt" / "2")
    with caplog.at_level(logging.WARNING):
        restored, step = ckpt.restore_latest(abstract)
    assert step == 1
    _assert_same(restored, expected)
    assert "Checkpoint step 2" in caplog.text and "does not restore" in caplog.text
    # Moved aside, not deleted; the run can save step 2 again.
    assert [p.name.split(".")[0] for p in (tmp_path / "ckpt_corrupt").iterdir()] == ["2"]
    assert _steps_on_disk(tmp_path / "ckpt") == [1]
    ckpt.save(2, bump(restored), wait=True)
    assert ckpt.steps() == [1, 2]
    ckpt.close()


def test_no_restorable_checkpoint_raises_and_moves_nothing(setup, tmp_path):
    init, abstract, _ = setup
    ckpt = Checkpointer(tmp_path / "ckpt", keep=3)
    ckpt.save(1, init(jax.random.PRNGKey(1)), wait=True)
    _truncate_arrays(tmp_path / "ckpt" / "1")
    with pytest.raises(RuntimeError, match="No checkpoint in .* restores"):
        ckpt.restore_latest(abstract)
    assert _steps_on_disk(tmp_path / "ckpt") == [1]
    assert not (tmp_path / "ckpt_corrupt").exists()
    ckpt.close()


def fail_writes_of(step, monkeypatch):
    """Makes orbax's file writes for `step` fail as on a full disk (its temporary dir exists)."""
    real = async_path.write_text

    async def write_text(path, text, *args, **kwargs):
        if f"{os.sep}{step}{ocp.path.step.TMP_DIR_SUFFIX}" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return await real(path, text, *args, **kwargs)

    monkeypatch.setattr(async_path, "write_text", write_text)


def file_hashes(directory):
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).rglob("*"))
        if p.is_file()
    }


def test_a_failed_save_is_one_line_and_leaves_the_others_as_they_were(setup, tmp_path, monkeypatch):
    init, _, _ = setup
    state = init(jax.random.PRNGKey(0))
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory, keep=2)
    ckpt.save(1, state)
    ckpt.save(2, state, wait=True)
    before = file_hashes(directory)
    fail_writes_of(3, monkeypatch)
    ckpt.save(3, state)  # Async: the failure surfaces at the next check.
    with pytest.raises(RunError) as e:
        for _ in range(200):
            ckpt.check()
            time.sleep(0.05)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        f"Saving checkpoint step 3 to {directory / '3'} failed (OSError: [Errno 28] No space "
        "left on device: "
    )
    assert re.search(rf"\); {directory}: \d+\.\d\d GiB free\. Training stopped", message)
    assert message.endswith("the run resumes from step 2.")
    # No temporary directory left, and keep=2 deleted nothing for the failed step.
    assert file_hashes(directory) == before
    assert ckpt.steps() == [1, 2]
    ckpt.close()


def test_a_save_failing_at_once_names_its_step(setup, tmp_path, monkeypatch):
    init, _, _ = setup
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2, async_save=False)
    fail_writes_of(1, monkeypatch)
    with pytest.raises(RunError, match="Saving checkpoint step 1 to .* the run starts over"):
        ckpt.save(1, init(jax.random.PRNGKey(0)))
    assert os.listdir(tmp_path / "ckpt") == []
    ckpt.close()
