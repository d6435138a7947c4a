"""experiments/prm_eval.py: the figures of a PRM on step labels, by hand."""

import numpy as np
import pytest

from experiments import prm_eval


def test_auc_counts_ties_half():
    assert prm_eval.auc(np.array([0.9, 0.5]), np.array([0.5, 0.1])) == pytest.approx(
        (1 + 1 + 0.5 + 1) / 4
    )
    assert np.isnan(prm_eval.auc(np.array([0.9]), np.array([])))


def test_step_metrics_by_hand():
    # Row 0: right, right, wrong, wrong; row 1: wrong (first slip), wrong, absent;
    # row 2: right only.
    labels = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    p = np.array([[0.9, 0.4, 0.2, 0.6], [0.7, 0.1, 0.99, 0.0], [0.8, 0.0, 0.0, 0.0]])
    got = prm_eval.step_metrics(p, mask, labels, positions=2)
    # Calls (p > 1/2): right steps 0.9 y, 0.4 n, 0.8 y; wrong steps 0.2 n, 0.6 y, 0.7 y, 0.1 n.
    assert got["steps"] == 7 and got["wrong_share"] == pytest.approx(4 / 7)
    assert got["accuracy"] == pytest.approx(4 / 7)
    assert got["accuracy_right"] == pytest.approx(2 / 3)
    assert got["accuracy_wrong"] == pytest.approx(2 / 4)
    assert got["first_wrong_recall"] == pytest.approx(1 / 2)  # 0.2 caught, 0.7 missed
    assert got["auc"] == pytest.approx(
        prm_eval.auc(np.array([0.9, 0.4, 0.8]), np.array([0.2, 0.6, 0.7, 0.1]))
    )
    assert got["auc_step1"] == pytest.approx(1.0)  # right 0.9, 0.8 over wrong 0.7
    assert got["auc_step2"] == pytest.approx(1.0)  # right 0.4 over wrong 0.1


def test_encode_responses_gives_back_eos_only_to_responses_that_ended():
    from rl_lm.models.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    tokens, mask = prm_eval.encode_responses(tok, ["12", "1234", "123"], 4)
    assert mask.sum(1).tolist() == [3, 4, 4]
    assert tokens[0, 2] == tok.eos_id and tokens[2, 3] == tok.eos_id
    assert tok.eos_id not in tokens[1]  # cut by the 4-token budget: no EOS
    # Bytes that were not UTF-8 decode to U+FFFD and re-encode longer: counted as cut.
    tokens, mask = prm_eval.encode_responses(tok, ["\ufffd\ufffd"], 4)
    assert mask.sum() == 4 and tok.eos_id not in tokens[0]
