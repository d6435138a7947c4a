"""Discriminative PRM: the step BCE by hand, where the head is read, host labels that match
the jitted step slots, and a trainer that runs on 8 simulated devices."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prm_chain
from rl_lm import parallel
from rl_lm.algos import prm, prm_runs
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


@pytest.mark.parametrize("head", ["scalar", "token"])
def test_score_responses_matches_the_training_layout(head):
    cfg = CFG if head == "scalar" else CFG.replace(lm_head=True, scalar_head=False)
    params = init_params(cfg, jax.random.PRNGKey(2))
    prompt = TOK.encode("12 +5 *3 -7:", add_bos=True)
    response = TOK.encode(ROWS[1][1], add_eos=True)
    p = 16  # left-padded prompt, right-padded response
    prompt_BxP = np.full((1, p), TOK.pad_id, np.int32)
    prompt_BxP[0, p - len(prompt) :] = prompt
    response_NxR = np.full((2, 40), TOK.pad_id, np.int32)
    response_NxR[:, : len(response)] = response
    mask_NxR = (response_NxR != TOK.pad_id).astype(np.int32)
    probs, step_mask = jax.jit(functools.partial(prm.score_responses, cfg=cfg, **STEP_ARGS))(
        params,
        prompt_BxP=prompt_BxP,
        prompt_mask_BxP=(prompt_BxP != TOK.pad_id).astype(np.int32),
        response_NxR=response_NxR,
        response_mask_NxR=mask_NxR,
    )
    batch = _batch([ROWS[1]])
    z, _ = prm.step_logits(
        params, cfg, batch["tokens"], batch["tokens"] != TOK.pad_id, batch["loss_mask"], **STEP_ARGS
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
    config.model.update(scalar_head=False, lm_head=False)
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


def test_load_prm_reads_the_prm_runs_own_shape(tmp_path):
    """A PRM wider and deeper than the policy loads from its run's config.json; a PRM
    over another vocabulary is refused by name."""
    import dataclasses
    import json

    from rl_lm.algos import common
    from rl_lm.train.checkpoint import Checkpointer

    policy = dict(dataclasses.asdict(get_model_config("tiny")), vocab_size=320, max_seq_len=96)
    bigger = dict(
        policy,
        dim=policy["dim"] * 2,
        num_layers=policy["num_layers"] + 1,
        max_seq_len=64,
        lm_head=False,
        scalar_head=True,
    )
    cfg = common.model_config(bigger)
    params = init_params(cfg, jax.random.PRNGKey(1))
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=1, async_save=False)
    ckpt.save(7, {"params": params, "step": np.int32(7)}, wait=True)
    (tmp_path / "config.json").write_text(json.dumps({"model": bigger}))

    loaded, prm_cfg = prm_runs.load_prm(str(tmp_path), policy)
    assert (prm_cfg.dim, prm_cfg.num_layers) == (bigger["dim"], bigger["num_layers"])
    assert prm_cfg.max_seq_len == 96  # long enough for the policy's rows
    assert prm_cfg.scalar_head and not prm_cfg.lm_head
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)

    with pytest.raises(ValueError, match="policy's tokenizer"):
        prm_runs.load_prm(str(tmp_path), dict(policy, vocab_size=512))


def test_token_labels_by_hand_and_at_step_ends():
    rows = ROWS + [
        ("3 *2:", "3*2=6\n#### 6\n#### 6"),  # right, then a restated answer
        ("3 *2:", "3*2=6\n#### 6\n"),  # a trailing newline is still right
        ("12 +5 *3 -7:", "12+6=18\n18*3=54"),  # the first step's result slips
    ]
    batch = prm.with_step_labels(_batch(rows), TOK, 4, dense=True)
    m = batch["loss_mask"] > 0
    np.testing.assert_array_equal(batch["token_mask"], m)
    assert not batch["token_labels"][~m].any()
    got = ["".join(str(int(y)) for y in batch["token_labels"][i][m[i]]) for i in range(len(rows))]
    # Bytes of the response, then EOS.
    assert got[0] == "1" * (len(rows[0][1]) + 1)
    assert got[1] == "1" * len("12+5=17\n17*3=5") + "0" * len("0\n50-7=43\n#### 43") + "0"
    assert got[2] == "1" * len("3*2=6\n") + "0" * len("3*2=6\n#### 6") + "0"
    assert got[3] == "0"  # an empty response: EOS only
    assert got[4] == "1" * len("3*2=6\n#### 6\n") + "0" * len("#### 6") + "0"
    assert got[5] == "1" * (len(rows[5][1]) + 1)
    assert got[6] == "1" * len("12+") + "0" * len("6=18\n18*3=54") + "0"
    # At each step's last token (its newline, or EOS for the last step) the dense
    # label is the strict step label.
    for i in range(len(rows)):
        at = np.flatnonzero(m[i])
        ends = [t for t in at if batch["tokens"][i, t] == 10 and t != at[-1] - 1] + [at[-1]]
        steps = int(batch["step_mask"][i].sum())
        np.testing.assert_array_equal(
            batch["token_labels"][i, ends[:steps]], batch["step_labels"][i, :steps], err_msg=rows[i]
        )


def test_token_weight_adds_the_dense_bce():
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = prm.with_step_labels(_batch(ROWS), TOK, 4, dense=True)
    (num0, den0), _ = prm.loss_fn(params, batch, CFG, **STEP_ARGS)
    (num, den), metrics = prm.loss_fn(params, batch, CFG, token_weight=0.5, **STEP_ARGS)
    tokens, m = batch["tokens"], batch["loss_mask"]
    real = np.arange(48)[None] <= np.array([np.nonzero(r)[0][-1] for r in m])[:, None]
    z = np.asarray(scalar(params, forward(params, tokens, CFG, mask_NxT=real)[0]))
    y, on = batch["token_labels"], m > 0
    dense = np.sum(np.where(on, y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z), 0))
    assert float(den) == float(den0) == 12.0
    np.testing.assert_allclose(num, num0 + 0.5 * dense, rtol=1e-5)
    right = ((z > 0) == (y > 0.5)) & on
    assert float(metrics["token_accuracy"][0]) == right.sum()
    assert float(metrics["token_accuracy"][1]) == on.sum()


def test_token_head_scores_steps_by_the_product_of_on_track_probabilities():
    """A token head (the LM head): sigmoid(q_t) = p(token t | before) is the chance
    token t stays on track; step s scores prod_{t <= end_s} p_t, the prefix's likelihood."""
    from rl_lm.models.transformer import logits

    cfg = CFG.replace(lm_head=True, scalar_head=False)
    params = init_params(cfg, jax.random.PRNGKey(2))
    batch = prm.with_step_labels(_batch(ROWS), TOK, 4, dense=True)
    tokens, m = batch["tokens"], batch["loss_mask"]
    real = prm._real_tokens(jnp.asarray(m))
    z, st = prm.step_logits(params, cfg, tokens, real, m, **STEP_ARGS)
    h, _ = forward(params, tokens, cfg, mask_NxT=real)
    log_p = np.asarray(jax.nn.log_softmax(logits(params, h, cfg), axis=-1))
    lg = log_p - np.log(-np.expm1(log_p))  # q = logit(p)
    expected = np.zeros((len(ROWS), 4))
    for i in range(len(ROWS)):
        at = np.flatnonzero(m[i])
        q = np.array([lg[i, t - 1, tokens[i, t]] for t in at])
        log_on = np.cumsum(-np.logaddexp(0, -q))  # log prod sigmoid(q) so far
        for s, end in enumerate(np.asarray(st.step_end_NxS[i])[: int(st.num_steps_N[i])]):
            log_p = log_on[list(at).index(end)]
            expected[i, s] = log_p - np.log(-np.expm1(log_p))
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)

    # The dense loss reads q_t up to and including the first off-track token only.
    (num0, den), _ = prm.loss_fn(params, batch, cfg, **STEP_ARGS)
    (num, _), metrics = prm.loss_fn(params, batch, cfg, token_weight=1.0, **STEP_ARGS)
    y = batch["token_labels"]
    dense, count = 0.0, 0
    for i in range(len(ROWS)):
        for t in np.flatnonzero(m[i]):
            q = lg[i, t - 1, tokens[i, t]]
            dense += np.logaddexp(0, -q) if y[i, t] else np.logaddexp(0, q)
            count += 1
            if not y[i, t]:
                break
    np.testing.assert_allclose(num - num0, dense, rtol=1e-4)
    assert float(metrics["token_accuracy"][1]) == count
