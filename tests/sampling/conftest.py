"""Shared models and prompts for the sampling tests (all on the `tiny` preset)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import abstract_params


@pytest.fixture(scope="session")
def cfg():
    return get_model_config("tiny")


def _random_params(cfg, seed):
    """Parameters drawn with numpy (no per-shape RNG compilations): norms 1, weights N(0, .02^2)."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if "norm" in jax.tree_util.keystr(path):
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))


@pytest.fixture(scope="session")
def params(cfg):
    return _random_params(cfg, 0)


@pytest.fixture(scope="session")
def other_params(cfg):
    return _random_params(cfg, 1)


@pytest.fixture(scope="session")
def keys():
    """keys(n, seed=0) -> n typed PRNG keys, made without compiling any RNG code."""

    def make(n, seed=0):
        data = np.random.default_rng(seed).integers(0, 2**32, (n, 2), dtype=np.uint32)
        return jax.random.wrap_key_data(data)

    return make


def _left_pad(rows, length, pad=256):
    ids = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    return jnp.asarray(ids), jnp.asarray(mask)


@pytest.fixture(scope="session")
def left_pad():
    """left_pad(rows, length) -> (ids [B, length], mask), int32, rows left-padded."""
    return _left_pad


@pytest.fixture(scope="session")
def prompts():
    """Three prompts of different lengths."""
    return [[72, 101, 108, 108, 111], [257, 65], [10, 20, 30, 40, 50, 60, 70]]


@pytest.fixture(scope="session")
def batch(prompts):
    """The prompts left-padded to 9, two more than the longest needs."""
    return _left_pad(prompts, 9)


@pytest.fixture(scope="session")
def fixed_model(cfg, params):
    """fixed_model(logits_V) -> (params, exact log-probs [V]) of a context-free model.

    Attention and MLP outputs are zeroed, so the hidden state is the normalized
    embedding; every embedding row is all ones, so that state is c * ones with
    c = 1/sqrt(1 + norm_eps), and the output projection maps it to c * logits_V.
    """
    assert not cfg.tie_embeddings

    def make(logits_V):
        layers = dict(params["layers"])
        layers["wo"] = jnp.zeros_like(layers["wo"])
        layers["w_down"] = jnp.zeros_like(layers["w_down"])
        fixed = {
            **params,
            "layers": layers,
            "embed": jnp.ones_like(params["embed"]),
            "lm_head": jnp.ones((cfg.dim, 1)) * jnp.asarray(logits_V, jnp.float32) / cfg.dim,
        }
        z = np.asarray(logits_V, np.float64) / np.sqrt(1.0 + cfg.norm_eps)
        return fixed, z - z.max() - np.log(np.sum(np.exp(z - z.max())))

    return make
