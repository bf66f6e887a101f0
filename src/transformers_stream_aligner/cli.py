"""The ``stream-aligner`` command."""

from __future__ import annotations

import argparse

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-aligner", description="Stream Aligner for transformers")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import demo

    demo.build_parser(sub.add_parser("demo", help="stream-aligned generation on the embedded SmolLM2 model"))
    train_parser = sub.add_parser("train", help="train an aligner on question/prefix/last/correction records")
    from . import training

    training.build_parser(train_parser)
    from . import dataset_builder

    dataset_builder.build_parser(
        sub.add_parser("build-dataset", help="turn answers into sentence-level training records (JSONL)")
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.run(args)
    if args.command == "train":
        return training.run(args)
    if args.command == "build-dataset":
        return dataset_builder.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
