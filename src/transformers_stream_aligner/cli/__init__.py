"""The ``stream-aligner`` command.

* ``stream-aligner train`` (:mod:`.train`): fine-tune a causal LM into an aligner;
* ``stream-aligner build-dataset`` (:mod:`.build_dataset`): turn answers into training records.

Each command's flags are generated from its dataclasses by ``transformers.HfArgumentParser`` (the help text has
one source: the fields' metadata); both ``--flag-name`` and ``--flag_name`` are accepted.

Example:

    >>> from transformers_stream_aligner.cli import main
    >>> main(["--version"])  # doctest: +SKIP
    stream-aligner 0.1.0
"""

from __future__ import annotations

import argparse
import sys

from transformers import HfArgumentParser

from .. import __version__
from ..training_data import TrainingDataError
from . import build_dataset, train

__all__ = ["main"]

COMMANDS = {"train": train, "build-dataset": build_dataset}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-aligner", description="Stream Aligner for transformers")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser)
    for name, command in COMMANDS.items():
        command.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        argv = [argv[0], *COMMANDS[argv[0]].normalize_argv(argv[1:])]
    parser = build_parser()
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    try:
        return command.run(args)
    except (TrainingDataError, FileExistsError, FileNotFoundError) as err:
        # bad input: one clear line, no traceback (nothing was written)
        print(f"stream-aligner {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
