"""DPO family: losses by hand, the pi = ref point, invariances, the tabular optimum,
exact accumulation and sharding, precomputed vs online reference, the trainer."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import dpo_hh, dpo_synthetic
from rl_lm import parallel
from rl_lm.algos import common, dpo, dpo_loss
from rl_lm.data import load_source
from rl_lm.models.config import get_model_config
from rl_lm.models.hf import save_hf_checkpoint
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.models.transformer import init_params

CFG = get_model_config("tiny")
DATA = "sort_pref/pairs_train64_test16"
S1, S_1 = 0.31326168751822286, 1.3132616875182228  # -log sigmoid(1), -log sigmoid(-1)
S_HALF, SHALF = 0.9740769841801067, 0.4740769841801067  # -log sigmoid(-0.5), (0.5)


def _cfg(**overrides):
    cfg = dpo_loss.default_config()
    cfg.update(overrides)
    return cfg


# h = 2 (z = beta h = 1) and h = -1 (z = -0.5) at beta = 0.5, e = 0.1.
@pytest.mark.parametrize(
    "loss_type, e, expected",
    [
        ("sigmoid", 0.0, [S1, S_HALF]),
        ("cdpo", 0.1, [0.9 * S1 + 0.1 * S_1, 0.9 * S_HALF + 0.1 * SHALF]),
        ("robust", 0.1, [(0.9 * S1 - 0.1 * S_1) / 0.8, (0.9 * S_HALF - 0.1 * SHALF) / 0.8]),
        ("hinge", 0.0, [0.0, 1.5]),
        ("ipo", 0.0, [(2 - 1) ** 2, (-1 - 1) ** 2]),
    ],
)
def test_losses_by_hand(loss_type, e, expected):
    # lp - lp_ref: chosen +1, rejected -1 (h = 2); chosen -0.5, rejected +0.5 (h = -1).
    lp_w, ref_w = jnp.array([-3.0, -4.5]), jnp.array([-4.0, -4.0])
    lp_l, ref_l = jnp.array([-5.0, -3.5]), jnp.array([-4.0, -4.0])
    ratio_w, ratio_l = dpo_loss.logratios(lp_w, lp_l, ref_w, ref_l, 1.0, 1.0)
    loss = dpo_loss.preference_loss(ratio_w - ratio_l, loss_type, 0.5, e)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_length_average_divides_each_log_ratio_by_its_length():
    ratio_w, ratio_l = dpo_loss.logratios(
        jnp.array([-3.0]), jnp.array([-8.0]), jnp.array([-9.0]), jnp.array([-2.0]),
        jnp.array([3.0]), jnp.array([4.0]), length_average=True,
    )  # fmt: skip
    np.testing.assert_allclose([ratio_w[0], ratio_l[0]], [6 / 3, -6 / 4])
    # IPO on per-token ratios: (h - 1/(2 beta))^2 with h = 3.5, beta = 0.25.
    np.testing.assert_allclose(dpo_loss.preference_loss(ratio_w - ratio_l, "ipo", 0.25), [2.25])


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_at_reference_sigmoid_loss_is_log2_with_gradient_weight_half(beta):
    loss = lambda h: dpo_loss.preference_loss(h, "sigmoid", beta)[0]
    np.testing.assert_allclose(loss(jnp.zeros(1)), np.log(2), rtol=1e-7)
    np.testing.assert_allclose(jax.grad(loss)(jnp.zeros(1)), [-beta / 2], rtol=1e-7)


def _pairs(rng, b=8, t=12):
    """Pairs sharing a prompt of 1..4 tokens, responses of different lengths."""
    k1, k2 = jax.random.split(rng)
    chosen = np.array(jax.random.randint(k1, (b, t), 0, 259), np.int32)
    rejected = np.array(jax.random.randint(k2, (b, t), 0, 259), np.int32)
    cm, rm = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
    for i in range(b):
        p = 1 + i % 4
        rejected[i, :p] = chosen[i, :p]
        cm[i, p : t - i % 3] = 1
        rm[i, p : t - 1 - i % 5] = 1
    return {"chosen": chosen, "chosen_mask": cm, "rejected": rejected, "rejected_mask": rm}


def test_at_reference_model_loss_is_log2_and_gradient_is_half_the_log_ratio_gradient():
    beta = 0.3
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = _pairs(jax.random.PRNGKey(1))
    lp_w, lp_l, _, _ = jax.jit(dpo_loss.pair_logprobs, static_argnums=2)(params, batch, CFG)
    batch = {**batch, "ref_chosen": lp_w, "ref_rejected": lp_l}
    loss = jax.jit(functools.partial(dpo_loss.loss_fn, model_cfg=CFG, cfg=_cfg(beta=beta)))
    (num, den), metrics = loss(params, batch)
    np.testing.assert_allclose(num / den, np.log(2), rtol=1e-6)
    assert float(metrics["accuracy"][0]) == 0.0 and float(metrics["margin"][0]) == 0.0

    def h_sum(p):
        w, l, _, _ = dpo_loss.pair_logprobs(p, batch, CFG)
        return jnp.sum(w - l)

    grads = jax.jit(lambda p: (jax.grad(lambda q: loss(q, batch)[0][0])(p), jax.grad(h_sum)(p)))
    grad, grad_h = grads(params)
    expected = jax.tree.map(lambda g: -beta / 2 * g, grad_h)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad, expected
    )


@pytest.mark.parametrize("loss_type", dpo_loss.LOSS_TYPES)
def test_per_prompt_constant_in_log_pi_changes_nothing(loss_type):
    rng = np.random.default_rng(0)
    lp_w, lp_l, ref_w, ref_l = (jnp.asarray(rng.normal(size=6) - 5) for _ in range(4))
    c = jnp.asarray(rng.normal(size=6) * 10)  # one constant per prompt
    e = 0.2 if loss_type in ("cdpo", "robust") else 0.0

    def loss(w, l):
        ratio_w, ratio_l = dpo_loss.logratios(w, l, ref_w, ref_l, 1.0, 1.0)
        return dpo_loss.preference_loss(ratio_w - ratio_l, loss_type, 0.7, e)

    np.testing.assert_allclose(loss(lp_w + c, lp_l + c), loss(lp_w, lp_l), rtol=1e-5)
    assert not np.allclose(loss(lp_w + c, lp_l), loss(lp_w, lp_l))


def test_tabular_minimizer_is_reward_over_beta_plus_constant():
    """Softmax policy over K responses per prompt, every ordered pair weighted by its
    Bradley-Terry probability (infinite data): beta log(pi/ref) = r + c(x) at the optimum."""
    x, k, beta = 3, 5, 0.5
    rng = np.random.default_rng(0)
    r = jnp.asarray(rng.normal(size=(x, k)), jnp.float32)
    log_ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(x, k)), jnp.float32))
    p_win = jax.nn.sigmoid(r[:, :, None] - r[:, None, :])  # P(y > y')
    off_diag = 1.0 - jnp.eye(k)

    def population_loss(theta):
        ratio = jax.nn.log_softmax(theta) - log_ref  # [x, k]
        h = ratio[:, :, None] - ratio[:, None, :]  # y chosen over y'
        loss = dpo_loss.preference_loss(h, "sigmoid", beta)
        return jnp.sum(off_diag * p_win * loss) / (x * k * (k - 1))

    opt = optax.adam(0.05)

    def step(carry, _):
        theta, state = carry
        updates, state = opt.update(jax.grad(population_loss)(theta), state)
        return (optax.apply_updates(theta, updates), state), None

    theta = log_ref  # start at pi = ref
    (theta, _), _ = jax.lax.scan(step, (theta, opt.init(theta)), None, length=3000)
    implied = beta * (jax.nn.log_softmax(theta) - log_ref) - r
    np.testing.assert_allclose(implied - implied.mean(axis=1, keepdims=True), 0.0, atol=2e-3)
    # Far from the start: the policy really moved.
    assert float(jnp.abs(jax.nn.log_softmax(theta) - log_ref).max()) > 1.0


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = dpo_synthetic.get_config("runlocal")
    config.unlock()
    config.data.name = DATA
    config.data.data_dir = str(tmp_path_factory.mktemp("data"))
    config.dpo.ref_batch_size = 16
    config.lock()
    return config


def _run(config, shape, devices, steps=2, microbatches=1, **dpo_overrides):
    config = config.copy_and_resolve_references()
    config.mesh.update(dict(zip(parallel.AXES, shape, strict=True)))
    config.train.num_microbatches = microbatches
    config.dpo.update(dpo_overrides)
    mesh = parallel.make_mesh(config.mesh, devices=devices)
    init_from = init_params(CFG, jax.random.PRNGKey(7))
    trainer = dpo.make_trainer(config, mesh, init_from=init_from)
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches = trainer.batches(0)
    metrics = []
    for _ in range(steps):
        state, m = trainer.step(state, next(batches))
        metrics.append(common.host_scalars({k: v for k, v in m.items() if k != "tokens"}))
    return jax.device_get(state), metrics, trainer


@pytest.fixture(scope="module")
def single_device(config):
    return _run(config, (1, 1, 1), jax.devices()[:1])


def test_first_step_at_reference_has_loss_log2(single_device):
    _, metrics, _ = single_device
    np.testing.assert_allclose(metrics[0]["loss"], np.log(2), rtol=1e-5)
    assert metrics[1]["loss"] < metrics[0]["loss"]


def test_precomputed_table_is_reused_and_keyed_by_the_reference(config, single_device, monkeypatch):
    state, _, trainer = single_device
    cache = Path(config.data.data_dir) / "ref_logprobs"
    (path,) = cache.glob("*.npz")
    with np.load(path) as f:
        assert f["chosen"].shape == (64,) and f["digests"].shape == (64, 16)
    source = load_source(DATA, "train", data_dir=config.data.data_dir)

    def table(ref_params):
        return dpo.reference_table(
            ref_params, trainer.mesh, common.model_config(config.model), ByteTokenizer(), source,
            name=DATA, split="train",
            max_len=config.data.max_len, batch_size=16, chunk_size=128, cache_dir=cache,
        )  # fmt: skip

    def no_compute(*args):
        raise AssertionError("recomputed")

    monkeypatch.setattr(dpo, "_compute_table", no_compute)
    assert table(state["ref_params"]).path == path  # Loaded, not recomputed.
    changed = jax.tree.map(lambda x: x, state["ref_params"])
    changed["final_norm"] = changed["final_norm"] * 1.01
    with pytest.raises(AssertionError, match="recomputed"):
        table(changed)


def test_data_parallel_microbatched_online_step_equals_single_device_precomputed(
    config, single_device
):
    """8 data shards x 2 microbatches, reference computed in the step, vs one device,
    the whole batch at once, reference from the precomputed table."""
    ref_state, ref_metrics, _ = single_device
    state, metrics, _ = _run(config, (8, 1, 1), jax.devices(), microbatches=2, reference="online")
    for m, r in zip(metrics, ref_metrics, strict=True):
        for name in ("loss", "accuracy", "margin", "rewards_chosen", "grad_norm"):
            np.testing.assert_allclose(m[name], r[name], rtol=1e-4, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        state["params"],
        ref_state["params"],
    )


def test_evaluate_reports_pairs_win_rate_and_kl(config, single_device):
    state, _, trainer = single_device
    live = jax.device_put(state, trainer.state_shardings)
    out = trainer.evaluate(live)
    assert 0 <= out["pair_accuracy"] <= 1 and 0 <= out["win_rate"] <= 1
    assert {"reward", "ref_reward", "kl", "win_rate_greedy", "margin", "loss"} <= set(out)
    # At pi = ref the samples coincide: a win rate of exactly 1/2 and zero KL.
    at_ref = trainer.evaluate({**live, "params": live["ref_params"]})
    assert at_ref["win_rate"] == 0.5 and at_ref["win_rate_greedy"] == 0.5
    assert abs(at_ref["kl"]) < 1e-5 and at_ref["pair_accuracy"] == 0.0


def test_bad_config_fails_early():
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss.validate(_cfg(loss_type="sigmoid", label_smoothing=0.1))
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss.validate(_cfg(loss_type="kto"))
    with pytest.raises(ValueError, match="0.5"):
        dpo_loss.validate(_cfg(loss_type="robust", label_smoothing=0.5))
    assert isinstance(dpo_loss.default_config(), ml_collections.ConfigDict)


def test_hh_config_takes_the_model_from_the_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="checkpoint="):
        dpo_hh.get_config()
    tiny = CFG.replace(tie_embeddings=True, max_seq_len=1024)
    save_hf_checkpoint(init_params(tiny, jax.random.PRNGKey(0)), tiny, tmp_path / "sft")
    config = dpo_hh.get_config(f"checkpoint={tmp_path / 'sft'}")
    assert common.model_config(config.model) == tiny.replace(max_seq_len=512, remat="full")
    assert config.tokenizer == str(tmp_path / "sft") and config.init.hf_dir == config.tokenizer
    assert (config.dpo.beta, config.optim.lr, config.data.batch_size) == (0.1, 1e-6, 64)
