"""The shared rollout: `collect` samples one sharded batch and decodes it once; `take_rows`
(DAPO's refill) keeps chosen rows of several rollouts and pads with empty rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from rl_lm import parallel
from rl_lm.algos import rollout
from rl_lm.models.tokenizer import ByteTokenizer
from rl_lm.sampling.sampler import SampleOutput


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh(base.mesh())


def _fake_sampler(g, t):
    """Repeats each prompt G times and answers row i with the byte 'a' + i, then EOS."""
    tok = ByteTokenizer()

    def sample(params, prompt, prompt_mask, key):
        n = prompt.shape[0] * g
        tokens = np.full((n, t), tok.pad_id, np.int32)
        tokens[:, 0] = ord("a") + np.arange(n)
        tokens[:, 1] = tok.eos_ids[0]
        mask = (np.arange(t) < 2).astype(np.int32)[None].repeat(n, 0)
        rep = lambda x: np.repeat(np.asarray(x), g, axis=0)
        lp = -np.arange(n * t, dtype=np.float32).reshape(n, t) * mask
        out = (tokens, lp, mask, mask.sum(1), rep(prompt), rep(prompt_mask))
        return SampleOutput(*map(jnp.asarray, out))

    return tok, sample


def _collect(mesh, b=8, g=2, t=4, offset=0):
    tok, sampler = _fake_sampler(g, t)
    prompts = {
        "prompt": np.arange(b * 3, dtype=np.int32).reshape(b, 3) + offset,
        "prompt_mask": np.ones((b, 3), np.int32),
        "answer": np.asarray([str(i + offset) for i in range(b)], object),
    }
    key = jax.random.key(0)
    return rollout.collect(sampler, None, prompts, key, mesh=mesh, tokenizer=tok, num_generations=g)


def test_collect_is_sharded_and_decoded(mesh):
    r = _collect(mesh)
    assert r.response.shape == (16, 4) and r.prompt.shape == (16, 3)
    for x in r.rows().values():
        assert x.sharding.is_equivalent_to(parallel.batch_sharding(mesh), x.ndim)
    np.testing.assert_array_equal(np.asarray(r.response), r.host_response)
    assert r.texts == [chr(ord("a") + i) for i in range(16)]
    assert r.answers == [str(i // 2) for i in range(16)]


def test_take_rows_keeps_chosen_rows_and_pads_with_empty_ones(mesh):
    first, second = _collect(mesh), _collect(mesh, offset=100)
    rows = [np.array([2, 3]), np.array([0, 1, 6, 7])]
    merged = rollout.take_rows([first, second], rows, 16, mesh)
    assert merged.texts[:6] == ["c", "d", "a", "b", "g", "h"] and merged.texts[6:] == [""] * 10
    assert merged.answers[:6] == ["1", "1", "100", "100", "103", "103"]
    prompt = np.asarray(merged.prompt)
    np.testing.assert_array_equal(prompt[:2], np.asarray(first.prompt)[2:4])
    np.testing.assert_array_equal(prompt[2:6], np.asarray(second.prompt)[[0, 1, 6, 7]])
    assert not prompt[6:].any() and not np.asarray(merged.mask)[6:].any()
    assert not merged.host_mask[6:].any()
    lp_sample = np.asarray(merged.lp_sample)
    np.testing.assert_array_equal(lp_sample[:2], np.asarray(first.lp_sample)[2:4])
    assert merged.mask.sharding.is_equivalent_to(parallel.batch_sharding(mesh), 2)


def test_take_rows_cuts_to_n(mesh):
    first = _collect(mesh)
    merged = rollout.take_rows([first, first], [np.arange(16), np.arange(8)], 16, mesh)
    np.testing.assert_array_equal(merged.host_response, first.host_response)


def test_take_rows_keeps_episode_masks_and_metrics(mesh):
    """Multi-turn rollouts: the attention mask and the per-row episode metrics follow
    the kept rows; tool time adds up."""
    first, second = _collect(mesh), _collect(mesh, offset=100)
    rows_sharding = parallel.batch_sharding(mesh)

    def episodic(r, base):
        attn = jax.device_put(jnp.asarray(np.asarray(r.mask) * 0 + 1), rows_sharding)
        calls = np.arange(16, dtype=np.float32) + base
        return r._replace(attention_mask=attn, episode={"tool/calls": calls, "time_tools": 0.5})

    merged = rollout.take_rows(
        [episodic(first, 0), episodic(second, 100)], [np.array([2, 3]), np.array([5])], 16, mesh
    )
    np.testing.assert_array_equal(merged.episode["tool/calls"][:3], [2, 3, 105])
    assert not merged.episode["tool/calls"][3:].any() and merged.episode["time_tools"] == 1.0
    attn = np.asarray(merged.attention_mask)
    assert attn[:3].all() and not attn[3:].any()
    assert "attention_mask" in merged.rows() and "attention_mask" not in first.rows()
