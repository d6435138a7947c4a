"""Multi-turn GRPO: observation tokens are seen, never scored; episodes through the trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo_tool_arith
from rl_lm.algos import episodes, grpo, grpo_loss
from rl_lm.envs.base import StepResult
from rl_lm.models import transformer as tf
from rl_lm.models.config import get_model_config
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.sampling.logprobs import response_logprobs

CFG = get_model_config("tiny")
TOK = ByteTokenizer()
BETA = 0.1


def _episode_batch():
    """Two hand-built episodes: [call][result][answer] and [call][result] (cut by the budget).

    The second row ends in an observation: nothing sampled follows it, so its ids
    only ever appear as targets (which must not be scored)."""
    prompt = [TOK.bos_id, *TOK.encode("12*34=")]
    turns = [
        [("<call>calculator(expression='12*34')</call>", 1), ("<result>408</result>", 0),
         ("#### 408", 1)],
        [("<call>calculator(expression='12*34')</call>", 1), ("<result>408</result>", 0)],
    ]  # fmt: skip
    r = max(sum(len(TOK.encode(t)) for t, _ in row) for row in turns) + 1
    response = np.full((2, r), TOK.pad_id, np.int32)
    mask, attn = np.zeros((2, r), np.int32), np.zeros((2, r), np.int32)
    for i, row in enumerate(turns):
        ids = [(j, s) for text, s in row for j in TOK.encode(text)]
        if i == 0:
            ids.append((TOK.eos_ids[0], 1))
        response[i, : len(ids)] = [j for j, _ in ids]
        mask[i, : len(ids)] = [s for _, s in ids]
        attn[i, : len(ids)] = 1
    return {
        "prompt": jnp.asarray([prompt, prompt], jnp.int32),
        "prompt_mask": jnp.ones((2, len(prompt)), jnp.int32),
        "response": jnp.asarray(response),
        "mask": jnp.asarray(mask),
        "attention_mask": jnp.asarray(attn),
        "adv": jnp.asarray([1.0, -0.5], jnp.float32),
    }


@pytest.fixture(scope="module")
def params():
    return tf.init_params(CFG, jax.random.key(0))


def _cfg():
    cfg = grpo_loss.default_config()
    cfg.update(max_new_tokens=64, beta=BETA, kl_placement="loss")
    return cfg


def _loss(params, batch):
    (num, den), _ = grpo_loss.loss_fn(params, batch, CFG, _cfg())
    return num / den


def test_two_turn_episode_loss_is_the_hand_computation(params):
    batch = _episode_batch()
    lp = response_logprobs(
        params, CFG, batch["prompt"], batch["prompt_mask"], batch["response"], batch["mask"],
        attention_mask_NxR=batch["attention_mask"],
    )  # fmt: skip
    batch["lp_ref"] = lp - 0.3 * batch["mask"]
    batch["lp_old"] = lp - 0.1 * batch["mask"]
    # Ratio r = exp(lp - lp_old) = exp(0.1), inside the clip range, so per token
    # -A * r + beta * k3 with k3 = exp(d) - d - 1, d = lp_ref - lp = -0.3;
    # seq-mean-token-mean: the mean over a row's sampled tokens, then over rows.
    m = np.asarray(batch["mask"], np.float64)
    d = -0.3
    per_token = -np.asarray(batch["adv"])[:, None] * np.exp(0.1) + BETA * (np.exp(d) - d - 1)
    expected = np.mean((per_token * m).sum(1) / m.sum(1))
    np.testing.assert_allclose(float(_loss(params, batch)), expected, rtol=1e-5)
    # The observation's ids are attended: without the attention mask the answer's
    # log-probs change (its context loses the result).
    lp_blind = response_logprobs(
        params, CFG, batch["prompt"], batch["prompt_mask"], batch["response"], batch["mask"]
    )
    assert float(jnp.max(jnp.abs(lp_blind - lp) * batch["mask"])) > 1e-4
    np.testing.assert_array_equal(np.asarray(lp)[np.asarray(batch["mask"]) == 0], 0.0)


def test_observation_tokens_receive_no_gradient(params):
    batch = _episode_batch()
    batch["lp_ref"] = jnp.zeros(batch["mask"].shape)
    obs = (batch["attention_mask"] == 1) & (batch["mask"] == 0)
    # Values at observation positions in any per-token input change nothing.
    noisy = dict(batch)
    rng = np.random.default_rng(0)
    noise = jnp.asarray(rng.normal(size=obs.shape), jnp.float32)
    noisy["lp_ref"] = jnp.where(obs, noise, batch["lp_ref"])
    noisy["lp_old"] = jnp.where(obs, noise, 0.0)
    base = dict(batch, lp_old=jnp.zeros(obs.shape))
    assert float(_loss(params, base)) == float(_loss(params, noisy))
    # Row 1 ends in an observation: its ids are targets only, so changing them changes
    # neither the loss nor its gradient.
    edited = dict(batch)
    last_obs = obs.at[0].set(False)
    edited["response"] = jnp.where(last_obs, (batch["response"] + 5) % 256, batch["response"])
    g1, g2 = (jax.grad(_loss)(params, b) for b in (batch, edited))
    assert float(_loss(params, batch)) == float(_loss(params, edited))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_env_config_is_validated():
    cfg = _cfg()
    cfg.env.update(name="tool", tools="calculator,abacus", max_turns=0)
    with pytest.raises(ValueError) as err:
        grpo_loss.validate(cfg)
    message = str(err.value)
    for part in ("grpo.env.name='tool'", "max_turns=0"):
        assert part in message
    cfg.env.name = "tools"
    with pytest.raises(ValueError, match="abacus"):
        grpo_loss.validate(cfg)


class ScriptedEnv:
    """Answers every row's first turn with a fixed observation, whatever it says; the
    second turn ends the episode."""

    stop_strings = ("</call>",)

    def reset(self, row):
        return row["prompt"], {"turns": 0}

    def step(self, state, text):
        turns = state["turns"] + 1
        if turns == 1:
            return StepResult("<result>4242</result>", False, {}, {"turns": turns})
        return StepResult(None, True, {"tool/calls": 1.0}, {"turns": turns})


def test_trainer_gives_every_log_prob_the_attention_mask(tmp_path, monkeypatch):
    """One GRPO step on scripted episodes (every row gets an observation) with a vanishing
    learning rate: the policy, old and reference log-probs are one function of one sequence
    only if each sees the observations, so the ratio is 1 and the KL 0 to float precision."""
    from rl_lm import parallel

    monkeypatch.setattr(episodes, "make_env", lambda cfg, data_name="": ScriptedEnv())
    config = grpo_tool_arith.get_config("runlocal")
    config.unlock()
    config.data.data_dir = str(tmp_path / "data")
    config.grpo.update(max_new_tokens=32, num_minibatches=2, beta=0.04, kl_placement="loss")
    config.grpo.env.max_turn_tokens = 6
    config.optim.lr = 1e-12
    mesh = parallel.make_mesh(config.mesh)
    trainer = grpo.make_trainer(config, mesh)
    state = trainer.init_state(jax.random.PRNGKey(0))
    state, metrics = trainer.step(state, next(trainer.batches(0)))
    assert metrics["tool/observation_tokens"] == len(TOK.encode("<result>4242</result>"))
    assert metrics["tool/calls"] == 1.0 and "time_tools" in metrics
    assert abs(metrics["ratio"] - 1.0) < 1e-6, metrics["ratio"]
    assert metrics["kl"] < 1e-10, metrics["kl"]


def test_episodes_feed_the_calculator_result_back():
    """A policy that always writes the call: the observation is the calculator's answer."""
    env = episodes.make_env(episodes.default_config())
    _, state = env.reset({"prompt": "12*34="})
    step = env.step(state, "<call>calculator(expression='12*34')</call>")
    assert step.observation == "<result>408</result>" and not step.done


def test_tool_efficiency_source_is_otc_hand_values():
    """One group of four: calls 1, 2, 1, 3; the third answer wrong, so n = 1, and
    r_tool = sin(f(m, 1) * pi / 2) with f(m, n) = 2nm / (m + n)."""
    from rl_lm.algos import reward_sources
    from rl_lm.algos.rollout import Rollout

    texts = ["#### 408", "#### 408", "#### 407", "#### 408"]
    r = Rollout(*[None] * 7, texts=texts, answers=["408"] * 4,
                episode={"tool/calls": np.asarray([1, 2, 1, 3], np.float32)})  # fmt: skip
    source = reward_sources.tool_efficiency(4, "marked")
    _, eff, metrics = source.score((), r, [""] * 4)
    expected = [1.0, np.sin(np.pi * 2 / 3), 0.0, np.sin(np.pi * 3 / 4)]
    np.testing.assert_allclose(eff, expected, rtol=1e-6)
    assert metrics["reward_tool_efficiency"] == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match="multi-turn"):
        source.score((), r._replace(episode=None), [""] * 4)


def test_chat_checkpoint_observations_are_the_templates_tool_turn(tmp_path, monkeypatch):
    """Hermes calls from a chat tokenizer: the ids appended after a call are the template's
    own tool turn (end of the assistant turn, the tool message, the next header)."""
    pytest.importorskip("transformers")
    from rl_lm.data import chat
    from rl_lm.models.tokenizer import load_tokenizer
    from tests import chat_fixtures

    tok = load_tokenizer(str(chat_fixtures.save_chat_tokenizer(tmp_path / "tok", "chatml")))
    assert chat.tool_turn(tok, ["408"]) == (
        "<|im_end|>\n<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n"
    )
    cfg = episodes.default_config()
    cfg.format = "hermes"
    env = episodes.make_env(cfg)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>'
    seen = {}

    def scripted(params, model_cfg, prompt, mask, key, on_turns, **kw):
        n = prompt.shape[0] * kw["num_samples"]
        rows = np.arange(n)
        seen["obs"] = on_turns(rows, [np.asarray(tok.encode(call))] * n, np.zeros(n, bool))
        on_turns(rows, [np.asarray(tok.encode("#### 408"))] * n, np.ones(n, bool))
        return None

    monkeypatch.setattr(episodes, "sample_multiturn", scripted)
    prompts = {"prompt": np.asarray([tok.encode("12*34=")]), "answer": np.asarray(["408"])}
    prompts["prompt_mask"] = np.ones_like(prompts["prompt"])
    ep = episodes.run_episodes(env, tok, None, None, prompts, None, num_generations=2,
                               max_tokens=32)  # fmt: skip
    for ids in seen["obs"]:
        assert tok.decode(ids, skip_special=False) == chat.tool_turn(tok, ["408"])
    np.testing.assert_array_equal(ep.terms["tool/calls"], [1.0, 1.0])
    np.testing.assert_array_equal(ep.terms["tool/call_errors"], [0.0, 0.0])


@pytest.mark.slow
def test_config_runs_from_a_chat_checkpoint_with_hermes_calls(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests import hf_fixtures
    from tests.launch_helpers import run_launch

    ckpt = hf_fixtures.make_checkpoint(tmp_path / "ckpt", "qwen2", max_position_embeddings=192)
    done = run_launch(
        "launch.train",
        "--config=configs/grpo_tool_arith.py:runlocal",
        f"--workdir={tmp_path / 'run'}",
        f"--config.init.hf_dir={ckpt}",
        "--config.grpo.env.format=hermes",
        data_dir=tmp_path / "data",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Finished step 2: held-out accuracy" in done.stdout
