"""DPO on Anthropic HH-RLHF preferences with the DPO paper's hyperparameters.

Rafailov et al. (2023), appendix B: beta = 0.1, batch 64 pairs, learning rate
1e-6 warmed up linearly over 150 steps, one epoch over the 160,800 train pairs
(about 2,500 steps), starting from an SFT model of the preferred dialogues;
their code also clips gradients at norm 10 and caps rows at 512 tokens. The
paper used RMSprop; this config uses AdamW (weight decay 0), the optimizer
rl_lm's `make_optimizer` builds, which the paper reports works about as well.

Bring two things (nothing is downloaded at run time):

1. The data as prompt / chosen / rejected JSONL. An HH row holds two whole
   dialogues sharing everything up to the last "\\n\\nAssistant:"; split them:

       import json
       for split in ("train", "test"):
           with open(f"{split}.jsonl") as src, open(f"hh_{split}.jsonl", "w") as dst:
               for line in src:
                   row = json.loads(line)
                   cut = row["chosen"].rfind("\\n\\nAssistant:") + len("\\n\\nAssistant:")
                   if row["rejected"][:cut] == row["chosen"][:cut]:
                       dst.write(json.dumps({"prompt": row["chosen"][:cut],
                                             "chosen": row["chosen"][cut:],
                                             "rejected": row["rejected"][cut:]}) + "\\n")

       python -m rl_lm.data --dataset=jsonl/hh --kind=preference \\
           --train=hh_train.jsonl --test=hh_test.jsonl

2. A local Hugging Face checkpoint (config.json, safetensors, tokenizer.json) of
   a Llama- or Qwen-family model fine-tuned on the chosen dialogues (the paper's
   Pythia 2.8B is an architecture rl_lm does not implement). `checkpoint=DIR`
   sets init.hf_dir=DIR: its config.json sets the model shape, its tokenizer is
   the run's, and its weights are the starting policy and the reference (see
   rl_lm/train/hf_start.py).

    python -m launch.train --config=configs/dpo_hh.py:checkpoint=/models/qwen-hh-sft \
        --workdir=runs/dpo_hh

Rows longer than 512 tokens are cut at the end (data.truncate). Held-out pair
accuracy and margins are evaluated every 250 steps on 512 test pairs.

CPU smoke run (tiny model, byte tokenizer, synthetic pairs; needs no files):

    python -m launch.train --config=configs/dpo_hh.py:runlocal --workdir=/tmp/dpo_hh_smoke
"""

import ml_collections
from ml_collections import config_dict

from configs import base
from rl_lm.algos import dpo_loss
from rl_lm.train import hf_start


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False, checkpoint="")
    if not (arg.runlocal or arg.checkpoint):
        raise ValueError(
            "configs/dpo_hh.py needs the SFT model to start from: "
            "--config=configs/dpo_hh.py:checkpoint=/path/to/hf_checkpoint (it sets "
            "init.hf_dir; see its docstring)."
        )
    config = base.experiment(
        "dpo",
        data=ml_collections.ConfigDict(
            dict(
                name="jsonl/hh",
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=64,  # pairs
                max_len=512,
                max_prompt_len=256,  # for sampling evaluations
                truncate=True,
            )
        ),
        dpo=dpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(num_examples=512, batch_size=64, max_new_tokens=128, greedy=False, seed=0)
        ),
        init=base.init(hf_dir=arg.checkpoint),
    )
    config.dpo.update(loss_type="sigmoid", beta=0.1, ref_batch_size=64)
    config.optim = base.optim(
        lr=1e-6, warmup_steps=150, schedule="constant", weight_decay=0.0, grad_clip=10.0
    )
    config.train = base.train(
        num_steps=2512, num_microbatches=8, log_every=10, eval_every=250, ckpt_every=250
    )
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=32)
        config.data.update(
            name="sort_pref/pairs_train256_test32", batch_size=16, max_len=32, max_prompt_len=16
        )
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=8)
        config.dpo.ref_batch_size = 32
        config.optim.update(lr=1e-4, warmup_steps=2)
        config.train = base.train(num_steps=4, log_every=2, eval_every=2, ckpt_every=2)
    else:  # The shape and the tokenizer are the checkpoint's (hf_start.resolve).
        config.model = base.model("tiny", max_seq_len=512, remat="full")
    config.lock()
    return hf_start.resolve(config)
