"""Tiny chat tokenizers saved by transformers, with the test templates of tests/data/templates.

`save_chat_tokenizer(path, "llama3")` (or "chatml", or "tiny": a minimal template
of its own) writes tokenizer.json, tokenizer_config.json and chat_template.jinja
as `save_pretrained` does for a downloaded chat model. The model is byte-level
BPE over the 256 byte symbols with a few merges (so "\\n\\n" and "hell" are one
token, as in real vocabularies), plus the family's special tokens.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).parent / "data" / "templates"

# family -> (named special tokens, other special tokens of its chat format)
FAMILIES = {
    "llama3": (
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
    ),
    "chatml": (
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ["<|im_start|>"],
    ),
    "tiny": ({"bos_token": "<s>", "eos_token": "</s>"}, ["<|user|>", "<|assistant|>"]),
}
TINY_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Byte-level symbols: "Ċ" is "\n", "Ġ" a space.
_MERGES = [("Ċ", "Ċ"), ("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "t"), ("Ġt", "o")]


def template(family: str) -> str:
    """The chat template of `family`."""
    return TINY_TEMPLATE if family == "tiny" else (TEMPLATES / f"{family}.jinja").read_text()


def save_chat_tokenizer(path: str | Path, family: str = "llama3") -> Path:
    """Saves the tokenizer of `family` (a key of FAMILIES) in `path`; returns `path`."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    named, others = FAMILIES[family]
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate([*symbols, *(a + b for a, b in _MERGES)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*named.values(), *others])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.chat_template = template(family)
    fast.save_pretrained(path)
    return Path(path)
