"""Nash learning for language models: the gradient estimator against exact enumeration,
the Mirror Prox bookkeeping, the class-level evaluation, and the three trainers."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import nash_rps
from rl_lm import parallel
from rl_lm.algos import common, nash, nash_eval, nash_loss, nash_tabular
from rl_lm.models.config import ModelConfig
from rl_lm.models.transformer import init_params
from rl_lm.sampling.logprobs import response_logprobs

# A vocabulary of 3 (token 2 is EOS) and responses of at most 3 tokens: 15 sequences.
ENUM_CFG = ModelConfig(
    vocab_size=3, dim=8, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=16,
    max_seq_len=8, init_std=1.0,
)  # fmt: skip
EOS = 2


def _all_sequences():
    seqs = set()
    for tokens in itertools.product(range(3), repeat=3):
        end = tokens.index(EOS) + 1 if EOS in tokens else 3
        seqs.add(tokens[:end])
    seqs = sorted(seqs)
    response = np.zeros((len(seqs), 3), np.int32)
    mask = np.zeros((len(seqs), 3), np.int32)
    for i, s in enumerate(seqs):
        response[i, : len(s)], mask[i, : len(s)] = s, 1
    n = len(seqs)
    return {"prompt": np.zeros((n, 1), np.int32), "prompt_mask": np.ones((n, 1), np.int32),
            "response": response, "mask": mask}  # fmt: skip


ROWS = _all_sequences()


def _seq_logprob(params):
    lp = response_logprobs(params, ENUM_CFG, *(ROWS[k] for k in nash.ROW_KEYS))
    return (lp * ROWS["mask"]).sum(axis=1)


_N = len(ROWS["mask"])
_A = np.random.default_rng(0).normal(size=(_N, _N))
PREF = 0.5 + 0.5 * np.tanh(_A - _A.T)  # P(y_i > y_j), antisymmetric around 1/2


def _literal_design_loss(p, batch, model_cfg, cfg, frozen=None):
    """The sampled-token Nash-MD form sum_t sg(lp_t - lp_ref_t) lp_t (no cost-to-go)."""
    lp = response_logprobs(p, model_cfg, *(batch[k] for k in nash.ROW_KEYS))
    w = jnp.exp((lp - batch["lp_old"]).sum(axis=1, keepdims=True))
    adv = cfg.beta * (lp - batch["lp_ref"]) - (batch["pref"] - 0.5)[:, None]
    return (jnp.sum(jax.lax.stop_gradient(w * adv) * batch["mask"] * lp), 1.0), {}


@functools.partial(jax.jit, static_argnames=("algo", "estimator", "literal"))
def _expected_and_exact_gradients(algo, estimator="exact", baseline=0.0, literal=False):
    """(E_{y ~ pi_theta} of the per-sequence loss gradient, exact gradient of beta L).

    The expectation is the sum over all 15 sequences of pi_theta(y) times the
    sequence's gradient. The loss weights each row by pi_theta(y) / pi_old(y)
    (without gradient), so rows with lp_old = 0 come weighted by pi_theta(y): the
    loss of the batch of all sequences is then the exact expectation.
    """
    theta, ref, anchor = (init_params(ENUM_CFG, jax.random.PRNGKey(i)) for i in range(3))
    cfg = nash_loss.default_config()
    cfg.update(beta=0.3, eta=0.7, kl_estimator=estimator)
    # The opponent: pi_k for Nash-MP, any fixed policy (here ref) for Nash-MD. The
    # loss is linear in P(y > y'), so the expectation over y' is P(y > opponent).
    opponent = anchor if algo == "nash_mp" else ref
    pref = jnp.asarray(PREF, jnp.float32) @ jnp.exp(_seq_logprob(opponent))
    frozen = {"ref_params": ref, "anchor_params": anchor}
    lp_of = lambda p: response_logprobs(p, ENUM_CFG, *(ROWS[k] for k in nash.ROW_KEYS))
    batch = {**ROWS, "pref": pref, "lp_ref": lp_of(ref), "lp_anchor": lp_of(anchor),
             "lp_old": jnp.zeros((_N, 3)), "baseline": jnp.full((_N, 3), baseline)}  # fmt: skip
    if literal:
        loss = _literal_design_loss
    else:
        loss = functools.partial(nash_loss.LOSSES[algo], frozen=frozen)
    expected = jax.grad(lambda p: loss(p, batch, ENUM_CFG, cfg)[0][0])(theta)
    anchor_coef = 1.0 / cfg.eta if algo == "nash_mp" else 0.0

    def objective(p):  # beta L(theta) of nash_loss, by enumeration
        lp = _seq_logprob(p)
        pi = jnp.exp(lp)
        kl = lambda q: jnp.sum(pi * (lp - _seq_logprob(q)))
        return -jnp.sum(pi * (pref - 0.5)) + cfg.beta * (kl(ref) + anchor_coef * kl(anchor))

    return expected, jax.grad(objective)(theta), jnp.exp(_seq_logprob(theta)).sum()


@pytest.mark.parametrize(
    "algo, estimator, baseline",
    [("nash_mp", "exact", 0.0), ("nash_mp", "exact", 0.37), ("nash_mp", "sampled", 0.37),
     ("nash_md", "exact", 0.0), ("nash_md", "sampled", 0.0)],
)  # fmt: skip
def test_expected_estimator_gradient_equals_exact_gradient(algo, estimator, baseline):
    expected, exact, total = _expected_and_exact_gradients(algo, estimator, baseline)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)  # every sequence enumerated
    for e, x in zip(jax.tree.leaves(expected), jax.tree.leaves(exact), strict=True):
        np.testing.assert_allclose(e, x, rtol=1e-4, atol=2e-5 * float(jnp.abs(x).max() + 1))


def test_token_level_kl_without_cost_to_go_is_biased():
    # The enumeration tells the literal form apart, so the test above can fail.
    biased, exact, _ = _expected_and_exact_gradients("nash_md", literal=True)
    leaves = zip(jax.tree.leaves(biased), jax.tree.leaves(exact), strict=True)
    assert max(float(jnp.abs(b - x).max()) for b, x in leaves) > 1e-2


def test_importance_weight_is_the_sequence_probability_ratio():
    params = init_params(ENUM_CFG, jax.random.PRNGKey(0))
    lp = response_logprobs(params, ENUM_CFG, *(ROWS[k] for k in nash.ROW_KEYS))
    batch = {**ROWS, "pref": jnp.full((_N,), 0.5), "lp_ref": lp, "lp_old": lp - 0.25 * ROWS["mask"],
             "baseline": jnp.zeros((_N, 3))}  # fmt: skip
    cfg = nash_loss.default_config()
    cfg.kl_estimator = "sampled"
    _, metrics = nash_loss.nash_md_loss(params, batch, ENUM_CFG, cfg)
    # w = exp(sum_t m_t (lp - lp_old)) = exp(0.25 * length) per row.
    expected = np.exp(0.25 * ROWS["mask"].sum(axis=1)).sum()
    np.testing.assert_allclose(metrics["weight"], (expected, _N), rtol=1e-5)


def test_leave_one_out_baseline_by_hand():
    b = nash_loss.leave_one_out_baseline(jnp.array([1.0, 2.0, 6.0, 0.0, 4.0, 8.0]), 3)
    np.testing.assert_allclose(b, [4.0, 3.5, 1.5, 6.0, 4.0, 2.0])
    per_token = nash_loss.leave_one_out_baseline(jnp.array([[1.0, 0.0], [3.0, 2.0]]), 2)
    np.testing.assert_allclose(per_token, [[3.0, 2.0], [1.0, 0.0]])
    np.testing.assert_array_equal(nash_loss.leave_one_out_baseline(jnp.ones(4), 1), 0.0)


def test_online_ipo_loss_is_the_label_averaged_ipo_loss():
    params = init_params(ENUM_CFG, jax.random.PRNGKey(0))
    a, b = ROWS["response"][[3, 9]], ROWS["response"][[5, 14]]
    am, bm = ROWS["mask"][[3, 9]], ROWS["mask"][[5, 14]]
    p2 = ROWS["prompt"][:2], ROWS["prompt_mask"][:2]
    seq = lambda r, m: (response_logprobs(params, ENUM_CFG, *p2, r, m) * m).sum(1)
    lp_a, lp_b = seq(a, am), seq(b, bm)
    batch = {
        "prompt": p2[0],
        "prompt_mask": p2[1],
        "a": a,
        "a_mask": am,
        "b": b,
        "b_mask": bm,  # fmt: skip
        "pref": jnp.array([0.8, 0.1]),
        "lp_ref_a": lp_a - 1,
        "lp_ref_b": lp_b + 0.5,
    }
    cfg = nash_loss.default_config()
    cfg.beta = 0.25  # 1 / (2 beta) = 2; h = 1.5 on both pairs
    (num, den), metrics = nash_loss.online_ipo_loss(params, batch, ENUM_CFG, cfg)
    expected = 0.8 * (1.5 - 2) ** 2 + 0.2 * (-1.5 - 2) ** 2 + 0.1 * 0.25 + 0.9 * 12.25
    np.testing.assert_allclose([num, den], [expected, 2.0], rtol=1e-5)
    np.testing.assert_allclose(metrics["h"][0], 3.0, rtol=1e-5)


def test_mirror_prox_bookkeeping_starts_both_steps_from_the_anchor():
    optimizer = optax.adam(1.0)
    theta_k = {"w": jnp.array(1.0)}
    state = common.new_state(theta_k, optimizer, jax.random.PRNGKey(0))
    state.update(anchor_params=theta_k, half_params={"w": jnp.array(-5.0)}, ref_params=theta_k)
    state["params"] = {"w": jnp.array(9.0)}  # stale: must be replaced by the anchor
    seen = []

    def half_step(state, opponent):  # each proximal step adds 10 (half) or 100 (full)
        seen.append((opponent, float(state["params"]["w"]), float(state[opponent]["w"])))
        assert int(state["opt_state"][0].count) == 0  # a fresh optimizer
        state = {**state, "opt_state": optimizer.update(state["params"], state["opt_state"])[1]}
        shift = 10.0 if opponent == "anchor_params" else 100.0
        return {**state, "params": {"w": state["params"]["w"] + shift}}, {"loss": shift}

    out, metrics = nash.mirror_prox_iteration(state, half_step, nash.mirror_prox(optimizer))
    # Half step from theta_k = 1 against pi_k; full step again from 1 against theta_1/2 = 11.
    assert seen == [("anchor_params", 1.0, 1.0), ("half_params", 1.0, 11.0)]
    assert float(out["half_params"]["w"]) == 11.0
    assert float(out["anchor_params"]["w"]) == float(out["params"]["w"]) == 101.0
    assert metrics["loss"] == 100.0 and metrics["half_loss"] == 10.0
    ema, _ = nash.mirror_prox_iteration(state, half_step, nash.mirror_prox(optimizer, 0.75))
    assert float(ema["anchor_params"]["w"]) == 0.75 * 1.0 + 0.25 * 101.0


def test_class_metrics_vanish_at_the_fixed_point():
    prompts = ["rps R 1.0 0001:", "rps P 0.5 0002:"]
    P = jnp.asarray(nash_eval.class_game(prompts))
    np.testing.assert_allclose(P + jnp.swapaxes(P, 1, 2), 1.0)
    assert float(P[0, 0, 1]) == 1.0 and float(P[1, 3, 2]) == 0.0  # R beats S; invalid loses
    ref = jnp.array([[0.6, 0.3, 0.09, 0.01], [0.1, 0.3, 0.59, 0.01]])
    pi_star = nash_tabular.nash_fixed_point(P, ref, 0.1)
    at_star = nash_eval.class_metrics(P, ref, 0.1, pi_star)
    np.testing.assert_allclose(at_star["nash_kl"], 0.0, atol=1e-6)
    np.testing.assert_allclose(at_star["exploitability"], 0.0, atol=1e-6)
    at_ref = nash_eval.class_metrics(P, ref, 0.1, ref)
    assert np.all(at_ref["nash_kl"] > 0.05) and np.all(at_ref["exploitability"] > 0.01)


def test_class_distribution_reads_the_first_token():
    from rl_lm.models.tokenizer import ByteTokenizer

    mask = nash_eval.class_token_mask(ByteTokenizer(), 320)
    assert mask.sum() == 3 and mask[0, ord("R")] and mask[1, ord("S")] and mask[2, ord("P")]
    logp = jnp.log(jnp.full((1, 320), 1e-9).at[0, ord("S")].set(0.5).at[0, 258].set(0.25)
                   .at[0, ord("P")].set(0.25))  # fmt: skip
    dist = nash_eval.class_distribution(logp, mask)
    np.testing.assert_allclose(dist, [[0.0, 0.5, 0.25, 0.25]], atol=1e-6)


def test_bad_config_fails_early():
    cases = [
        ("nash_mp", {"num_inner_steps": 3, "inner_rollouts": 2}, "inner_rollouts"),
        ("nash_md", {"eta": 20.0}, "eta \\* nash.beta"),
        ("online_ipo", {"num_generations": 3}, "even"),
        ("nash_xx", {}, "algo"),
        ("nash_mp", {"beta": 0.0}, "beta"),
    ]
    for algo, fields, message in cases:
        cfg = nash_loss.default_config()
        cfg.update(fields)
        with pytest.raises(ValueError, match=message):
            nash_loss.validate(cfg, algo)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _config(algo, data_dir, **nash_overrides):
    config = nash_rps.get_config(f"runlocal,algo={algo}")
    config.unlock()
    config.data.data_dir = data_dir
    config.nash.update(nash_overrides)
    config.lock()
    return config


def _first_letter_judge(pairs):
    """A token-level preference: the response whose first byte is larger wins."""
    return 0.5 + 0.5 * np.sign(pairs.a[:, 0].astype(np.float32) - pairs.b[:, 0])


@pytest.mark.parametrize("algo", nash_loss.ALGOS)
def test_runlocal_trainer_runs_two_steps(algo, data_dir):
    config = _config(algo, data_dir)
    mesh = parallel.make_mesh(config.mesh)
    init = init_params(common.model_config(config.model), jax.random.PRNGKey(1))
    trainer = nash.make_trainer(config, mesh, init_from=init, preference=_first_letter_judge)
    state, batches = trainer.init_state(jax.random.PRNGKey(0)), trainer.batches(0)
    for _ in range(2):
        state, metrics = trainer.step(state, next(batches))
        metrics = common.host_scalars(metrics)
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        assert metrics["queries"] == nash_rps.queries_per_step(config)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state["params"], init)
    assert max(jax.tree.leaves(moved)) > 0
    if algo == "nash_mp":  # The anchor is the iterate; the half step differs from it.
        assert jax.tree.all(jax.tree.map(jnp.array_equal, state["anchor_params"], state["params"]))


def test_half_step_without_preference_and_large_eta_moves_toward_ref(data_dir):
    config = _config(
        "nash_mp",
        data_dir,
        eta=1e6,
        num_inner_steps=4,
        inner_rollouts=4,
        num_generations=4,
        max_new_tokens=2,
    )
    config.unlock()
    config.optim.lr = 1e-2
    config.lock()
    model_cfg = common.model_config(config.model)
    mesh = parallel.make_mesh(config.mesh)
    start = init_params(model_cfg, jax.random.PRNGKey(1))
    # The reference differs in its output projection: a distance a few steps can close.
    noise = jax.random.normal(jax.random.PRNGKey(2), start["lm_head"].shape)
    ref = {**start, "lm_head": start["lm_head"] + 0.1 * noise}
    trainer = nash.make_trainer(
        config, mesh, init_from=start, preference=lambda pairs: np.full(len(pairs.a), 0.5)
    )
    state = trainer.init_state(jax.random.PRNGKey(0))
    # A copy: the step donates the state, and `ref` is still read below.
    ref_copy = jax.tree.map(jnp.copy, ref)
    state["ref_params"] = jax.device_put(ref_copy, trainer.state_shardings["ref_params"])
    prompts = next(trainer.batches(0))
    x, xm = prompts[0]["prompt"], prompts[0]["prompt_mask"]

    def first_token_kl(params):  # exact KL(pi || ref) of the first response token
        lp = nash_eval.first_token_logprobs(params, model_cfg, x, xm)
        lq = nash_eval.first_token_logprobs(ref, model_cfg, x, xm)
        return float(jnp.mean(jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)))

    before = first_token_kl(start)
    state, _ = trainer.step(state, prompts)
    assert first_token_kl(jax.device_get(state["half_params"])) < 0.8 * before
    assert first_token_kl(jax.device_get(state["params"])) < 0.8 * before
