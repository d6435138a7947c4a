"""Tests for rl_lm.models.tokenizer."""

import json
import re

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from rl_lm.models.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    check_vocab,
    load_tokenizer,
)

PAD, BOS, EOS = 256, 257, 258


@pytest.fixture
def byte_tok():
    return ByteTokenizer()


@pytest.mark.parametrize("text", ["", "hello, world", "héllo wörld ✓ 日本語 🙂", "a\nb\tc\x00"])
def test_byte_round_trip(byte_tok, text):
    ids = byte_tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == BOS and ids[-1] == EOS
    assert ids[1:-1] == list(text.encode("utf-8"))
    assert byte_tok.decode(ids) == text
    assert byte_tok.decode(np.asarray(ids, dtype=np.int32)) == text


def test_byte_constants_and_specials(byte_tok):
    assert (byte_tok.vocab_size, byte_tok.pad_id, byte_tok.bos_id, byte_tok.eos_id) == (
        259,
        256,
        257,
        258,
    )
    assert byte_tok.encode("A") == [65]
    assert byte_tok.decode([BOS, 72, 105, EOS, PAD]) == "Hi"
    assert byte_tok.decode([BOS, 72, 105, EOS, PAD], skip_special=False) == "<bos>Hi<eos><pad>"


def test_byte_decode_invalid_utf8_and_out_of_range_ids_do_not_raise(byte_tok):
    # 0xC3 starts a 2-byte sequence that never completes; 300 lies past the vocabulary.
    assert byte_tok.decode([0xC3, 65]) == "\ufffdA"
    assert byte_tok.decode([65, 300, 66]) == "A\ufffdB"


def test_decode_rejects_2d(byte_tok):
    with pytest.raises(ValueError, match="decode_batch"):
        byte_tok.decode(np.zeros((2, 3), dtype=np.int32))


def test_encode_batch_left_padding(byte_tok):
    ids, mask = byte_tok.encode_batch(["ab", "c", ""], max_len=4, add_bos=True)
    np.testing.assert_array_equal(
        ids,
        [[PAD, BOS, 97, 98], [PAD, PAD, BOS, 99], [PAD, PAD, PAD, BOS]],
    )
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32


def test_encode_batch_right_padding(byte_tok):
    ids, mask = byte_tok.encode_batch(["ab", "c"], max_len=4, pad_side="right", add_eos=True)
    np.testing.assert_array_equal(ids, [[97, 98, EOS, PAD], [99, EOS, PAD, PAD]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 0, 0]])


def test_encode_batch_exact_fit_and_empty_batch(byte_tok):
    ids, mask = byte_tok.encode_batch(["abc"], max_len=3)
    np.testing.assert_array_equal(ids, [[97, 98, 99]])
    np.testing.assert_array_equal(mask, [[1, 1, 1]])
    ids, mask = byte_tok.encode_batch([], max_len=5)
    assert ids.shape == mask.shape == (0, 5)


def test_encode_batch_overflow_error_names_row_and_fix(byte_tok):
    with pytest.raises(ValueError) as err:
        byte_tok.encode_batch(["ok", "too long"], max_len=4, add_bos=True)
    msg = str(err.value)
    assert "text 1 has 9 tokens" in msg and "max_len is 4" in msg
    assert "truncate='left'" in msg and "truncate='right'" in msg and "maximum length" in msg


def test_encode_batch_truncation_keeps_specials(byte_tok):
    ids, mask = byte_tok.encode_batch(["abcdef"], max_len=4, add_bos=True, truncate="left")
    np.testing.assert_array_equal(ids, [[BOS, 100, 101, 102]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1]])
    ids, _ = byte_tok.encode_batch(["abcdef"], max_len=4, add_eos=True, truncate="right")
    np.testing.assert_array_equal(ids, [[97, 98, 99, EOS]])
    ids, _ = byte_tok.encode_batch(["abcdef", "x"], max_len=3, truncate="left")
    np.testing.assert_array_equal(ids, [[100, 101, 102], [PAD, PAD, 120]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pad_side="middle"), "pad_side"),
        (dict(truncate="drop"), "truncate"),
        (dict(max_len=2, add_bos=True, add_eos=True), "no room"),
    ],
)
def test_encode_batch_bad_arguments(byte_tok, kwargs, match):
    kwargs = {"max_len": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        byte_tok.encode_batch(["a"], **kwargs)


def test_decode_batch_stops_at_eos_and_honors_mask(byte_tok):
    ids = np.array(
        [
            [PAD, PAD, 104, 105, EOS, 120],  # stops at EOS: "hi"
            [97, EOS, 98, PAD, PAD, PAD],  # the EOS is masked out, so it does not stop
            [120, 121, 122, 122, 122, 122],  # no EOS: the whole masked span
        ]
    )
    mask = np.array(
        [
            [0, 0, 1, 1, 1, 1],
            [1, 0, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
        ]
    )
    assert byte_tok.decode_batch(ids, mask) == ["hi", "ab", "xyz"]
    # A chat prompt's end-of-turn ids are EOS ids too: prompts are read in full.
    assert byte_tok.decode_batch(ids, mask, stop_at_eos=False) == ["hix", "ab", "xyz"]
    assert byte_tok.decode_batch(ids) == ["hi", "a", "xyzzzz"]


def test_decode_batch_inverts_encode_batch(byte_tok):
    texts = ["hello", "wörld", ""]
    for pad_side in ("left", "right"):
        ids, mask = byte_tok.encode_batch(
            texts, max_len=10, pad_side=pad_side, add_bos=True, add_eos=True
        )
        assert byte_tok.decode_batch(ids, mask) == texts


def test_decode_batch_shape_errors(byte_tok):
    with pytest.raises(ValueError, match="does not match"):
        byte_tok.decode_batch(np.zeros((2, 3), np.int32), np.ones((2, 4), np.int32))
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        byte_tok.decode_batch(np.zeros(3, np.int32))


def test_check_vocab(byte_tok):
    check_vocab(byte_tok, 259)
    check_vocab(byte_tok, 512)  # a padded embedding table is fine
    with pytest.raises(ValueError) as err:
        check_vocab(byte_tok, 258)
    msg = str(err.value)
    assert "259" in msg and "258" in msg and "shipped with the checkpoint" in msg


def test_load_tokenizer_byte_and_bad_spec(tmp_path):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ValueError, match="'byte' or the path"):
        load_tokenizer("gpt2")
    with pytest.raises(ValueError, match="'byte' or the path"):
        load_tokenizer(str(tmp_path / "missing"))


_SENTENCES = ["the cat sat on the mat", "hello world", "the dog ate the cat"]


def _save_hf(tmp_path, *, tokenizer_config, bos_processor=True, truncation=None, **json_files):
    """Trains a word-level tokenizer on _SENTENCES and writes a HF directory."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>", "<pad>"])
    tok.train_from_iterator(_SENTENCES, trainer)
    if bos_processor:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    if truncation:
        tok.enable_truncation(max_length=truncation)
    tok.save(str(tmp_path / "tokenizer.json"))
    files = {"tokenizer_config.json": tokenizer_config, **json_files}
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_text(json.dumps(content))
    return tok


def test_hf_special_tokens_round_trip_and_no_bos_doubling(tmp_path):
    raw = _save_hf(
        tmp_path,
        tokenizer_config={
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "special": True},
            "pad_token": "<pad>",
        },
    )
    tok = load_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    s, e, p = (raw.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eos_ids) == (s, e, p, (e,))
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)

    words = [raw.token_to_id(w) for w in ("the", "cat", "sat")]
    assert raw.encode("the cat sat").ids == [s, *words]  # the post-processor adds BOS
    assert tok.encode("the cat sat") == words
    assert tok.encode("the cat sat", add_bos=True, add_eos=True) == [s, *words, e]
    assert tok.decode([s, *words, e, p]) == "the cat sat"
    assert tok.decode(np.array([s, *words])) == "the cat sat"
    assert "<s>" in tok.decode([s, *words], skip_special=False)

    ids, mask = tok.encode_batch(["hello world", "cat"], max_len=4, add_bos=True)
    hello, world, cat = (raw.token_to_id(w) for w in ("hello", "world", "cat"))
    np.testing.assert_array_equal(ids, [[p, s, hello, world], [p, p, s, cat]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 1, 1]])
    assert tok.decode_batch(ids, mask) == ["hello world", "cat"]
    check_vocab(tok, tok.vocab_size)
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        check_vocab(tok, tok.vocab_size - 1)


def test_hf_pad_falls_back_to_eos_and_eos_list_from_config(tmp_path):
    raw = _save_hf(
        tmp_path,
        tokenizer_config={"eos_token": "</s>", "bos_token": None},
        **{"config.json": {"bos_token_id": 1, "eos_token_id": [2, 3]}},
    )
    tok = HFTokenizer(tmp_path / "tokenizer.json")  # a tokenizer.json file works too
    e = raw.token_to_id("</s>")
    assert tok.pad_id == tok.eos_id == e
    assert tok.eos_ids == (2, 3)
    # An explicit null in tokenizer_config.json wins over config.json's bos_token_id.
    assert tok.bos_id is None
    with pytest.raises(ValueError, match="no BOS token"):
        tok.encode("cat", add_bos=True)
    # With pad == eos, left padding needs the mask to decode.
    ids, mask = tok.encode_batch(["cat", "the cat"], max_len=3)
    assert tok.decode_batch(ids, mask) == ["cat", "the cat"]
    # Every id in eos_ids ends a row.
    cat = raw.token_to_id("cat")
    assert tok.decode_batch(np.array([[cat, 3, cat], [cat, cat, 2]])) == ["cat", "cat cat"]


def test_hf_ids_from_model_configs_only(tmp_path):
    _save_hf(
        tmp_path,
        tokenizer_config=None,
        bos_processor=False,
        **{
            "config.json": {"text_config": {"bos_token_id": 1}},
            "generation_config.json": {"eos_token_id": [2], "pad_token_id": 3},
        },
    )
    tok = HFTokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)


def test_hf_ignores_truncation_saved_in_tokenizer_json(tmp_path):
    _save_hf(tmp_path, tokenizer_config={"eos_token": "</s>"}, truncation=2)
    tok = HFTokenizer(tmp_path)
    assert len(tok.encode("the cat sat on the mat")) == 6


def test_hf_unknown_special_token_and_missing_eos(tmp_path):
    _save_hf(tmp_path, tokenizer_config={"eos_token": "<|end|>"})
    with pytest.raises(ValueError, match=re.escape("'<|end|>' is not in the vocabulary")):
        HFTokenizer(tmp_path)
    _save_hf(tmp_path, tokenizer_config={"bos_token": "<s>"})
    with pytest.raises(ValueError, match="no EOS token"):
        HFTokenizer(tmp_path)


def test_hf_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFTokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json not found"):
        load_tokenizer(str(tmp_path))


def test_chat_template_and_special_tokens(tmp_path, byte_tok):
    assert byte_tok.chat_template is None and byte_tok.special_tokens == {}
    config = {"eos_token": "</s>", "bos_token": {"content": "<s>"}, "pad_token": None}
    _save_hf(tmp_path, tokenizer_config={**config, "chat_template": "{{ messages }}"})
    tok = HFTokenizer(tmp_path)
    assert tok.chat_template == "{{ messages }}"
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    _save_hf(tmp_path, tokenizer_config={**config, "chat_template": named})
    assert HFTokenizer(tmp_path).chat_template == "D"
    (tmp_path / "chat_template.jinja").write_text("J")  # transformers' newer layout wins.
    assert HFTokenizer(tmp_path).chat_template == "J"
    (tmp_path / "chat_template.jinja").unlink()
    _save_hf(tmp_path, tokenizer_config={**config, "chat_template": named[:1]})
    with pytest.raises(ValueError, match=r"\['tool_use'\] but none named 'default'"):
        HFTokenizer(tmp_path)
    _save_hf(tmp_path, tokenizer_config=config)
    assert HFTokenizer(tmp_path).chat_template is None


def test_hf_encode_offsets(tmp_path):
    _save_hf(tmp_path, tokenizer_config={"eos_token": "</s>"})
    tok = HFTokenizer(tmp_path)
    ids, offsets = tok.encode_offsets("the cat")
    assert ids == tok.encode("the cat") and offsets == [(0, 3), (4, 7)]
    ids, offsets = ByteTokenizer().encode_offsets("aé")
    assert ids == [97, 0xC3, 0xA9] and offsets == [(0, 1), (1, 2), (1, 2)]
