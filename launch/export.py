"""Exports a trained run's policy as a Hugging Face model directory.

    python -m launch.export --workdir=runs/sft_qwen --out=/models/sft_qwen [--step=N]

Writes config.json and safetensors (rl_lm.models.hf.save_hf_checkpoint) from the
latest checkpoint of the run, or from step N, so that transformers'
AutoModelForCausalLM.from_pretrained(OUT) loads it. A run started from a Hugging
Face checkpoint (init.hf_dir, possibly through init.workdir or its warm-start
stage) keeps that checkpoint's model_type and context length
(max_position_embeddings, not the run's shorter model.max_seq_len), and its
tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json,
chat_template.jinja, generation_config.json, ...) are copied from config.tokenizer,
so AutoTokenizer.from_pretrained(OUT) gives the same tokenizer and chat template.
A from-scratch run (byte tokenizer) exports the model only. A LoRA run's
adapters are merged into its frozen base, so OUT is a full checkpoint.

Any failure (no such run, no checkpoint, a step not saved, an --out that is not
empty, a reward model's scalar head) is one line on stderr with exit status 1,
and nothing on disk is changed.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from rl_lm.analysis.export import export

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory to export.")
_STEP = flags.DEFINE_integer("step", None, "A saved step to export (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Output directory (must be absent or empty).")
_DTYPE = flags.DEFINE_string("dtype", None, "dtype of the written weights (default: the run's).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not (_WORKDIR.value and _OUT.value):
        sys.exit("Pass --workdir=RUN (a training run's directory) and --out=DIR.")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO.
    try:
        print(export(_WORKDIR.value, _OUT.value, _STEP.value, _DTYPE.value), flush=True)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        sys.exit(str(e).splitlines()[0])


if __name__ == "__main__":
    app.run(main)
