"""GRPO with LoRA (config `lora`): adapters train, the frozen base is the KL reference."""

import jax
import numpy as np

from configs import grpo_arith
from rl_lm import parallel
from rl_lm.algos import grpo
from rl_lm.models import lora
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import init_params

CFG = get_model_config("tiny")


def _run(tmp_path, rank, steps=2):
    config = grpo_arith.get_config("runlocal")
    config.unlock()
    config.data.name = "arithmetic/d1_n2_add_train200_test20_seed0"
    config.data.data_dir = str(tmp_path)
    config.lora.rank = rank
    config.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
    mesh = parallel.make_mesh(config.mesh)
    start = init_params(CFG, jax.random.PRNGKey(7))
    trainer = grpo.make_trainer(config, mesh, init_from=start)
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches, history = trainer.batches(0), []
    for _ in range(steps):
        state, metrics = trainer.step(state, next(batches))
        history.append(metrics)
    return start, state, history, trainer


def test_lora_grpo_first_step_equals_full_and_trains_adapters_only(tmp_path):
    _, _, full, _ = _run(tmp_path, 0)
    start, state, low_rank, trainer = _run(tmp_path, 32)
    # B = 0 at the start: the first rollout, rewards, reference and loss are the
    # full run's (the same sampling keys on the same model).
    for name in ("loss", "reward", "kl", "response_len", "tokens"):
        np.testing.assert_allclose(low_rank[0][name], full[0][name], rtol=1e-5, atol=1e-7)
    # No second copy of the weights: the reference is the frozen base.
    assert "ref_params" not in state
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state[lora.BASE]), start)
    adapters = jax.device_get(state["params"])
    assert all(np.any(ab["b"]) for ab in adapters["layers"].values())
    moments = state["opt_state"][1][0].mu
    assert jax.tree.map(np.shape, moments) == jax.tree.map(np.shape, adapters)
    assert 0.0 <= trainer.evaluate(state)["accuracy"] <= 1.0
