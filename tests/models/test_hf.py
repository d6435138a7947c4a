"""Tests for rl_lm.models.hf: parity with transformers, round trips, error cases."""

import copy
import functools
import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from rl_lm.models import hf
from rl_lm.models.transformer import forward, logits, partition_specs
from rl_lm.parallel import make_mesh, named
from rl_lm.sampling.sampler import make_sampler

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,  # Greedy decoding then runs all 32 steps on both sides.
)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
CASES = {
    "llama": ("LlamaConfig", {}),
    "llama3_tied": ("LlamaConfig", {"rope_scaling": LLAMA3, "tie_word_embeddings": True}),
    "qwen2_tied_sharded": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 32, "rope_theta": 1e6}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
}
RULES = [
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
]


def _hf_model(config_cls: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**copy.deepcopy({**SHAPE, **overrides}))
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    # Random norms and biases too, so a swapped or misplaced tensor cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Case name -> (HF model, directory it was saved to)."""
    transformers.logging.set_verbosity_error()
    out = {}
    for case, (config_cls, overrides) in CASES.items():
        model = _hf_model(config_cls, **overrides)
        path = tmp_path_factory.mktemp(case)
        shard = 40_000 if "sharded" in case else "1GB"
        model.save_pretrained(path, max_shard_size=shard)
        out[case] = (model, path)
    return out


@functools.partial(jax.jit, static_argnames="cfg")
def _our_logits(params, tokens_NxT, mask_NxT, cfg):
    hidden, _ = forward(params, tokens_NxT, cfg, mask_NxT=mask_NxT)
    return logits(params, hidden, cfg)


def _batch(seed=0):
    """Tokens and a mask with rows left-padded by 0, 3 and 7 positions."""
    tokens = np.random.default_rng(seed).integers(0, SHAPE["vocab_size"], (3, 16), dtype=np.int32)
    mask = np.ones_like(tokens)
    mask[1, :3] = 0
    mask[2, :7] = 0
    return tokens, mask


def _hf_logits(model, tokens, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.numpy()


def _assert_params_equal(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(saved, case):
    model, path = saved[case]
    params, cfg = hf.load_hf_checkpoint(path)
    tokens, mask = _batch()
    ours = np.asarray(_our_logits(params, tokens, mask, cfg))
    ref = _hf_logits(model, tokens, mask)
    valid = mask.astype(bool)
    assert np.abs(ref[valid]).max() > 1.0  # The comparison is not between near-zeros.
    np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=1e-4)


def test_loaded_config_and_files(saved):
    _, path = saved["qwen2_tied_sharded"]
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*-of-*.safetensors"))) > 1
    _, cfg = hf.load_hf_checkpoint(path)
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.tie_embeddings) == (True, False, True)
    _, cfg = hf.load_hf_checkpoint(saved["llama3_tied"][1])
    assert dict(cfg.rope_scaling) == {k: v for k, v in LLAMA3.items() if k != "rope_type"}
    _, cfg = hf.load_hf_checkpoint(saved["qwen3"][1])
    assert (cfg.head_dim, cfg.qk_norm, cfg.rope_theta, cfg.norm_eps) == (32, True, 1e6, 1e-6)


@pytest.mark.parametrize(
    "case",
    [
        "llama3_tied",
        pytest.param("llama", marks=pytest.mark.slow),
        pytest.param("qwen2_tied_sharded", marks=pytest.mark.slow),
        pytest.param("qwen3", marks=pytest.mark.slow),
    ],
)
def test_greedy_generation_matches_transformers(saved, case):
    model, path = saved[case]
    params, cfg = hf.load_hf_checkpoint(path)
    tokens, mask = _batch(seed=1)
    prompt, prompt_mask = tokens[:, :10], mask[:, :10]
    sampler = make_sampler(cfg, max_new_tokens=32, temperature=0.0, eos_ids=(), pad_id=0)
    ours = sampler(params, prompt, prompt_mask, jax.random.key(0))
    with torch.no_grad():
        ref = model.generate(
            torch.tensor(prompt, dtype=torch.long),
            attention_mask=torch.tensor(prompt_mask),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )
    np.testing.assert_array_equal(np.asarray(ours.tokens), ref[:, prompt.shape[1] :].numpy())


@pytest.mark.parametrize("case", CASES)
def test_export_round_trip(saved, case, tmp_path):
    model, path = saved[case]
    params, cfg = hf.load_hf_checkpoint(path)
    model_type = "mistral" if case == "mistral" else None  # Llama would also represent it.
    out = hf.save_hf_checkpoint(
        params, cfg, tmp_path / "export", model_type=model_type, max_shard_bytes=30_000
    )
    assert (out / "model.safetensors.index.json").is_file()
    params2, cfg2 = hf.load_hf_checkpoint(out)
    assert cfg2 == cfg
    _assert_params_equal(params2, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(model)
    tokens, mask = _batch()
    valid = mask.astype(bool)
    np.testing.assert_allclose(
        _hf_logits(reloaded, tokens, mask)[valid], _hf_logits(model, tokens, mask)[valid], atol=1e-6
    )


def test_bfloat16_checkpoint(tmp_path):
    model = _hf_model("Qwen3Config", head_dim=32).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    expected = model.model.layers[1].self_attn.k_proj.weight.detach()
    expected_DxKxDh = expected.float().numpy().T.reshape(64, 2, 32)
    params, cfg = hf.load_hf_checkpoint(tmp_path / "bf16")
    assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "bfloat16")
    assert params["layers"]["wk"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        np.asarray(params["layers"]["wk"][1], np.float32), expected_DxKxDh
    )
    params32, cfg32 = hf.load_hf_checkpoint(tmp_path / "bf16", dtype="float32")
    assert (cfg32.dtype, cfg32.param_dtype) == ("bfloat16", "float32")
    np.testing.assert_array_equal(np.asarray(params32["layers"]["wk"][1]), expected_DxKxDh)
    out = hf.save_hf_checkpoint(params, cfg, tmp_path / "export")
    _assert_params_equal(hf.load_hf_checkpoint(out)[0], params)


def test_load_with_shardings(saved):
    _, path = saved["qwen2_tied_sharded"]
    params, cfg = hf.load_hf_checkpoint(path)
    mesh = make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    shardings = named(mesh, partition_specs(cfg, RULES))
    sharded, _ = hf.load_hf_checkpoint(path, shardings=shardings)
    _assert_params_equal(sharded, params)
    assert sharded["layers"]["wq"].sharding == shardings["layers"]["wq"]
    assert len(sharded["layers"]["wq"].sharding.device_set) == 8
    with pytest.raises(ValueError, match="shardings must mirror the params"):
        hf.load_hf_checkpoint(path, shardings={"embed": shardings["embed"]})


def _edit_checkpoint(src, dst, edit):
    """Copies a single-file checkpoint, applying `edit` to its tensor dict."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_shape_mismatch_missing_and_unexpected_tensors(saved, tmp_path):
    src = saved["llama"][1]

    def bad_shape(t):
        t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"][:-1]

    path = _edit_checkpoint(src, tmp_path / "shape", bad_shape)
    with pytest.raises(
        ValueError, match=r"up_proj.weight: expected shape \(128, 64\), found \(127, 64\)"
    ):
        hf.load_hf_checkpoint(path)
    path = _edit_checkpoint(src, tmp_path / "missing", lambda t: t.pop("model.norm.weight"))
    with pytest.raises(
        ValueError, match=r"missing tensor model.norm.weight \(expected shape \(64,\)\)"
    ):
        hf.load_hf_checkpoint(path)
    path = _edit_checkpoint(
        src,
        tmp_path / "extra",
        lambda t: t.update({"model.layers.0.mlp.up_proj.bias": np.zeros(128)}),
    )
    with pytest.raises(ValueError, match=r"unexpected tensor.*mlp.up_proj.bias"):
        hf.load_hf_checkpoint(path)
    inv_freq = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}
    path = _edit_checkpoint(src, tmp_path / "buffers", lambda t: t.update(inv_freq))
    _assert_params_equal(hf.load_hf_checkpoint(path)[0], hf.load_hf_checkpoint(src)[0])


def test_tied_checkpoint_with_lm_head(saved, tmp_path):
    src = saved["llama3_tied"][1]
    assert "lm_head.weight" not in load_file(str(src / "model.safetensors"))

    def equal_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()

    path = _edit_checkpoint(src, tmp_path / "equal", equal_head)
    _assert_params_equal(hf.load_hf_checkpoint(path)[0], hf.load_hf_checkpoint(src)[0])

    def other_head(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1

    path = _edit_checkpoint(src, tmp_path / "other", other_head)
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        hf.load_hf_checkpoint(path)


def test_llama_attention_bias_needs_zero_o_proj_bias(tmp_path):
    model = _hf_model("LlamaConfig", attention_bias=True)
    model.save_pretrained(tmp_path / "nonzero")
    with pytest.raises(ValueError, match="o_proj.bias is nonzero"):
        hf.load_hf_checkpoint(tmp_path / "nonzero")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.bias.zero_()
    model.save_pretrained(tmp_path / "zero")
    params, cfg = hf.load_hf_checkpoint(tmp_path / "zero")
    assert cfg.qkv_bias and not cfg.qk_norm
    tokens, mask = _batch()
    valid = mask.astype(bool)
    ours = np.asarray(_our_logits(params, tokens, mask, cfg))
    np.testing.assert_allclose(ours[valid], _hf_logits(model, tokens, mask)[valid], atol=1e-4)
    # Exported as llama (not qwen2), the zero o_proj bias is written back.
    out = hf.save_hf_checkpoint(params, cfg, tmp_path / "export", model_type="llama")
    assert not load_file(str(out / "model.safetensors"))[
        "model.layers.0.self_attn.o_proj.bias"
    ].any()
    _assert_params_equal(hf.load_hf_checkpoint(out)[0], params)


def test_export_refuses_to_clobber_and_is_atomic(saved, tmp_path, monkeypatch):
    params, cfg = hf.load_hf_checkpoint(saved["llama"][1])
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hf.save_hf_checkpoint(params, cfg, target)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        hf.save_hf_checkpoint(params, cfg, target, overwrite=True)
    monkeypatch.undo()
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # No temp dirs left behind.
    with pytest.raises(ValueError, match=r"\('layers', 'wq'\): expected shape"):
        bad = {**params, "layers": {**params["layers"], "wq": params["layers"]["wq"][:, :, :2]}}
        hf.save_hf_checkpoint(bad, cfg, tmp_path / "bad")
    hf.save_hf_checkpoint(params, cfg, target, overwrite=True)
    assert not (target / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(ValueError, match="only qwen3 has q/k norms"):
        hf.save_hf_checkpoint(params, cfg.replace(qk_norm=True), tmp_path / "x", model_type="llama")


def _word_tokenizer(path, size):
    from tokenizers import Tokenizer, models

    path.mkdir()
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0")).save(
        str(path / "tokenizer.json")
    )
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "w1"}))
    return path


def test_tokenizer_vocab_check_and_copy(saved, tmp_path):
    path = saved["llama"][1]
    too_big = _word_tokenizer(tmp_path / "big", 200)
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        hf.load_hf_checkpoint(path, tokenizer_dir=too_big)
    fits = _word_tokenizer(tmp_path / "fits", 100)
    params, cfg = hf.load_hf_checkpoint(path, tokenizer_dir=fits)
    out = hf.save_hf_checkpoint(params, cfg, tmp_path / "export", tokenizer_dir=fits)
    assert (out / "tokenizer.json").read_bytes() == (fits / "tokenizer.json").read_bytes()
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        hf.save_hf_checkpoint(params, cfg, tmp_path / "export2", tokenizer_dir=too_big)
