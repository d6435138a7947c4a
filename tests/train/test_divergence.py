"""Divergence checks: the step named, one step late for metrics, the state before a save."""

import jax.numpy as jnp
import numpy as np
import pytest

from rl_lm.train.divergence import Watch, all_finite, likely_causes
from rl_lm.train.report import RunError

OPTIM = dict(lr=1e9, grad_clip=0.0, warmup_steps=2)


def _watch(**optim):
    return Watch({**OPTIM, **optim}, saved=lambda: "the latest checkpoint, step 3, is untouched")


def test_a_non_finite_loss_stops_at_its_step_once_the_next_one_is_launched():
    watch = _watch()
    watch.push(4, {"loss": jnp.float32(2.0), "grad_norm": jnp.float32(1.0), "lr": 1e9})
    watch.push(5, {"loss": jnp.float32(np.nan), "grad_norm": jnp.float32(np.inf)})
    with pytest.raises(RunError) as e:
        watch.push(6, {"loss": jnp.float32(1.0)})
    assert str(e.value) == (
        "Training diverged at step 5: loss is nan and grad_norm is inf. Likely the learning "
        "rate is too high (optim.lr=1e+09), or gradients are not clipped (optim.grad_clip=0.0). "
        "Stopped before saving it: the latest checkpoint, step 3, is untouched."
    )


def test_flush_checks_the_last_step_now():
    watch = _watch()
    watch.push(7, {"grad_norm": jnp.float32(np.nan)})
    with pytest.raises(RunError, match="at step 7: grad_norm is nan"):
        watch.flush()
    watch.flush()  # Nothing pending any more.


def test_the_state_is_checked_before_a_save():
    state = {
        "params": {"w": jnp.ones((3, 2))},
        "step": jnp.int32(4),
        "rng": jnp.zeros(2, jnp.uint32),
    }
    watch = _watch()
    watch.push(4, {"loss": jnp.float32(1.0)})
    watch.check_state(4, state)  # Finite: no error.
    state["params"]["w"] = state["params"]["w"].at[1, 1].set(jnp.inf)
    with pytest.raises(RunError, match="at step 4: the train state holds non-finite values"):
        watch.check_state(4, state)


def test_all_finite_looks_at_floating_leaves_only():
    assert bool(all_finite({"a": jnp.ones(2), "n": jnp.arange(3)}))
    assert not bool(all_finite({"a": jnp.array([1.0, np.nan], jnp.bfloat16)}))
    assert bool(all_finite({"n": jnp.arange(3)}))


def test_likely_causes_follow_the_optim_section():
    assert likely_causes(dict(lr=1e-3, grad_clip=1.0, warmup_steps=100)) == (
        "the learning rate is too high (optim.lr=0.001)"
    )
    assert "the warmup is short (optim.warmup_steps=0)" in likely_causes(
        dict(lr=1e-3, grad_clip=1.0, warmup_steps=0)
    )
