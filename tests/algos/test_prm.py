"""Discriminative PRM: the step BCE by hand, where the head is read, host labels that match
the jitted step slots, and a trainer that runs on 8 simulated devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prm_chain
from rl_lm import parallel
from rl_lm.algos import prm
from rl_lm.data import load_source, sft_batches
from rl_lm.models.config import get_model_config
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.models.transformer import forward, init_params, scalar

CFG = get_model_config("tiny", lm_head=False, scalar_head=True, max_seq_len=64)
TOK = ByteTokenizer()
STEP_ARGS = dict(delimiter_ids=(10,), max_steps=4, eos_id=TOK.eos_id)


def test_bce_by_hand():
    z = jnp.array([[2.0, -1.0, 0.0, 5.0]])
    y = jnp.array([[1.0, 0.0, 1.0, 0.0]])
    m = jnp.array([[True, True, True, False]])  # the 4th step is absent: never read
    num, den = prm.bce_loss(z, y, m)
    expected = np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0)) + np.log(2.0)
    np.testing.assert_allclose(num, expected, rtol=1e-6)
    assert float(den) == 3.0
    num, _ = prm.bce_loss(jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 3), bool))
    np.testing.assert_allclose(num, 6 * np.log(2.0), rtol=1e-6)


def _batch(rows, max_len=48):
    tokens = np.full((len(rows), max_len), TOK.pad_id, np.int32)
    mask = np.zeros_like(tokens)
    for i, (p, r) in enumerate(rows):
        context = [TOK.bos_id] + TOK.encode(p)
        ids = context + TOK.encode(r, add_eos=True)
        tokens[i, : len(ids)], mask[i, len(context) : len(ids)] = ids, 1
    return {"tokens": tokens, "loss_mask": mask}


ROWS = [
    ("12 +5 *3 -7:", "12+5=17\n17*3=51\n51-7=44\n#### 44"),
    ("12 +5 *3 -7:", "12+5=17\n17*3=50\n50-7=43\n#### 43"),
    ("3 *2:", "3*2=6\n3*2=6\n#### 6"),
    ("3 *2:", ""),
]


def test_host_labels_and_the_head_read_at_step_ends():
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = prm.with_step_labels(_batch(ROWS), TOK, 4)
    np.testing.assert_array_equal(
        batch["step_labels"], [[1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(batch["step_mask"].sum(1), [4, 4, 3, 1])
    loss = jax.jit(functools.partial(prm.loss_fn, model_cfg=CFG, **STEP_ARGS))
    (num, den), metrics = loss(params, batch)
    assert float(metrics["label_mask_mismatch"][0]) == 0.0 and float(den) == 12.0
    # By hand: the head at the newline ending each step, and at EOS for the last step.
    tokens, m = batch["tokens"], batch["loss_mask"]
    real = np.arange(48)[None] <= np.array([np.nonzero(r)[0][-1] for r in m])[:, None]
    z = np.asarray(scalar(params, forward(params, tokens, CFG, mask_NxT=real)[0]))
    expected = 0.0
    for i in range(len(ROWS)):
        start = np.nonzero(m[i])[0][0]
        ends = [t for t in range(start, 48) if m[i, t] and tokens[i, t] == 10]
        eos = np.nonzero(m[i])[0][-1]
        ends = ends + [eos] if not ends or ends[-1] != eos - 1 else ends[:-1] + [eos]
        for s, t in enumerate(ends):
            y = batch["step_labels"][i, s]
            expected += np.logaddexp(0, -z[i, t]) if y else np.logaddexp(0, z[i, t])
    np.testing.assert_allclose(num, expected, rtol=1e-5)


def test_loss_sums_split_exactly_over_rows():
    params = init_params(CFG, jax.random.PRNGKey(1))
    batch = prm.with_step_labels(_batch(ROWS), TOK, 4)
    loss = jax.jit(functools.partial(prm.loss_fn, model_cfg=CFG, **STEP_ARGS))
    (num, den), _ = loss(params, batch)
    halves = [loss(params, {k: v[s] for k, v in batch.items()}) for s in (slice(0, 2), slice(2, 4))]
    np.testing.assert_allclose(num, sum(h[0][0] for h in halves), rtol=1e-6)
    assert float(den) == sum(float(h[0][1]) for h in halves)


def test_score_responses_matches_the_training_layout():
    params = init_params(CFG, jax.random.PRNGKey(2))
    prompt = TOK.encode("12 +5 *3 -7:", add_bos=True)
    response = TOK.encode(ROWS[1][1], add_eos=True)
    p = 16  # left-padded prompt, right-padded response
    prompt_BxP = np.full((1, p), TOK.pad_id, np.int32)
    prompt_BxP[0, p - len(prompt) :] = prompt
    response_NxR = np.full((2, 40), TOK.pad_id, np.int32)
    response_NxR[:, : len(response)] = response
    mask_NxR = (response_NxR != TOK.pad_id).astype(np.int32)
    probs, step_mask = jax.jit(functools.partial(prm.score_responses, cfg=CFG, **STEP_ARGS))(
        params,
        prompt_BxP=prompt_BxP,
        prompt_mask_BxP=(prompt_BxP != TOK.pad_id).astype(np.int32),
        response_NxR=response_NxR,
        response_mask_NxR=mask_NxR,
    )
    batch = _batch([ROWS[1]])
    z, _ = prm.step_logits(
        params, CFG, batch["tokens"], batch["tokens"] != TOK.pad_id, batch["loss_mask"], **STEP_ARGS
    )
    np.testing.assert_allclose(probs[0], jax.nn.sigmoid(z[0]), rtol=1e-4)
    np.testing.assert_array_equal(probs[0], probs[1])
    assert step_mask.sum() == 8


@pytest.fixture
def config(tmp_path):
    config = prm_chain.get_config("runlocal")
    config.unlock()
    config.data.data_dir = str(tmp_path / "data")
    config.train.num_steps = 2
    config.lock()
    return config


def test_trainer_runs_two_steps_on_eight_devices(config):
    mesh = parallel.make_mesh(config.mesh)
    assert mesh.devices.size == 8
    sft = init_params(
        get_model_config("cpu", **dict(dim=64, num_layers=2, mlp_dim=256, max_seq_len=64)),
        jax.random.PRNGKey(3),
    )
    trainer = prm.make_trainer(config, mesh, init_from=sft)
    state = trainer.init_state(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(state["params"]["embed"], sft["embed"])
    start = trainer.evaluate(state)
    batches = trainer.batches(0)
    for _ in range(2):
        state, metrics = trainer.step(state, next(batches))
    assert float(metrics["label_mask_mismatch"]) == 0.0
    assert 0 < float(metrics["label_mean"]) < 1 and np.isfinite(float(metrics["loss"]))
    end = trainer.evaluate(state)
    assert set(end) >= {"step_accuracy", "step_accuracy_pos", "step_accuracy_neg", "loss"}
    assert 0 <= end["step_accuracy"] <= 1 and end["num_steps"] == start["num_steps"] == 32 * 4
    assert int(state["step"]) == 2


def test_bad_delimiter_and_model_fail_early(config):
    mesh = parallel.make_mesh(config.mesh)
    config.unlock()
    config.prm.delimiter = "\n\n"
    with pytest.raises(ValueError, match="exactly one token"):
        prm.make_trainer(config, mesh)
    config.prm.delimiter = "\n"
    config.model.update(scalar_head=False, lm_head=True)
    with pytest.raises(ValueError, match="scalar_head"):
        prm.make_trainer(config, mesh)


def test_labels_of_the_prm_dataset_survive_the_pipeline(config):
    source = load_source(config.data.name, "test", data_dir=config.data.data_dir)
    batch = next(sft_batches(source, TOK, batch_size=32, max_len=64, seed=0))
    labelled = prm.with_step_labels(batch, TOK, 8)
    stored = sorted(source[i]["labels"].decode() for i in range(len(source)))
    got = sorted(
        "".join(str(int(x)) for x in row[m > 0])
        for row, m in zip(labelled["step_labels"], labelled["step_mask"], strict=True)
    )
    assert got == stored
