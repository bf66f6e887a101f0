"""The ``stream-aligner`` command.

* ``stream-aligner train`` (:mod:`.train`): fine-tune a causal LM into an aligner;
* ``stream-aligner build-dataset`` (:mod:`.build_dataset`): turn answers into training records;
* ``stream-aligner export-custom-generate`` (:mod:`.export_custom_generate`): write (and push) the Hub-ready
  ``custom_generate`` folder;
* ``stream-aligner serve`` (:mod:`.serve`): the OpenAI-compatible stream-aligned endpoint.

Each command's flags are generated from its dataclasses by ``transformers.HfArgumentParser`` (the help text has
one source: the fields' metadata); both ``--flag-name`` and ``--flag_name`` are accepted. Bad input (unreadable or
invalid data, an unusable path, a missing model, a bad value) prints one ``error:`` line and exits with code 2
(``STREAM_ALIGNER_DEBUG=1`` shows the traceback).

Example:

    >>> from transformers_stream_aligner.cli import main
    >>> main(["--version"])  # doctest: +SKIP
    stream-aligner 0.1.0
"""

from __future__ import annotations

import argparse
import os
import sys

from transformers import HfArgumentParser

from .. import __version__
from ..training_data import TrainingDataError
from . import build_dataset, export_custom_generate, serve, train

__all__ = ["main"]

COMMANDS = {"train": train, "build-dataset": build_dataset, "export-custom-generate": export_custom_generate,
            "serve": serve}


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
    except (TrainingDataError, OSError, ValueError) as err:
        # bad input (unreadable or invalid data, a path that cannot be used, a model that is not there, a bad
        # value): one clear line and exit code 2, as argparse does; nothing was written.
        if os.environ.get("STREAM_ALIGNER_DEBUG"):
            raise
        print(f"stream-aligner {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The error's message on one line (transformers' OSErrors span several)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


if __name__ == "__main__":
    raise SystemExit(main())
