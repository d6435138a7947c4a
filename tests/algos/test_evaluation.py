"""The held-out evaluation names a bad answer format before building anything."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm import parallel
from rl_lm.algos import evaluation
from rl_lm.models.tokenizer import ByteTokenizer


def test_unknown_answer_format_fails_before_the_sampler_is_built():
    with pytest.raises(ValueError, match="answer format 'strict'.*eval.answer"):
        evaluation.make_exact_match_eval(
            None,
            None,
            None,
            [],
            num_examples=1,
            batch_size=1,
            max_prompt_len=1,
            max_new_tokens=1,
            answer="strict",
        )


def _evaluate(monkeypatch, rows, num_examples, batch_size, budget=7):
    """Greedy eval with a sampler that returns `rows` (token lists) for every batch."""
    tokenizer = ByteTokenizer()
    tokens = np.full((len(rows), budget), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(rows), budget), np.int32)
    for i, ids in enumerate(rows):
        tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1

    def fake_make_sampler(*args, **kwargs):
        def sample(params, prompt, prompt_mask, rng):
            return SimpleNamespace(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask))

        return sample

    monkeypatch.setattr(evaluation, "make_sampler", fake_make_sampler)
    source = [{"prompt": f"q{i}", "answer": "7"} for i in range(num_examples)]
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    evaluate = evaluation.make_exact_match_eval(
        mesh,
        None,
        tokenizer,
        source,
        num_examples=num_examples,
        batch_size=batch_size,
        max_prompt_len=4,
        max_new_tokens=budget,
        answer="marked",
    )
    return evaluate(None)


def test_reports_length_and_the_budget_cut_fraction_of_greedy_responses(monkeypatch):
    tok = ByteTokenizer()
    eos = tok.eos_ids[0]
    # Four greedy responses in a 7-token budget: right and ended, wrong and
    # ended, right but cut by the budget (no EOS), and an immediate EOS.
    rows = [
        tok.encode("#### 7") + [eos],
        tok.encode("#### 8") + [eos],
        tok.encode("#### 7\n"),
        [eos],
    ]
    out = _evaluate(monkeypatch, rows, num_examples=4, batch_size=4)
    assert out["accuracy"] == pytest.approx(2 / 4)
    assert out["response_len"] == pytest.approx((7 + 7 + 7 + 1) / 4)
    assert out["cut"] == pytest.approx(1 / 4)


def test_rows_past_num_examples_are_not_counted(monkeypatch):
    tok = ByteTokenizer()
    # Two batches of 2 for 3 examples: the second batch's cut, wrong row is not one of them.
    rows = [tok.encode("#### 7") + [tok.eos_ids[0]], tok.encode("#### 8\n")]
    out = _evaluate(monkeypatch, rows, num_examples=3, batch_size=2)
    assert out["num_examples"] == 3
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["cut"] == pytest.approx(1 / 3)
    assert out["response_len"] == pytest.approx(7.0)
