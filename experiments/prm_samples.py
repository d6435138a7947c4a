"""On-policy PRM data: a policy's own sampled solutions, for the step checker to label.

    python -m experiments.prm_samples --run=runs/pure_sum/warm_start --name=chain_onpolicy \
        --max_new_tokens=40
    python -m launch.train --config=configs/prm_chain.py:head=token --workdir=runs/prm_token \
        --config.data.name=jsonl/chain_onpolicy --config.init.workdir=runs/pure_sum/warm_start

A PRM learns the mistakes it is shown. The "chain/prm" corruptions are one kind
(a result off by a small offset); a policy sampled at temperature 1 also copies
the wrong operand, skips an operation, or answers early, and a PRM trained on
corruptions alone misses most of those (README, Results). This script samples
`--samples` completions of each of the first `--train` train prompts and
`--test` test prompts of the run's dataset from the run's latest checkpoint
(its `eval.max_new_tokens` budget unless --max_new_tokens), and writes them as
the JSONL dataset "jsonl/<name>" (kind "sft": prompt, response, answer) that
the PRM trainer reads and labels step by step with the exact checker
(`rl_lm.rewards.steps`, as it labels "chain/prm"). It prints the share of
wrong steps and of fully right responses. Nothing is overwritten unless
--overwrite.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import app, flags
from tqdm import tqdm

from rl_lm import analysis
from rl_lm.data import load_source, storage
from rl_lm.data.jsonl import dataset_dir, prepare_jsonl
from rl_lm.rewards import steps as step_checks

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags (defined when run as a script, so that importing this
    module next to another script's flags cannot clash)."""
    flags.DEFINE_string("run", None, "The policy run's workdir (its latest checkpoint).")
    flags.DEFINE_string("name", None, "Writes the dataset jsonl/<name>.")
    flags.DEFINE_integer("train", 8000, "Train prompts sampled.")
    flags.DEFINE_integer("test", 500, "Test prompts sampled.")
    flags.DEFINE_integer("samples", 2, "Completions per prompt.")
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
    flags.DEFINE_integer("max_new_tokens", None, "Budget; the run's eval one if unset.")
    flags.DEFINE_integer("chunk", 1000, "Prompts per sampler call.")
    flags.DEFINE_string("checker", "strict", 'Step checker of the printed statistics ("": none).')
    flags.DEFINE_string("data_dir", None, "Where datasets live (None: the default).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing jsonl/<name>.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sample_split(
    params, config, prompts: list[str], answers: list[str], *, samples: int, chunk: int, **kw
) -> list[dict[str, str]]:
    """Rows {"prompt", "response", "answer"}: `samples` completions of each prompt."""
    rows = []
    for i in tqdm(range(0, len(prompts), chunk), desc="sampling", unit="chunk"):
        outs = analysis.sample(
            params, prompts[i : i + chunk], config=config, num_samples=samples, **kw
        )
        for prompt, answer, texts in zip(
            prompts[i : i + chunk], answers[i : i + chunk], outs, strict=True
        ):
            rows.extend({"prompt": prompt, "response": t, "answer": answer} for t in texts)
    return rows


def label_stats(rows: list[dict[str, str]], checker: str) -> dict[str, float]:
    """Share of wrong steps, of responses with every step right, and steps per response."""
    labels = [step_checks.CHECKERS[checker](r["prompt"], r["response"]) for r in rows]
    steps = np.array([len(y) for y in labels])
    return {
        "wrong_steps": float(1 - sum(map(sum, labels)) / max(steps.sum(), 1)),
        "all_right": float(np.mean([bool(y) and all(y) for y in labels])),
        "steps_per_response": float(steps.mean()),
    }


def write_dataset(
    run: str,
    name: str,
    *,
    train: int,
    test: int,
    samples: int = 2,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    chunk: int = 1000,
    checker: str | None = "strict",
    data_dir: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Samples the run's policy on its dataset's prompts and prepares "jsonl/<name>".

    Returns:
      Per split, the checker's `label_stats` of the samples (empty without a checker).
    """
    config = analysis.load_config(run)
    data_dir = data_dir or config.data.get("data_dir")
    if dataset_dir(name, data_dir).exists() and not overwrite:
        raise FileExistsError(f"jsonl/{name} exists; pass --overwrite to replace it.")
    params = analysis.load_params(run)
    root = Path(storage.resolve_data_dir(data_dir)) / "jsonl_sources" / name
    root.mkdir(parents=True, exist_ok=True)
    files, stats = {}, {}
    for split, n, split_seed in (("train", train, seed), ("test", test, seed + 1)):
        source = load_source(config.data.name, split, data_dir=data_dir)
        if not 0 < n <= len(source):
            raise ValueError(f"{split}={n} must be in [1, {len(source)}] (the split's size).")
        examples = [source[i] for i in range(n)]
        rows = sample_split(
            params,
            config,
            [_text(e["prompt"]) for e in examples],
            [_text(e.get("answer", b"")) for e in examples],
            samples=samples,
            chunk=chunk,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            seed=split_seed,
        )
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
        stats[split] = label_stats(rows, checker) if checker else {}
        print(f"{split}: {len(rows)} samples {stats[split]}", flush=True)
    out = prepare_jsonl(
        name, "sft", files["train"], files["test"], data_dir=data_dir, overwrite=True
    )
    print(f"jsonl/{name} written to {out}", flush=True)
    return stats


def main(argv):
    del argv
    if not FLAGS.run or not FLAGS.name:
        raise app.UsageError("--run and --name are required.")
    write_dataset(
        FLAGS.run,
        FLAGS.name,
        train=FLAGS.train,
        test=FLAGS.test,
        samples=FLAGS.samples,
        temperature=FLAGS.temperature,
        max_new_tokens=FLAGS.max_new_tokens,
        chunk=FLAGS.chunk,
        checker=FLAGS.checker or None,
        data_dir=FLAGS.data_dir,
        overwrite=FLAGS.overwrite,
        seed=FLAGS.seed,
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


if __name__ == "__main__":
    define_flags()
    app.run(main)
