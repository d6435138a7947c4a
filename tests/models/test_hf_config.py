"""Tests for rl_lm.models.hf_config: config.json <-> ModelConfig (no torch needed)."""

import re

import pytest

from rl_lm.models.config import PRESETS, ModelConfig
from rl_lm.models.hf_config import config_from_hf, config_to_hf

LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


_BASE = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 128,
}


def test_config_from_transformers_4_and_5_style_dicts():
    shared = {
        **_BASE,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "max_position_embeddings": 1024,
    }
    legacy = {
        **shared,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", **LLAMA3},
        "torch_dtype": "bfloat16",
    }
    modern = {
        **shared,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3},
        "dtype": "bfloat16",
    }
    expected = ModelConfig(
        vocab_size=128,
        dim=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        mlp_dim=128,
        head_dim=16,
        rope_theta=500000.0,
        rope_scaling=LLAMA3,
        norm_eps=1e-5,
        tie_embeddings=True,
        max_seq_len=1024,
        dtype="bfloat16",
        param_dtype="bfloat16",
    )
    assert config_from_hf(legacy) == expected
    assert config_from_hf(modern) == expected
    exported = config_to_hf(expected)
    assert exported["rope_parameters"] == modern["rope_parameters"]
    assert exported["rope_scaling"] == legacy["rope_scaling"]
    # Missing num_key_value_heads means multi-head attention; qwen3 defaults head_dim to 128.
    assert config_from_hf(_BASE).num_kv_heads == 4
    assert config_from_hf({**_BASE, "model_type": "qwen3"}).head_dim == 128


# Released config.json files (transformers 4.x), trimmed of keys the import ignores.
_RELEASED = {
    "llama3.2-1b": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "vocab_size": 128256,
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_mrope": False,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "qwen3-0.6b": {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "max_position_embeddings": 40960,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
}


@pytest.mark.parametrize("name", _RELEASED)
def test_released_configs_match_presets(name):
    cfg = config_from_hf(_RELEASED[name])
    assert cfg == PRESETS[name].replace(param_dtype="bfloat16")
    assert config_from_hf(config_to_hf(cfg)) == cfg
    assert config_to_hf(cfg)["architectures"] == _RELEASED[name]["architectures"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_type": "gpt2"}, "model_type='gpt2'; supported model types are"),
        ({"model_type": "qwen2_moe"}, "model_type='qwen2_moe'"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "architectures="),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type='linear'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"mlp_bias": True}, "mlp_bias=True"),
        ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window=True"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types="),
        ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window=4096"),
        ({"dtype": "float8_e4m3fn"}, "dtype='float8_e4m3fn'"),
    ],
)
def test_unsupported_configs_fail_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_hf({**_BASE, **changes})
