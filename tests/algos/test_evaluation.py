"""The held-out evaluation names a bad answer format before building anything."""

import pytest

from rl_lm.algos import evaluation


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
