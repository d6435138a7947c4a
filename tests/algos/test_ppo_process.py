"""PPO with process rewards: step-end rewards whose token return is the credit form's G_s,
GAE reading them back, validation, and a sharded trainer on the chain task."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ppo_chain
from rl_lm.algos import ppo, ppo_loss
from rl_lm.models.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
S, T = 4, 24

# Steps end at "\n" and at the last token (EOS joins the last step): 3, 2, 4 and 1 steps.
TEXTS = ["1+1=2\n2*3=6\n#### 6", "ab\ncd", "x\ny\nz\nw", "q"]
NUM_STEPS = np.array([3, 2, 4, 1])
SCORES = np.array(
    [[1.0, 0.0, 1.0, 0.0], [0.3, 0.9, 0.0, 0.0], [1.0, 1.0, 0.2, 0.7], [0.6, 0.0, 0.0, 0.0]],
    np.float32,
)
ABSENT = np.arange(S)[None] >= NUM_STEPS[:, None]


def _token_steps_np(tokens, mask):
    """Step index of every response token by a plain loop (-1 off the response)."""
    out = np.full(tokens.shape, -1)
    for i in range(len(tokens)):
        s, last = 0, np.nonzero(mask[i])[0].max()
        for t in range(last + 1):
            out[i, t] = s
            if tokens[i, t] == 10 and not (t + 1 == last and tokens[i, t + 1] == TOK.eos_id):
                s += 1
    return out


def _returns_np(form, gamma=1.0, temperature=0.1):
    """G_s of r = 2p - 1 per row, by hand."""
    out = []
    for i, k in enumerate(NUM_STEPS):
        r = 2.0 * SCORES[i, :k].astype(np.float64) - 1.0
        if form == "sum":
            out.append([sum(gamma ** (u - s) * r[u] for u in range(s, k)) for s in range(k)])
        elif form == "min":
            out.append([r[s:].min() for s in range(k)])
        else:
            w = np.exp(-(r - r.min()) / temperature)
            out.append([(w * r)[s:].sum() / w.sum() for s in range(k)])
    return out


def _rewards(tokens, mask, scores, form, **kw):
    kw = {"max_steps": S, "eos_id": TOK.eos_id, "form": form, **kw}
    fn = jax.jit(functools.partial(ppo_loss.process_token_rewards, **kw))
    return jax.tree.map(np.asarray, fn(jnp.asarray(scores), tokens, mask))


@pytest.mark.parametrize(
    "form, kw", [("sum", {}), ("sum", {"gamma": 0.8}), ("min", {}), ("soft_min", {})]
)
def test_token_return_of_the_step_end_rewards_is_the_credit_form_return(form, kw, byte_responses):
    tokens, mask = byte_responses(TEXTS, T)
    token_step = _token_steps_np(tokens, mask)
    # Absent step slots hold garbage (far below any score, or NaN): never read.
    dirty = SCORES.copy()
    dirty[ABSENT] = np.resize([-1e6, np.nan], ABSENT.sum())
    r, stats = _rewards(tokens, mask, dirty, form, **kw)
    assert np.isfinite(r).all()
    G = _returns_np(form, **kw)
    reverse_cumsum = np.flip(np.cumsum(np.flip(r, 1), 1), 1)
    for i in range(len(TEXTS)):
        on = token_step[i] >= 0
        np.testing.assert_allclose(
            reverse_cumsum[i][on], np.take(G[i], token_step[i][on]), rtol=1e-5, atol=1e-6
        )
        # Rewards sit on the step ends only; nothing after the response.
        assert np.count_nonzero(r[i]) <= NUM_STEPS[i]
        assert not r[i][~on].any()
    np.testing.assert_array_equal(stats["num_steps_N"], NUM_STEPS)
    np.testing.assert_allclose(stats["return_N"], [g[0] for g in G], rtol=1e-5)


def test_min_form_rewards_by_hand(byte_responses):
    # Row 2: r = 1, 1, -0.6, 0.4, G = -0.6, -0.6, -0.6, 0.4, r' = 0, 0, -1, 0.4.
    tokens, mask = byte_responses(TEXTS, T)
    r, _ = _rewards(tokens, mask, SCORES, "min")
    ends = [t for t in range(T) if mask[2, t] and (tokens[2, t] == 10 or t == mask[2].sum() - 1)]
    np.testing.assert_allclose(r[2, ends], [0.0, 0.0, -1.0, 0.4], atol=1e-6)


def _targets_cfg(**process):
    cfg = ppo_loss.default_config()
    cfg.update(gamma=1.0, lam=1.0, whiten_advantages=False)
    cfg.process.update({"source": "strict", "form": "min", **process})
    return cfg


@pytest.mark.parametrize("form", ["sum", "min", "soft_min"])
def test_gae_with_unit_lambda_and_zero_values_gives_step_returns(form, byte_responses):
    tokens, mask = byte_responses(TEXTS, T)
    token_step = _token_steps_np(tokens, mask)
    r, _ = _rewards(tokens, mask, SCORES, form)
    score = np.array([1.0, -0.5, 0.0, 2.0], np.float32)
    cfg = _targets_cfg(form=form, process_weight=2.0, outcome_weight=0.5)
    zeros = jnp.zeros((len(TEXTS), T))
    # beta = 0: the KL part is zero whatever the log-probs are.
    lp = jnp.asarray(np.random.default_rng(0).normal(size=(len(TEXTS), T)), jnp.float32)
    out, _ = ppo_loss.rollout_targets(score, lp, zeros, zeros, mask, 0.0, cfg, jnp.asarray(r))
    G = _returns_np(form)
    want = np.zeros((len(TEXTS), T))
    for i in range(len(TEXTS)):
        on = token_step[i] >= 0
        want[i][on] = 2.0 * np.take(G[i], token_step[i][on]) + 0.5 * score[i]
    np.testing.assert_allclose(out["adv"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["returns"], want, rtol=1e-5, atol=1e-5)
    # Zero process rewards at unit outcome weight are plain PPO.
    plain_cfg = _targets_cfg(outcome_weight=1.0)
    args = (score, lp, zeros, zeros, mask, 0.05, plain_cfg)
    plain, _ = ppo_loss.rollout_targets(*args)
    with_zero, _ = ppo_loss.rollout_targets(*args, jnp.zeros((len(TEXTS), T)))
    np.testing.assert_array_equal(plain["adv"], with_zero["adv"])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"baseline": "group_norm"}, "ppo.process.baseline='group_norm'.*baseline='none'"),
        ({"source": "prm"}, "ppo.process.prm_workdir"),
        ({"source": "prime"}, "ppo.process.source='prime' must be one of"),
        ({"form": "max"}, "ppo.process.form='max'"),
        ({"process_weight": -1.0}, "ppo.process.process_weight=-1.0 must be >= 0"),
        ({"gamma_ppo": 0.99}, "ppo.gamma=0.99 .*form='min'.*set ppo.gamma=1"),
        ({"gamma_ppo": 0.99, "form": "sum", "transform": "delta"}, "transform='delta'"),
    ],
)
def test_validate_names_the_field_and_the_fix(change, match):
    cfg = ppo_loss.default_config()
    cfg.gamma = change.pop("gamma_ppo", 1.0)
    cfg.process.update({"source": "strict", "form": "min", **change})
    with pytest.raises(ValueError, match=match):
        ppo_loss.validate(cfg)


def test_validate_accepts_plain_ppo_and_discounted_sum_form():
    cfg = ppo_loss.default_config()
    cfg.gamma = 0.99
    ppo_loss.validate(cfg)  # process off: nothing about it is checked
    cfg.process.update(source="strict", form="sum")
    ppo_loss.validate(cfg)  # r' = r, discounted per token like any PPO reward


@pytest.mark.parametrize(
    "form, source",
    [
        ("min", "strict"),
        pytest.param("sum", "strict", marks=pytest.mark.slow),
        pytest.param("soft_min", "prm", marks=pytest.mark.slow),
    ],
)
def test_two_trainer_steps_with_process_rewards_on_8_devices(
    tmp_path, random_prm, two_trainer_steps, form, source
):
    config = ppo_chain.get_config(f"runlocal,form={form},source={source!r}")
    config.unlock()
    config.data.data_dir = str(tmp_path / "data")
    config.ppo.process.prm_workdir = str(tmp_path)
    config.lock()
    random_prm(config.model)
    trainer, state, metrics, init = two_trainer_steps(ppo.make_trainer, config)
    updates = config.ppo.num_epochs * config.ppo.num_minibatches
    assert int(state["step"]) == 2 * updates
    for name in ("steps_per_response", "process_return", "loss", "vf_loss", "returns"):
        assert np.isfinite(metrics[name]), name
    assert 1 <= metrics["steps_per_response"] <= config.ppo.process.max_steps
    if source == "strict":
        # Random bytes never follow the chain: every step scores 0, r = -1.
        assert metrics["step_mismatch"] <= 0.25
        assert metrics["process_score_sum"] == 0
        want = -1.0 if form == "min" else -metrics["steps_per_response"]
        assert metrics["process_return"] == pytest.approx(want, rel=1e-5)
    else:  # An untrained PRM's sigmoid scores lie strictly inside (0, 1).
        assert 0 < metrics["process_score_min"] < 1
        assert "step_mismatch" not in metrics
    assert not np.array_equal(state["params"]["policy"]["embed"], init["embed"])
