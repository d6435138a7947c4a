"""Pairwise preference model: symmetry by construction, padding invariance, the two layouts
agree, BCE training separates a toy case; programmatic judges behind the same interface."""

import functools

import jax
import numpy as np
import optax
import pytest

from rl_lm.algos import common
from rl_lm.models.config import get_model_config
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.models.transformer import init_params
from rl_lm.rewards import preference_model, synthetic

CFG = get_model_config("tiny", lm_head=False, scalar_head=True, max_seq_len=64)
TOK = ByteTokenizer()


def _pairs(prompts, a, b, prompt_len=16, response_len=10):
    """Sampler-layout arrays: left-padded [BOS] + prompt, right-padded response + [EOS]."""
    prompt, prompt_mask = TOK.encode_batch(prompts, prompt_len, pad_side="left", add_bos=True)
    enc = lambda texts: TOK.encode_batch(texts, response_len, pad_side="right", add_eos=True)
    (ra, ma), (rb, mb) = enc(a), enc(b)
    return preference_model.Pairs(prompt, prompt_mask, ra, ma, rb, mb, TOK)


_pair_logit = jax.jit(functools.partial(preference_model.pair_logit, cfg=CFG))


def _logit(params, pairs, swap=False):
    a, am, b, bm = pairs.a, pairs.a_mask, pairs.b, pairs.b_mask
    if swap:
        a, am, b, bm = b, bm, a, am
    return _pair_logit(params, prompt_NxP=pairs.prompt, prompt_mask_NxP=pairs.prompt_mask,
                       a_NxR=a, a_mask_NxR=am, b_NxR=b, b_mask_NxR=bm)  # fmt: skip


PROMPTS = ["rps R 1.0 0001:", "rps S 0.5 0002:", "x", "rps P 1.0 0003:"]
A, B = ["Rock", "Shears", "ab", "Pulp"], ["Paper", "S", "abc", "Rubble"]


def test_preference_is_symmetric_by_construction():
    params = init_params(CFG, jax.random.PRNGKey(0))
    pairs = _pairs(PROMPTS, A, B)
    z, z_swapped = _logit(params, pairs), _logit(params, pairs, swap=True)
    np.testing.assert_array_equal(z, -z_swapped)  # exactly antisymmetric
    assert np.all(np.abs(z) > 0)  # an untrained model still has opinions
    p, q = jax.nn.sigmoid(z), jax.nn.sigmoid(z_swapped)
    np.testing.assert_allclose(p + q, 1.0, atol=1e-7)
    # Identical responses tie exactly.
    same = _pairs(PROMPTS, A, A)
    np.testing.assert_array_equal(_logit(params, same), 0.0)


def test_padding_does_not_change_the_preference():
    params = init_params(CFG, jax.random.PRNGKey(0))
    z = _logit(params, _pairs(PROMPTS, A, B))
    z_padded = _logit(params, _pairs(PROMPTS, A, B, prompt_len=21, response_len=13))
    np.testing.assert_allclose(z, z_padded, rtol=1e-4, atol=1e-5)


def _rows(prompts, chosen, rejected, max_len=32):
    """`preference_batches` rows: [BOS] + prompt + response + [EOS], right-padded."""
    out = {}
    for name, responses in (("chosen", chosen), ("rejected", rejected)):
        tokens = np.full((len(prompts), max_len), TOK.pad_id, np.int32)
        mask = np.zeros((len(prompts), max_len), np.int32)
        for i, (x, y) in enumerate(zip(prompts, responses, strict=True)):
            head, tail = TOK.encode(x, add_bos=True), TOK.encode(y, add_eos=True)
            tokens[i, : len(head) + len(tail)] = head + tail
            mask[i, len(head) : len(head) + len(tail)] = 1
        out[name], out[f"{name}_mask"] = tokens, mask
    return out


def test_row_layout_agrees_with_sampler_layout():
    params = init_params(CFG, jax.random.PRNGKey(0))
    z_rows = jax.jit(preference_model.row_pair_logit, static_argnums=2)(
        params, _rows(PROMPTS, A, B), CFG
    )
    np.testing.assert_allclose(z_rows, _logit(params, _pairs(PROMPTS, A, B)), rtol=1e-4, atol=1e-5)


def test_bce_training_separates_a_toy_preference():
    # Chosen responses start with an upper-case letter, rejected ones with a lower-case one.
    rng = np.random.default_rng(0)
    words = lambda upper, n: [
        chr((65 if upper else 97) + rng.integers(26)) + "xyz"[: rng.integers(4)] for _ in range(n)
    ]
    prompts = [f"q{i}" for i in range(32)]
    chosen, rejected = words(True, 32), words(False, 32)
    batch = _rows(prompts, chosen, rejected)
    loss = functools.partial(preference_model.loss_fn, model_cfg=CFG)
    optimizer = optax.adam(3e-3)
    update = jax.jit(common.make_update(loss, optimizer))
    state = common.new_state(init_params(CFG, jax.random.PRNGKey(0)), optimizer, jax.random.key(0))
    _, first = update(state, batch)
    np.testing.assert_allclose(first["loss"], np.log(2), atol=0.05)  # P ~ 1/2 untrained
    for _ in range(100):
        state, metrics = update(state, batch)
    assert float(metrics["loss"]) < 0.05 and float(metrics["accuracy"]) == 1.0
    # As a judge of sampler-layout pairs, either way round.
    judge = preference_model.from_model(state["params"], CFG)
    p = judge(_pairs(prompts[:4], rejected[:4], chosen[:4]))
    assert p.shape == (4,) and np.all(p < 0.05)


def test_programmatic_judges_behind_the_same_interface():
    pairs = _pairs(PROMPTS[:2] + PROMPTS[3:], ["Rock", "Snip", "Page"], ["Scissors", "Paper", "?"])
    p = preference_model.programmatic("intransitive")(pairs)
    np.testing.assert_array_equal(p, [1.0, 0.75, 1.0])  # R > S; S > P at s = 0.5; valid > invalid
    texts = pairs.texts()
    np.testing.assert_array_equal(p, synthetic.intransitive_preference(*texts))
    assert texts[0][0] == "rps R 1.0 0001:" and texts[1][0] == "Rock"
    wrapped = preference_model.from_text_fn(lambda x, a, b: np.full(len(a), 0.3))
    np.testing.assert_allclose(wrapped(pairs), 0.3)
    with pytest.raises(ValueError, match="intransitive"):
        preference_model.programmatic("rock")


def test_needs_a_scalar_head():
    cfg = get_model_config("tiny")
    params = init_params(cfg, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="scalar_head"):
        preference_model.row_pair_logit(params, _rows(PROMPTS, A, B), cfg)
