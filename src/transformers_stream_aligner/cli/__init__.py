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
import importlib
import os
import sys
from types import ModuleType

from ..version import __version__

__all__ = ["main"]

#: command -> (module in this package, one-line help). A command's module (and what it imports: transformers'
#: Trainer for ``train``, torch ...) is imported only when that command runs, so ``stream-aligner --help`` is quick.
COMMANDS = {
    "train": ("train", "train an aligner on question/prefix/last/correction records"),
    "build-dataset": ("build_dataset", "turn answers into sentence-level training records (JSONL)"),
    "export-custom-generate": ("export_custom_generate", "write the Hub-ready custom_generate folder (and push it)"),
    "serve": ("serve", "serve stream-aligned completions (OpenAI-compatible; upstream: vLLM or a local model)"),
}


def command_module(name: str) -> ModuleType:
    """The module of command ``name`` (imported on first use)."""
    return importlib.import_module(f".{COMMANDS[name][0]}", __name__)


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``stream-aligner`` parser with the full parsers of ``commands`` (default: all of them; each imports its
    module) and a one-line entry for every other command."""
    parser = argparse.ArgumentParser(prog="stream-aligner", description="Stream Aligner for transformers")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    wanted = list(COMMANDS) if commands is None else commands
    if wanted:
        from transformers import HfArgumentParser

        sub = parser.add_subparsers(dest="command", required=True, parser_class=HfArgumentParser, metavar="{" + ",".join(COMMANDS) + "}")
    else:
        sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        if name in wanted:
            command_module(name).add_parser(sub, name)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser([]).parse_args(argv)  # --help, --version, or a usage error: nothing heavy is imported
        return 2
    from ..errors import TrainingDataError

    command = command_module(argv[0])
    argv = [argv[0], *command.normalize_argv(argv[1:])]
    args = build_parser([argv[0]]).parse_args(argv)
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
