"""LoRA on the params dict: the merge by hand, the start, the gradients, full rank, specs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rl_lm.models import lora
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import forward, init_params, logits

CFG = get_model_config("tiny")  # dim 32, 4 heads x 8, 2 kv heads, mlp 64, 2 layers
ALL = "q,k,v,o,gate,up,down"


def _cfg(rank=4, alpha=8.0, targets=ALL):
    return lora.from_config({"rank": rank, "alpha": alpha, "targets": targets})


def _loss(params, tokens):
    """Mean next-token NLL of `tokens` under the model."""
    hidden, _ = forward(params, tokens, CFG)
    logp = jax.nn.log_softmax(logits(params, hidden, CFG)[:, :-1], axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))


TOKENS = jax.random.randint(jax.random.PRNGKey(3), (4, 9), 0, CFG.vocab_size)


def test_merge_by_hand():
    # wq [L=1, D=2, H=1, Dh=2] and wo [L=1, H=2, Dh=1, D=2] (two input axes), rank 1, scale 3.
    base = {
        "embed": jnp.ones((3, 2)),
        "layers": {
            "wq": jnp.array([[[[1.0, 2.0]], [[3.0, 4.0]]]]),
            "wo": jnp.zeros((1, 2, 1, 2)),
        },
    }
    adapters = {
        "layers": {
            "wq": {"a": jnp.array([[[1.0], [2.0]]]), "b": jnp.array([[[[10.0, 20.0]]]])},
            "wo": {"a": jnp.array([[[[1.0]], [[-1.0]]]]), "b": jnp.array([[[0.5, 1.0]]])},
        }
    }
    merged = lora.merge(base, adapters, _cfg(rank=1, alpha=3.0, targets="q,o"))
    # wq: W + 3 * [1, 2]^T [10, 20] = [[1 + 30, 2 + 60], [3 + 60, 4 + 120]].
    np.testing.assert_allclose(merged["layers"]["wq"], [[[[31.0, 62.0]], [[63.0, 124.0]]]])
    # wo: 3 * [1, -1]^T [0.5, 1] over (H, Dh) = 2 x 1 inputs.
    np.testing.assert_allclose(merged["layers"]["wo"], [[[[1.5, 3.0]], [[-1.5, -3.0]]]])
    assert merged["embed"] is base["embed"]


def test_config_is_validated_in_one_line():
    assert lora.from_config(None) is None
    assert lora.from_config(lora.default_config()) is None  # rank 0: off
    cfg = _cfg(rank=8, alpha=16.0, targets="q, v")
    assert cfg.targets == ("q", "v") and cfg.scale == 2.0
    assert cfg.weights() == (("wq", 1), ("wv", 1))
    for bad, match in [
        ({"rank": -1, "alpha": 1.0, "targets": "q"}, "lora.rank"),
        ({"rank": 2.5, "alpha": 1.0, "targets": "q"}, "lora.rank"),
        ({"rank": 2, "alpha": 0.0, "targets": "q"}, "lora.alpha"),
        ({"rank": 2, "alpha": 1.0, "targets": "q,embed"}, "lora.targets=q,v"),
        ({"rank": 2, "alpha": 1.0, "targets": "q,q"}, "distinct"),
        ({"rank": 2, "alpha": 1.0, "targets": ""}, "lora.targets"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            lora.from_config(bad)
        assert "\n" not in str(info.value)


def test_fresh_adapters_leave_the_model_unchanged():
    base = init_params(CFG, jax.random.PRNGKey(0))
    cfg = _cfg()
    adapters = lora.init_adapters(cfg, base, jax.random.PRNGKey(1))
    shapes = jax.tree.map(jnp.shape, adapters)["layers"]
    assert shapes["wq"] == {"a": (2, 32, 4), "b": (2, 4, 4, 8)}
    assert shapes["wk"] == {"a": (2, 32, 4), "b": (2, 4, 2, 8)}
    assert shapes["wo"] == {"a": (2, 4, 8, 4), "b": (2, 4, 32)}
    assert shapes["w_down"] == {"a": (2, 64, 4), "b": (2, 4, 32)}
    for ab in adapters["layers"].values():
        assert not np.any(ab["b"]) and np.all(np.std(ab["a"], axis=(1, -1)) > 0)
    merged = lora.merge(base, adapters, cfg)
    jax.tree.map(np.testing.assert_array_equal, merged, base)
    # He-uniform over the fan-in, per layer: variance 2 / fan_in.
    a = np.asarray(adapters["layers"]["wo"]["a"])
    np.testing.assert_allclose(a.var(), 2 / 32, rtol=0.3)
    assert np.abs(a).max() <= np.sqrt(6 / 32)


def test_adapter_gradients_are_the_full_gradient_through_A_and_B():
    """dL/dB[l] = s A[l]^T dL/dW[l] and dL/dA[l] = s dL/dW[l] B[l]^T (0 at the start)."""
    base = init_params(CFG, jax.random.PRNGKey(0))
    cfg = _cfg(rank=3, alpha=6.0)
    adapters = lora.init_adapters(cfg, base, jax.random.PRNGKey(1))
    full = jax.grad(_loss)(base, TOKENS)["layers"]
    g = jax.grad(lambda ad: _loss(lora.merge(base, ad, cfg), TOKENS))(adapters)["layers"]
    for name, n_in in cfg.weights():
        layers, rank = full[name].shape[0], cfg.rank
        dw = full[name].reshape(layers, int(np.prod(full[name].shape[1 : 1 + n_in])), -1)
        a = adapters["layers"][name]["a"].reshape(layers, -1, rank)
        want_b = cfg.scale * jnp.einsum("lir,lio->lro", a, dw)
        np.testing.assert_allclose(g[name]["b"].reshape(want_b.shape), want_b, rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(g[name]["a"], 0.0)
    # Away from B = 0, the A gradient is s dL/dW B^T at the adapted weights.
    moved = jax.tree.map(lambda x: x + 0.1, adapters)
    merged = lora.merge(base, moved, cfg)
    full = jax.grad(_loss)(merged, TOKENS)["layers"]["w_up"]
    g = jax.grad(lambda ad: _loss(lora.merge(base, ad, cfg), TOKENS))(moved)["layers"]["w_up"]
    want_a = cfg.scale * jnp.einsum("lio,lro->lir", full, moved["layers"]["w_up"]["b"])
    np.testing.assert_allclose(g["a"], want_a, rtol=1e-4, atol=1e-7)


def test_full_rank_adapters_reach_the_full_fine_tuning_step():
    """With rank = min(in, out) the adapted weights can be any matrices: B solved from a
    full fine-tuning step's weights gives that step's model (and its loss) exactly."""
    base = init_params(CFG, jax.random.PRNGKey(0))
    cfg = _cfg(rank=32, alpha=32.0, targets="q,k,v,gate,up")  # rank = D = min(in, out)
    adapters = lora.init_adapters(cfg, base, jax.random.PRNGKey(1))
    grads = jax.grad(_loss)(base, TOKENS)
    stepped = dict(base["layers"])
    solved = {}
    for name, _ in cfg.weights():
        w = base["layers"][name]
        stepped[name] = w - 0.5 * grads["layers"][name]
        a = adapters["layers"][name]["a"]  # [L, D, D], invertible
        dw = (stepped[name] - w).reshape(w.shape[0], w.shape[1], -1)
        b = np.linalg.solve(np.float64(a), np.float64(dw)) / cfg.scale
        solved[name] = {"a": a, "b": jnp.float32(b).reshape(adapters["layers"][name]["b"].shape)}
    full_step = {**base, "layers": stepped}
    merged = lora.merge(base, {"layers": solved}, cfg)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-5), merged, full_step)
    np.testing.assert_allclose(_loss(merged, TOKENS), _loss(full_step, TOKENS), rtol=1e-5)
    assert _loss(full_step, TOKENS) < _loss(base, TOKENS)


def test_partition_specs_follow_the_weights_axes():
    rules = [("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor")]
    specs = lora.partition_specs(_cfg(), CFG, rules)["layers"]
    assert specs["wq"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor", None)}
    assert specs["wo"] == {"a": P(None, "tensor", None, None), "b": P(None, None, "fsdp")}
    assert specs["w_down"] == {"a": P(None, "tensor", None), "b": P(None, None, "fsdp")}
    axes = lora.adapter_logical_axes(_cfg(targets="k"), CFG)
    assert axes == {
        "layers": {
            "wk": {
                "a": ("layers", "embed", "lora_rank"),
                "b": ("layers", "lora_rank", "kv_heads", "head_dim"),
            }
        }
    }
