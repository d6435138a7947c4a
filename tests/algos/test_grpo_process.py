"""GRPO with process rewards: token advantages against a numpy reference, the [N] path of the
loss unchanged, padded steps never read, the padding hack of sum-form, and a sharded trainer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pure_chain
from rl_lm.algos import grpo, grpo_loss, process_advantages, process_rewards
from rl_lm.core import aggregation, losses
from rl_lm.models import transformer as tf
from rl_lm.models.config import get_model_config
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards import steps as step_checkers
from rl_lm.sampling.logprobs import response_logprobs

TOK = ByteTokenizer()
G, S, T = 2, 4, 24


# Four rows, two groups of two; steps end at "\n" and at the last token (EOS joins the last step).
TEXTS = ["1+1=2\n2*3=6\n#### 6", "ab\ncd", "x\ny\nz\nw", "q"]
SCORES = np.array(
    [[1.0, 0.0, 1.0, 0.0], [0.3, 0.9, 0.0, 0.0], [1.0, 1.0, 0.2, 0.7], [0.6, 0.0, 0.0, 0.0]],
    np.float32,
)
NUM_STEPS = [3, 2, 4, 1]


def _token_steps_np(tokens, mask):
    """Step index of every token by a plain loop (-1 off the response)."""
    out = np.full(tokens.shape, -1)
    for i in range(len(tokens)):
        s = 0
        last = np.nonzero(mask[i])[0].max()
        for t in range(last + 1):
            out[i, t] = s
            if tokens[i, t] == 10 and not (t + 1 == last and tokens[i, t + 1] == TOK.eos_id):
                s += 1
    return out


def _reference(scores, num_steps, tokens, mask, outcome, form, baseline, w, gamma=1.0):
    r = [2 * scores[i, : num_steps[i]] - 1 for i in range(len(scores))]
    if baseline == "group_norm":
        for g0 in range(0, len(r), G):
            flat = np.concatenate(r[g0 : g0 + G])
            mean, std = flat.mean(), flat.std(ddof=1)
            for i in range(g0, g0 + G):
                r[i] = (r[i] - mean) / (std + 1e-6)
    returns = []
    for ri in r:
        if form == "sum":
            returns.append(
                [sum(gamma ** (k - s) * ri[k] for k in range(s, len(ri))) for s in range(len(ri))]
            )
        else:
            returns.append([min(ri[s:]) for s in range(len(ri))])
    token_step = _token_steps_np(tokens, mask)
    adv = np.zeros(tokens.shape)
    for i in range(len(tokens)):
        for t in range(tokens.shape[1]):
            if mask[i, t]:
                adv[i, t] = returns[i][token_step[i, t]] + w * outcome[i]
    return adv


def _advantages(scores, tokens, mask, outcome, **kw):
    kw = {"group_size": G, "max_steps": S, "eos_id": TOK.eos_id, **kw}
    fn = jax.jit(functools.partial(process_advantages.token_advantages, **kw))
    return jax.tree.map(np.asarray, fn(jnp.asarray(scores), tokens, mask, jnp.asarray(outcome)))


@pytest.mark.parametrize("form", ["sum", "min"])
@pytest.mark.parametrize("baseline, w", [("none", 0.0), ("group_norm", 0.1)])
def test_token_advantages_match_numpy(form, baseline, w, byte_responses):
    tokens, mask = byte_responses(TEXTS, T)
    assert list(_token_steps_np(tokens, mask).max(1) + 1) == NUM_STEPS
    outcome = np.array([0.5, -0.5, 1.0, -1.0], np.float32)
    gamma = 0.9 if form == "sum" and baseline == "none" else 1.0
    adv, stats = _advantages(
        SCORES, tokens, mask, outcome, form=form, baseline=baseline, outcome_weight=w, gamma=gamma
    )
    want = _reference(SCORES, NUM_STEPS, tokens, mask, outcome, form, baseline, w, gamma)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats["num_steps_N"], NUM_STEPS)
    # The logged return is the first step's, before any baseline.
    r0 = [2 * SCORES[i, : NUM_STEPS[i]] - 1 for i in range(4)]
    first = [
        sum(gamma**k * x for k, x in enumerate(ri)) if form == "sum" else ri.min() for ri in r0
    ]
    np.testing.assert_allclose(stats["return_N"], first, rtol=1e-6)


@pytest.mark.parametrize("baseline", ["none", "group_norm", "loo"])
def test_padded_steps_are_never_read_by_min_form(baseline, byte_responses):
    tokens, mask = byte_responses(TEXTS, T)
    absent = np.arange(S)[None] >= np.array(NUM_STEPS)[:, None]
    clean = np.where(absent, 0, SCORES).astype(np.float32)
    dirty = clean.copy()
    dirty[absent] = np.resize([-1e6, np.nan], absent.sum())  # below any score, and garbage
    outcome = np.zeros(4, np.float32)
    a, _ = _advantages(clean, tokens, mask, outcome, form="min", baseline=baseline)
    b, _ = _advantages(dirty, tokens, mask, outcome, form="min", baseline=baseline)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(b).all()
    if baseline == "none":  # Row 1's steps score 0.3, 0.9: r = -0.4, 0.8; a zero slot would cap it.
        step1 = _token_steps_np(tokens, mask)[1] == 1
        np.testing.assert_allclose(a[1][step1], 0.8, rtol=1e-6)


def test_repeating_a_correct_step_pays_under_sum_form_only(byte_responses):
    prompt = "12 +5 *3 -7:"
    good = "12+5=17\n17*3=51\n51-7=44\n#### 44"
    padded = "12+5=17\n12+5=17\n1+1=2\n17*3=51\n51-7=44\n#### 44"
    texts = [good, padded]
    scores, _ = step_checkers.step_scores([prompt] * 2, texts, 8, checker="lenient")
    assert scores.sum(1).tolist() == [4, 6]  # the lenient "PRM" pays every padded step
    tokens, mask = byte_responses(texts, 64)
    kw = dict(group_size=2, max_steps=8, eos_id=TOK.eos_id, baseline="none")
    fn = lambda form: jax.jit(
        functools.partial(process_advantages.token_advantages, form=form, **kw)
    )(jnp.asarray(scores), tokens, mask, jnp.zeros(2))
    _, total = fn("sum")
    _, worst = fn("min")
    assert total["return_N"].tolist() == [4.0, 6.0]
    assert worst["return_N"].tolist() == [1.0, 1.0]


CFG = get_model_config("tiny")


def _loss_batch(adv):
    rng = np.random.default_rng(0)
    n, p, r = 8, 4, 5
    mask = (np.arange(r)[None] < rng.integers(1, r + 1, n)[:, None]).astype(np.int32)
    return {
        "prompt": jnp.asarray(rng.integers(0, 256, (n, p)), jnp.int32),
        "prompt_mask": jnp.ones((n, p), jnp.int32),
        "response": jnp.asarray(rng.integers(0, 256, (n, r)), jnp.int32),
        "mask": jnp.asarray(mask),
        "lp_old": jnp.asarray(rng.normal(size=(n, r)) * 0.1 - 5.5, jnp.float32),
        "adv": adv,
    }


@pytest.mark.parametrize("mode", aggregation.AGGREGATION_MODES)
def test_sequence_advantages_give_the_same_loss_as_before(mode):
    params = tf.init_params(CFG, jax.random.key(0))
    cfg = grpo_loss.default_config()
    cfg.update(max_new_tokens=5, beta=0.0, kl_placement="none", aggregation=mode)
    adv_N = jnp.asarray(np.random.default_rng(1).normal(size=8), jnp.float32)
    batch = _loss_batch(adv_N)

    def loss(p, b):
        (num, den), _ = grpo_loss.loss_fn(p, b, CFG, cfg)
        return num / den

    def before(p):  # The loss as written before token advantages existed.
        m = batch["mask"].astype(jnp.float32)
        lp = response_logprobs(
            p,
            CFG,
            *(batch[k] for k in ("prompt", "prompt_mask")),
            batch["response"],
            batch["mask"],
            chunk_size=cfg.logprob_chunk,
        )
        l, _ = losses.clipped_surrogate(lp, batch["lp_old"], adv_N[:, None], 0.2, 0.2, None, m=m)
        num = aggregation.aggregation_numerator(l, m, mode)
        return num / aggregation.aggregation_denominator(mode, m, 5)

    np.testing.assert_allclose(loss(params, batch), before(params), rtol=1e-6)
    token = {**batch, "adv": jnp.broadcast_to(adv_N[:, None], (8, 5))}
    np.testing.assert_allclose(loss(params, token), loss(params, batch), rtol=1e-6)
    ga, gb = jax.grad(loss)(params, batch), jax.grad(loss)(params, token)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match=r"\[N\] or \[N,T\]"):
        loss(params, {**batch, "adv": adv_N[:, None, None]})


@pytest.mark.parametrize("cut_step, want", [("as_written", [0, 0]), ("completed", [1, 0])])
def test_score_on_host_completes_only_steps_the_budget_cut(byte_responses, cut_step, want):
    # Row 0 runs into the 30-token budget inside its answer ("#### 4"); row 1 ends
    # on its own (EOS) after the same kind of partial line, a wrong step.
    tokens, mask = byte_responses(["12+5=17\n17*3=51\n51-7=44\n#### 44", "12+5=17\n17*3=5"], 30)
    assert mask[0].all() and TOK.eos_id not in tokens[0]
    host = {"response": tokens, "mask": mask}
    process = {
        "checker": "strict",
        "cut_step": cut_step,
        "step_args": {"max_steps": 8, "eos_id": TOK.eos_id},
    }
    texts = TOK.decode_batch(tokens, mask)
    process_rewards.score_on_host(process, host, ["12 +5 *3 -7:"], texts, group_size=2)
    last = [host["step_scores"][i, host["step_mask"][i].sum() - 1] for i in range(2)]
    assert last == want


def test_validate_names_the_process_field():
    cfg = grpo_loss.default_config()
    cfg.process.update(source="lenient", form="max")
    with pytest.raises(ValueError, match="grpo.process.form='max'"):
        grpo_loss.validate(cfg)
    cfg.process.update(form="min", source="prm")
    with pytest.raises(ValueError, match="prm_workdir"):
        grpo_loss.validate(cfg)
    cfg.process.update(source="strict", cut_step="finished")
    with pytest.raises(ValueError, match="grpo.process.cut_step='finished'"):
        grpo_loss.validate(cfg)
    cfg.process.update(source="prm", prm_workdir="runs/prm", cut_step="completed")
    with pytest.raises(ValueError, match="cut_step='completed' applies to the step checkers"):
        grpo_loss.validate(cfg)
    cfg.process.update(source="strict", cut_step="completed")
    cfg.dynamic_sampling = True
    with pytest.raises(ValueError, match="dynamic_sampling"):
        grpo_loss.validate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("form, source", [("min", "lenient"), ("sum", "prm")])
def test_two_trainer_steps_with_process_rewards_on_8_devices(
    tmp_path, random_prm, two_trainer_steps, form, source
):
    config = pure_chain.get_config(f"runlocal,form={form},outcome_weight=0.1")
    config.unlock()
    config.data.data_dir = str(tmp_path / "data")
    # Random bytes score 0 on every step: group-normalized they would all be 0 and leave
    # nothing to learn from, while r = 2p - 1 = -1 without a baseline pushes them down.
    config.grpo.process.update(baseline="none", source=source, prm_workdir=str(tmp_path))
    config.lock()
    random_prm(config.model)
    trainer, state, metrics, init = two_trainer_steps(grpo.make_trainer, config)
    assert int(state["step"]) == 2
    for name in ("steps_per_response", "process_return", "train_accuracy", "loss"):
        assert np.isfinite(metrics[name]), name
    assert 1 <= metrics["steps_per_response"] <= config.grpo.process.max_steps
    if source == "lenient":
        # Random bytes are lines that never look right: every step scores 0, r = -1.
        assert metrics["process_return"] == pytest.approx(-1.0)
        assert metrics["step_mismatch"] <= 0.25
    else:  # An untrained PRM's sigmoid scores lie strictly inside (0, 1).
        assert 0 < metrics["process_score_min"] < 1
        assert "step_mismatch" not in metrics
    assert not np.array_equal(state["params"]["embed"], init["embed"])
    assert trainer.evaluate(state)["num_examples"] == config.eval.num_examples  # exact match
