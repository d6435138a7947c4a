"""Prepares a dataset ahead of a run (e.g. once, before a multi-host launch).

    python -m rl_lm.data --dataset=arithmetic/mix3 [--data_dir=DIR]
    python -m rl_lm.data --dataset=jsonl/my_prefs --kind=preference \
        --train=train.jsonl [--test=test.jsonl] [--data_dir=DIR] [--overwrite]
    python -m rl_lm.data --dataset=jsonl/my_math --kind=prompt --train=train.jsonl \
        --test=test.jsonl --tokenizer=/models/Qwen2.5-0.5B-Instruct --max_prompt_len=256

--tokenizer renders chat messages with the checkpoint's template and counts
tokens; with --max_len / --max_prompt_len (the run's data.max_len and
data.max_prompt_len) an over-long row fails here, naming its file and line,
instead of in the middle of a run.

DIR defaults to $RL_LM_DATA_DIR, else ~/.cache/rl_lm/tensorflow_datasets.
"""

from __future__ import annotations

import argparse

from rl_lm.data import jsonl, registry, storage


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and prepares the dataset."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--dataset", required=True, help="arithmetic/<config> or jsonl/<name>")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--kind", choices=list(jsonl.KINDS), help="jsonl only")
    parser.add_argument("--train", help="jsonl only: the train split's file")
    parser.add_argument("--test", default=None, help="jsonl only: the test split's file")
    parser.add_argument("--overwrite", action="store_true", help="jsonl only")
    parser.add_argument(
        "--tokenizer", default=None, help="jsonl only: the run's tokenizer (a checkpoint dir)"
    )
    parser.add_argument("--max_len", type=int, default=None, help="jsonl only: data.max_len")
    parser.add_argument(
        "--max_prompt_len", type=int, default=None, help="jsonl only: data.max_prompt_len"
    )
    args = parser.parse_args(argv)
    family, _, name = args.dataset.partition("/")
    if family == "jsonl":
        if not (name and args.kind and args.train):
            parser.error("a jsonl dataset needs --dataset=jsonl/<name>, --kind and --train.")
        try:
            out = jsonl.prepare_jsonl(
                name,
                args.kind,
                args.train,
                args.test,
                args.data_dir,
                overwrite=args.overwrite,
                tokenizer=args.tokenizer,
                max_len=args.max_len,
                max_prompt_len=args.max_prompt_len,
            )
        except (ValueError, FileNotFoundError, FileExistsError) as e:
            raise SystemExit(f"{args.dataset}: {e}") from None
    else:
        registry.load_source(args.dataset, "train", args.data_dir)
        out = storage.resolve_data_dir(args.data_dir) / args.dataset
    print(f"{args.dataset} is prepared in {out}")


if __name__ == "__main__":
    main()
