"""Prepares a dataset ahead of a run (e.g. once, before a multi-host launch).

    python -m rl_lm.data --dataset=arithmetic/mix3 [--data_dir=DIR]
    python -m rl_lm.data --dataset=jsonl/my_prefs --kind=preference \
        --train=train.jsonl [--test=test.jsonl] [--data_dir=DIR] [--overwrite]

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
    args = parser.parse_args(argv)
    family, _, name = args.dataset.partition("/")
    if family == "jsonl":
        if not (name and args.kind and args.train):
            parser.error("a jsonl dataset needs --dataset=jsonl/<name>, --kind and --train.")
        out = jsonl.prepare_jsonl(
            name, args.kind, args.train, args.test, args.data_dir, overwrite=args.overwrite
        )
    else:
        registry.load_source(args.dataset, "train", args.data_dir)
        out = storage.resolve_data_dir(args.data_dir) / args.dataset
    print(f"{args.dataset} is prepared in {out}")


if __name__ == "__main__":
    main()
