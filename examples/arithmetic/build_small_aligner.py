"""The small arithmetic aligner: a 4M-parameter Llama trained from scratch, for the arithmetic only
(``make aligner-small``).

Why from scratch: SmolLM2-135M cannot do the arithmetic an aligner must check. Asked for sums and differences in
its own chat format it gets ``30 + 4`` wrong most of the time and ``53 - 19`` almost always (docs/results.md), so
a LoRA on it (the v2 and precise recipes of :mod:`.build_aligner`) learns to copy or to guess, not to check. A
small model trained only on this task learns the digit arithmetic from enough examples, copies the rest, and costs
a fraction of a SmolLM2 forward per sentence.

The small model reads the sentence alone (:data:`PROMPT`) and is trained with the copy bias it runs with
(``AlignerTrainingConfig.copy_bias``, docs/training.md): copying comes with the bias, so the model only has to learn
where a sentence is wrong and what to write there, which a model trained from scratch on a CPU can learn in a session
(plain cross-entropy had not even learned to copy after one epoch: docs/results.md).

Steps (every one in this process; wall times printed and saved in ``build_report.json``):

1. Records (:func:`records`), all held-in (``split="train"``; none is ever evaluated): with
   ``--on-policy-weight`` above 0, the precise recipe's greedy on-policy records (SmolLM2's answers to 320 held-in
   problems and the 88 held-in non-arithmetic questions, corrected by :func:`~.task.check_arithmetic_precise`;
   ``--records``, as ``make aligner-precise`` collects them) that the sentence alone shows (:func:`self_contained`);
   claims in many written forms (:func:`~.claims.make_claims`, ``--wrong-fraction`` wrong); product claims; held-in
   facts inside other text (:func:`embedded_facts`), claims of every style put anywhere in other sentences
   (:func:`carried_claims`) and claims in the wordings the checker reads (:func:`inline_claims`); text to copy:
   sentences of the Python standard library's docstrings (:func:`prose_sentences`), the Markdown of the installed
   packages (:func:`markdown_sentences`) and chat-style list items (:func:`list_items`), none with arithmetic. With
   ``--direct`` (the default) every wrong result is corrected in place, no worked form.
2. A byte-level BPE tokenizer trained on those records (:func:`train_tokenizer`: every digit its own token).
3. A Llama initialised from its config (:func:`init_model`, seeded), then taught the digit arithmetic
   (:func:`pretrain_arithmetic`, batches drawn afresh): ``--pretrain-steps`` on bare held-in equations
   (:func:`arithmetic_facts`, a ``--pretrain-context`` share of them after other text), then ``--inline-steps``
   with an ``--inline-share`` of each batch claims in sentences as the aligner reads and writes them (:func:`inline_claims`), so the arithmetic is learned in the format it is
   used in; ``0`` skips a stage. Held-out accuracies, bare and in sentences (:func:`arithmetic_accuracy`,
   :func:`inline_accuracy`), are reported after each stage.
4. :func:`~transformers_stream_aligner.train_aligner` on all weights with ``copy_bias`` (:data:`SETTINGS`); the
   held-out accuracies are measured again (does the arithmetic survive?).
5. Stored in float16 (about 8 MiB) with ``stream_aligner_config.json`` (the prompt and the copy bias), the model
   card and ``build_report.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

from . import ARITHMETIC_ALIGNER

#: The aligner's instruction template (plain text, no chat template): the sentence alone, so a call feeds few tokens.
#: The aligner fixes what the sentence itself shows wrong (``58 - 37 = 15``); a result that is wrong only given
#: the question (``So, the answer is 100.``) is left as written.
PROMPT = ">>> {last}\n<<< "

#: Text that looks like arithmetic (a digit, an operator or ``=``, a digit): never in text to copy.
_ARITHMETIC = re.compile(r"\d\s*[-+*/x×÷=]\s*\d")

#: How a bare fact writes each operator (with its spacing): :func:`embedded_facts` and :func:`arithmetic_facts`.
SIGNS = {"+": ["+", " + "], "-": ["-", " - "], "*": ["*", " * ", " × ", "×", " x "], "/": ["/", " / ", " ÷ "]}

#: Flag defaults: the records of 2026-11-25 (no on-policy collection needed) and the bare arithmetic stage as measured
#: (docs/results.md, "Arithmetic in the sentence"); the stage in sentences and the context share are off by default:
#: measured, they did not carry the arithmetic into the sentence within a session.
SETTINGS: dict[str, Any] = {
    "claims": 8000, "facts": 20000, "carried": 30000, "inline": 30000, "wrong_fraction": 0.4, "products": 4000,
    "prose": 6000, "markdown": 7000, "items": 4000, "prose_files": 3000, "on_policy_weight": 0, "direct": True,
    "vocab_size": 2048, "hidden_size": 256, "layers": 4, "pretrain_steps": 3000, "pretrain_context": 0.0,
    "pretrain_learning_rate": 2e-3, "pretrain_batch_size": 256, "inline_steps": 0, "inline_learning_rate": 5e-4,
    "inline_share": 0.75, "epochs": 1.0, "learning_rate": 5e-4, "batch_size": 64, "max_length": 256,
    "max_correction_tokens": 160, "copy_bias": 5.0, "plain_weight": 0.1,
}  # fmt: skip


def self_contained(record: dict[str, str]) -> bool:
    """Whether the sentence alone shows its correction: the checker, given no question and no prefix, corrects it
    the same way (a copy always is). The only records an aligner that reads the sentence alone can learn from.

    >>> self_contained({"last": "So, 42 - 7 = 31.", "correction": "So, 42 - 7 = 35."})
    True
    >>> self_contained({"last": "So, the answer is 100.", "correction": "So, the answer is 60."})
    False
    """
    from .task import check_arithmetic_precise

    last, correction = record["last"].strip(), record["correction"].strip()
    return last == correction or check_arithmetic_precise("", "", last).strip() == correction


def prose_sentences(n: int, *, seed: int, max_files: int = 3000) -> list[str]:
    """Up to ``n`` English sentences (25-220 characters, no arithmetic) from the docstrings of the first ``max_files``
    modules of the Python standard library this interpreter runs on: text for the aligner to copy. Seeded; depends
    on the Python version.

    >>> s = prose_sentences(3, seed=0, max_files=40)
    >>> len(s), all(x[0].isupper() for x in s)
    (3, True)
    """
    import sysconfig

    from transformers_stream_aligner import split_sentences

    root = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(root.rglob("*.py"))[:max_files]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                doc = ast.get_docstring(node)
                for s in split_sentences(" ".join(doc.split())) if doc else []:
                    s = s.strip()
                    if 25 <= len(s) <= 220 and s[0].isupper() and not _ARITHMETIC.search(s):
                        found.add(s)
    sentences = sorted(found)
    random.Random(seed).shuffle(sentences)
    return sentences[:n]


def markdown_sentences(n: int, *, seed: int) -> list[str]:
    """Up to ``n`` sentences and fragments (3-220 characters, no arithmetic, no links) of the Markdown and
    reStructuredText the installed Python packages ship (their ``METADATA`` descriptions and ``.md`` files): list
    items, bold, headings and code spans, the markup chat answers are written in, for the aligner to copy. Seeded;
    depends on what is installed.

    >>> s = markdown_sentences(5, seed=0)
    >>> len(s), all(3 <= len(x) <= 220 for x in s)
    (5, True)
    """
    import importlib.metadata

    from transformers_stream_aligner import split_sentences

    from .task import check_arithmetic

    if n <= 0:
        return []
    texts = []
    for dist in importlib.metadata.distributions():
        meta = dist.read_text("METADATA") or ""
        texts.append(meta.split("\n\n", 1)[-1])
        texts += [Path(p.locate()).read_text(encoding="utf-8", errors="replace") for p in dist.files or []
                  if str(p).endswith(".md") and Path(p.locate()).is_file()]  # fmt: skip
    found: set[str] = set()
    for text in texts:
        for s in split_sentences(text):
            s = s.strip()
            if 3 <= len(s) <= 220 and "http" not in s and not _ARITHMETIC.search(s) and check_arithmetic("", "", s) == s:
                found.add(s)
    sentences = sorted(found)
    random.Random(seed).shuffle(sentences)
    return sentences[:n]


def list_items(sentences: list[str], *, seed: int) -> list[str]:
    """``sentences`` made into the list items of a chat answer (``3. **Keep A Schedule**: ...``, ``- **Title**: ...``,
    ``**Title** - ...``) or the fragments a sentence splitter cuts from them (``2. **2.``, ``**4.``), one each, for
    the aligner to copy. Pure, seeded.

    >>> list_items(["Keep a regular schedule."], seed=2)
    ['2. **Keep**: Keep a regular schedule.']
    """
    rng, out = random.Random(seed), []
    for s in sentences:
        title = " ".join(w.capitalize() for w in s.rstrip(".").split()[: rng.randint(1, 4)])
        k = rng.randint(1, 9)
        form = rng.randrange(6)
        if form == 0:
            out.append(f"{k}. **{title}**: {s}")
        elif form == 1:
            out.append(f"{k}. **{title}:** {s}")
        elif form == 2:
            out.append(f"- **{title}**: {s}")
        elif form == 3:
            out.append(rng.choice([f"{k}. **{k}.", f"**{k}.", f"{k}.", f"{k}. **{title}", f"**{title}**"]))
        elif form == 4:
            out.append(f"{k}. {s}")
        else:
            out.append(f"**{title}** - {s}")
    return out


def embedded_facts(n: int, *, seed: int, wrong_fraction: float, carriers: list[str]) -> list[dict[str, str]]:
    """``n`` records whose sentence states one held-in fact ``a op b = c`` (operands 2-99 as the problems draw them,
    never a held-out triple nor a probe), a ``wrong_fraction`` share with a near-miss result, written bare or inside
    the opening words of a ``carriers`` sentence (so the aligner learns to copy any context and change the result
    only), corrected by :func:`~.task.check_arithmetic_precise`. Pure, seeded.

    >>> r = embedded_facts(3, seed=0, wrong_fraction=1.0, carriers=["The value of a thing is kept here."])
    >>> all(x["correction"] != x["last"] for x in r), len(r)
    (True, 3)
    """
    from .task import PROBES, ArithmeticProblem, _near_miss, check_arithmetic_precise, draw_operands

    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    while len(out) < n:
        op = "+-*/"[len(out) % 4]
        a, b = draw_operands(op, rng)
        if (a, op, b) in PROBES or ArithmeticProblem(a, op, b, "").split != "train":
            continue
        value = int(ArithmeticProblem(a, op, b, "").answer)
        c = _near_miss(value, rng) if rng.random() < wrong_fraction else value
        claim = f"{a}{rng.choice(SIGNS[op])}{b} = {c}"
        if rng.random() < 0.3 or not carriers:
            last = claim + rng.choice([".", "", ",", " in total."])
        else:
            words = rng.choice(carriers).rstrip(".").split()
            last = " ".join(words[: rng.randint(1, min(8, len(words)))]) + rng.choice([" ", ": ", ", "]) + claim + "."
        correction = check_arithmetic_precise("", "", last)
        if (correction == last) != (c == value):  # the checker must see the claim; else it is no record
            continue
        out.append({"question": f"What is {a} {op} {b}?", "prefix": "", "last": last, "correction": correction})
    return out


def carried_claims(n: int, *, seed: int, wrong_fraction: float, carriers: list[str]) -> list[dict[str, str]]:
    """``n`` records whose sentence is a ``carriers`` sentence with a held-in claim (:mod:`.claims` styles: plain,
    spacing, currency, thousands, decimal, chain, words; operands of the ``"train"`` split) put in at the start, in
    the middle or at the end, a ``wrong_fraction`` share with a near-miss result. The correction is the same sentence
    with the right result written directly (no worked form); records the exact judge (:func:`~.task.judge_sentence`)
    would not see that way (a form it misreads, a change in words it cannot check) are skipped. Many frames, so the
    aligner learns to read a claim wherever it stands rather than the few frames :func:`~.claims.make_claims` writes.
    Pure, seeded.

    >>> r = carried_claims(14, seed=0, wrong_fraction=0.5, carriers=["The value of a thing is kept here."])
    >>> len(r), any(x["last"] != x["correction"] for x in r), any("thing" in x["last"] for x in r)
    (14, True, True)
    """
    from fractions import Fraction

    from .claims import _OPS, _WORD, STYLES, _apply, _claim_text, _fmt, _near, _operands, _split_of
    from .task import PROBES, judge_sentence

    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    while len(out) < n:
        style, op = STYLES[len(out) % len(STYLES)], _OPS[(len(out) // len(STYLES)) % len(_OPS)]
        if style == "chain" and op == "/":
            op = "+"
        a, b = _operands(op, style, rng)
        if (int(a), op, int(b)) in PROBES or _split_of(f"{a}{op}{b}") != "train":
            continue
        third = Fraction(rng.randint(2, 99)) if style == "chain" else None
        value = _apply(a, op, b) + (third or 0)
        stated = _near(value, style, rng) if rng.random() < wrong_fraction else value
        if value < 0 or stated < 0:
            continue
        sym_seed = rng.random()
        claim, right = (_claim_text(a, op, b, v, style, random.Random(sym_seed), third) for v in (stated, value))
        words = rng.choice(carriers).rstrip(".").split() if carriers else []
        where = rng.randrange(3) if words else 0
        if where == 0:
            frame = ("", rng.choice([".", ", " + " ".join(words[:6]).lower() + ".", " " + rng.choice(["in all.", "so far.", ""])]))
        elif where == 1:
            k = rng.randint(1, len(words))
            opening, closing = rng.choice([(" ", " "), (": ", ", "), (", ", ", "), (" (", ") "), (" as ", " ")])
            frame = (" ".join(words[:k]) + opening, (closing + " ".join(words[k:]) if k < len(words) else "").rstrip() + ".")
        else:
            frame = (" ".join(words) + rng.choice([", so ", ": ", "; ", " since ", ", and "]), rng.choice([".", "!", " here."]))
        last, correction = ((frame[0] + c + frame[1]).strip() for c in (claim, right))
        if judge_sentence("", correction) == "wrong" or (last != correction and judge_sentence("", last) != "wrong"):
            continue  # the judge must see what the record teaches (a misread form, or a change it cannot check)
        question = f"What is {_fmt(a, style)} {_WORD[op]} {_fmt(b, style)}?"
        out.append({"question": question, "prefix": "", "last": last, "correction": correction})
    return out


def records(on_policy: list[dict[str, str]], *, seed: int, claims: int, wrong_fraction: float, products: int,
            prose: int, on_policy_weight: int, prose_files: int = 3000, facts: int = 0, carried: int = 0,
            direct: bool = False, inline: int = 0, markdown: int = 0,
            items: int = 0) -> tuple[list[dict[str, str]], dict[str, int]]:  # fmt: skip
    """The training records (step 1 of the module docstring), shuffled, and their counts. On-policy records that are
    not :func:`self_contained` and records writing a probe (17*23) are left out. Does not modify ``on_policy``."""
    from .claims import make_claims, other_questions, precise_correction
    from .task import (
        check_arithmetic,
        check_arithmetic_precise,
        involves_probe,
        judge_sentence,
        synthetic_product_claims,
    )

    rng = random.Random(seed)
    made = [{"question": c.question, "prefix": "", "last": c.last, "correction": precise_correction(c)}
            for c in make_claims(claims, seed=seed, split="train", wrong_fraction=wrong_fraction)]  # fmt: skip
    made += synthetic_product_claims(products, seed=seed, wrong_fraction=wrong_fraction, corrector=check_arithmetic_precise)
    questions = other_questions("train")  # records need one; the prompt does not show it
    sentences = prose_sentences(prose, seed=seed, max_files=prose_files)
    copies = [{"question": rng.choice(questions), "prefix": "", "last": s, "correction": s}
              for s in sentences if check_arithmetic("", "", s) == s]  # fmt: skip
    made += embedded_facts(facts, seed=seed, wrong_fraction=wrong_fraction, carriers=sentences)
    made += carried_claims(carried, seed=seed + 1, wrong_fraction=wrong_fraction, carriers=sentences)
    made += [{"question": "What is it?", "prefix": "", "last": sentence, "correction": correction}
             for sentence, correction, _, _ in inline_claims(inline, seed=seed + 11, wrong_fraction=wrong_fraction)]  # fmt: skip
    marked = markdown_sentences(markdown, seed=seed)
    if items:  # prose_sentences reads the standard library: only when asked
        marked += list_items(prose_sentences(items, seed=seed + 7, max_files=prose_files), seed=seed + 5)
    copies += [{"question": rng.choice(questions), "prefix": "", "last": s, "correction": s} for s in marked]
    usable = [dict(r) for r in on_policy if self_contained(r)]
    everything = usable * on_policy_weight + made + copies
    if direct:  # every wrong result corrected in place, no worked form
        for r in everything:
            if r["last"].strip() != r["correction"].strip():
                r["correction"] = check_arithmetic("", "", r["last"])
        everything = [r for r in everything if judge_sentence("", r["correction"]) != "wrong"]
    kept = [r for r in everything if not any(involves_probe(r[k]) for k in ("prefix", "last", "correction"))]
    rng.shuffle(kept)
    counts = {"on_policy": len(on_policy), "on_policy_self_contained": len(usable), "synthetic": len(made),
              "prose": len(copies) - len(marked), "markdown": len(marked), "dropped_probes": len(everything) - len(kept), "trained_on": len(kept),
              "trained_changed": sum(r["last"].strip() != r["correction"].strip() for r in kept)}  # fmt: skip
    return kept, counts


def wide_operands(op: str, rng: random.Random) -> tuple[int, int]:
    """Operands of one pretraining equation: as the problems draw them (2-99) seven times in ten, else wider (sums
    and differences up to 999, a product or quotient of up to three digits by one). Advances ``rng``."""
    from .task import draw_operands

    if rng.random() < 0.7:
        return draw_operands(op, rng)
    if op in "+-":
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        return (b, a) if op == "-" and a < b else (a, b)
    if op == "*":
        a, b = rng.randint(2, 999), rng.randint(2, 9)
        return (b, a) if rng.random() < 0.5 else (a, b)
    b = rng.randint(2, 9)
    return b * rng.randint(2, 999 // b), b


def arithmetic_facts(n: int, *, seed: int, context: float = 0.0) -> list[tuple[str, str]]:
    """``n`` bare equations ``(left, result)`` such as ``("58 - 37 = ", "21")`` for :func:`pretrain_arithmetic`:
    operands as :func:`wide_operands` draws them, every operator sign and spacing the records use; never a held-out
    triple (``split == "test"``) nor a probe. A ``context`` share of them comes after other text (an opening of
    :data:`INLINE_OPENINGS`, half the time after an earlier equation of its own), so the skill is not tied to the
    start of the sequence. Pure, seeded.

    >>> facts = arithmetic_facts(4, seed=0)
    >>> all(eval(left.replace("×", "*").replace("÷", "/").replace(" x ", "*").rstrip("= ")) == int(r) for left, r in facts)
    True
    """
    from .task import PROBES, ArithmeticProblem

    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        op = rng.choice("+-*/")
        a, b = wide_operands(op, rng)
        problem = ArithmeticProblem(a, op, b, "")
        if (a, op, b) in PROBES or problem.split == "test":
            continue
        left = f"{a}{rng.choice(SIGNS[op])}{b} = "
        if context and rng.random() < context:
            opening = rng.choice(INLINE_OPENINGS)
            x, y = wide_operands("+", rng)
            if rng.random() < 0.5 and ArithmeticProblem(x, "+", y, "").split == "train" and (x, "+", y) not in PROBES:
                opening = f"{x} + {y} = {x + y}. " + opening
            left = opening + left
        out.append((left, str(int(problem.answer))))
    return out


#: How :func:`inline_claims` opens and closes a sentence around its claim, and the claim's wordings besides
#: ``a op b = c``: the forms the exact checker reads (symbols with a verb, operator words, "the sum of", verbs).
INLINE_OPENINGS = ["", "", "So, ", "Then, ", "First, ", "Now, ", "We know that ", "This means ", "Next, we find that ",
                   "There are ", "So there are ", "The total is ", "Therefore, ", "Step 2: ", "- ", "1. ", "2. ",
                   "That is, ", "We can calculate this as ", "In total, "]  # fmt: skip
INLINE_CLOSINGS = ["", ".", ".", ".", " apples.", " coins in total.", " left.", " marbles.", ", so the answer is clear.",
                   " pencils now.", " cards.", "!", " in all.", " books altogether.", ", which is the total."]  # fmt: skip
_OP_WORDS = {"+": ["plus", "added to"], "-": ["minus"], "*": ["times", "multiplied by"], "/": ["divided by"]}
_OP_NAMES = {"+": "sum", "-": "difference", "*": "product", "/": "quotient"}
_OP_VERBS = {
    "+": ["add {a} and {b} to get ", "adding {a} and {b}, which gives us ", "add {b} to {a} to get ",
          "adding {a} and {b} gives ", "add {a} and {b}, we get "],
    "-": ["subtract {b} from {a} to get ", "subtracting {b} from {a} gives ", "subtract {b} from {a}, which gives us ",
          "subtracting {b} from {a}, we get "],
    "*": ["multiply {a} by {b} to get ", "multiplying {a} by {b} gives us ", "multiply {a} and {b} to get ",
          "multiply {a} by {b}, which gives us "],
    "/": ["divide {a} by {b} to get ", "dividing {a} by {b}, which gives us ", "dividing {a} by {b} gives "],
}  # fmt: skip


def inline_claims(n: int, *, seed: int, split: str = "train", wrong_fraction: float = 0.5) -> list[tuple[str, str, int, int]]:
    """``n`` claims as the aligner reads and writes them, for teaching the arithmetic *in the correction format*:
    ``(sentence, correction, start, end)`` where ``correction[start:end]`` is the right result. The claim (operands
    as :func:`wide_operands` draws them, of ``split``'s triples, never a probe) is written in one of the forms the
    exact checker reads (``58 - 37 = 21``, ``58 minus 37 is 21``, ``the difference of 58 and 37 is 21``,
    ``subtract 37 from 58 to get 21``, ...) between an opening and a closing; a ``wrong_fraction`` share states a
    wrong result (near misses, far misses, a decimal quotient). Only claims the checker corrects to exactly
    ``correction`` are kept. Pure, seeded.

    >>> [(sentence, correction, start, end)] = inline_claims(1, seed=3, wrong_fraction=1.0)
    >>> sentence != correction, correction[start:end].isdigit()
    (True, True)
    """
    return [claim for _, claim in _inline_claims_by_operator(n, seed=seed, split=split, wrong_fraction=wrong_fraction)]


def _inline_claims_by_operator(n: int, *, seed: int, split: str, wrong_fraction: float) -> list[tuple[str, tuple[str, str, int, int]]]:
    """:func:`inline_claims` with each claim's operator: ``(op, claim)``."""
    from .task import PROBES, ArithmeticProblem, _near_miss, check_arithmetic

    rng = random.Random(seed)
    out: list[tuple[str, tuple[str, str, int, int]]] = []
    while len(out) < n:
        op = rng.choice("+-*/")
        a, b = wide_operands(op, rng)
        if (a, op, b) in PROBES or ArithmeticProblem(a, op, b, "").split != split:
            continue
        value = str(int(ArithmeticProblem(a, op, b, "").answer))
        stated = value
        if rng.random() < wrong_fraction:
            if op == "/" and rng.random() < 0.15:
                stated = f"{a / b + rng.choice([0.25, 0.5, 0.75, -0.5, 1.25]):.2f}".rstrip("0").rstrip(".")
            elif rng.random() < 0.15:
                stated = str(max(0, int(value) + rng.randint(-60, 60)))
            else:
                stated = str(_near_miss(int(value), rng))
            if stated == value:
                continue
        kind = rng.random()
        if kind < 0.45:
            left = f"{a}{rng.choice(SIGNS[op])}{b} = "
        elif kind < 0.6:
            left = f"{a}{rng.choice(SIGNS[op])}{b} {rng.choice(['is', 'equals', 'is equal to'])} "
        elif kind < 0.7:
            left = f"{a} {rng.choice(_OP_WORDS[op])} {b} is "
        elif kind < 0.78:
            left = f"the {_OP_NAMES[op]} of {a} and {b} is "
        else:
            left = rng.choice(_OP_VERBS[op]).format(a=a, b=b)
        head = rng.choice(INLINE_OPENINGS) + left
        head = head[0].upper() + head[1:]
        closing = rng.choice(INLINE_CLOSINGS)
        sentence, correction = head + stated + closing, head + value + closing
        if check_arithmetic("", "", sentence).strip() != correction.strip():
            continue  # a form the checker reads otherwise: no record
        out.append((op, (sentence, correction, len(head), len(head) + len(value))))
    return out


def encode_facts(tokenizer: Any, facts: list[tuple[str, str]]) -> list[dict[str, list[int]]]:
    """``facts`` as causal-LM examples: ``input_ids`` of left, result and EOS, ``labels`` -100 over the left (the
    operands are random and not worth predicting). Pad them with ``DataCollatorForSeq2Seq``. Pure."""
    lefts = tokenizer([left for left, _ in facts], add_special_tokens=False)["input_ids"]
    results = tokenizer([r for _, r in facts], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id]
    return [{"input_ids": a + b + eos, "labels": [-100] * len(a) + b + eos} for a, b in zip(lefts, results, strict=True)]


def encode_inline(tokenizer: Any, claims: list[tuple[str, str, int, int]]) -> list[dict[str, list[int]]]:
    """:func:`inline_claims` as causal-LM examples in the aligner's prompt (:data:`PROMPT`): the sentence, then the
    correction up to the end of its result (EOS if the result ends it), ``labels`` on the result only. Examples
    whose tokens do not split at the result are skipped. Pure."""
    out = []
    for sentence, correction, start, end in claims:
        prompt = PROMPT.format(last=sentence)
        head = tokenizer(prompt + correction[:start], add_special_tokens=False)["input_ids"]
        ids = tokenizer(prompt + correction[:end], add_special_tokens=False)["input_ids"]
        if ids[: len(head)] != head:
            continue
        ids += [tokenizer.eos_token_id] if end == len(correction) else []
        out.append({"input_ids": ids, "labels": [-100] * len(head) + ids[len(head) :]})
    return out


def pretrain_arithmetic(model: Any, tokenizer: Any, *, steps: int, batch_size: int, learning_rate: float,
                        inline_share: float = 0.0, context: float = 0.0, seed: int = 0, eval_every: int = 0,
                        progress: bool = True, log: Any = None) -> dict[str, Any]:  # fmt: skip
    """Teach ``model`` the digit arithmetic before it learns to correct (step 3 of the module docstring): ``steps``
    optimizer steps, each on a batch drawn afresh, an ``inline_share`` of it claims in sentences in the aligner's
    prompt (:func:`inline_claims`, :func:`encode_inline`), every stated result wrong (with right ones among them the
    model learns to copy the stated result, measured 2026-11-25), the rest bare equations (:func:`arithmetic_facts`,
    :func:`encode_facts`; a ``context`` share of them after other text); the loss on the results only. AdamW (betas
    0.9/0.98, weight decay 0.01), 5% warm-up (at least 50 steps), cosine, gradient norm clipped at 1. Every ``eval_every`` steps (and at the end) the held-out
    accuracies (:func:`arithmetic_accuracy`, :func:`inline_accuracy`) are measured and passed to ``log`` (default:
    printed as a JSON line). Trains ``model`` in place; returns the last measure with the final loss.

    A plain loop rather than ``Trainer`` because every batch is new data (an endless supply of equations): measured
    2026-11-25, ``Trainer`` over a fixed pool of 768,000 mixed examples grouped by length stayed at a loss of 2.1 (the
    same digit for every question) for 1,000 steps, where this loop on bare equations learns division by step 250.
    """
    import math

    import torch
    from tqdm.auto import tqdm
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(50, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    log = log or (lambda row: print(json.dumps(row), flush=True))
    rng, n_inline = random.Random(seed), round(batch_size * inline_share)
    t0, measured = time.perf_counter(), {}
    model.train()
    for step in tqdm(range(1, steps + 1), desc="arithmetic", disable=not progress):
        claims = inline_claims(n_inline, seed=rng.randrange(2**31), wrong_fraction=1.0) if n_inline else []
        examples = encode_inline(tokenizer, claims)
        facts = arithmetic_facts(batch_size - n_inline, seed=rng.randrange(2**31), context=context)
        examples += encode_facts(tokenizer, facts)
        loss = model(**collate(examples)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step == steps or (eval_every and step % eval_every == 0):
            measured = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - t0),
                        "held_out_accuracy": arithmetic_accuracy(model, tokenizer),
                        "held_out_inline_accuracy": inline_accuracy(model, tokenizer)}  # fmt: skip
            log(measured)
    return measured


def arithmetic_accuracy(model: Any, tokenizer: Any, *, n: int = 400, seed: int = 7) -> dict[str, float]:
    """The share of ``n`` held-out bare equations (``split == "test"`` triples as the problems draw them, operators in
    turn) that ``model`` completes right, greedy, per operator: what :func:`pretrain_arithmetic` taught, and whether
    training on the correction records kept it. Reads ``model`` (evaluation mode for the call) and leaves
    ``tokenizer.padding_side`` as it was."""
    import torch

    from .task import ArithmeticProblem, draw_operands

    rng, triples = random.Random(seed), []
    while len(triples) < n:
        op = "+-*/"[len(triples) % 4]
        a, b = draw_operands(op, rng)
        if ArithmeticProblem(a, op, b, "").split == "test":
            triples.append((a, op, b))
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    right = dict.fromkeys("+-*/", 0)
    try:
        for i in range(0, n, 100):
            chunk = triples[i : i + 100]
            enc = tokenizer([f"{a} {op} {b} = " for a, op, b in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False)  # fmt: skip
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for (a, op, b), text in zip(chunk, texts, strict=True):
                right[op] += text.strip() == str(int(ArithmeticProblem(a, op, b, "").answer))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return {op: round(k / sum(t[1] == op for t in triples), 3) for op, k in right.items()}


def inline_accuracy(model: Any, tokenizer: Any, *, n: int = 400, seed: int = 99) -> dict[str, float]:
    """The share of ``n`` held-out wrong claims in sentences (:func:`inline_claims` of the ``"test"`` split, all wrong)
    whose right result ``model`` writes, greedy and with no copy bias, when its correction has reached the result: the
    arithmetic in the format the aligner uses it in. Per operator; reads ``model`` (evaluation mode for the call) and
    leaves ``tokenizer.padding_side`` as it was."""
    import torch

    claims = _inline_claims_by_operator(n, seed=seed, split="test", wrong_fraction=1.0)
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    right: dict[str, list[int]] = {op: [0, 0] for op in "+-*/"}
    try:
        for i in range(0, n, 100):
            chunk = claims[i : i + 100]
            prompts = [PROMPT.format(last=sentence) + correction[:start] for _, (sentence, correction, start, _) in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=7, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for (op, (_, correction, start, end)), text in zip(chunk, texts, strict=True):
                written = re.match(r"\d*", text).group()
                right[op][0] += written == correction[start:end]
                right[op][1] += 1
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return {op: round(k / max(total, 1), 3) for op, (k, total) in right.items()}


def train_tokenizer(texts: list[str], *, vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``: every digit its own token (so numbers are
    read digit by digit), ``<|endoftext|>`` as EOS, ``<pad>`` for padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>")


def init_model(tokenizer: Any, *, hidden_size: int, layers: int, seed: int) -> Any:
    """A Llama causal LM with random weights (seeded): ``layers`` layers of width ``hidden_size``, 4 heads, MLP 3x,
    tied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=3 * hidden_size,
                         max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ARITHMETIC_ALIGNER), help="where the aligner goes (default: this example's trained_aligner/)")
    parser.add_argument("--work-dir", help="data, tokenizer and training files (default: <cache>/arithmetic-aligner-work-small)")
    parser.add_argument("--records", nargs="+",
                        help="the precise recipe's on-policy records (JSONL; default: <cache>/arithmetic-aligner-work-precise/greedy.jsonl, "
                             "collected by make aligner-precise)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    for name, value in SETTINGS.items():
        if isinstance(value, bool):
            parser.add_argument("--" + name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=value,
                                help=f"(default {value})")  # fmt: skip
        else:
            parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value, help=f"(default {value})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from transformers_stream_aligner import AlignerTrainingConfig, StreamAlignerConfig, read_records, train_aligner

    from ..smollm2 import default_cache_dir
    from .build_aligner import install, timed_steps, to_float16

    cache = default_cache_dir()
    work = Path(args.work_dir) if args.work_dir else cache / "arithmetic-aligner-work-small"
    work.mkdir(parents=True, exist_ok=True)
    sources = args.records or ([str(cache / "arithmetic-aligner-work-precise" / "greedy.jsonl")] if args.on_policy_weight else [])
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        print(f"[aligner] on-policy records not found: {', '.join(missing)} (collect them with make aligner-precise, "
              "or pass --records)", file=sys.stderr)  # fmt: skip
        return 2
    report: dict[str, Any] = {"recipe": "small", "seed": args.seed, **{k: getattr(args, k) for k in SETTINGS}}
    t_all = time.perf_counter()
    step = timed_steps(report)

    on_policy = [dict(r) for s in sources for r in read_records(s)]
    train_records, report["records"] = step(
        "records", records, on_policy, seed=args.seed, claims=args.claims, wrong_fraction=args.wrong_fraction,
        products=args.products, prose=args.prose, on_policy_weight=args.on_policy_weight, prose_files=args.prose_files,
        facts=args.facts, carried=args.carried, direct=args.direct, inline=args.inline, markdown=args.markdown,
        items=args.items)  # fmt: skip
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_records))
    print(f"[aligner] records: {report['records']}", flush=True)
    texts = [r[k] for r in train_records for k in ("last", "correction")] + [PROMPT]
    tokenizer = step("tokenizer", train_tokenizer, texts, vocab_size=args.vocab_size)
    model = init_model(tokenizer, hidden_size=args.hidden_size, layers=args.layers, seed=args.seed)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    if args.pretrain_steps:  # bare equations first, then claims in sentences (docs/results.md, "Arithmetic in the sentence")
        report["pretraining"] = step("pretraining", pretrain_arithmetic, model, tokenizer, steps=args.pretrain_steps,
                                     batch_size=args.pretrain_batch_size, learning_rate=args.pretrain_learning_rate,
                                     context=args.pretrain_context, seed=args.seed + 2, progress=not args.no_progress)  # fmt: skip
        print(f"[aligner] pretraining: {report['pretraining']}", flush=True)
    if args.inline_steps:
        report["inline_pretraining"] = step("inline_pretraining", pretrain_arithmetic, model, tokenizer,
                                            steps=args.inline_steps, batch_size=args.pretrain_batch_size,
                                            learning_rate=args.inline_learning_rate, inline_share=args.inline_share,
                                            seed=args.seed + 21, progress=not args.no_progress)  # fmt: skip
        print(f"[aligner] pretraining in sentences: {report['inline_pretraining']}", flush=True)
    base = work / "base"
    tokenizer.save_pretrained(base)
    model.save_pretrained(base)
    aligner_config = StreamAlignerConfig(instruction_template=PROMPT, prompt_wrapper="{instruction}",
                                         max_correction_tokens=args.max_correction_tokens, copy_bias=args.copy_bias,
                                         base_model="from scratch (examples/arithmetic/build_small_aligner.py)")  # fmt: skip
    trained = work / "aligner"
    config = AlignerTrainingConfig(output_dir=str(trained), overwrite_output_dir=True, num_train_epochs=args.epochs,
                                   learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
                                   warmup_steps=0.03, weight_decay=0.01, max_length=args.max_length, seed=args.seed,
                                   logging_steps=50, copy_bias=args.copy_bias, copy_bias_plain_weight=args.plain_weight,
                                   train_sampling_strategy="group_by_length",
                                   disable_tqdm=True if args.no_progress else None)  # fmt: skip
    result = step("training", train_aligner, base, work / "train.jsonl", config, aligner_config=aligner_config)
    report["training"] = {"steps": result.global_step, "loss": round(result.train_loss, 4),
                          "peak_rss_mib": round(result.peak_rss_mib)}  # fmt: skip
    from transformers import AutoModelForCausalLM

    # the same bare equations after training on the records: kept, or forgotten (docs/results.md)
    trained_model = AutoModelForCausalLM.from_pretrained(trained)
    report["training"]["held_out_accuracy"] = arithmetic_accuracy(trained_model, tokenizer)
    report["training"]["held_out_inline_accuracy"] = inline_accuracy(trained_model, tokenizer)
    to_float16(trained, "model.safetensors")
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    install(trained, Path(args.output), report)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
