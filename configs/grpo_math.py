"""GRPO on your own math prompts from a local Hugging Face checkpoint, scored by math-verify.

Bring two things (nothing is downloaded at run time):

1. Prompts with reference answers as JSONL, one row a line: a prompt text or chat
   messages (rendered with the checkpoint's chat template and its generation
   prompt), the answer, optionally metadata (see rl_lm/data/jsonl.py):

       {"messages": [{"role": "user", "content": "What is 1/4 + 1/4? Put the final
         answer in \\\\boxed{}."}], "answer": "\\\\frac12"}
       {"prompt": "Solve 2x + 1 = 7.", "answer": "3"}

   Prepare them once, with the checkpoint's tokenizer (over-long prompts fail
   here, naming their line):

       python -m rl_lm.data --dataset=jsonl/math --kind=prompt --train=train.jsonl \\
           --test=test.jsonl --tokenizer=/models/Qwen2.5-0.5B-Instruct --max_prompt_len=256

2. A local checkpoint of a Llama- or Qwen-family model (config.json, safetensors,
   tokenizer.json): init.hf_dir sets the model's shape, the tokenizer and the
   starting policy, which is also the KL reference (rl_lm/train/hf_start.py).
   It is required: without it the run stops at start, saying so.

Train, then export the policy as a Hugging Face model directory:

    python -m launch.train --config=configs/grpo_math.py --workdir=runs/math \\
        --config.init.hf_dir=/models/Qwen2.5-0.5B-Instruct --config.data.name=jsonl/math
    python -m launch.export --workdir=runs/math --out=/models/qwen-math-grpo

The reward is 1 where math-verify finds the response's final answer
(\\boxed{} first, then LaTeX, then the last plain expression) equal to the
reference, in any notation ("\\boxed{\\frac{1}{2}}" = "0.5" = "1/2"), else 0
(`rl_lm.rewards.math_answers`); the train and held-out accuracies
(eval.answer="math_verify") are the same check, on samples and on greedy
answers. Add rewards of your own by import path, each
`fn(prompts, responses, answers) -> N floats` (rl_lm/rewards/user.py):

    --config.grpo.reward_fns='my_pkg.rewards:brevity=0.1'

Sizes are for a ~0.5B model on one accelerator: 32 prompts x 8 samples of up to
512 new tokens per step, in 8 microbatches with full rematerialization.
The parameters are the checkpoint's dtype; --config.model.param_dtype=float32
keeps float32 master weights.

CPU smoke run (a tiny random model, the byte tokenizer and 2-digit additions;
needs no files; add --config.init.hf_dir and --config.data.name to smoke-test
your own checkpoint and data):

    python -m launch.train --config=configs/grpo_math.py:runlocal --workdir=/tmp/grpo_math_smoke
"""

import ml_collections
from ml_collections import config_dict

from configs import base
from rl_lm.algos import grpo_loss


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = base.parse_arg(arg, runlocal=False)
    config = base.experiment(
        "grpo",
        # The shape and the tokenizer are init.hf_dir's (hf_start.resolve); max_seq_len
        # is the run's, cut to the checkpoint's context.
        model=base.model("tiny", max_seq_len=768, remat="full"),
        data=ml_collections.ConfigDict(
            dict(
                name="jsonl/math",  # python -m rl_lm.data --dataset=jsonl/math --kind=prompt ...
                data_dir=config_dict.placeholder(str),  # None: $RL_LM_DATA_DIR or ~/.cache
                batch_size=32,  # prompts per rollout; rows = batch_size * num_generations
                max_prompt_len=256,
            )
        ),
        grpo=grpo_loss.default_config(),
        eval=ml_collections.ConfigDict(
            dict(
                num_examples=256,
                batch_size=64,
                max_new_tokens=512,
                seed=0,
                answer="math_verify",  # held-out and train accuracy by math-verify too
            )
        ),
        init=base.init(),
    )
    # Its sizes are for a real model: without init.hf_dir the run fails at start
    # (rl_lm.train.preflight.check_init) rather than train the placeholder model.
    config.init.require_hf_dir = not arg.runlocal
    # DeepSeekMath's GRPO (Shao et al. 2024): k3 KL in the loss, beta 0.04, lr 1e-6.
    config.grpo.update(
        num_generations=8,
        max_new_tokens=512,
        temperature=1.0,
        beta=0.04,
        kl_placement="loss",
        num_microbatches=8,
        logprob_chunk=128,
    )
    config.grpo.rewards = ml_collections.ConfigDict({"math_verify": 1.0})
    config.grpo.reward_fns = ""  # "module:function=weight,...": see rl_lm/rewards/user.py
    config.optim = base.optim(lr=1e-6, warmup_steps=10, schedule="constant", grad_clip=1.0)
    config.train = base.train(
        num_steps=500, log_every=5, eval_every=50, ckpt_every=50, eval_at_start=True
    )
    if arg.runlocal:
        config.model = base.model("tiny", max_seq_len=64)
        config.data.update(name="arithmetic/add2", batch_size=8, max_prompt_len=48)
        config.grpo.update(num_generations=4, max_new_tokens=16, num_microbatches=1)
        config.eval.update(num_examples=16, batch_size=16, max_new_tokens=16)
        config.optim.update(lr=1e-4, warmup_steps=2)
        config.train = base.train(
            num_steps=4, log_every=2, eval_every=2, ckpt_every=2, eval_at_start=True
        )
    config.lock()
    return config
