"""Datasets (local tfds builders in array_record) and grain pipelines to numpy batches.

source = load_source(dataset_name("arithmetic", max_digits=3), "train")
batches = sft_batches(source, tokenizer, batch_size=64, max_len=32, seed=0)
"""

from rl_lm.data.arithmetic import ArithmeticConfig, arithmetic_builder, arithmetic_config
from rl_lm.data.jsonl import prepare_jsonl
from rl_lm.data.pipeline import eval_examples, preference_batches, prompt_batches, sft_batches
from rl_lm.data.registry import dataset_name, load_source
from rl_lm.data.storage import default_data_dir

__all__ = [
    "ArithmeticConfig",
    "arithmetic_builder",
    "arithmetic_config",
    "dataset_name",
    "default_data_dir",
    "eval_examples",
    "load_source",
    "preference_batches",
    "prepare_jsonl",
    "prompt_batches",
    "sft_batches",
]
