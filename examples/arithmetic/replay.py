"""Replay the sentences of an earlier stream-aligned run through another aligner, one by one: a quick, paired
measure while an aligner is being built (``python -m examples.arithmetic.replay``).

``make eval`` stream-aligns SmolLM2's answers to the held-out problems and takes about half an hour. A report it
wrote (``--report``) keeps every sentence its aligner was given. Replayed here, each sentence goes to ``--aligner``
alone (question and prefix as the report had them) and the exact checker, used only as a judge
(:func:`~.task.judge_sentence`), says what came out: wrong sentences fixed, right ones broken or changed, sentences
with nothing to check changed, corrections cut at the token limit. The report's own aligner is judged on the same
sentences, so the two fix counts are paired. What this does not measure: how the upstream continues from a
correction (``make eval`` does).

>>> from examples.arithmetic.task import check_arithmetic
>>> report = {"rows": [{"question": "What is 45 + 19?", "stream-trained": {"sentences": [
...     ["45 + 19 = 54.", "45 + 19 = 54."], ["Adding is fun.", "Adding is fun."], ["So 45 + 19 = 64.", "So 45 + 19 = 64."]]}}]}
>>> class Checker:  # an aligner that is the checker itself, for the example
...     def correct(self, requests):
...         return [check_arithmetic(r.question, r.prefix, r.last) for r in requests]
>>> counts = replay(report, Checker())
>>> counts["wrong"], counts["fixed"], counts["report_fixed"], counts["right"], counts["broken"], counts["unchecked"]
(1, 1, 0, 1, 0, 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any


def replay(report: dict[str, Any], aligner: Any, *, condition: str = "stream-trained", batch_size: int = 16,
           examples: int = 20) -> dict[str, Any]:  # fmt: skip
    """Counts (see the module docstring) and up to ``examples`` changed sentences of each kind. Reads ``report``
    and calls ``aligner.correct``; modifies neither."""
    from transformers_stream_aligner import AlignmentRequest

    from .task import judge_sentence

    items = []
    for row in report["rows"]:
        prefix = ""
        for original, corrected in row[condition].get("sentences", []):
            items.append((row["question"], prefix, original, corrected))
            prefix = (prefix + " " + corrected).strip()
    outputs: list[str] = []
    for i in range(0, len(items), batch_size):
        outputs += aligner.correct([AlignmentRequest(q, p, o) for q, p, o, _ in items[i : i + batch_size]])
    counts: dict[str, Any] = dict.fromkeys(
        ("sentences", "wrong", "fixed", "report_fixed", "right", "broken", "changed_right", "unchecked",
         "changed_unchecked", "unfinished", "rejected"), 0)  # fmt: skip
    shown: dict[str, list[list[str]]] = {"fixed": [], "still_wrong": [], "broken": [], "changed": [], "unfinished": [],
                                         "rejected": []}  # fmt: skip
    for (question, _, original, theirs), output in zip(items, outputs, strict=True):
        counts["sentences"] += 1
        if type(output).__name__ == "UnfinishedCorrection":
            counts["unfinished"] += 1
            shown["unfinished"].append([original, output])
        elif type(output).__name__ == "RejectedCorrection":
            counts["rejected"] += 1
            shown["rejected"].append([original, output.correction])
        changed = output.strip() != original.strip()
        before, after = judge_sentence(question, original), judge_sentence(question, output)
        if before == "wrong":
            counts["wrong"] += 1
            fixed = changed and after != "wrong"
            counts["fixed"] += fixed
            counts["report_fixed"] += theirs.strip() != original.strip() and judge_sentence(question, theirs) != "wrong"
            shown["fixed" if fixed else "still_wrong"].append([original, output])
        else:
            counts[before] += 1
            counts["changed_" + before] += changed
            if changed and after == "wrong":
                counts["broken"] += 1
                shown["broken"].append([original, output])
            elif changed:
                shown["changed"].append([original, output])
    counts["examples"] = {k: v[:examples] for k, v in shown.items()}
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n>>>")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--aligner", required=True, help="aligner checkpoint (a LoRA on SmolLM2 or a full one)")
    parser.add_argument("--report", required=True, help="a make eval report (JSON) with stream-aligned answers")
    parser.add_argument("--condition", default="stream-trained", help="which of the report's runs (default stream-trained)")
    parser.add_argument("--biases", help="comma-separated copy_bias values (default: the aligner's own)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", help="also write the counts (JSON lines, one per bias)")
    args = parser.parse_args(argv)

    from . import load_arithmetic_aligner

    report = json.loads(Path(args.report).read_text())
    aligner = load_arithmetic_aligner(args.aligner)
    biases = [float(b) for b in args.biases.split(",")] if args.biases else [aligner.config.copy_bias]
    for bias in biases:
        aligner.config = dataclasses.replace(aligner.config, copy_bias=bias)
        aligner.reset_cache()
        counts = replay(report, aligner, condition=args.condition, batch_size=args.batch_size)
        row = {"aligner": args.aligner, "report": args.report, "copy_bias": bias,
               **{k: v for k, v in counts.items() if k != "examples"}}  # fmt: skip
        print(json.dumps(row), flush=True)
        if args.output:
            with Path(args.output).open("a") as f:
                f.write(json.dumps({**row, "examples": counts["examples"]}) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
