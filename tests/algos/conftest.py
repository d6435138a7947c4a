"""Shared pieces of the trainer tests with process rewards (GRPO and PPO)."""

import jax
import numpy as np
import pytest

from rl_lm import parallel
from rl_lm.algos import common, prm_runs, process_rewards
from rl_lm.models import transformer as tf
from rl_lm.models.tokenizer import ByteTokenizer


@pytest.fixture
def random_prm(monkeypatch):
    """Call it with a policy's model section: process_rewards.load_prm then returns a
    randomly initialized PRM of that shape, whatever the workdir."""

    def install(model):
        prm_cfg = prm_runs.prm_model_config(model)
        prm_params = tf.init_params(prm_cfg, jax.random.PRNGKey(5))
        monkeypatch.setattr(
            process_rewards, "load_prm", lambda workdir, model, section: (prm_params, prm_cfg)
        )

    return install


@pytest.fixture
def two_trainer_steps():
    """A function: (trainer, state, metrics of the 2nd step, starting params) after two
    steps of `make_trainer(config, ...)` on the 8 simulated CPU devices."""
    return _two_trainer_steps


def _two_trainer_steps(make_trainer, config):
    mesh = parallel.make_mesh(config.mesh)
    assert mesh.devices.size == 8
    init = tf.init_params(common.model_config(config.model), jax.random.PRNGKey(3))
    trainer = make_trainer(config, mesh, init_from=init)
    state = trainer.init_state(jax.random.PRNGKey(0))
    batches = trainer.batches(0)
    for _ in range(2):
        state, metrics = trainer.step(state, next(batches))
    return trainer, state, metrics, init


@pytest.fixture
def byte_responses():
    """A function of (texts, length): right-padded byte tokens + EOS and their mask,
    as the sampler returns responses."""
    tok = ByteTokenizer()

    def responses(texts, length):
        tokens = np.full((len(texts), length), tok.pad_id, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, text in enumerate(texts):
            ids = tok.encode(text, add_eos=True)[:length]
            tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1
        return tokens, mask

    return responses
