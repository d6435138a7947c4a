"""GRPO's loop on the device: its token-id exact match equals the host check on thousands
of responses (malformed ones too), and one seed through it gives the host loop's metrics
and parameters on the default experiment's GRPO stage, shrunk."""

import jax
import numpy as np
import pytest

from configs import grpo_arith
from rl_lm import parallel
from rl_lm.algos import common, grpo, grpo_device, sft
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.rewards import token_match, verifiable
from rl_lm.train import loop, report

TOK = ByteTokenizer()
DATA = "arithmetic/d1_n2_add_train200_test20_seed0"
PIECES = ["####", "\\boxed{", "}", "{", "12", "-0", "+3", "1,2", "3.0", "4.50", " ", "\n", "\t",
          ".", "-", "+", ",", "007", "-0.00", "x", "="]  # fmt: skip
ALPHABET = list(b"0123456789+-.,# \n\t\\boxed{}x=")


def _responses(n, t, answer="any", seed=0):
    """n responses of up to t ids as the sampler returns them (mask up to the first EOS),
    mixing answers, marked answers, pieces of the three answer forms, random ASCII and
    random ids (any byte, specials, ids past the bytes), some cut without an EOS, and
    their answers (half of them the host's extraction in format `answer`)."""
    rng = np.random.default_rng(seed)
    ids = np.full((n, t), TOK.pad_id, np.int32)
    mask = np.zeros((n, t), np.int32)
    for i in range(n):
        kind = i % 5
        if kind == 4:  # a marked answer between pieces
            pieces = rng.choice(PIECES, 2)
            row = list(f"{pieces[0]}#### {rng.integers(-20, 200)}{pieces[1]}".encode())
        elif kind == 0:
            row = list(rng.choice(ALPHABET, rng.integers(0, t + 1)))
        elif kind == 1:
            row = list("".join(rng.choice(PIECES, rng.integers(1, 6))).encode())
        elif kind == 2:
            row = list(str(rng.integers(-20, 200)).encode())
        else:  # 0..261: bytes, pad, bos, eos, and two ids the host decodes as U+FFFD
            row = list(rng.integers(0, 262, rng.integers(0, t + 1)))
        row = [int(x) for x in row[:t]]
        if len(row) < t and rng.random() < 0.8:
            row.append(TOK.eos_id)
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    texts = TOK.decode_batch(ids, mask)
    answers = [str(rng.choice(["12", "-3", "0", "3", "", "1.5", "+7", "1,2"])) for _ in texts]
    for i in range(0, n, 2):  # Half of them right where the response has an answer.
        answers[i] = verifiable.extract_answer(texts[i], answer) or answers[i]
    return ids, mask, texts, answers


def _device_match(ids, mask, answers, answer="any"):
    a, length = token_match.encode_answers(answers, ids.shape[1])
    fn = jax.jit(
        lambda *x: token_match.exact_match(
            *x, pad_id=TOK.pad_id, bos_id=TOK.bos_id, eos_ids=TOK.eos_ids, answer=answer
        )
    )
    return np.asarray(fn(ids, mask, a, length))


@pytest.mark.parametrize("answer", ["any", "marked"])
def test_device_exact_match_equals_the_host_check(answer):
    ids, mask, texts, answers = _responses(4000, 16, answer)
    host = verifiable.exact_match(texts, answers, answer)
    device = _device_match(ids, mask, answers, answer)
    ascii_rows = np.array([t.isascii() for t in texts])
    assert host.sum() > (1000 if answer == "any" else 100)  # Both outcomes are common.
    np.testing.assert_array_equal(device[ascii_rows], host[ascii_rows])
    # Non-ASCII text differs only where a Unicode digit or space is read as one (the
    # module docstring); in these 4000 rows that is one row or none.
    assert np.sum(device != host) <= 1


@pytest.mark.parametrize(
    "text,answer,want",
    [
        ("57", "57", 1.0),
        ("5 7", "57", 0.0),
        ("1.2.3", "3", 1.0),  # findall: "1.2", then "3"
        ("12,3.40", "123.40", 1.0),
        ("x-0.00", "0", 1.0),
        ("-+5", "5", 1.0),
        ("5.", "5", 1.0),
        ("#### 1,2 \n9", "12", 1.0),
        ("1 #### x", "1", 0.0),  # a marker wins, even with no answer after it
        ("\\boxed{ 7 }8", "7", 1.0),
        ("\\boxed{7{}8", "8", 1.0),
        ("", "", 0.0),
        ("３", "3", 0.0),  # fullwidth: no ASCII digit here; the host reads "３" != "3" too
    ],
)
def test_device_exact_match_cases(text, answer, want):
    ids = np.array([list(text.encode()) + [TOK.eos_id] + [TOK.pad_id] * 3], np.int32)
    mask = (ids != TOK.pad_id).astype(np.int32)
    assert verifiable.exact_match([text], [answer])[0] == want
    assert _device_match(ids, mask, [answer])[0] == want


def test_a_unicode_digit_is_where_the_two_checks_differ():
    text = "1٣"  # ARABIC-INDIC DIGIT THREE ends the host's number
    ids = np.array([list(text.encode()) + [TOK.eos_id]], np.int32)
    mask = np.ones_like(ids)
    assert verifiable.exact_match([text], ["1"])[0] == 0.0
    assert _device_match(ids, mask, ["1"])[0] == 1.0


def test_configs_it_cannot_run_fail_in_one_line(tmp_path):
    config = grpo_arith.get_config("runlocal,on_device")
    config.unlock()
    config.grpo.dynamic_sampling = True
    config.grpo.reward_source = "both"
    with pytest.raises(report.ConfigError) as e:
        loop.train(config, tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert "grpo.dynamic_sampling=True" in message and "grpo.reward_source='both'" in message
    assert not (tmp_path / "config.json").exists()


def _warm_start(config, steps=40):
    """Params of a short SFT run, so that GRPO's rewards (and gradients) are not all 0."""
    warm = config.warm_start
    warm.unlock()
    warm.train.num_steps = steps
    warm.optim.lr = 3e-3
    trainer = sft.make_trainer(warm, parallel.make_mesh(warm.mesh))
    state, batches = trainer.init_state(jax.random.PRNGKey(0)), trainer.batches(0)
    for _ in range(steps):
        state, _ = trainer.step(state, next(batches))
    return jax.device_get(state["params"])


@pytest.fixture(scope="module")
def shrunk_stage(tmp_path_factory):
    """The default GRPO stage shrunk (runlocal: tiny model, 8 prompts x 4), 4 steps,
    two minibatches (so the host's minibatch orders reach the device), from 40 SFT
    steps on one-digit sums (whose answers a barely trained model gets right at times)."""
    config = grpo_arith.get_config("runlocal")
    data_dir = str(tmp_path_factory.mktemp("data"))
    for section in (config, config.warm_start):
        section.unlock()
        section.data.update(name=DATA, data_dir=data_dir)
    init = _warm_start(config)
    config.train.num_steps = 4
    config.grpo.num_minibatches = 2
    return config, init


def _run(make_trainer, config, init, steps):
    mesh = parallel.make_mesh(config.mesh)
    trainer = make_trainer(config, mesh, init_from=init)
    state = trainer.init_state(jax.random.PRNGKey(config.seed))
    batches = trainer.batches(0)
    if make_trainer is grpo.make_trainer:
        rows = []
        for _ in range(steps):
            state, metrics = trainer.step(state, next(batches))
            rows.append(common.host_scalars(metrics))
    else:
        state, rows = trainer.run_chunk(state, [next(batches) for _ in range(steps)])
    return jax.device_get(state["params"]), rows


# float32 rounding: the device loop compiles sampling, log-probs and updates into one
# program, whose fusions round differently from the host loop's separate programs.
RTOL, ATOL = 1e-5, 1e-6


def test_one_seed_on_device_gives_the_host_loops_metrics_and_params(shrunk_stage):
    config, init = shrunk_stage
    host_params, host_rows = _run(grpo.make_trainer, config, init, 4)
    device_params, device_rows = _run(grpo_device.make_trainer, config, init, 4)
    assert sum(r["reward"] for r in host_rows) > 0 and host_rows[-1]["grad_norm"] > 0
    for host, device in zip(host_rows, device_rows, strict=True):
        names = {k for k in host if not k.startswith("time_")}
        assert names == {k for k in device if not k.startswith("time_")}
        for k in sorted(names):
            np.testing.assert_allclose(device[k], host[k], rtol=RTOL, atol=ATOL, err_msg=k)
    jax.tree.map(
        lambda d, h: np.testing.assert_allclose(d, h, rtol=RTOL, atol=ATOL),
        device_params,
        host_params,
    )
