"""The GRPO variants with their papers' hyperparameters, on the arithmetic task.

    python -m launch.train --config=configs/grpo_paper.py:variant=deepseekmath --workdir=runs/grpo
    python -m launch.train --config=configs/grpo_paper.py:variant=dr_grpo --workdir=runs/dr_grpo
    python -m launch.train --config=configs/grpo_paper.py:variant=dapo --workdir=runs/dapo
    python -m launch.train --config=configs/grpo_paper.py:variant=rloo --workdir=runs/rloo
    python -m launch.train --config=configs/grpo_paper.py:variant=gspo --workdir=runs/gspo

Add ",runlocal" to the argument for a CPU smoke run. The loss settings follow
the papers; the model, task and batch sizes are the CPU-sized ones of
configs/grpo_arith.py (point --config.init.hf_dir at a real checkpoint and
--config.data.name at real data to scale up).

- deepseekmath (Shao et al. 2024): grpo advantages, seq-mean-token-mean, eps 0.2,
  k3 KL in the loss with beta 0.04, G = 64 in the paper (8 here), 1 update per
  rollout, lr 1e-6 for a 7B model (scaled up here for a from-scratch model).
- dr_grpo (Liu et al. 2025): no std normalization, seq-mean-token-sum-norm
  (constant N * T_max), beta 0.
- dapo (Yu et al. 2025): token-mean, clip-higher eps_hi 0.28, no KL, dynamic
  sampling, overlong shaping (L_cache 4096 of 20480 in the paper; 1 of 6 here,
  so only responses that never stop are punished: the longest answer plus EOS
  is 5 tokens).
- rloo (Ahmadian et al. 2024): leave-one-out baseline, beta 0.
- gspo (Zheng et al. 2025): sequence-level ratio, eps 3e-4 / 4e-4, beta 0.
"""

import ml_collections

from configs import base, grpo_arith

VARIANTS = {
    "deepseekmath": dict(
        advantage="grpo",
        aggregation="seq-mean-token-mean",
        eps_lo=0.2,
        eps_hi=0.2,
        beta=0.04,
        kl_placement="loss",
    ),
    "dr_grpo": dict(
        advantage="dr_grpo",
        aggregation="seq-mean-token-sum-norm",
        eps_lo=0.2,
        eps_hi=0.2,
        beta=0.0,
        kl_placement="none",
    ),
    "dapo": dict(
        advantage="grpo",
        aggregation="token-mean",
        eps_lo=0.2,
        eps_hi=0.28,
        beta=0.0,
        kl_placement="none",
        dynamic_sampling=True,
        overlong_cache=1,
    ),
    "rloo": dict(
        advantage="rloo",
        aggregation="seq-mean-token-mean",
        beta=0.0,
        kl_placement="none",
    ),
    "gspo": dict(
        advantage="grpo",
        aggregation="seq-mean-token-mean",
        ratio_level="sequence",
        eps_lo=3e-4,
        eps_hi=4e-4,
        beta=0.0,
        kl_placement="none",
    ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parsed = base.parse_arg(arg, variant="deepseekmath", runlocal=False)
    if parsed.variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {parsed.variant!r}; choose one of {', '.join(VARIANTS)}."
        )
    config = grpo_arith.get_config("runlocal" if parsed.runlocal else None)
    config.unlock()
    config.grpo.update(VARIANTS[parsed.variant])
    config.lock()
    return config
