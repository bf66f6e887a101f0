"""Build the shipped arithmetic aligner: a LoRA on SmolLM2-135M-Instruct that checks results with the library's
calculator (``make aligner`` = ``python -m examples.arithmetic.build_calculator_aligner``; seeded, about 40 minutes on
2 cores).

Why a calculator: a 135M aligner learns *where* a sentence states a result and how to copy everything else, but not
two-digit arithmetic (SmolLM2-135M gets 1 of 48 two-digit differences right; five trained aligners before this one
broke right results while "fixing" wrong ones: docs/results.md). So this aligner never computes: it rewrites each
result it checks as a calculation, ``58 - 37 = <<58 - 37=15>>``, and ``StreamAlignerConfig(calculator=True)``
(:mod:`transformers_stream_aligner.aligners.calculator`) keeps the stated result if it is right and puts the value
in otherwise. The model decides what is a claim and what its expression is (written forms, words, currency,
chains); everything else it copies.

Steps (every one in this process; wall times in ``build_report.json``):

1. On-policy sentences: SmolLM2 answers ``--problems`` held-in problems and the held-in non-arithmetic questions
   (:func:`~.claims.other_questions`) greedily while :func:`~.task.check_arithmetic` corrects each sentence (so later
   sentences follow corrected ones, as at inference), or ``--records`` collected before.
2. Targets: every sentence's :func:`~.task.annotate_calculations` (its claims as calculations, everything else as
   written), plus ``--claims`` held-in claims in many written forms (:func:`~.claims.make_claims`, half wrong),
   ``--products`` held-in product claims, ``--statements`` result statements and verb claims of held-in word problems
   (:func:`result_statements`) and ``--items`` list items and Markdown sentences to copy; sentences that
   write a probe (17*23) are dropped. The sentences of a ``--tune-share`` of the questions are kept out of training
   (``tune.jsonl``: held-in data to tune on).
3. :func:`~transformers_stream_aligner.train_aligner`: a LoRA on SmolLM2-135M-Instruct with a short plain-text prompt
   (:data:`INSTRUCTION`: the question and the sentence), so a call feeds few tokens.
4. Stored in float16 with ``stream_aligner_config.json`` (``calculator: true``), the model card and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import zlib
from pathlib import Path
from typing import Any

from . import ARITHMETIC_ALIGNER

#: The aligner's prompt, as plain text (no chat template, so a call feeds few tokens): the question (its problem's
#: result statements are checked against it) and the sentence; the answer so far is not read. The part before the
#: sentence is the same for every sentence of an answer, so the aligner's KV reuse feeds only the sentence.
INSTRUCTION = "Check the arithmetic.\nQuestion: {question}\nSentence: {last}\nChecked: "

#: The settings of the shipped build (flag defaults).
SETTINGS: dict[str, Any] = {"problems": 240, "claims": 700, "statements": 700, "claims_wrong": 0.5, "products": 200, "items": 250,
                            "unchecked_share": 1.0, "lora_r": 16, "epochs": 1.0, "learning_rate": 5e-4,
                            "batch_size": 8, "max_length": 192, "tune_share": 0.1}  # fmt: skip


#: A correction is the sentence copied with its calculations (a few tokens each), so its bound is the sentence's own
#: (``max_sentence_tokens``, 256): a long sentence an upstream ran away in is copied whole, not cut.
MAX_CORRECTION_TOKENS = 256


def calculator_config() -> Any:
    """The aligner's :class:`~transformers_stream_aligner.StreamAlignerConfig`: :data:`INSTRUCTION` as plain text,
    the calculator on, numbers the only edits (a copy error keeps the sentence), corrections bounded at
    :data:`MAX_CORRECTION_TOKENS`."""
    from transformers_stream_aligner import StreamAlignerConfig

    return StreamAlignerConfig(instruction_template=INSTRUCTION, prompt_wrapper="{instruction}", calculator=True,
                               edits="numbers", max_correction_tokens=MAX_CORRECTION_TOKENS)  # fmt: skip


# Statements of a word problem's result, per operator and for all (held-in problems; {c} right or a near miss), verb
# claims ({a} and {b} the operands, in the order the verb reads them) and sentences about the problem that state no
# result (copied as they are).
_STATEMENTS = {
    "+": ["So {name} has {c} {unit} now.", "{name} now has {c} {unit}.", "After getting {b} more, {name} has {c} {unit}."],
    "-": ["So {name} has {c} {unit} left.", "{name} has {c} {unit} left.", "There are {c} {unit} left.",
          "After giving away {b}, {name} has {c} {unit} left."],
    "*": ["So there are {c} {unit} in total.", "There are {c} {unit} in all.", "In total, there are {c} {unit}."],
    "/": ["Each friend gets {c} {unit}.", "So each friend gets {c} {unit}.", "Each of the {b} friends gets {c} {unit}."],
    "all": ["So, the answer is {c}.", "The answer is {c} {unit}.", "Therefore, the total is {c}.", "The final answer is {c}.",
            "{c} is the answer."],
}
_VERB_CLAIMS = {
    "+": ["We add {a} and {b}, which gives us {c}.", "Adding {b} to {a} gives {c}.", "Add {a} and {b} to get {c}."],
    "-": ["Subtract {b} from {a} to get {c}.", "Subtracting {b} from {a} gives {c}.", "So we subtract {b} from {a}, which gives us {c}.",
          "You simply subtract {b} from {a}, which gives you {c}."],
    "*": ["Multiply {a} by {b} to get {c}.", "Multiplying {a} by {b} gives {c}.", "We multiply {a} by {b}, which gives us {c}."],
    "/": ["Divide {a} by {b} to get {c}.", "Dividing {a} by {b} gives {c}.", "We divide {a} by {b}, which gives us {c}."],
}
_NO_RESULT = ["{name} started with {a} {unit}.", "First, we need to find out how many {unit} there are.",
              "Then, you subtract {b} from the original number, which gives you the answer.",
              "Next, we multiply the number of boxes by {b}.", "To solve this, we use the numbers {a} and {b}.",
              "Let's break it down step by step.", "We know that {name} has {a} {unit}."]  # fmt: skip


def result_statements(n: int, *, seed: int, wrong_fraction: float = 0.5) -> list[dict[str, str]]:
    """``n`` records of held-in problems (3 in 4 word problems): a statement of the result, a verb claim or a sentence
    that states no result, the stated result right or a near miss (``wrong_fraction``); the correction is
    :func:`~.task.annotate_calculations`'. What the on-policy answers hold too few of: the operator of a result
    statement must be read from the question ("gave away": a difference). Pure, seeded."""
    from .task import _NAMES, _near_miss, annotate_calculations, make_problems

    rng = random.Random(seed)
    out = []
    for problem in make_problems(n, seed=seed + 17, split="train", word_fraction=0.75):
        name = next((w for w in _NAMES if w in problem.question), rng.choice(_NAMES))
        unit = problem.unit or rng.choice(["apples", "coins", "books"])
        value = int(problem.answer)
        c = _near_miss(value, rng) if rng.random() < wrong_fraction else value
        kind = rng.random()
        if kind < 0.55:
            frames = _STATEMENTS["all"] + (_STATEMENTS[problem.op] * 2 if problem.unit else [])
        elif kind < 0.85:
            frames = _VERB_CLAIMS[problem.op]
        else:
            frames = _NO_RESULT
        last = rng.choice(frames).format(name=name, unit=unit, a=problem.a, b=problem.b, c=max(c, 0))
        out.append({"question": problem.question, "prefix": "", "last": last,
                    "correction": annotate_calculations(problem.question, "", last)})  # fmt: skip
    return out


def build_records(on_policy: list[dict[str, str]], *, seed: int, claims: int, claims_wrong: float, products: int,
                  items: int, statements: int = 0, unchecked_share: float = 1.0) -> tuple[list[dict[str, str]], dict[str, int]]:  # fmt: skip
    """The training records and their counts. ``on_policy`` records get :func:`~.task.annotate_calculations` of their
    sentence as the correction (a ``unchecked_share`` of those with nothing to check is kept); held-in claims,
    product claims, result statements (:func:`result_statements`) and text to copy are added; sentences writing a probe are dropped; shuffled (seeded). Pure."""
    from .build_small_aligner import list_items, markdown_sentences
    from .claims import make_claims, other_questions
    from .task import annotate_calculations, involves_probe, synthetic_product_claims

    rng = random.Random(seed)

    def record(question: str, prefix: str, last: str) -> dict[str, str]:
        return {"question": question, "prefix": prefix, "last": last,
                "correction": annotate_calculations(question, prefix, last)}  # fmt: skip

    policy = [record(r["question"], r["prefix"], r["last"]) for r in on_policy]
    checked = [r for r in policy if r["correction"] != r["last"]]
    unchecked = [r for r in policy if r["correction"] == r["last"]]
    unchecked = rng.sample(unchecked, round(len(unchecked) * unchecked_share))
    claim_recs = [record(c.question, "", c.last)
                  for c in make_claims(claims, seed=seed, split="train", wrong_fraction=claims_wrong)]  # fmt: skip
    product_recs = [record(r["question"], r["prefix"], r["last"])
                    for r in synthetic_product_claims(products, seed=seed, wrong_fraction=0.5)] if products else []  # fmt: skip
    copies = markdown_sentences(items, seed=seed)
    copies = copies[: items // 2] + list_items(copies[items // 2 :], seed=seed)
    questions = other_questions("train")  # text to copy is asked about by a held-in non-arithmetic question
    copy_recs = [record(rng.choice(questions), "", s) for s in copies]
    copy_recs = [r for r in copy_recs if r["correction"] == r["last"]]
    statement_recs = result_statements(statements, seed=seed, wrong_fraction=claims_wrong) if statements else []
    everything = checked + unchecked + claim_recs + product_recs + copy_recs + statement_recs
    train = [r for r in everything if not any(involves_probe(r[k]) for k in ("last", "correction"))]
    rng.shuffle(train)
    counts = {"on_policy": len(policy), "on_policy_checked": len(checked), "on_policy_unchecked_kept": len(unchecked),
              "claims": len(claim_recs), "products": len(product_recs), "copies": len(copy_recs),
              "statements": len(statement_recs),
              "dropped_probes": len(everything) - len(train), "trained_on": len(train),
              "with_calculations": sum("<<" in r["correction"] for r in train)}  # fmt: skip
    return train, counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ARITHMETIC_ALIGNER), help="where the aligner goes (default: this example's trained_aligner/)")
    parser.add_argument("--work-dir", default=None, help="data and training files (default: <cache>/arithmetic-aligner-work-calculator)")
    parser.add_argument("--records", nargs="+", default=None,
                        help="on-policy records collected before (JSONL, e.g. <work-dir>/greedy.jsonl): skip collecting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="bound on each upstream answer (default 128)")
    parser.add_argument("--no-progress", action="store_true")
    for name, value in SETTINGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)

    from peft import LoraConfig

    from transformers_stream_aligner import AlignerTrainingConfig, read_records, train_aligner
    from transformers_stream_aligner.training.records import write_records

    from ..smollm2 import default_cache_dir, smollm2_checkpoint
    from .build_aligner import collect_records, install, portable, timed_steps, to_float16
    from .claims import other_questions
    from .task import make_problems

    work = Path(args.work_dir) if args.work_dir else default_cache_dir() / "arithmetic-aligner-work-calculator"
    work.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    report: dict[str, Any] = {"recipe": "calculator", "seed": args.seed, **{k: getattr(args, k) for k in SETTINGS}}
    t_all = time.perf_counter()
    step = timed_steps(report)
    if args.records:
        on_policy = [dict(r) for path in args.records for r in read_records(path)]
    else:
        questions = [p.question for p in make_problems(args.problems, seed=args.seed, split="train")] + other_questions("train")
        on_policy = step("data (greedy answers)", collect_records, questions, seed=args.seed, max_new_tokens=args.max_new_tokens,
                         progress=progress, sampled=False, corrector="check_arithmetic")  # fmt: skip
        write_records(on_policy, work / "greedy.jsonl", overwrite=True)
    # a share of the questions is kept out of training, to tune on (docs/results.md): held-in, never evaluated
    tune = [r for r in on_policy if zlib.crc32(r["question"].encode()) % 100 < 100 * args.tune_share]
    on_policy = [r for r in on_policy if zlib.crc32(r["question"].encode()) % 100 >= 100 * args.tune_share]
    write_records(tune, work / "tune.jsonl", overwrite=True)
    train_records, report["records"] = build_records(on_policy, seed=args.seed, claims=args.claims,
                                                     claims_wrong=args.claims_wrong, products=args.products,
                                                     items=args.items, statements=args.statements,
                                                     unchecked_share=args.unchecked_share)  # fmt: skip
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_records))
    report["records"]["tune"] = len(tune)
    print(f"[aligner] records: {report['records']}", flush=True)
    trained = work / "aligner"
    config = AlignerTrainingConfig(output_dir=str(trained), overwrite_output_dir=True, num_train_epochs=args.epochs,
                                   learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
                                   max_length=args.max_length, seed=args.seed, logging_steps=25,
                                   train_sampling_strategy="group_by_length",
                                   disable_tqdm=None if progress else True)  # fmt: skip
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    result = step("training", train_aligner, smollm2_checkpoint(), work / "train.jsonl", config,
                  aligner_config=calculator_config(), lora_config=lora)  # fmt: skip
    report["training"] = {"steps": result.global_step, "loss": round(result.train_loss, 4)}
    portable(trained, max_correction_tokens=MAX_CORRECTION_TOKENS)
    to_float16(trained)
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    install(trained, Path(args.output), report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
