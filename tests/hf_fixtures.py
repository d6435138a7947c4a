"""Tiny local Hugging Face checkpoints, with a tokenizer, written by transformers itself.

`make_checkpoint(path, family)` saves a random Llama or Qwen2 model and a
byte-level BPE tokenizer (the 256 byte symbols, no merges, so any text encodes;
<s> = 0, </s> = 1, <pad> = 2, and a chat template) the way a downloaded model
directory holds them: config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, chat_template.jinja, generation_config.json.
"""

from __future__ import annotations

from pathlib import Path

# Model shapes: as small as a transformer gets, with grouped-query attention.
SHAPE = dict(
    vocab_size=320,  # >= the tokenizer's 259 ids, padded like real checkpoints
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
)
FAMILIES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


def save_tokenizer(path: str | Path) -> Path:
    """Saves the byte-level tokenizer with transformers' save_pretrained; returns `path`."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate([*SPECIALS.values(), *symbols])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return Path(path)


def make_checkpoint(path: str | Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Saves a random tiny `family` ("llama" or "qwen2") model and the tokenizer in `path`.

    Args:
      path: the model directory to write.
      family: a key of FAMILIES.
      seed: torch seed of the weights.
      **overrides: config fields replacing SHAPE's (e.g. tie_word_embeddings=True).
    """
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = getattr(transformers, FAMILIES[family])(**{**SHAPE, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # Random norms and biases too, so a misplaced tensor shows.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    model.save_pretrained(path)
    return save_tokenizer(path)
