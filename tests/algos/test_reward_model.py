"""Bradley-Terry reward model: the loss by hand, where the reward is read, trunk
initialization, exact batch splitting, and a trainer that separates easy pairs."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rm_synthetic
from rl_lm import parallel
from rl_lm.algos import reward_model
from rl_lm.data import prepare_jsonl
from rl_lm.models.config import get_model_config
from rl_lm.models.transformer import forward, init_params, scalar

CFG = get_model_config("tiny", lm_head=False, scalar_head=True)
LM_CFG = get_model_config("tiny")


def test_loss_by_hand():
    r_w, r_l = jnp.array([2.0, 0.0]), jnp.array([1.0, 0.5])
    loss = reward_model.bradley_terry_loss(r_w, r_l, margin=0.5, center_coef=0.1)
    # -log sigmoid(0.5) + 0.1 * 3^2 and -log sigmoid(-1) + 0.1 * 0.5^2.
    np.testing.assert_allclose(loss, [0.4740769841801067 + 0.9, 1.3132616875182228 + 0.025])
    np.testing.assert_allclose(reward_model.bradley_terry_loss(r_w, r_w), np.log(2) * np.ones(2))


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def test_score_reads_the_last_real_token_wherever_the_padding_is(params):
    tokens = jnp.array([[1, 5, 9, 7, 3]])
    hidden, _ = forward(params, tokens, CFG)
    expected = scalar(params, hidden)[0, -1]
    right = jnp.array([[1, 5, 9, 7, 3, 0, 0]])
    left = jnp.array([[0, 0, 1, 5, 9, 7, 3]])
    mask_right = jnp.array([[1, 1, 1, 1, 1, 0, 0]])
    score = jax.jit(reward_model.score, static_argnums=1)
    np.testing.assert_allclose(score(params, CFG, right, mask_right), [expected], rtol=1e-5)
    np.testing.assert_allclose(score(params, CFG, left, mask_right[:, ::-1]), [expected], rtol=1e-5)
    # Sampler layout: left-padded prompt [1, 5], response [9, 7, 3] then padding; G = 2.
    prompt, prompt_mask = jnp.array([[0, 1, 5]]), jnp.array([[0, 1, 1]])
    response = jnp.array([[9, 7, 3, 0], [9, 7, 0, 0]])
    response_mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    r = reward_model.score_responses(params, CFG, prompt, prompt_mask, response, response_mask)
    shorter = scalar(params, hidden)[0, -2]  # the second sample ends at token 7
    np.testing.assert_allclose(r, [expected, shorter], rtol=1e-5)


def _pairs(b=8, t=10):
    rng = np.random.default_rng(0)
    chosen = rng.integers(0, 259, (b, t)).astype(np.int32)
    rejected = rng.integers(0, 259, (b, t)).astype(np.int32)
    cm, rm = np.zeros((b, t), np.int32), np.zeros((b, t), np.int32)
    for i in range(b):
        rejected[i, :3] = chosen[i, :3]
        cm[i, 3 : t - i % 3] = 1
        rm[i, 3 : t - i % 4] = 1
    return {"chosen": chosen, "chosen_mask": cm, "rejected": rejected, "rejected_mask": rm}


def test_loss_sums_split_exactly_over_rows(params):
    batch = _pairs()
    cfg = reward_model.default_config()
    cfg.center_coef = 0.1
    loss = jax.jit(functools.partial(reward_model.loss_fn, model_cfg=CFG, cfg=cfg))
    (num, den), metrics = loss(params, batch)
    halves = [loss(params, {k: v[s] for k, v in batch.items()}) for s in (slice(0, 4), slice(4, 8))]
    assert float(den) == 8.0
    np.testing.assert_allclose(num, sum(h[0][0] for h in halves), rtol=1e-6)
    np.testing.assert_allclose(den, sum(h[0][1] for h in halves))
    r_w, r_l = jax.jit(reward_model.pair_scores, static_argnums=2)(params, batch, CFG)
    expected = reward_model.bradley_terry_loss(r_w, r_l, 0.0, 0.1).sum()
    np.testing.assert_allclose(num, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"][0], np.sum(r_w > r_l))


def test_trunk_is_copied_and_head_is_fresh():
    sft = init_params(LM_CFG, jax.random.PRNGKey(3))
    rm = reward_model.init_from_trunk(sft, CFG, jax.random.PRNGKey(4))
    assert "lm_head" not in rm and set(rm["score"]) == {"w", "b"}
    for key in ("embed", "layers", "final_norm"):
        jax.tree.map(np.testing.assert_array_equal, rm[key], sft[key])
    with pytest.raises(ValueError, match="does not fit"):
        reward_model.init_from_trunk(sft, CFG.replace(dim=64, mlp_dim=64), jax.random.PRNGKey(4))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trainer_separates_easy_jsonl_pairs_from_an_sft_trunk(tmp_path):
    """Chosen answers say "yes", rejected ones "no": held-out accuracy reaches 100%."""
    rows = [{"prompt": f"q{i}?", "chosen": "yes", "rejected": "no"} for i in range(24)]
    prepare_jsonl(
        "yes_no",
        kind="preference",
        train=_write_jsonl(tmp_path / "train.jsonl", rows[:16]),
        test=_write_jsonl(tmp_path / "test.jsonl", rows[16:]),
        data_dir=tmp_path / "data",
    )
    config = rm_synthetic.get_config("runlocal")
    config.unlock()
    config.data.update(name="jsonl/yes_no", data_dir=str(tmp_path / "data"), batch_size=8)
    config.eval.update(num_examples=8, batch_size=8)
    config.optim.update(lr=3e-3, schedule="constant")
    config.train.num_steps = 25
    config.lock()
    mesh = parallel.make_mesh(config.mesh)
    sft = init_params(LM_CFG.replace(max_seq_len=32), jax.random.PRNGKey(3))
    trainer = reward_model.make_trainer(config, mesh, init_from=sft)
    state = trainer.init_state(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(state["params"]["embed"], sft["embed"])
    start = trainer.evaluate(state)
    batches = trainer.batches(0)
    for _ in range(config.train.num_steps):
        state, metrics = trainer.step(state, next(batches))
    end = trainer.evaluate(state)
    assert end["accuracy"] == 1.0 and end["loss"] < 0.1 < start["loss"]
    assert float(metrics["accuracy"]) == 1.0


def test_model_without_scalar_head_is_rejected(tmp_path):
    config = rm_synthetic.get_config("runlocal")
    config.unlock()
    config.model.scalar_head = False
    config.model.lm_head = True
    with pytest.raises(ValueError, match="scalar_head"):
        reward_model.make_trainer(config, parallel.make_mesh(config.mesh))
