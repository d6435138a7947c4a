import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rl_lm.models import transformer as tf
from rl_lm.models.config import PRESETS, ModelConfig, get_model_config

RULES = [
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
]


def _variants():
    return {
        "llama": get_model_config("tiny"),
        "qwen2": get_model_config("tiny", qkv_bias=True, tie_embeddings=True),
        "qwen3": get_model_config("tiny", qk_norm=True, head_dim=16),
        "llama3_rope": get_model_config(
            "tiny",
            rope_theta=500000.0,
            rope_scaling={
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    }


def _params(cfg, seed=0):
    params = tf.init_params(cfg, jax.random.key(seed))
    # Non-trivial biases and norms, so every parameter is exercised.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("name", sorted(_variants()))
def test_num_params_matches_tree(name):
    cfg = _variants()[name]
    params = tf.init_params(cfg, jax.random.key(0))
    assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", ["bench_b", "cpu"])
def test_preset_sizes(name):
    # Bench model B has about 3.3M parameters.
    n = PRESETS[name].num_params()
    assert {"bench_b": 3.0e6 < n < 3.6e6, "cpu": 0.5e6 < n < 1.5e6}[name]


@pytest.mark.parametrize("name", sorted(_variants()))
def test_kv_cache_decode_equals_full_forward(name):
    cfg = _variants()[name]
    params = _params(cfg)
    tokens = jax.random.randint(jax.random.key(2), (3, 12), 0, cfg.vocab_size)
    full = tf.jit_logits(params, tokens, cfg)
    cache = tf.init_cache(cfg, 3, 16)
    hidden, cache = tf.forward(params, tokens[:, :7], cfg, cache=cache, slot=0)
    outs = [tf.logits(params, hidden, cfg)]
    for t in range(7, 12):
        # Positions are derived from the cache's valid slots when not given.
        hidden, cache = tf.forward(params, tokens[:, t : t + 1], cfg, cache=cache, slot=t)
        outs.append(tf.logits(params, hidden, cfg))
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5)


def test_left_padding_does_not_change_logits():
    cfg = _variants()["qwen3"]
    params = _params(cfg)
    tokens = jax.random.randint(jax.random.key(3), (1, 6), 0, cfg.vocab_size)
    alone = tf.jit_logits(params, tokens, cfg)
    padded = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), tokens], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 4)), jnp.ones((1, 6))], axis=1)
    hidden, _ = tf.forward(params, padded, cfg, mask_NxT=mask)
    np.testing.assert_allclose(tf.logits(params, hidden, cfg)[:, 4:], alone, atol=2e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_is_exact(remat):
    cfg = _variants()["llama"]
    params = _params(cfg)
    tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, cfg.vocab_size)

    def loss(p, c):
        return jnp.mean(tf.jit_logits(p, tokens, c) ** 2)

    g0 = jax.grad(loss)(params, cfg)
    g1 = jax.grad(loss)(params, cfg.replace(remat=remat))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_scalar_head():
    cfg = get_model_config("tiny", lm_head=False, scalar_head=True)
    params = _params(cfg)
    assert "lm_head" not in params
    tokens = jax.random.randint(jax.random.key(5), (2, 5), 0, cfg.vocab_size)
    hidden, _ = tf.forward(params, tokens, cfg)
    values = tf.scalar(params, hidden)
    assert values.shape == (2, 5)
    expected = np.asarray(hidden) @ np.asarray(params["score"]["w"]) + float(params["score"]["b"])
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no lm_head"):
        tf.logits(params, hidden, cfg)


def test_nnx_module_call_matches_pure_forward():
    from flax import nnx

    cfg = _variants()["qwen2"]
    model = tf.Transformer(cfg, rngs=nnx.Rngs(params=jax.random.key(0)))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    tokens = jax.random.randint(jax.random.key(6), (2, 5), 0, cfg.vocab_size)
    np.testing.assert_allclose(model(tokens), tf.jit_logits(params, tokens, cfg), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 4, 2), (8, 1, 1), (2, 4, 1)])
def test_sharded_forward_equals_unsharded(shape):
    cfg = get_model_config("tiny", num_heads=4, num_kv_heads=2)
    if cfg.num_kv_heads % shape[2]:
        pytest.skip("kv heads not divisible")
    params = _params(cfg)
    tokens = jax.random.randint(jax.random.key(7), (8, 10), 0, cfg.vocab_size)
    expected = tf.jit_logits(params, tokens, cfg)

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))
    specs = tf.partition_specs(cfg, RULES)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    sharded = jax.device_put(params, shardings)
    batch = jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
    assert sharded["layers"]["wq"].sharding.spec == P(None, "fsdp", "tensor", None)
    got = jax.jit(lambda p, t: tf.logits(p, tf.forward(p, t, cfg)[0], cfg))(sharded, batch)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_config_errors():
    with pytest.raises(ValueError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
        ModelConfig(vocab_size=8, dim=24, num_layers=1, num_heads=6, num_kv_heads=4, mlp_dim=8)
    with pytest.raises(ValueError, match="remat='some'"):
        get_model_config("tiny", remat="some")
    with pytest.raises(ValueError, match="Unknown model preset 'tinyy'"):
        get_model_config("tinyy")
    with pytest.raises(ValueError, match=r"Unknown ModelConfig field\(s\) \['dims'\]"):
        get_model_config("tiny", dims=3)
