"""``stream-aligner build-dataset``: turn answers into sentence-level aligner training records (JSONL).

Two routes (:mod:`..dataset_builder`): ``--pairs`` (question, answer, corrected answer) or ``--questions`` with an
``--upstream`` model that answers them on-policy while ``--corrector`` corrects each sentence. For example::

    stream-aligner build-dataset --questions questions.txt --upstream DIR \\
        --corrector mypackage.checks:fix_sentence --output records.jsonl
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from ..runtime.boundary.splitter import DEFAULT_TERMINATORS
from ..training.records import DEFAULT_MAX_PREFIX_CHARS
from ._dataclasses import from_namespace

__all__ = ["BuildDatasetArguments", "add_parser", "normalize_argv", "run"]


@dataclass
class BuildDatasetArguments:
    """The flags of ``stream-aligner build-dataset``."""

    output: str = field(metadata={"help": "JSONL file to write."})
    overwrite: bool = field(default=False, metadata={"help": "Replace --output if it exists."})
    pairs: str | None = field(
        default=None, metadata={"help": "Records with question, answer, corrected_answer (JSON/JSONL)."}
    )
    questions: str | None = field(
        default=None,
        metadata={"help": "On-policy: questions (.txt, one per line, or JSON/JSONL with 'question'); needs --upstream and --corrector."},
    )
    upstream: str | None = field(default=None, metadata={"help": "On-policy: the upstream model's directory or Hub id."})
    corrector: str | None = field(
        default=None,
        metadata={
            "help": "On-policy: 'module:function' (fn(question, prefix, last) -> str, or an object with correct()) "
            "or an aligner checkpoint."
        },
    )
    num_samples: int = field(default=1, metadata={"help": "Answers per question (> 1 needs --do-sample)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample the upstream's answers (default: greedy)."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(default=256, metadata={"help": "Bound on each answer."})
    batch_size: int = field(default=4, metadata={"help": "Questions answered together."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code."})
    terminators: str = field(default=DEFAULT_TERMINATORS, metadata={"help": "Sentence terminators."})
    max_prefix_chars: int = field(
        default=DEFAULT_MAX_PREFIX_CHARS,
        metadata={"help": "--pairs: a record's prefix keeps the last whole sentences within this many characters."},
    )
    no_progress: bool = field(default=False, metadata={"help": "No progress bar."})


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        dataclass_types=[BuildDatasetArguments],
        help="turn answers into sentence-level training records (JSONL)",
        description="Turn answers into sentence-level aligner training records (JSONL).",
    )


def normalize_argv(argv: list[str]) -> list[str]:
    return argv


def _load_corrector(spec: str, *, trust_remote_code: bool) -> Any:
    """``module:attribute`` (a callable or an object with ``correct``) or an aligner checkpoint."""
    from ..aligners.specs import load_aligner

    return load_aligner(spec, trust_remote_code=trust_remote_code)


def run(namespace: argparse.Namespace) -> int:
    """Run ``stream-aligner build-dataset``."""
    from ..training.data import read_records
    from ..training.records import OnPolicyReport, read_questions, records_from_pairs, records_on_policy, write_records

    args = from_namespace(namespace, BuildDatasetArguments)
    if bool(args.pairs) == bool(args.questions):
        raise SystemExit("stream-aligner build-dataset: error: give either --pairs or --questions")
    if args.pairs:
        records, report = records_from_pairs(
            read_records(args.pairs), terminators=args.terminators, source=args.pairs, max_prefix_chars=args.max_prefix_chars
        )
        summary = report.summary()
    else:
        if not args.corrector or not args.upstream:
            raise SystemExit("stream-aligner build-dataset: error: --questions needs --upstream and --corrector")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        questions = read_questions(args.questions)
        corrector = _load_corrector(args.corrector, trust_remote_code=args.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(args.upstream, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            args.upstream, dtype=torch.float32, use_safetensors=True, trust_remote_code=args.trust_remote_code
        ).eval()
        set_seed(args.seed)
        sampling: dict[str, Any] = {"do_sample": args.do_sample}
        if args.temperature is not None:
            sampling["temperature"] = args.temperature
        if args.top_p is not None:
            sampling["top_p"] = args.top_p
        built = OnPolicyReport()
        records = records_on_policy(
            model,
            tokenizer,
            questions,
            corrector,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            max_new_tokens=args.max_new_tokens,
            terminators=args.terminators,
            report=built,
            **sampling,
        )
        changed = sum(r["correction"] != r["last"] for r in records)
        summary = f"{len(records)} records from {len(questions)} questions x {args.num_samples} ({changed} changed)"
        if built.failures:
            summary += f"; {len(built.failures)} of {built.batches} batches failed (see the warnings), their records so far kept"
    path = write_records(records, args.output, overwrite=args.overwrite)
    print(f"[stream-aligner] {summary}; written to {path}")
    return 0
