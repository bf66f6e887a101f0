"""``make eval`` / ``python -m examples.arithmetic.evaluation``: does the aligner help? Final-answer accuracy on held-out arithmetic.

The upstream (by default the embedded SmolLM2-135M-Instruct) answers held-out problems of
:mod:`.task` (``split="test"``: no operand triple of them is ever used for training), greedy,
under four conditions:

* ``plain`` - ``generate`` alone;
* ``stream-trained`` - stream-aligned with the trained aligner (by default this example's, in ``trained_aligner/``);
* ``stream-checker`` - stream-aligned with the exact checker :func:`~.task.check_arithmetic`
  (an upper bound for a sentence-level corrector);
* ``posthoc-trained`` - Aligner-style: the plain answer, then the trained aligner rewrites it whole.

Each answer is scored by :func:`~.task.is_correct`. Reported: accuracy with a Wilson 95%
interval, and each condition's difference to ``plain`` with a paired bootstrap 95% interval (same
questions); every answer is kept in the JSON for error analysis.

>>> wilson_interval(50, 100)
(0.4038, 0.5962)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CONDITIONS", "ERROR_KINDS", "CountingAligner", "answer_questions", "claims_probe", "other_text_probe",
           "precision_table", "sentence_outcomes", "classify_error", "error_analysis", "error_cases_markdown", "evaluate_arithmetic",
           "paired_bootstrap", "product_claim_probe", "wilson_interval"]

CONDITIONS = ("plain", "stream-trained", "stream-checker", "posthoc-trained")


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95% for the default ``z``), rounded to 4 places."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], *, resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same questions and its percentile bootstrap 95% interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two non-empty lists of the same length")
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return (round(sum(diffs) / n, 4), round(means[int(0.025 * resamples)], 4), round(means[int(0.975 * resamples) - 1], 4))


def answer_questions(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    aligner: Any = None,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    progress: bool = True,
    desc: str = "answering",
) -> tuple[list[str], list[list[Any]]]:
    """Greedy answers to ``questions`` (one chat turn each, batches of ``batch_size``, left padding), stream-
    aligned when ``aligner`` is given. Returns the answer texts and, per answer, its alignment trace."""
    import torch
    from tqdm.auto import tqdm

    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    traces: list[list[Any]] = []
    try:
        for begin in tqdm(range(0, len(questions), batch_size), desc=desc, disable=not progress):
            batch = list(questions[begin : begin + batch_size])
            enc = tokenizer.apply_chat_template(
                [[{"role": "user", "content": q}] for q in batch],
                add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True,
            )  # fmt: skip
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
            if aligner is not None:
                kwargs.update(aligner=aligner, aligner_question=batch, return_dict_in_generate=True,
                              invalid_correction="keep_original")  # fmt: skip
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # kept originals are counted from the traces
                out = model.generate(**enc, **kwargs)
            sequences = out.sequences if aligner is not None else out
            width = enc["input_ids"].shape[1]
            answers += [t.strip() for t in tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)]
            traces += list(out.alignment_trace) if aligner is not None else [[] for _ in batch]
    finally:
        tokenizer.padding_side = padding_side
    return answers, traces


def _posthoc(aligner: Any, questions: Sequence[str], answers: Sequence[str], *, max_new_tokens: int, batch_size: int,
             progress: bool) -> list[str]:  # fmt: skip
    """Aligner-style: each whole answer rewritten in one aligner call (its own aligner instance and cache)."""
    from tqdm.auto import tqdm

    from transformers_stream_aligner import AlignmentRequest, StreamAligner

    config = dataclasses.replace(aligner.config, max_correction_tokens=max_new_tokens + 64)
    whole = StreamAligner(aligner.model, aligner.tokenizer, config)
    out: list[str] = []
    for begin in tqdm(range(0, len(questions), batch_size), desc="post-hoc", disable=not progress):
        requests = [AlignmentRequest(q, "", a) for q, a in zip(questions[begin : begin + batch_size], answers[begin : begin + batch_size], strict=True)]
        texts = whole.correct([r for r in requests if r.last])
        it = iter(texts)
        out += [next(it) if r.last else "" for r in requests]
    return out


def evaluate_arithmetic(
    model: Any,
    tokenizer: Any,
    aligner: Any,
    *,
    n: int = 200,
    seed: int = 0,
    conditions: Sequence[str] = CONDITIONS,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    progress: bool = True,
    reuse: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the evaluation (see the module docstring); returns the report (summary and every answer).

    ``reuse``: an earlier report of the same problems (``n``, ``seed``, ``max_new_tokens``) whose ``plain`` and
    ``stream-checker`` answers are taken instead of generated again: neither depends on the aligner (greedy, same
    model), so comparing aligners costs only their own conditions."""
    from .task import check_arithmetic, is_correct, make_problems

    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; choose from {CONDITIONS}")
    if aligner is None and any(c != "plain" and c != "stream-checker" for c in conditions):
        raise ValueError("the conditions stream-trained and posthoc-trained need an aligner")
    problems = make_problems(n, seed=seed, split="test")
    questions = [p.question for p in problems]
    answers: dict[str, list[str]] = {}
    changed: dict[str, list[int]] = {}
    sentences: dict[str, list[list[list[str]]]] = {}  # per condition, question: [original, corrected] per sentence
    seconds: dict[str, float] = {}
    unfinished: dict[str, int] = {}
    rejected: dict[str, int] = {}
    run_plain = "plain" in conditions or "posthoc-trained" in conditions
    order = (["plain"] if run_plain else []) + [c for c in conditions if c != "plain"]
    reusable = set()
    if reuse is not None:
        same = (reuse.get("n"), reuse.get("seed"), reuse.get("max_new_tokens")) == (n, seed, max_new_tokens)
        if not same or [r["question"] for r in reuse["rows"]] != questions:
            raise ValueError("the report to reuse was made on other problems (n, seed or max_new_tokens differ)")
        reusable = {"plain", "stream-checker"} & set(reuse["summary"])
    for condition in order:
        t0 = time.perf_counter()
        if condition in reusable:
            answers[condition] = [r[condition]["answer"] for r in reuse["rows"]]
            if condition == "stream-checker":
                sentences[condition] = [r[condition]["sentences"] for r in reuse["rows"]]
                changed[condition] = [r[condition]["changed"] for r in reuse["rows"]]
            seconds[condition] = reuse["summary"][condition]["seconds"]
            continue
        if condition == "plain":
            answers[condition], _ = answer_questions(model, tokenizer, questions, batch_size=batch_size,
                                                     max_new_tokens=max_new_tokens, progress=progress, desc="plain")  # fmt: skip
        elif condition == "posthoc-trained":
            answers[condition] = _posthoc(aligner, questions, answers["plain"], max_new_tokens=max_new_tokens,
                                          batch_size=batch_size, progress=progress)  # fmt: skip
            changed[condition] = [int(x.strip() != y.strip()) for x, y in zip(answers[condition], answers["plain"], strict=True)]
        else:
            fn = CountingAligner(aligner) if condition == "stream-trained" else check_arithmetic
            if hasattr(fn, "reset_cache"):
                fn.reset_cache()
            answers[condition], traces = answer_questions(model, tokenizer, questions, aligner=fn, batch_size=batch_size,
                                                          max_new_tokens=max_new_tokens, progress=progress, desc=condition)  # fmt: skip
            sentences[condition] = [[[r.original_text.strip(), r.corrected_text.strip()] for r in t if r.aligned] for t in traces]
            changed[condition] = [sum(o != c for o, c in pairs) for pairs in sentences[condition]]
            if isinstance(fn, CountingAligner):
                unfinished[condition], rejected[condition] = fn.unfinished, fn.rejected
        seconds[condition] = round(time.perf_counter() - t0, 1)
    scored = {c: [is_correct(p, a) for p, a in zip(problems, answers[c], strict=True)] for c in conditions}
    summary: dict[str, Any] = {}
    for c in conditions:
        k = sum(scored[c])
        entry: dict[str, Any] = {"correct": k, "n": n, "accuracy": round(k / n, 4), "ci95": wilson_interval(k, n), "seconds": seconds[c]}
        if c in changed:
            entry["answers_changed"] = sum(x > 0 for x in changed[c])
        if c in unfinished:
            entry["unfinished_corrections"] = unfinished[c]
            entry["rejected_corrections"] = rejected[c]
        if c != "plain" and "plain" in scored:
            diff, lo, hi = paired_bootstrap(scored[c], scored["plain"])
            entry["minus_plain"] = {"difference": diff, "ci95": (lo, hi)}
            entry["fixed"] = sum(x and not y for x, y in zip(scored[c], scored["plain"], strict=True))
            entry["broken"] = sum(y and not x for x, y in zip(scored[c], scored["plain"], strict=True))
        summary[c] = entry
    by_op = {
        c: {op: round(sum(s for p, s in zip(problems, scored[c], strict=True) if p.op == op) / max(1, sum(p.op == op for p in problems)), 4)
            for op in "+-*/"}
        for c in conditions
    }  # fmt: skip
    rows = [
        {"question": p.question, "expected": str(p.answer), "op": p.op, "word_problem": p.unit is not None,
         **{c: {"answer": answers[c][i], "correct": scored[c][i], **({"changed": changed[c][i]} if c in changed else {}),
                **({"sentences": sentences[c][i]} if c in sentences else {})} for c in conditions}}
        for i, p in enumerate(problems)
    ]  # fmt: skip
    return {"n": n, "seed": seed, "split": "test", "max_new_tokens": max_new_tokens, "summary": summary,
            "accuracy_by_operator": by_op, "rows": rows}  # fmt: skip


def product_claim_probe(aligner: Any, *, n: int = 100, seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Sentence level, held out: ``n`` wrong product claims of test-split operands (``"There are 43 boxes ...
    so there are 43 * 67 = 2781 ..."``, :func:`~.task.synthetic_product_claims`) given to
    ``aligner`` alone; how often its correction states the right product, and how often every step of it
    is right (:func:`~.task.every_step_right`), with Wilson 95% intervals."""
    from transformers_stream_aligner import AlignmentRequest

    from .task import every_step_right, is_correct, parse_problem, synthetic_product_claims

    records = synthetic_product_claims(n, seed=seed, wrong_fraction=1.0, split="test")
    if hasattr(aligner, "reset_cache"):
        aligner.reset_cache()
    corrections: list[str] = []
    for i in range(0, n, batch_size):
        batch = records[i : i + batch_size]
        if hasattr(aligner, "correct"):
            corrections += aligner.correct([AlignmentRequest(r["question"], r["prefix"], r["last"]) for r in batch])
        else:  # a plain ``fn(question, prefix, last)`` aligner
            corrections += [aligner(r["question"], r["prefix"], r["last"]) for r in batch]
    right = [is_correct(parse_problem(r["question"]), c) for r, c in zip(records, corrections, strict=True)]
    steps = [ok and every_step_right(r["question"], c) for r, c, ok in zip(records, corrections, right, strict=True)]
    return {
        "n": n, "seed": seed,
        "right_product": {"k": sum(right), "rate": round(sum(right) / n, 4), "ci95": wilson_interval(sum(right), n)},
        "every_step_right": {"k": sum(steps), "rate": round(sum(steps) / n, 4), "ci95": wilson_interval(sum(steps), n)},
        "kept_unchanged": sum(c.strip() == r["last"].strip() for r, c in zip(records, corrections, strict=True)),
        "examples": [[r["last"], c] for r, c in zip(records[:10], corrections[:10], strict=True)],
    }  # fmt: skip


class CountingAligner:
    """Wraps an aligner and counts its answers that are :class:`~transformers_stream_aligner.UnfinishedCorrection`
    (a correction that hit ``max_correction_tokens`` without an end) and
    :class:`~transformers_stream_aligner.RejectedCorrection` (a copy error the edit rule caught: the sentence kept).
    Forwards ``reset_cache``."""

    def __init__(self, aligner: Any) -> None:
        from transformers_stream_aligner import as_correction_fn

        self.aligner, self.fn = aligner, as_correction_fn(aligner)
        self.unfinished = 0
        self.rejected = 0

    def correct(self, requests: list[Any]) -> list[Any]:
        from transformers_stream_aligner import RejectedCorrection, UnfinishedCorrection

        out = self.fn(requests)
        self.unfinished += sum(isinstance(x, UnfinishedCorrection) for x in out)
        self.rejected += sum(isinstance(x, RejectedCorrection) for x in out)
        return out

    def reset_cache(self) -> None:
        if hasattr(self.aligner, "reset_cache"):
            self.aligner.reset_cache()


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else 0.0, "ci95": wilson_interval(k, n)}


def sentence_outcomes(report: dict[str, Any], condition: str = "stream-trained") -> dict[str, Any]:
    """Sentence by sentence, judged by the exact checker (:func:`~.task.judge_sentence`) over ``condition``'s
    stream-aligned answers: right sentences (nothing wrong found) the aligner made wrong (``broken``) or changed at
    all, and wrong ones it made right (``fixed``), with Wilson 95% intervals."""
    from .task import judge_sentence

    right = wrong = broken = changed_right = fixed = 0
    for row in report["rows"]:
        question = row["question"]
        for original, corrected in row[condition].get("sentences", []):
            before = judge_sentence(question, original)
            if before == "wrong":
                wrong += 1
                fixed += original != corrected and judge_sentence(question, corrected) != "wrong"
            else:
                right += 1
                if original != corrected:
                    changed_right += 1
                    broken += judge_sentence(question, corrected) == "wrong"
    return {"right_broken": _rate(broken, right), "right_changed": _rate(changed_right, right),
            "wrong_fixed": _rate(fixed, wrong)}  # fmt: skip


def claims_probe(aligner: Any, *, n: int = 420, seed: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """Held-out claims in written forms the problem templates never produce (:func:`~.claims.make_claims`,
    ``split="test"``: held-out operands and sentence frames; currency, thousands separators, decimals, chains, odd
    spacing, words), each given to ``aligner`` alone and judged by construction (:func:`~.claims.judge_claim`)."""
    from collections import Counter

    from transformers_stream_aligner import AlignmentRequest

    from .claims import judge_claim, make_claims

    claims = make_claims(n, seed=seed, split="test")
    counting = CountingAligner(aligner)
    counting.reset_cache()
    outputs: list[str] = []
    for i in range(0, n, batch_size):
        outputs += counting.correct([AlignmentRequest(c.question, "", c.last) for c in claims[i : i + batch_size]])
    verdicts = [judge_claim(c, o) for c, o in zip(claims, outputs, strict=True)]
    right = [v for c, v in zip(claims, verdicts, strict=True) if not c.wrong]
    wrong = [v for c, v in zip(claims, verdicts, strict=True) if c.wrong]
    by_style: dict[str, Counter[str]] = {}
    for c, v in zip(claims, verdicts, strict=True):
        by_style.setdefault(c.style, Counter())[v] += 1
    return {
        "n": n, "right_broken": _rate(right.count("broken"), len(right)),
        "right_changed": _rate(len(right) - right.count("kept"), len(right)),
        "wrong_fixed": _rate(wrong.count("fixed"), len(wrong)), "unfinished": counting.unfinished,
        "rejected": counting.rejected, "by_style": {k: dict(v) for k, v in by_style.items()},
        "examples": [[c.last, o, v] for c, o, v in zip(claims, outputs, verdicts, strict=True) if v in ("broken", "still_wrong")][:12],
    }  # fmt: skip


def other_text_probe(model: Any, tokenizer: Any, aligner: Any, *, batch_size: int = 8, max_new_tokens: int = 128,
                     progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Long-form non-arithmetic answers: SmolLM2 answers the held-out non-arithmetic questions
    (:func:`~.claims.other_questions`, ``"test"``), stream-aligned by ``aligner``; every sentence in which the exact
    checker finds no arithmetic must come out unchanged. Counts the changed ones (with examples)."""
    from .claims import other_questions
    from .task import judge_sentence

    questions = other_questions("test")
    counting = CountingAligner(aligner)
    counting.reset_cache()
    _, traces = answer_questions(model, tokenizer, questions, aligner=counting, batch_size=batch_size,
                                 max_new_tokens=max_new_tokens, progress=progress, desc="other questions")  # fmt: skip
    total = changed = 0
    examples = []
    for q, trace in zip(questions, traces, strict=True):
        for r in trace:
            original = r.original_text.strip()
            if not r.aligned or not original or judge_sentence(q, original) != "unchecked":
                continue
            total += 1
            if r.changed:
                changed += 1
                examples.append([q, original, r.corrected_text.strip()])
    return {"questions": len(questions), "sentences_changed": _rate(changed, total), "unfinished": counting.unfinished,
            "rejected": counting.rejected, "examples": examples[:12]}  # fmt: skip


def precision_table(reports: dict[str, dict[str, Any]]) -> str:
    """Before/after markdown table of the precision figures of several reports (name -> report)."""
    def cell(r: dict[str, Any] | None) -> str:
        if not r:
            return "-"
        lo, hi = r["ci95"]
        return f"{r['k']} / {r['n']} = {r['rate']:.1%} ({lo:.1%}-{hi:.1%})"

    def acc(rep: dict[str, Any]) -> str:
        e = rep.get("summary", {}).get("stream-trained")
        if not e:
            return "-"
        d = e.get("minus_plain")
        return f"{e['accuracy']:.1%} ({d['difference']:+.1%}; {d['ci95'][0]:+.1%} to {d['ci95'][1]:+.1%})" if d else f"{e['accuracy']:.1%}"

    rows = [
        ("final-answer accuracy, stream-aligned (minus plain; paired 95% CI)", lambda rep: acc(rep)),
        ("held-out problems: right sentences broken", lambda rep: cell(rep.get("sentences", {}).get("right_broken"))),
        ("held-out problems: right sentences changed", lambda rep: cell(rep.get("sentences", {}).get("right_changed"))),
        ("held-out problems: wrong sentences made right", lambda rep: cell(rep.get("sentences", {}).get("wrong_fixed"))),
        ("claims in other forms: right ones broken", lambda rep: cell(rep.get("claims", {}).get("right_broken"))),
        ("claims in other forms: right ones changed", lambda rep: cell(rep.get("claims", {}).get("right_changed"))),
        ("claims in other forms: wrong ones made right", lambda rep: cell(rep.get("claims", {}).get("wrong_fixed"))),
        ("non-arithmetic sentences changed (long-form answers)", lambda rep: cell(rep.get("other_text", {}).get("sentences_changed"))),
        ("corrections that hit the token limit", lambda rep: str(rep.get("unfinished", "-"))),
        ("copy errors caught by the edit rule (sentence kept)", lambda rep: str(rep.get("rejected", "-"))),
    ]  # fmt: skip
    names = list(reports)
    lines = ["| measure (95% Wilson CI) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(fn(reports[n]) for n in names) + " |")
    return "\n".join(lines)


ERROR_KINDS = {
    "missed": "a sentence had a wrong result and the aligner kept it",
    "wrong fix": "the aligner changed a wrong result into another wrong one",
    "broke": "the aligner changed a right sentence into a wrong one",
    "no checkable result": "every sentence was right or unverifiable, yet the final answer is wrong or missing",
}


def classify_error(question: str, sentences: Sequence[Sequence[str]]) -> str:
    """Why a stream-aligned answer is wrong, judged sentence by sentence with the exact checker: the first
    of ``missed``, ``wrong fix``, ``broke`` that occurs, else ``no checkable result`` (see ``ERROR_KINDS``)."""
    from .task import check_arithmetic

    prefix = ""
    for original, corrected in sentences:
        original_ok = check_arithmetic(question, prefix, original) == original
        corrected_ok = check_arithmetic(question, prefix, corrected) == corrected
        if not original_ok and corrected == original:
            return "missed"
        if not original_ok and not corrected_ok:
            return "wrong fix"
        if original_ok and not corrected_ok:
            return "broke"
        prefix = (prefix + " " + corrected).strip()
    return "no checkable result"


def error_analysis(report: dict[str, Any], condition: str = "stream-trained", k: int = 20) -> dict[str, Any]:
    """Counts of :func:`classify_error` over every wrong answer of ``condition``, and the first ``k`` cases."""
    wrong = [r for r in report["rows"] if not r[condition]["correct"] and "sentences" in r[condition]]
    kinds = [classify_error(r["question"], r[condition]["sentences"]) for r in wrong]
    counts = {kind: kinds.count(kind) for kind in ERROR_KINDS}
    cases = [{"question": r["question"], "expected": r["expected"], "kind": kind, "answer": r[condition]["answer"],
              "changed_sentences": [s for s in r[condition]["sentences"] if s[0] != s[1]]}
             for r, kind in zip(wrong[:k], kinds[:k], strict=True)]  # fmt: skip
    return {"condition": condition, "wrong": len(wrong), "counts": counts, "cases": cases}


def _tail(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def error_cases_markdown(analysis: dict[str, Any], *, width: int = 70) -> str:
    """:func:`error_analysis`'s cases as a markdown table (changed sentences shortened from the left, the
    answer to its start)."""
    lines = ["| # | question | expected | kind | what the aligner changed (original → corrected) | answer (start) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for i, case in enumerate(analysis["cases"], 1):
        changed = "; ".join(f"`{_tail(o, width)}` → `{_tail(c, width)}`" for o, c in case["changed_sentences"]) or "nothing"
        answer = " ".join(case["answer"].split())
        answer = answer if len(answer) <= 80 else answer[:80] + "…"
        cells = [str(i), case["question"], case["expected"], case["kind"], changed, answer]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def markdown_table(report: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    lines = ["| condition | correct / n | accuracy (95% CI) | minus plain (95% CI) | fixed / broken vs plain | answers changed | seconds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for c, e in report["summary"].items():
        lo, hi = e["ci95"]
        d = e.get("minus_plain")
        diff = f"{d['difference']:+.3f} ({d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f})" if d else ""
        fb = f"{e['fixed']} / {e['broken']}" if "fixed" in e else ""
        lines.append(f"| {c} | {e['correct']} / {e['n']} | {e['accuracy']:.3f} ({lo:.3f}, {hi:.3f}) | {diff} | {fb} | "
                     f"{e.get('answers_changed', '')} | {e['seconds']} |")  # fmt: skip
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str | Path) -> Path | None:
    """Bar chart of accuracy with 95% intervals; ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(report["summary"])
    acc = [report["summary"][c]["accuracy"] for c in names]
    err = [[a - report["summary"][c]["ci95"][0] for c, a in zip(names, acc, strict=True)],
           [report["summary"][c]["ci95"][1] - a for c, a in zip(names, acc, strict=True)]]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(names, acc, yerr=err, capsize=6, color=["#888", "#3a7", "#37a", "#a73"][: len(names)])
    for i, a in enumerate(acc):
        ax.text(i, a + 0.01, f"{a:.1%}", ha="center", va="bottom")
    ax.set(ylabel="final-answer accuracy", ylim=(0, max(1e-9, *[report["summary"][c]["ci95"][1] for c in names]) * 1.15),
           title=f"Held-out arithmetic, SmolLM2-135M-Instruct, n = {report['n']} (95% Wilson CI)")  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _count(minimum: int) -> Any:
    """An argparse type: an int of at least ``minimum`` (else argparse's one-line error and exit code 2)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m examples.arithmetic.evaluation", description=__doc__)
    parser.add_argument("--aligner", help="trained aligner checkpoint (default: this example's trained aligner)")
    parser.add_argument("--copy-bias", type=float, help="replace the aligner config's copy_bias (default: keep it)")
    parser.add_argument("--n", type=_count(1), default=200, help="held-out problems (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="which held-out problems (default 0)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, from {', '.join(CONDITIONS)}")
    parser.add_argument("--batch-size", type=_count(1), default=8, help="questions answered together (default 8)")
    parser.add_argument("--max-new-tokens", type=_count(1), default=128, help="bound on each answer (default 128)")
    parser.add_argument("--output", default="eval_results.json", help="JSON report with every answer (default eval_results.json)")
    parser.add_argument("--plot", help="also write a bar chart (PNG; needs matplotlib)")
    parser.add_argument("--cache-dir", help="where the converted SmolLM2 checkpoint is kept")
    parser.add_argument("--probe-claims", type=_count(0), default=100,
                        help="also give the trained aligner this many held-out wrong product claims alone (default 100; 0: skip)")
    parser.add_argument("--precision", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure precision: held-out claims in other written forms and long-form "
                             "non-arithmetic answers (default on)")  # fmt: skip
    parser.add_argument("--precision-only", action="store_true",
                        help="measure only the precision probes (with --base-report: keep that report's conditions)")
    parser.add_argument("--base-report", help="with --precision-only: an earlier report of the same aligner whose "
                        "conditions (accuracy, sentences) are kept")
    parser.add_argument("--reuse", help="an earlier report of the same problems: its plain and stream-checker answers "
                        "are reused (they do not depend on the aligner)")
    parser.add_argument("--before", help="an earlier report (e.g. of the aligner shipped before) to print side by side")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def run(args: argparse.Namespace) -> int:
    from transformers_stream_aligner import enable_stream_alignment

    from ..smollm2 import load_smollm2
    from . import load_arithmetic_aligner

    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    model, tokenizer = load_smollm2(args.cache_dir)
    enable_stream_alignment(model, tokenizer)
    aligner = None
    if args.precision_only or any(c in ("stream-trained", "posthoc-trained") for c in conditions):
        aligner = load_arithmetic_aligner(args.aligner, cache_dir=args.cache_dir)
        if args.copy_bias is not None:
            aligner.config = dataclasses.replace(aligner.config, copy_bias=args.copy_bias)
    if args.precision_only:
        report = json.loads(Path(args.base_report).read_text()) if args.base_report else {"summary": {}}
    else:
        report = evaluate_arithmetic(model, tokenizer, aligner, n=args.n, seed=args.seed, conditions=conditions,
                                     batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                     progress=not args.no_progress,
                                     reuse=json.loads(Path(args.reuse).read_text()) if args.reuse else None)  # fmt: skip
    report["aligner"] = args.aligner or "trained arithmetic aligner (examples/arithmetic/trained_aligner)"
    if aligner is not None:
        report["copy_bias"] = aligner.config.copy_bias
    probe = None
    if aligner is not None and args.probe_claims > 0 and not args.precision_only:
        report["product_claim_probe"] = probe = product_claim_probe(aligner, n=args.probe_claims, batch_size=args.batch_size)
    if "stream-trained" in report.get("summary", {}):
        report["error_analysis"] = error_analysis(report, "stream-trained", k=20)
        report["sentences"] = sentence_outcomes(report, "stream-trained")
    if aligner is not None and (args.precision or args.precision_only):
        report["claims"] = claims_probe(aligner, batch_size=args.batch_size)
        report["other_text"] = other_text_probe(model, tokenizer, aligner, batch_size=args.batch_size,
                                                max_new_tokens=args.max_new_tokens, progress=not args.no_progress)  # fmt: skip
        report["unfinished"] = (report["summary"].get("stream-trained", {}).get("unfinished_corrections", 0)
                                + report["claims"]["unfinished"] + report["other_text"]["unfinished"])  # fmt: skip
        report["rejected"] = (report["summary"].get("stream-trained", {}).get("rejected_corrections", 0)
                              + report["claims"]["rejected"] + report["other_text"]["rejected"])  # fmt: skip
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    if report.get("summary"):
        print(markdown_table(report))
    if "accuracy_by_operator" in report:
        print(f"\naccuracy by operator: {json.dumps(report['accuracy_by_operator'])}")
    if "error_analysis" in report:
        ea = report["error_analysis"]
        print(f"stream-trained, {ea['wrong']} wrong answers: {json.dumps(ea['counts'])}")
    if probe is not None:
        right, steps = probe["right_product"], probe["every_step_right"]
        print(f"held-out wrong product claims given to the aligner alone (n={probe['n']}): right product {right['k']} "
              f"({right['ci95'][0]:.1%}-{right['ci95'][1]:.1%}), every step right {steps['k']}, kept {probe['kept_unchanged']}")
    tables = {"before": json.loads(Path(args.before).read_text())} if args.before else {}
    if tables and "sentences" not in tables["before"] and "stream-trained" in tables["before"].get("summary", {}):
        tables["before"]["sentences"] = sentence_outcomes(tables["before"], "stream-trained")
    tables["this aligner" if not tables else "after"] = report
    print("\n" + precision_table(tables))
    print(f"[stream-aligner] every answer in {out}")
    if args.plot and report.get("summary"):
        written = plot(report, args.plot)
        print(f"[stream-aligner] plot: {written}" if written else "[stream-aligner] no plot: matplotlib is not installed")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
