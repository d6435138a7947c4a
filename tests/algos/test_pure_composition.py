"""PURE's composition of credit and baseline, against its released code's definition.

The reference below follows CJReinforce/PURE (`experience_maker.py`,
`process_experiences`, and `utils.turn_process_reward_logits_to_reward`),
written token by token as that pipeline runs: the credited step rewards on
the steps' last tokens, the leave-one-out baseline subtracted at each of
them, the verifiable reward at EOS, reverse cumulative sums, and advantage 0
on every step's last token.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.algos import process_advantages
from rl_lm.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def _advantages(scores, tokens, mask, outcome_adv, group_size, max_steps, **kw):
    fn = functools.partial(
        process_advantages.token_advantages,
        group_size=group_size,
        max_steps=max_steps,
        eos_id=TOK.eos_id,
        zero_step_ends=True,
        **kw,
    )
    adv, _ = jax.jit(fn)(jnp.asarray(scores), tokens, mask, jnp.asarray(outcome_adv))
    return np.asarray(adv)


def test_hand_computed_group_of_two(byte_responses):
    """Row A "a\\nb" + EOS, steps ["a\\n", "b" EOS] scored p = [1, 0] (r = [1, -1]);
    row B "c" + EOS, one step scored 1. Soft-min at T = 0.1 puts all weight on
    A's second step, so the credited totals are T_A = -1, T_B = 1.
    - "pure_step": b_A = T_B / 1 = 1, b_B = T_A / 2 = -0.5; A's returns
      [-1 - 2 b_A, -1 - b_A] = [-3, -2], B's [1 - b_B] = [1.5].
    - "pure_token": b_A = T_B / L_B = 1 / 2, b_B = T_A / L_A = -1 / 4; each step
      is charged its 2 tokens less one, so A's returns [-1 - 2 b_A, -1 - b_A] =
      [-2, -1.5] and B's [1 - b_B] = [1.25].
    The steps' last tokens ("\\n" and EOS) get 0."""
    tokens, mask = byte_responses(["a\nb", "c"], 6)
    scores = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    kw = dict(form="soft_min", temperature=0.1)
    step = _advantages(scores, tokens, mask, np.zeros(2), 2, 2, baseline="pure_step", **kw)
    np.testing.assert_allclose(step[0, :4], [-3, 0, -2, 0], atol=1e-6)
    np.testing.assert_allclose(step[1, :2], [1.5, 0], atol=1e-6)
    token = _advantages(scores, tokens, mask, np.zeros(2), 2, 2, baseline="pure_token", **kw)
    np.testing.assert_allclose(token[0, :4], [-2, 0, -1.5, 0], atol=1e-6)
    np.testing.assert_allclose(token[1, :2], [1.25, 0], atol=1e-6)
    assert np.all(step[:, 4:] == 0) and np.all(token[1, 2:] == 0)  # off the response


def _pure_reference(scores, tokens, mask, outcome, group_size, form, baseline, coef, temp):
    """PURE's pipeline on one batch, row by row and token by token."""
    n, t = tokens.shape
    ends, rewards = [], np.zeros((n, t))
    for i in range(n):
        last = int(np.nonzero(mask[i])[0].max())
        # A separator ends a step, the last token ends the final one (EOS after
        # a final separator joins its step, as rl_lm segments).
        e = [u for u in range(last) if tokens[i, u] == 10 and not (u + 1 == last)]
        e.append(last)
        ends.append(e)
        r = 2 * scores[i, : len(e)] - 1
        w = np.exp(-(r - r.min()) / temp) if form == "soft_min" else np.ones_like(r)
        w = w / w.sum() if form == "soft_min" else w
        rewards[i, e] = w * r
    totals = rewards.sum(1)
    lengths = mask.sum(1)
    for i in range(n):
        others = [
            j for j in range(i // group_size * group_size, (i // group_size + 1) * group_size)
        ]
        others.remove(i)
        if baseline == "pure_step":
            b = np.mean([totals[j] / len(ends[j]) for j in others])
            rewards[i, ends[i]] -= b
        else:
            b = sum(totals[j] for j in others) / sum(lengths[j] for j in others)
            starts = [-1] + ends[i][:-1]
            rewards[i, ends[i]] -= b * (np.array(ends[i]) - np.array(starts) - 1)
        loo = outcome[i] - np.mean([outcome[j] for j in others])
        rewards[i, ends[i][-1]] += coef * loo
    adv = np.flip(np.cumsum(np.flip(rewards * mask, 1), 1), 1) * mask
    for i in range(n):
        adv[i, ends[i]] = 0
    return adv


@pytest.mark.parametrize("form", ["soft_min", "sum"])
@pytest.mark.parametrize("baseline", ["pure_step", "pure_token"])
def test_matches_pure_pipeline(form, baseline, byte_responses):
    rng = np.random.default_rng(0)
    texts = ["1+1=2\n2*3=6\n#### 6", "ab\ncd", "x\ny\nz\nw", "q", "aa\nbbb\n", "m\nn", "k", "\n\nz"]
    tokens, mask = byte_responses(texts, 24)
    scores = rng.uniform(size=(8, 6)).astype(np.float32)
    outcome = rng.integers(0, 2, 8).astype(np.float32)
    loo = (
        outcome
        - (outcome.reshape(2, 4).sum(1, keepdims=True) - outcome.reshape(2, 4)).reshape(-1) / 3
    )
    got = _advantages(
        scores,
        tokens,
        mask,
        loo,
        4,
        6,
        form=form,
        baseline=baseline,
        temperature=0.1,
        outcome_weight=0.1,
    )
    want = _pure_reference(scores, tokens, mask, outcome, 4, form, baseline, 0.1, 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rl_lm_loo_is_another_composition(byte_responses):
    """baseline="loo" (raw step rewards baselined before the credit form) and
    PURE's differ: on the hand case, A's first step gets -2 vs -3."""
    tokens, mask = byte_responses(["a\nb", "c"], 6)
    scores = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    kw = dict(form="soft_min", temperature=0.1)
    loo = _advantages(scores, tokens, mask, np.zeros(2), 2, 2, baseline="loo", **kw)
    # loo: B's mean step reward 1 comes off A's steps, r = [0, -2]: soft-min
    # weights all on the second, so A's returns are [-2, -2]; B loses A's mean 0.
    np.testing.assert_allclose(loo[0, :4], [-2, 0, -2, 0], atol=1e-6)
    np.testing.assert_allclose(loo[1, :2], [1, 0], atol=1e-6)
