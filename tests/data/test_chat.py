"""Chat templates: our rendering and ids equal transformers', and the assistant masks."""

import json

import numpy as np
import pytest

from rl_lm.data import chat, jsonl, pipeline, registry
from rl_lm.models.tokenizer import ByteTokenizer, load_tokenizer
from tests import chat_fixtures

transformers = pytest.importorskip("transformers")

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "hello to you"}],
    "with system": [SYSTEM, {"role": "user", "content": "hello"}],
    "multi-turn": [
        SYSTEM,
        {"role": "user", "content": "hello to you"},
        {"role": "assistant", "content": "hell\n\nno"},
        {"role": "user", "content": "  to é ✓ "},
        {"role": "assistant", "content": "ok"},
    ],
}


@pytest.fixture(scope="module", params=sorted(chat_fixtures.FAMILIES))
def tokenizers(request, tmp_path_factory):
    """(ours, transformers') of one family's saved tokenizer directory."""
    path = chat_fixtures.save_chat_tokenizer(tmp_path_factory.mktemp("tok"), request.param)
    return load_tokenizer(str(path)), transformers.AutoTokenizer.from_pretrained(path)


def _hf_ids(hf, messages, add_generation_prompt):
    out = hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_render_and_ids_equal_transformers(tokenizers, conversation, add_generation_prompt):
    ours, hf = tokenizers
    messages = CONVERSATIONS[conversation]
    assert ours.chat_template == hf.chat_template
    text = chat.render(ours.chat_template, messages, add_generation_prompt, ours.special_tokens)
    assert text == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours.encode(text) == _hf_ids(hf, messages, add_generation_prompt)
    if add_generation_prompt:
        assert chat.render_prompt(ours, messages) == text


def test_chat_tokens_equal_transformers_and_mask_is_the_assistant_text(tokenizers):
    ours, hf = tokenizers
    messages = CONVERSATIONS["multi-turn"]
    ids, mask = chat.chat_tokens(ours, messages)
    assert ids == _hf_ids(hf, messages, False) and len(mask) == len(ids)
    end = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>\n", "tiny": "</s>"}
    family = next(f for f in end if ours.special_tokens["eos_token"] in end[f])
    assistant = [i for i, m in zip(ids, mask, strict=True) if m]
    reply_1 = "hell\n\nno" + end[family]
    assert ours.decode(assistant, skip_special=False) == reply_1 + "ok" + end[family]


def test_two_turn_masks_by_hand(tmp_path):
    """Llama-3 layout: only each reply's content and its <|eot_id|> are targets."""
    tok = load_tokenizer(str(chat_fixtures.save_chat_tokenizer(tmp_path, "llama3")))
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "to"},
        {"role": "assistant", "content": "hell"},
    ]
    ids, mask = chat.chat_tokens(tok, messages)
    pieces = [tok.decode([i], skip_special=False) for i in ids]
    targets = [(p, m) for p, m in zip(pieces, mask, strict=True) if m]
    # The merges make "hell" and "\n\n" one token each; "hello" is hell + o.
    assert targets == [("hell", 1), ("o", 1), ("<|eot_id|>", 1), ("hell", 1), ("<|eot_id|>", 1)]
    first = pieces.index("hell")
    assert "".join(pieces[:first]) == chat.render_prompt(tok, messages[:1])
    assert mask[:first] == [0] * first  # BOS, system and user turns, the reply's header.
    second = first + 3 + pieces[first + 3 :].index("hell")
    between = "<|start_header_id|>user<|end_header_id|>\n\nto<|eot_id|>"
    assert (
        "".join(pieces[first + 3 : second])
        == between + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert mask[first + 3 : second] == [0] * (second - first - 3)

    # The SFT pipeline row: [BOS] is the template's own (not doubled), the same mask.
    src = [{"prompt": "", "response": "", "answer": "", "messages": json.dumps(messages)}]
    batch = next(pipeline.sft_batches(src, tok, batch_size=1, max_len=len(ids) + 2, seed=0))
    np.testing.assert_array_equal(batch["tokens"][0], ids + [tok.pad_id] * 2)
    np.testing.assert_array_equal(batch["loss_mask"][0], mask + [0, 0])
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1


def test_prompt_rows_of_a_chat_with_bos_start_with_one_bos(tmp_path):
    """Llama-3 templates write BOS themselves; the sampling row must not double it."""
    tok_dir = str(chat_fixtures.save_chat_tokenizer(tmp_path / "tok", "llama3"))
    tok = load_tokenizer(tok_dir)
    messages = [{"role": "user", "content": "1+2?"}]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": messages, "answer": "3"}) + "\n")
    jsonl.prepare_jsonl("p", "prompt", path, path, tmp_path, tokenizer=tok_dir, max_prompt_len=96)
    source = registry.load_source("jsonl/p", "test", data_dir=tmp_path)
    batch = next(pipeline.prompt_batches(source, tok, batch_size=1, max_prompt_len=96, seed=0))
    ids = tok.encode(chat.render_prompt(tok, messages))
    assert ids[0] == tok.bos_id
    np.testing.assert_array_equal(batch["prompt"][0, -len(ids) :], ids)
    assert batch["prompt_mask"][0].sum() == len(ids) and list(batch["answer"]) == ["3"]
    with pytest.raises(ValueError, match=f"line 1: \\[BOS\\] \\+ prompt is {len(ids)} tokens"):
        jsonl.prepare_jsonl("q", "prompt", path, None, tmp_path, tokenizer=tok, max_prompt_len=20)


def test_sft_jsonl_conversations_train_on_assistant_turns(tmp_path):
    tok_dir = str(chat_fixtures.save_chat_tokenizer(tmp_path / "tok", "chatml"))
    tok = load_tokenizer(tok_dir)
    conv = CONVERSATIONS["multi-turn"]
    rows = [{"messages": conv, "answer": "ok"}, {"prompt": "p", "response": "r"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    jsonl.prepare_jsonl("chat_sft", "sft", path, data_dir=tmp_path, tokenizer=tok_dir, max_len=90)
    source = registry.load_source("jsonl/chat_sft", "train", data_dir=tmp_path)
    first, plain = pipeline.eval_examples(source)
    assert first["prompt"] == chat.render_prompt(tok, conv[:-1])  # Held-out eval prompt.
    assert (first["response"], first["answer"], json.loads(first["messages"])) == ("ok", "ok", conv)
    assert plain == {"prompt": "p", "response": "r", "answer": "", "messages": ""}
    ids, mask = chat.chat_tokens(tok, conv)
    rows = {}
    for batch in [next(pipeline.sft_batches(source, tok, batch_size=2, max_len=90, seed=0))]:
        for tokens, m in zip(batch["tokens"], batch["loss_mask"], strict=True):
            rows[int(m.sum())] = (list(tokens), list(m))
    tokens, m = rows[sum(mask)]
    assert tokens[: len(ids)] == ids and m[: len(ids)] == mask
    with pytest.raises(ValueError, match=r"sft\.jsonl, line 1: \[BOS\] \+ conversation is"):
        jsonl.prepare_jsonl("x", "sft", path, data_dir=tmp_path, tokenizer=tok_dir, max_len=20)
    path.write_text(json.dumps({"messages": conv[:2]}) + "\n")
    with pytest.raises(ValueError, match="line 1: an sft conversation needs an assistant turn"):
        jsonl.prepare_jsonl("x", "sft", path, data_dir=tmp_path, tokenizer=tok_dir)


class ByteChat(ByteTokenizer):
    chat_template = (
        "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }};{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )


def test_byte_level_masks_by_hand():
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "é!"},
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "ok"},
    ]
    ids, mask = chat.chat_tokens(ByteChat(), msgs)
    assert ids == list("u:hi;a:é!;u:x;a:ok;".encode())
    # "u:hi;a:" | "é" (2 bytes) "!;" | "u:x;a:" | "ok;"
    assert mask == [0] * 7 + [1] * 4 + [0] * 6 + [1] * 3
    row, row_mask = pipeline.chat_ids(ByteChat(), json.dumps(msgs))
    assert row == [ByteChat.bos_id, *ids] and row_mask == [0, *mask]


def test_template_helpers_and_sandbox():
    template = (
        "{{ messages[0] | tojson }}|{{ strftime_now('%Y') | length }}|{{ bos_token }}"
        "{% if add_generation_prompt %}{{ raise_exception('no prompt: ' + eos_token) }}{% endif %}"
        "{% generation %}{{ messages[0]['content'] }}{% endgeneration %}"
    )
    msgs = [{"role": "user", "content": "<é>"}]
    out = chat.render(template, msgs, special_tokens={"bos_token": "<s>", "eos_token": "</s>"})
    assert out == '{"role": "user", "content": "<é>"}|4|<s><é>'  # No HTML escaping.
    with pytest.raises(Exception, match="no prompt: </s>"):
        chat.render(template, msgs, True, {"eos_token": "</s>"})
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        chat.render("{{ messages.append(1) }}", msgs)


def test_errors_name_the_fix():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ValueError) as e:
        chat.chat_tokens(ByteTokenizer(), msgs)
    assert "has no chat template" in str(e.value) and "\n" not in str(e.value)
    assert "chat_template" in str(e.value) and "plain 'prompt' text" in str(e.value)

    class Rewriting(ByteTokenizer):  # Drops every turn but the last: not prefix-stable.
        chat_template = "{{ messages[-1]['role'] }}:{{ messages[-1]['content'] }};"

    with pytest.raises(ValueError, match="not prefix-stable: the text of messages\\[:2\\]"):
        chat.chat_tokens(Rewriting(), msgs)
    with pytest.raises(ValueError, match="message 1 needs a string 'role'"):
        chat.check_messages([msgs[0], {"content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        chat.check_messages([])


def test_sft_trainer_on_conversations(tmp_path):
    """configs/sft_arith with a jsonl conversation dataset and a chat checkpoint's tokenizer."""
    import jax

    from configs import base, sft_arith
    from rl_lm import parallel
    from rl_lm.algos import sft

    tok_dir = str(chat_fixtures.save_chat_tokenizer(tmp_path / "tok", "chatml"))
    conv = [{"role": "user", "content": "1+2?"}, {"role": "assistant", "content": "3"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": conv, "answer": "3"}) + "\n")
    path.write_text(path.read_text() * 8)  # 8 rows: one per batch shard of the test mesh.
    jsonl.prepare_jsonl("conv", "sft", path, path, tmp_path, tokenizer=tok_dir, max_len=64)
    config = sft_arith.get_config("runlocal")
    config.model = base.model("tiny", max_seq_len=128)
    config.data.update(name="jsonl/conv", data_dir=str(tmp_path), max_len=64, max_prompt_len=64)
    config.data.batch_size = config.eval.batch_size = config.eval.num_examples = 8
    config.tokenizer = tok_dir
    trainer = sft.make_trainer(config, parallel.make_mesh(config.mesh))
    batch = next(trainer.batches(0))
    ids, mask = chat.chat_tokens(load_tokenizer(tok_dir), conv)
    np.testing.assert_array_equal(batch["loss_mask"][:, : len(ids)], [mask] * 8)
    assert batch["loss_mask"].sum() == 8 * 3  # "3", "<|im_end|>", "\n"
    state = trainer.init_state(jax.random.PRNGKey(0))
    state, metrics = trainer.step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert trainer.evaluate(state)["num_examples"] == 8
    config.tokenizer = "byte"
    with pytest.raises(ValueError, match="has no chat template"):
        sft.make_trainer(config, parallel.make_mesh(config.mesh))


def test_prepare_rejects_conversations_a_template_cannot_mask(tmp_path):
    """A template that is not prefix-stable fails at prepare time, naming the row."""
    tok_dir = chat_fixtures.save_chat_tokenizer(tmp_path / "tok", "tiny")
    (tok_dir / "chat_template.jinja").write_text("{{ messages[-1]['content'] }}")
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": conv}) + "\n")
    with pytest.raises(ValueError, match=r"c\.jsonl, line 1: the chat template is not prefix"):
        jsonl.prepare_jsonl("c", "sft", path, data_dir=tmp_path / "data", tokenizer=str(tok_dir))
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_grpo_trainer_on_a_prompt_dataset(tmp_path):
    """configs/grpo_arith with data.name a jsonl prompt dataset of chat messages: rollouts
    sample from the rendered prompts and are scored against the rows' answers."""
    import jax

    from configs import base, grpo_arith
    from rl_lm import parallel
    from rl_lm.algos import grpo

    tok_dir = str(chat_fixtures.save_chat_tokenizer(tmp_path / "tok", "chatml"))
    rows = [
        {"messages": [{"role": "user", "content": f"{i}+1?"}], "answer": f"{i + 1}"}
        for i in range(8)
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jsonl.prepare_jsonl(
        "math", "prompt", path, path, tmp_path, tokenizer=tok_dir, max_prompt_len=64
    )
    config = grpo_arith.get_config("runlocal")
    config.model = base.model("tiny", max_seq_len=80)
    config.data.update(name="jsonl/math", data_dir=str(tmp_path), max_prompt_len=64)
    config.eval.update(num_examples=8, batch_size=8)
    config.tokenizer = tok_dir
    trainer = grpo.make_trainer(config, parallel.make_mesh(config.mesh))
    batch = next(trainer.batches(0))
    tok = load_tokenizer(tok_dir)
    # decode, not decode_batch: a chat prompt holds EOS tokens (<|im_end|> ends each turn).
    prompts = [
        tok.decode(row[m == 1], skip_special=False)
        for row, m in zip(batch["prompt"], batch["prompt_mask"], strict=True)
    ]
    expected = {chat.render_prompt(tok, r["messages"]): r["answer"] for r in rows}
    assert dict(zip(prompts, batch["answer"], strict=True)) == {p: expected[p] for p in prompts}
    state = trainer.init_state(jax.random.PRNGKey(0))
    state, metrics = trainer.step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert trainer.evaluate(state)["num_examples"] == 8
