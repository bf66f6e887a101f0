"""The ``stream-aligner`` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .training_data import TrainingDataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-aligner", description="Stream Aligner for transformers")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import dataset_builder, demo, evaluation, training

    demo.build_parser(sub.add_parser("demo", help="stream-aligned generation on the embedded SmolLM2 model"))
    training.build_parser(
        sub.add_parser("train", help="train an aligner on question/prefix/last/correction records")
    )
    dataset_builder.build_parser(
        sub.add_parser("build-dataset", help="turn answers into sentence-level training records (JSONL)")
    )
    evaluation.build_parser(
        sub.add_parser("eval", help="final-answer accuracy on held-out arithmetic: plain, stream-aligned, post-hoc")
    )
    args = parser.parse_args(argv)
    commands = {"demo": demo.run, "train": training.run, "build-dataset": dataset_builder.run, "eval": evaluation.run}
    try:
        return commands[args.command](args)
    except (TrainingDataError, FileExistsError, FileNotFoundError) as err:
        # bad input: one clear line, no traceback (nothing was written)
        print(f"stream-aligner {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
