"""Convergence to pi*_beta on intransitive preferences: Nash-MP vs Nash-MD, online IPO and DPO.

One SFT model (the reference) imitates rps_pref's reference policy; from it,
each method runs until the same budget of preference queries
(configs/nash_rps.py, `algo=...,budget=...`). After every step the policy's
class distribution on held-out prompts is compared with the class-level
pi*_beta of the game (rl_lm/algos/nash_eval.py: exact first-token class
probabilities, pi* from `nash_tabular.nash_fixed_point` on the SFT
reference): KL(pi* || pi) and the exploitability 2 beta KL(pi || best response)
against the number of queries. DPO learns from the Bradley-Terry reading of
rps_pref/pairs (reference draws, labels drawn from the same preference); its
population optimum is solved in closed form at the class level too (`dpo_limit`).

    python -m experiments.nash_convergence --output_dir=runs/nash_convergence

writes curves.json (every curve and the final figures) and convergence.png.
--budget (queries), --methods and --seed select the runs; the SFT model is
cached in OUTPUT_DIR/sft_params.npz and each finished method's curve in
OUTPUT_DIR/curve_METHOD.json, so a rerun after a failure only runs what is
missing (delete the files to start over).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags, logging

matplotlib.use("Agg")  # Files only.
import matplotlib.pyplot as plt  # noqa: E402

from configs import nash_rps  # noqa: E402
from rl_lm import parallel  # noqa: E402
from rl_lm.algos import common, dpo, nash, nash_eval, nash_tabular, sft  # noqa: E402
from rl_lm.data import load_source, prompt_batches  # noqa: E402
from rl_lm.models.tokenizer import load_tokenizer  # noqa: E402
from rl_lm.models.transformer import abstract_params  # noqa: E402
from rl_lm.rewards import synthetic  # noqa: E402

_OUT = flags.DEFINE_string("output_dir", "runs/nash_convergence", "Where results go.")
_BUDGET = flags.DEFINE_integer("budget", 16384, "Preference queries per method.")
_METHODS = flags.DEFINE_list("methods", list(nash_rps.ALGOS), "Methods to run.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every run.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset dir (default: $RL_LM_DATA_DIR).")

_TRAINERS = {"nash_mp": nash.make_trainer, "nash_md": nash.make_trainer}
_TRAINERS.update(online_ipo=nash.make_trainer, dpo=dpo.make_trainer)
_LABELS = {
    "nash_mp": "Nash-MP",
    "nash_md": "Nash-MD",
    "online_ipo": "online IPO",
    "dpo": "DPO (BT)",
}


def _config(method: str):
    config = nash_rps.get_config(f"algo={method},budget={_BUDGET.value}")
    config.unlock()
    config.seed = _SEED.value
    config.data.data_dir = _DATA_DIR.value
    config.warm_start.data.data_dir = _DATA_DIR.value
    config.lock()
    return config


def sft_params(config, mesh, path: Path):
    """The SFT warm start of `config`, trained once and cached at `path`."""
    target = abstract_params(common.model_config(config.model))
    if path.exists():
        with np.load(path) as f:
            leaves = [f[str(i)] for i in range(len(f.files))]
        return jax.tree.unflatten(jax.tree.structure(target), leaves)
    warm = config.warm_start
    trainer = sft.make_trainer(warm, mesh)
    state, batches = trainer.init_state(jax.random.PRNGKey(warm.seed)), trainer.batches(0)
    for step in range(1, warm.train.num_steps + 1):
        state, metrics = trainer.step(state, next(batches))
        if step % 250 == 0:
            logging.info("SFT step %d: loss %.4f", step, float(metrics["loss"]))
    params = jax.device_get(state["params"])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{str(i): x for i, x in enumerate(jax.tree.leaves(params))})
    return params


def dpo_limit(prompts, ref_Bx4, beta: float) -> jnp.ndarray:
    """Class distributions [B, 4] at the population optimum of DPO on rps_pref/pairs.

    Pairs are two reference draws of different classes, (i, j) with probability
    ref_i ref_j / (1 - ref_i) under the task's reference, labelled i > j with
    probability P_ij. With per-class log-ratios u = log(pi / ref) the DPO loss is
    sum_ij w_ij [-P_ij log sigmoid(beta (u_i - u_j)) - P_ji log sigmoid(beta (u_j - u_i))],
    minimized here by Newton's method; the invalid class has no data and keeps u = 0.
    """
    task_ref = jnp.asarray(synthetic.rps_reference(prompts), jnp.float32)
    P = jnp.asarray(synthetic.rps_preference_matrix(prompts))
    w = task_ref[:, :, None] * task_ref[:, None, :] / (1 - task_ref[:, :, None])
    w = w * (1 - jnp.eye(3))

    def loss(u_3, w_3x3, p_3x3):
        d = beta * (u_3[:, None] - u_3[None, :])
        return -jnp.sum(w_3x3 * p_3x3 * jax.nn.log_sigmoid(d)) + 1e-6 * jnp.sum(u_3**2)

    def solve(w_3x3, p_3x3):
        u = jnp.zeros(3)
        for _ in range(50):
            g = jax.grad(loss)(u, w_3x3, p_3x3)
            u = u - jnp.linalg.solve(jax.hessian(loss)(u, w_3x3, p_3x3), g)
        return u

    u_Bx3 = jax.jit(jax.vmap(solve))(w, P)
    u_Bx4 = jnp.concatenate([u_Bx3, jnp.zeros((len(prompts), 1))], axis=1)
    return jax.nn.softmax(jnp.log(ref_Bx4) + u_Bx4, axis=-1)


def run_method(method, config, mesh, init_from, class_eval, ref_params) -> dict[str, list]:
    """Runs one method to its budget, evaluating at the class level after every step."""
    trainer = _TRAINERS[method](config, mesh, init_from=init_from)
    state, batches = trainer.init_state(jax.random.PRNGKey(config.seed)), trainer.batches(0)
    per_step = nash_rps.queries_per_step(config)
    curve = {"queries": [0], "seconds": [0.0]}
    for k, v in class_eval(init_from, ref_params).items():
        curve[k] = [v]
    start = time.perf_counter()
    for step in range(1, config.train.num_steps + 1):
        state, _ = trainer.step(state, next(batches))
        curve["queries"].append(step * per_step)
        curve["seconds"].append(time.perf_counter() - start)
        for k, v in class_eval(state["params"], ref_params).items():
            curve[k].append(v)
    logging.info("%s: KL(pi*||pi) %.4g after %d queries, %.0f s", method,
                 curve["nash_kl"][-1], curve["queries"][-1], curve["seconds"][-1])  # fmt: skip
    return curve


def summary(curve: dict[str, list]) -> dict[str, float]:
    """The last point of a curve, and the mean over its last quarter of queries (noise-robust)."""
    out = {k: curve[k][-1] for k in ("queries", "nash_kl", "exploitability", "invalid", "seconds")}
    q = np.asarray(curve["queries"])
    tail = q >= 0.75 * q[-1]
    for k in ("nash_kl", "exploitability"):
        out[f"{k}_last_quarter"] = float(np.mean(np.asarray(curve[k])[tail]))
    return out


def plot(curves: dict, limits: dict, path: Path, beta: float) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in zip(
        axes, ("nash_kl", "exploitability"), ("KL(pi* || pi)", "exploitability"), strict=True
    ):
        for method, curve in curves.items():
            ax.plot(curve["queries"], curve[key], label=_LABELS[method])
        if "dpo" in curves:
            ax.axhline(limits[f"dpo_{key}"], color="gray", ls="--", label="DPO optimum (exact)")
        ax.set_yscale("log")
        ax.set_xlabel("preference queries")
        ax.set_title(f"{title}, class level, beta={beta}")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    configs = {m: _config(m) for m in _METHODS.value}
    first = next(iter(configs.values()))
    mesh = parallel.make_mesh(first.mesh)
    init_from = sft_params(first, mesh, out / "sft_params.npz")
    ref_params = jax.device_put(init_from)
    tokenizer = load_tokenizer(first.tokenizer)
    model_cfg = common.model_config(first.model)
    test = load_source("rps_pref/sft", "test", data_dir=_DATA_DIR.value)
    beta, ev = nash_rps.BETA, first.eval
    sizes = dict(num_examples=ev.num_examples, batch_size=ev.batch_size, seed=ev.seed)
    class_eval = nash_eval.make_class_eval(
        mesh, model_cfg, tokenizer, test, beta=beta, max_prompt_len=16, **sizes
    )
    curves = {}
    for m, c in configs.items():  # Each method's curve is kept as soon as it is done.
        cached = out / f"curve_{m}.json"
        key = {"budget": _BUDGET.value, "seed": _SEED.value}
        if cached.exists() and json.loads(cached.read_text())["key"] == key:
            curves[m] = json.loads(cached.read_text())["curve"]
            logging.info("%s: reusing %s", m, cached)
            continue
        curves[m] = run_method(m, c, mesh, init_from, class_eval, ref_params)
        cached.write_text(json.dumps({"key": key, "curve": curves[m]}) + "\n")

    # Exact class-level references on the same prompts.
    batch = next(
        prompt_batches(test, tokenizer, batch_size=ev.num_examples, max_prompt_len=16, seed=ev.seed)
    )
    prompts = tokenizer.decode_batch(batch["prompt"], batch["prompt_mask"])
    P = jnp.asarray(nash_eval.class_game(prompts))
    ref = nash_eval.class_distribution(
        nash_eval.first_token_logprobs(init_from, model_cfg, batch["prompt"], batch["prompt_mask"]),
        nash_eval.class_token_mask(tokenizer, model_cfg.vocab_size),
    )
    pi_dpo = dpo_limit(prompts, ref, beta)
    dpo_metrics = nash_eval.class_metrics(P, ref, beta, pi_dpo)
    task_ref = jnp.asarray(synthetic.rps_reference(prompts))
    limits = {
        "dpo_nash_kl": float(jnp.mean(dpo_metrics["nash_kl"])),
        "dpo_exploitability": float(jnp.mean(dpo_metrics["exploitability"])),
        "sft_vs_task_ref_kl": float(jnp.mean(nash_tabular.kl(task_ref, ref[:, :3]))),
    }
    final = {m: summary(c) for m, c in curves.items()}
    result = {
        "beta": beta,
        "budget": _BUDGET.value,
        "final": final,
        "exact": limits,
        "curves": curves,
    }
    (out / "curves.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(curves, limits, out / "convergence.png", beta)
    for m, f in final.items():
        print(
            f"{_LABELS[m]:>12}: KL(pi*||pi) {f['nash_kl']:.4g}, exploitability "
            f"{f['exploitability']:.4g} after {f['queries']} queries ({f['seconds']:.0f} s)"
        )
    print(f"DPO population optimum: KL {limits['dpo_nash_kl']:.4g}; plot {out / 'convergence.png'}")


if __name__ == "__main__":
    app.run(main)
