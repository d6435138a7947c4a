"""Model configuration and presets for the decoder-only transformer.

One frozen dataclass covers the Llama family and its close relatives: Qwen2 adds
biases to the q/k/v projections, Qwen3 adds RMSNorm on queries and keys, Llama 3
adds its RoPE frequency scaling. Presets give the shapes of the embedded
from-scratch models and of real checkpoints (whose weights users bring).
"""

from __future__ import annotations

import dataclasses
from typing import Any

REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and options of a Llama-style decoder.

    Attributes:
      vocab_size: rows of the embedding table (may exceed the tokenizer's vocab).
      dim: hidden size D.
      num_layers: L, stacked and scanned.
      num_heads: H query heads.
      num_kv_heads: K key/value heads (grouped-query attention; H % K == 0).
      head_dim: Dh; defaults to dim // num_heads.
      mlp_dim: F, inner size of the SwiGLU MLP.
      rope_theta: RoPE base.
      rope_scaling: None, or Llama-3 scaling given as a dict with keys factor,
        low_freq_factor, high_freq_factor, original_max_position_embeddings
        (kept as sorted (key, value) pairs).
      norm_eps: RMSNorm epsilon.
      qkv_bias: biases on the q/k/v projections (Qwen2).
      qk_norm: RMSNorm over head_dim on queries and keys before RoPE (Qwen3).
      tie_embeddings: the output projection is the transposed embedding.
      lm_head: whether the model produces next-token logits.
      scalar_head: whether the model has a per-token scalar head (value,
        reward, preference, process reward) on the same trunk.
      max_seq_len: longest sequence (prompt + response) the model is used at.
      dtype: compute dtype of activations.
      param_dtype: storage dtype of the parameters.
      remat: rematerialization of each scanned layer: "none", "full" (save
        nothing), "dots" (save matmul outputs without batch dims).
      init_std: standard deviation of the normal weight initializer.
    """

    vocab_size: int
    dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: Any = None
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    lm_head: bool = True
    scalar_head: bool = False
    max_seq_len: int = 2048
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    init_std: float = 0.02

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.num_heads)
        if self.rope_scaling is not None:
            # Stored as sorted (key, value) pairs so the config stays hashable
            # (it is a static argument of jitted functions).
            object.__setattr__(self, "rope_scaling", tuple(sorted(dict(self.rope_scaling).items())))
        problems = []
        if self.num_heads % self.num_kv_heads:
            problems.append(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                problems.append(f"{field}={getattr(self, field)!r} is not one of {DTYPES}")
        if not (self.lm_head or self.scalar_head):
            problems.append("the model needs lm_head or scalar_head (or both)")
        if self.tie_embeddings and not self.lm_head:
            problems.append("tie_embeddings needs lm_head=True")
        if problems:
            raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Number of parameters (embedding counted once when tied)."""
        d, f, h, k, dh = self.dim, self.mlp_dim, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * dh * (2 * h + 2 * k) + (dh * (h + 2 * k) if self.qkv_bias else 0)
        norms = 2 * d + (2 * dh if self.qk_norm else 0)
        layer = attn + 3 * d * f + norms
        total = self.vocab_size * d + self.num_layers * layer + d
        if self.lm_head and not self.tie_embeddings:
            total += d * self.vocab_size
        if self.scalar_head:
            total += d + 1
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Forward matmul FLOPs per token (2 per multiply-add), attention included."""
        d, dh, h, k = self.dim, self.head_dim, self.num_heads, self.num_kv_heads
        proj = 2 * d * dh * (2 * h + 2 * k) + 2 * 3 * d * self.mlp_dim
        attn = 2 * 2 * h * dh * seq_len  # q.k and p.v against seq_len keys
        head = 2 * d * self.vocab_size if self.lm_head else 2 * d
        return float(self.num_layers * (proj + attn) + head)


_LLAMA3_SCALING = {
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

PRESETS: dict[str, ModelConfig] = {
    # Unit tests: a few thousand parameters, byte-tokenizer vocabulary.
    "tiny": ModelConfig(
        vocab_size=320,
        dim=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        mlp_dim=64,
        max_seq_len=128,
    ),
    # Embedded CPU experiments (arithmetic, synthetic preferences): about 0.9M params.
    "cpu": ModelConfig(
        vocab_size=320,
        dim=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        mlp_dim=384,
        max_seq_len=256,
    ),
    # Bench model "B" of docs/benchmarks.md (about 3.3M params).
    "bench_b": ModelConfig(
        vocab_size=512,
        dim=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        mlp_dim=768,
        max_seq_len=512,
    ),
    # Larger CPU experiments (about 25M params).
    "small": ModelConfig(
        vocab_size=320,
        dim=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=4,
        mlp_dim=1536,
        max_seq_len=512,
    ),
    # Shapes of real checkpoints; load the weights with rl_lm.models.hf.
    "llama3.2-1b": ModelConfig(
        vocab_size=128256,
        dim=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=8192,
        rope_theta=500000.0,
        rope_scaling=_LLAMA3_SCALING,
        tie_embeddings=True,
        max_seq_len=131072,
        dtype="bfloat16",
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151936,
        dim=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=4864,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        qkv_bias=True,
        tie_embeddings=True,
        max_seq_len=32768,
        dtype="bfloat16",
    ),
    "qwen3-0.6b": ModelConfig(
        vocab_size=151936,
        dim=1024,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        mlp_dim=3072,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        qk_norm=True,
        tie_embeddings=True,
        max_seq_len=40960,
        dtype="bfloat16",
    ),
}


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """Returns preset `name` with `overrides` applied.

    Raises:
      ValueError: for an unknown preset or an unknown field.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown ModelConfig field(s) {unknown}; valid fields: {sorted(fields)}.")
    return PRESETS[name].replace(**overrides)
