"""Nash learning from human feedback for language models: Nash-MP, Nash-MD, online IPO.

Trainers for `config.algo` in ("nash_mp", "nash_md", "online_ipo"); their
losses, and the tested gradient estimator of the sequence-level KL terms, are
in `rl_lm.algos.nash_loss`; the exact tabular algorithms (the ground truth)
in `rl_lm.algos.nash_tabular`. Preferences come from a `Preference`
(rl_lm.rewards.preference_model): the programmatic judge named by
nash.preference, or any judge passed to `make_trainer`.

Approximate Nash-MP (Tiapkin et al. 2025). The state holds the anchor
theta_k ("anchor_params"), the half step theta_{k+1/2} ("half_params"), the
frozen reference ("ref_params") and the parameters being optimized
("params"). One loop step is one iteration k:

  half step: params <- theta_k; M optimizer updates on the proximal loss
             against opponents y' ~ pi_k; then theta_{k+1/2} <- params;
  full step: params <- theta_k again (not theta_{k+1/2}); M updates against
             y' ~ pi_{k+1/2};
  anchor:    theta_{k+1} <- ema theta_k + (1 - ema) params, and params <- theta_{k+1}.

A half step draws nash.inner_rollouts fresh rollouts (N = B * G responses
of the current params, N opponents, N preference queries each) and spends
M / inner_rollouts updates on each; the loss weights reused rows by
pi_theta(y) / pi_old(y), which keeps its expected gradient exact
(inner_rollouts = M is the fully on-policy form: fresh samples every
update). An iteration asks 2 inner_rollouts N queries. Per-token
leave-one-out baselines over each prompt's G samples, computed at the
sampling policy, lower the variance. The optimizer state carries over between half steps
(a fresh Adam moves every weight by about lr whatever the gradient) unless
nash.reset_optimizer; with nash.inner_decay the learning rate follows a
cosine from 1 to 0 within every half step, so each proximal problem is
solved to its end rather than left oscillating at the step size.

Nash-MD (Munos et al. 2024): one update per loop step, opponents sampled
from the token-level geometric mixture of the policy and the reference with
weight eta * beta on the reference; N queries. Online IPO (Calandriello et
al. 2024): one update per loop step on the G/2 pairs of consecutive
self-play samples of each prompt; N/2 queries.

Every step reports "queries", the preference queries it made. On rps_pref
data, evaluation adds the class-level distance to pi*_beta (`nash_eval`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rl_lm import parallel, tasks
from rl_lm.algos import common, nash_eval, nash_loss, preference_eval, rollout
from rl_lm.data import load_source, prompt_batches
from rl_lm.models.tokenizer import check_vocab, load_tokenizer
from rl_lm.models.transformer import Params, init_params, partition_specs
from rl_lm.rewards import preference_model
from rl_lm.sampling.logprobs import response_logprobs
from rl_lm.sampling.sampler import make_sampler

_PARAM_KEYS = ("params", "ref_params", "anchor_params", "half_params")
ROW_KEYS = rollout.ROW_KEYS


class MirrorProx(NamedTuple):
    """The bookkeeping of one Nash-MP iteration, as pure functions of the state.

    Attributes:
      restart: params <- anchor (and a fresh optimizer state, if so built).
      keep_half: half_params <- params.
      advance: anchor <- ema anchor + (1 - ema) params; params <- anchor.
    """

    restart: Callable[[common.State], common.State]
    keep_half: Callable[[common.State], common.State]
    advance: Callable[[common.State], common.State]


def mirror_prox(
    optimizer: optax.GradientTransformation, anchor_ema: float = 0.0, reset_optimizer: bool = True
) -> MirrorProx:
    """The bookkeeping functions of Nash-MP (jit them with the state donated).

    Args:
      optimizer: the optimizer whose state `restart` re-initializes.
      anchor_ema: ema of `advance`; 0 makes theta_{k+1} the anchor.
      reset_optimizer: whether `restart` also starts a fresh optimizer state.
    """

    def restart(state):
        anchor = state["anchor_params"]
        if not reset_optimizer:
            return {**state, "params": anchor}
        return {**state, "params": anchor, "opt_state": optimizer.init(anchor)}

    def keep_half(state):
        return {**state, "half_params": state["params"]}

    def advance(state):
        mix = lambda a, p: (anchor_ema * a + (1.0 - anchor_ema) * p).astype(a.dtype)
        anchor = jax.tree.map(mix, state["anchor_params"], state["params"])
        return {**state, "anchor_params": anchor, "params": anchor}

    return MirrorProx(restart, keep_half, advance)


def mirror_prox_iteration(
    state: common.State,
    half_step: Callable[[common.State, str], tuple[common.State, dict[str, Any]]],
    books: MirrorProx,
) -> tuple[common.State, dict[str, Any]]:
    """One Nash-MP iteration: the half step against pi_k, the full step against pi_{k+1/2}.

    Args:
      state: the train state at theta_k.
      half_step: (state, opponent) -> (state, metrics): the M optimizer steps of
        a proximal step on samples of state["params"] against samples of
        state[opponent] ("anchor_params" or "half_params").
      books: `mirror_prox(...)`, jitted or not.

    Returns:
      (the state at theta_{k+1}, the full step's metrics plus the half step's
      as "half_<name>").
    """
    half = {}
    for opponent in ("anchor_params", "half_params"):
        state = books.restart(state)  # Both proximal steps start from theta_k.
        state, metrics = half_step(state, opponent)
        if opponent == "anchor_params":
            state, half = books.keep_half(state), metrics
    tokens = metrics.get("tokens", 0.0) + half.get("tokens", 0.0)
    metrics = {**metrics, **{f"half_{k}": v for k, v in half.items() if k != "tokens"}}
    return books.advance(state), {**metrics, "tokens": tokens}


class _Rollouts:
    """Sampling, judging and device placement shared by the three trainers."""

    def __init__(self, mesh, model_cfg, tokenizer, cfg, preference, num_samples):
        self.mesh, self.tokenizer, self.preference = mesh, tokenizer, preference
        self.num_samples = num_samples
        self.sampler = make_sampler(
            model_cfg,
            max_new_tokens=cfg.max_new_tokens,
            num_samples=num_samples,
            eos_ids=tuple(tokenizer.eos_ids),
            pad_id=tokenizer.pad_id,
        )
        chunk = cfg.logprob_chunk
        self.logprobs = jax.jit(
            lambda p, *rows: response_logprobs(p, model_cfg, *rows, chunk_size=chunk),
            out_shardings=parallel.batch_sharding(mesh),
        )

    def draw(self, params, prompts, key, mix_params=None, mix_coef=0.0) -> rollout.Rollout:
        """Samples of one global prompt batch (`rollout.collect`), from the mixture if mixing."""
        sample = lambda p, x, m, k: self.sampler(p, x, m, k, mix_params, mix_coef)
        args = dict(mesh=self.mesh, tokenizer=self.tokenizer, num_generations=self.num_samples)
        return rollout.collect(sample, params, prompts, key, **args)

    def host_prompts(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """The global prompt batch in a rollout's row layout: [N, P] ids and mask."""
        g = self.num_samples
        rep = lambda x: np.repeat(np.asarray(x, np.int32), g, axis=0)
        return rep(prompts["prompt"]), rep(prompts["prompt_mask"])

    def judge(self, prompt, prompt_mask, a, a_mask, b, b_mask) -> np.ndarray:
        """P(a > b | prompt) per row."""
        pairs = preference_model.Pairs(prompt, prompt_mask, a, a_mask, b, b_mask, self.tokenizer)
        pref = np.asarray(self.preference(pairs), np.float32)
        if pref.shape != (len(a),):
            raise ValueError(f"the preference returned shape {pref.shape}; expected ({len(a)},).")
        return pref

    def to_device(self, host: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global host rows -> this process's rows, sharded over the batch axes."""
        n = len(next(iter(host.values())))
        lo, hi = parallel.process_rows(self.mesh, n)
        return parallel.shard_batch({k: v[lo:hi] for k, v in host.items()}, self.mesh, n)

    def row_logprobs(self, params, arrays) -> jax.Array:
        return self.logprobs(params, *(arrays[k] for k in ROW_KEYS))


def make_trainer(
    config: Any,
    mesh: Mesh,
    init_from: Params | None = None,
    preference: preference_model.Preference | None = None,
) -> common.Trainer:
    """The Nash-MP, Nash-MD or online IPO trainer of `config` (see configs/nash_rps.py).

    Args:
      config: the experiment config: `algo`, and a `nash` section
        (`nash_loss.default_config()`).
      mesh: the device mesh.
      init_from: starting policy parameters (the SFT warm start), which are
        also the reference and the first anchor; None initializes from scratch.
      preference: the judge; None uses `programmatic(config.nash.preference)`.
    """
    algo, cfg, data = config.algo, config.nash, config.data
    nash_loss.validate(cfg, algo)
    model_cfg = common.model_config(config.model)
    tokenizer = load_tokenizer(config.tokenizer)
    check_vocab(tokenizer, model_cfg.vocab_size)
    b, g = data.batch_size, cfg.num_generations
    rows = b * g // 2 if algo == "online_ipo" else b * g
    common.check_batch_size(b, mesh, 1, "data.batch_size")
    common.check_batch_size(rows, mesh, cfg.num_microbatches, "rows per update")
    if data.max_prompt_len + cfg.max_new_tokens > model_cfg.max_seq_len:
        raise ValueError(
            f"data.max_prompt_len={data.max_prompt_len} + nash.max_new_tokens="
            f"{cfg.max_new_tokens} exceeds model.max_seq_len={model_cfg.max_seq_len}."
        )
    train_source = load_source(data.name, "train", data_dir=data.data_dir)
    test_source = load_source(data.name, "test", data_dir=data.data_dir)
    task = tasks.for_config(config)
    if preference is None:
        preference = preference_model.programmatic(cfg.preference)
    rollouts = _Rollouts(mesh, model_cfg, tokenizer, cfg, preference, g)

    m = cfg.num_inner_steps
    rollouts_per_step = 2 * cfg.inner_rollouts if algo == "nash_mp" else 1
    optimizer = _optimizer(config, algo)
    param_specs = partition_specs(model_cfg, config.rules)
    keys = _PARAM_KEYS if algo == "nash_mp" else _PARAM_KEYS[:2]

    def init_fn(rng):
        params = init_from if init_from is not None else init_params(model_cfg, rng)
        return common.new_state(params, optimizer, rng, **{k: params for k in keys[1:]})

    init_state, abstract_state, shardings = common.sharded_init(
        mesh, init_fn, lambda a: common.state_specs(a, param_specs, optimizer, keys)
    )
    frozen_keys = {"nash_mp": ("ref_params", "anchor_params"), "nash_md": ("ref_params",)}

    def update_fn(state, batch):
        # The exact KL estimator runs the frozen models inside the loss.
        frozen = {k: jax.lax.stop_gradient(state[k]) for k in frozen_keys.get(algo, ())}
        loss = functools.partial(
            nash_loss.LOSSES[algo], model_cfg=model_cfg, cfg=cfg, frozen=frozen
        )
        return common.make_update(loss, optimizer, cfg.num_microbatches)(state, batch)

    update = common.jit_step(update_fn, mesh, shardings)

    def update_key(state):
        return jax.random.fold_in(jax.random.key(config.seed), int(state["step"]))

    anchor_coef = 1.0 / cfg.eta if algo == "nash_mp" else 0.0
    baseline = jax.jit(
        lambda a: nash_loss.advantage_baseline(a, cfg, anchor_coef, g),
        out_shardings=parallel.batch_sharding(mesh),
    )

    def policy_rollout(state, prompts, opponent):
        """Samples of params against `opponent` (a state key, or "mixture"), judged, on device."""
        key = update_key(state)
        y = rollouts.draw(state["params"], prompts, jax.random.fold_in(key, 0))
        if opponent == "mixture":
            args = (state["params"], prompts, jax.random.fold_in(key, 1), state["ref_params"])
            y2 = rollouts.draw(*args, cfg.eta * cfg.beta)
        else:
            y2 = rollouts.draw(state[opponent], prompts, jax.random.fold_in(key, 1))
        prompt, prompt_mask = rollouts.host_prompts(prompts)
        pref = rollouts.judge(
            prompt, prompt_mask, y.host_response, y.host_mask, y2.host_response, y2.host_mask
        )
        arrays = {**y.rows(), **rollouts.to_device({"pref": pref})}
        for name, params_key in (("lp_ref", "ref_params"), ("lp_old", "params")):
            arrays[name] = rollouts.row_logprobs(state[params_key], arrays)
        if algo == "nash_mp":
            arrays["lp_anchor"] = rollouts.row_logprobs(state["anchor_params"], arrays)
        arrays["baseline"] = baseline(arrays)
        return arrays, float(y.host_mask.sum() + y2.host_mask.sum())

    def half_step(state, prompt_iter, opponent):
        """M updates against `opponent`, on inner_rollouts fresh rollouts."""
        tokens = 0.0
        for _ in range(cfg.inner_rollouts):
            arrays, n_tokens = policy_rollout(state, next(prompt_iter), opponent)
            tokens += n_tokens
            for _ in range(m // cfg.inner_rollouts):
                state, metrics = update(state, arrays)
        return state, {**metrics, "tokens": tokens}

    def ipo_update(state, prompts):
        y = rollouts.draw(state["params"], prompts, jax.random.fold_in(update_key(state), 0))
        # Rows b * G + g, prompt-major: pair the even and odd samples of each prompt.
        prompt, prompt_mask = rollouts.host_prompts(prompts)
        a_then_z = (x[i::2] for i in (0, 1) for x in (y.host_response, y.host_mask))
        pref = rollouts.judge(prompt[0::2], prompt_mask[0::2], *a_then_z)
        pair = lambda x, i: jax.device_put(x[i::2], parallel.batch_sharding(mesh))
        arrays = {
            "prompt": pair(y.prompt, 0),
            "prompt_mask": pair(y.prompt_mask, 0),
            **rollouts.to_device({"pref": pref}),
            **{side: pair(y.response, i) for i, side in enumerate("ab")},
            **{f"{side}_mask": pair(y.mask, i) for i, side in enumerate("ab")},
        }
        for side in ("a", "b"):
            both = {**arrays, "response": arrays[side], "mask": arrays[f"{side}_mask"]}
            lp = rollouts.row_logprobs(state["ref_params"], both)
            arrays[f"lp_ref_{side}"] = (lp * both["mask"]).sum(axis=1)
        state, metrics = update(state, arrays)
        return state, {**metrics, "tokens": float(y.host_mask.sum())}

    jit_books = lambda f: jax.jit(f, out_shardings=shardings, donate_argnums=0)
    books = mirror_prox(optimizer, cfg.anchor_ema, cfg.reset_optimizer)
    books = MirrorProx(*map(jit_books, books))

    def step(state, prompt_list):
        if algo == "nash_mp":
            prompts = iter(prompt_list)
            half = lambda s, opponent: half_step(s, prompts, opponent)
            state, metrics = mirror_prox_iteration(state, half, books)
        elif algo == "nash_md":
            arrays, tokens = policy_rollout(state, prompt_list[0], "mixture")
            state, metrics = update(state, arrays)
            metrics["tokens"] = tokens
        else:
            state, metrics = ipo_update(state, prompt_list[0])
        metrics["queries"] = float(rollouts_per_step * rows)
        return state, metrics

    def batches(start_step: int) -> Iterator[list[dict[str, np.ndarray]]]:
        stream = prompt_batches(
            train_source,
            tokenizer,
            batch_size=b,
            max_prompt_len=data.max_prompt_len,
            seed=config.seed,
            start_step=start_step * rollouts_per_step,
        )
        while True:
            yield [next(stream) for _ in range(rollouts_per_step)]

    evaluate = _make_evaluate(config, mesh, model_cfg, tokenizer, test_source, task)
    return common.Trainer(
        mesh=mesh,
        init_state=init_state,
        abstract_state=abstract_state,
        state_shardings=shardings,
        batches=batches,
        step=step,
        evaluate=evaluate,
    )


def _optimizer(config: Any, algo: str) -> optax.GradientTransformation:
    """config.optim's optimizer; for Nash-MP, with the schedule of its half steps.

    A restarted optimizer's schedule spans the M updates of a half step; with
    nash.inner_decay, updates are also scaled by a cosine from 1 to 0 over each
    half step's M updates (the count mod M: half steps are M updates each).
    """
    cfg, num_steps = config.nash, config.train.num_steps
    if algo != "nash_mp":
        return common.make_optimizer(config.optim, num_steps)
    m = cfg.num_inner_steps
    optimizer = common.make_optimizer(config.optim, m if cfg.reset_optimizer else 2 * m * num_steps)
    if not cfg.inner_decay:
        return optimizer
    cosine = lambda count: 0.5 * (1.0 + jnp.cos(jnp.pi * (count % m) / m))
    return optax.chain(optimizer, optax.scale_by_schedule(cosine))


def _make_evaluate(config, mesh, model_cfg, tokenizer, test_source, task):
    """Win rate over the reference and KL to it, and the task's class evaluation if it names one."""
    ev, data = config.eval, config.data
    sizes = dict(num_examples=ev.num_examples, batch_size=ev.batch_size, seed=ev.seed)
    sample_eval = preference_eval.make_sample_eval(
        mesh,
        model_cfg,
        tokenizer,
        test_source,
        task,
        max_prompt_len=data.max_prompt_len,
        max_new_tokens=config.nash.max_new_tokens,
        greedy=False,
        **sizes,
    )
    class_eval = None
    if tasks.RPS_CLASSES in task.evals:
        class_eval = nash_eval.make_class_eval(
            mesh, model_cfg, tokenizer, test_source, beta=config.nash.beta,
            max_prompt_len=data.max_prompt_len, **sizes,
        )  # fmt: skip

    def evaluate(state) -> dict[str, float]:
        out = {}
        if sample_eval is not None:
            out.update(sample_eval(state["params"], state["ref_params"]))
        if class_eval is not None:
            out.update(class_eval(state["params"], state["ref_params"]))
        return out

    return evaluate
