"""``stream-aligner export-custom-generate DIR``: write the Hub-ready ``custom_generate`` folder.

Into a folder of its own (to push as a repo: ``model.generate(..., custom_generate="org/repo",
trust_remote_code=True, aligner=...)``) or into a model directory (``from_pretrained(DIR, trust_remote_code=True)``
then runs stream alignment; with ``--aligner NAME=PATH`` the directory also names the aligners a server may use)::

    stream-aligner export-custom-generate my-method --push-to-hub me/stream-aligner-generate
    stream-aligner export-custom-generate MODEL_DIR --aligner arith=ALIGNER_DIR --default-aligner arith

Pushing: ``--push-to-hub REPO`` uploads the folder in one commit (``huggingface_hub.upload_folder``); or
``hf upload REPO DIR .`` with the ``hf`` command-line tool.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from ._dataclasses import from_namespace

__all__ = ["ExportCustomGenerateArguments", "add_parser", "normalize_argv", "run"]


@dataclass
class ExportCustomGenerateArguments:
    """The flags of ``stream-aligner export-custom-generate``."""

    directory: str = field(metadata={"help": "Where to write the folder (created if needed; may be a model directory)."})
    aligner: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NAME=SPEC, repeatable: an aligner the served model may use (SPEC: a checkpoint directory, a Hub "
            "repo id or module:attribute); writes stream_aligner_serving.json.",
            "nargs": "*",
        },
    )
    default_aligner: str | None = field(
        default=None, metadata={"help": "The --aligner NAME used when a request names none."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace files that exist."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Upload the folder to this Hub repo id (one commit)."}
    )
    private: bool = field(default=False, metadata={"help": "With --push-to-hub: create the repo private."})


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        dataclass_types=[ExportCustomGenerateArguments],
        help="write the Hub-ready custom_generate folder (and push it)",
        description="Write the Hub-ready custom_generate folder (README.md, custom_generate/generate.py, "
        "custom_generate/requirements.txt), optionally with the aligners a server may use, and push it.",
    )


def normalize_argv(argv: list[str]) -> list[str]:
    # the directory is positional: HfArgumentParser wants --directory
    if argv and not argv[0].startswith("-"):
        return ["--directory", argv[0], *argv[1:]]
    return argv


def _parse_aligners(items: list[str]) -> dict[str, str]:
    aligners: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"--aligner takes NAME=SPEC, got {item!r}")
        if name in aligners:
            raise ValueError(f"--aligner {name} is given twice")
        aligners[name] = spec
    return aligners


def run(namespace: argparse.Namespace) -> int:
    """Run ``stream-aligner export-custom-generate``."""
    from ..serving.custom_generate import export_custom_generate

    args = from_namespace(namespace, ExportCustomGenerateArguments)
    out = export_custom_generate(
        args.directory,
        aligners=_parse_aligners(args.aligner),
        default_aligner=args.default_aligner,
        overwrite=args.overwrite,
    )
    print(f"wrote the custom_generate folder to {out}")
    if args.push_to_hub:
        from huggingface_hub import create_repo, upload_folder

        create_repo(args.push_to_hub, private=args.private, exist_ok=True)
        info = upload_folder(
            repo_id=args.push_to_hub,
            folder_path=str(out),
            commit_message="Add the stream-aligner custom_generate method",
        )
        print(f"pushed to {getattr(info, 'commit_url', args.push_to_hub)}")
    return 0
