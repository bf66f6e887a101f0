"""Arithmetic claims in many written forms, right and wrong, and non-arithmetic questions: held-in and held-out.

The precise aligner must leave right sentences alone, whatever their form, and fix wrong results. This module makes
the sentences to teach and to test that on:

* :func:`make_claims` - single sentences claiming ``a op b = c`` (sums, differences, products, quotients, chains of
  three terms) written plainly, with unusual spacing (``45 -40 = 5``), in currency (``$24 + $40 = $64``), with
  thousands separators, with decimals, or in words. Each claim comes right and, for a share of them, wrong (a
  near-miss result); its right form is known by construction, so a judge needs no parser. Operands are split by a
  hash as problems are (:class:`~.task.ArithmeticProblem`), and the sentence **frames** are split too: held-out
  claims use frames the training data never shows.
* :func:`other_questions` - non-arithmetic questions (tips, explanations, lists, how-tos) on topics split the same
  way: the aligner must change nothing in the answers to them.

>>> c = make_claims(3, seed=1, split="test")[0]
>>> c.split, c.right != c.last or not c.wrong
('test', True)
>>> len(other_questions("train")), len(other_questions("test"))
(88, 88)
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from fractions import Fraction

from .task import PROBES, _near_miss, worked_product

__all__ = ["Claim", "judge_claim", "make_claims", "other_questions", "precise_correction"]

STYLES = ("plain", "spacing", "currency", "thousands", "decimal", "chain", "words")
_OPS = ("+", "-", "*", "/")
_SYM = {"+": ["+"], "-": ["-"], "*": ["*", "×", " * ", " × "], "/": ["/", "÷"]}
_WORD = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
_UNITS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells", "cookies", "stamps"]

# Sentence frames: {claim} is the claim, {unit} what it counts. Held-out claims use frames the training data never has.
_FRAMES = {
    "train": [
        "{claim}.",
        "So, {claim}.",
        "We get {claim}.",
        "First, {claim}.",
        "The answer is {claim}.",
        "Altogether, {claim} {unit}.",
        "To find the total, we compute {claim}.",
        "1. {claim}.",
    ],
    "test": [
        "That gives {claim}.",
        "Next, {claim} in all.",
        "Step 2: {claim}.",
        "Therefore {claim}, which is the answer.",
        "- {claim} {unit} are left over.",
        "Adding it up: {claim}.",
        "We know that {claim}.",
    ],
}


@dataclasses.dataclass(frozen=True)
class Claim:
    """One sentence claiming a result. ``last`` is the sentence as given, ``right`` its right form, ``wrong`` whether
    ``last`` states a wrong result; ``value`` is the right result; ``question`` the question it answers."""

    question: str
    last: str
    right: str
    wrong: bool
    value: Fraction
    style: str
    op: str
    split: str


def _split_of(key: str) -> str:
    return "test" if zlib.crc32(key.encode()) % 5 == 0 else "train"


def _fmt(value: Fraction, style: str) -> str:
    if style == "decimal":
        return f"{float(value):.2f}".rstrip("0").rstrip(".")
    if value.denominator != 1:
        return f"{float(value):.2f}".rstrip("0").rstrip(".")
    n = value.numerator
    return f"{n:,}" if style == "thousands" else str(n)


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction:
    return a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b


def _operands(op: str, style: str, rng: random.Random) -> tuple[Fraction, Fraction]:
    if style == "thousands":
        a, b = rng.randint(1000, 9999), rng.randint(100, 9999)
        if op in "*/":
            b = rng.randint(2, 9)
    elif style == "decimal":
        a = Fraction(rng.randint(5, 999), rng.choice([10, 100]))
        b = Fraction(rng.randint(5, 999), rng.choice([10, 100]))
        if op in "*/":
            b = Fraction(rng.randint(2, 9))
    else:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if op == "*" and rng.random() < 0.25:
            a = rng.randint(100, 999)  # a three-digit operand: a right one must be kept, not worked out
    a, b = Fraction(a), Fraction(b)
    if op == "/":
        a = a * b  # a whole quotient
    if op == "-" and a < b:
        a, b = b, a
    return a, b


def _near(value: Fraction, style: str, rng: random.Random) -> Fraction:
    if value.denominator != 1 or style == "decimal":
        return value + Fraction(rng.choice([-1, 1]) * rng.choice([1, 10, 100]), rng.choice([10, 100]))
    return Fraction(_near_miss(int(value), rng))


def _claim_text(a: Fraction, op: str, b: Fraction, c: Fraction, style: str, rng: random.Random, third: Fraction | None) -> str:
    f = lambda v: _fmt(v, style)  # noqa: E731
    if style == "words":
        return f"{f(a)} {_WORD[op]} {f(b)} is {f(c)}"
    sym = rng.choice(_SYM[op])
    if style == "currency":
        sym = f" {sym.strip()} "
        return f"${f(a)}{sym}${f(b)} = ${f(c)}"
    if style == "spacing":
        left, right = rng.choice([(" ", ""), ("", " "), ("", ""), ("  ", " ")])
        eq = rng.choice(["=", " =", "= ", " = "])
        return f"{f(a)}{left}{sym.strip()}{right}{f(b)}{eq}{f(c)}"
    if style == "chain" and third is not None:
        sym = f" {sym.strip()} "
        return f"{f(a)}{sym}{f(b)} + {f(third)} = {f(c)}"
    return f"{f(a)}{sym}{f(b)} = {f(c)}"


def make_claims(n: int, *, seed: int = 0, split: str = "train", wrong_fraction: float = 0.4) -> list[Claim]:
    """``n`` claims of ``split`` (operands and frames both held apart), a ``wrong_fraction`` share wrong (seeded).

    Styles cycle through :data:`STYLES`; operators through + - * /. A chain is ``a op b + d = c``. A product with a
    three-digit operand appears right or wrong, never with a worked form.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(seed * 7919 + (split == "test"))
    out: list[Claim] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * (n + 10):
            raise ValueError(f"could not draw {n} {split} claims")
        style = STYLES[len(out) % len(STYLES)]
        op = _OPS[(len(out) // len(STYLES)) % len(_OPS)]
        if style == "chain" and op == "/":
            op = "+"
        a, b = _operands(op, style, rng)
        if (int(a), op, int(b)) in PROBES or _split_of(f"{a}{op}{b}") != split:
            continue
        third = Fraction(rng.randint(2, 99)) if style == "chain" else None
        value = _apply(a, op, b) + (third or 0)
        if value < 0:
            continue
        wrong = rng.random() < wrong_fraction
        stated = _near(value, style, rng) if wrong else value
        if stated < 0:
            continue
        frame = rng.choice(_FRAMES[split])
        unit = rng.choice(_UNITS)
        last = frame.format(claim=_claim_text(a, op, b, stated, style, random.Random(attempts), third), unit=unit)
        right = frame.format(claim=_claim_text(a, op, b, value, style, random.Random(attempts), third), unit=unit)
        question = f"What is {_fmt(a, style)} {_WORD[op]} {_fmt(b, style)}" + (f" plus {_fmt(third, style)}?" if third else "?")
        out.append(Claim(question, last, right, wrong, value, style, op, split))
    return out


def precise_correction(claim: Claim) -> str:
    """The training target for ``claim``: the sentence itself when it is right; when it is wrong, its right form,
    with a product of two operands up to 99 (one of two digits, plain style) worked out by place value so that a
    small model can compute it (:func:`~.task.worked_product`; at most about 80 tokens)."""
    if not claim.wrong:
        return claim.last
    if claim.op == "*" and claim.style in ("plain", "spacing"):
        import re

        m = re.search(r"(\d+)(\s*)([*×])(\s*)(\d+)(\s*=\s*)(\d+)", claim.right)
        if m:
            a, b = int(m.group(1)), int(m.group(5))
            if max(a, b) < 100 and max(a, b) >= 10:
                sym = m.group(2) + m.group(3) + m.group(4)
                return claim.right[: m.start(7)] + worked_product(a, b, sym=sym) + claim.right[m.end(7) :]
    return claim.right


def judge_claim(claim: Claim, output: str) -> str:
    """How an aligner's ``output`` for ``claim`` came out: ``"kept"`` (unchanged), ``"fixed"`` (a wrong claim now
    right: its right form, or a worked form whose every step is right and that ends in the right value),
    ``"broken"`` (a right claim changed into anything but a right form), ``"changed_right"`` (a right claim
    rewritten but still right), ``"still_wrong"`` (a wrong claim kept or changed into another wrong one)."""
    from .task import _NUMBER, _to_fraction, every_step_right

    text = output.strip()
    unchanged = text == claim.last.strip()
    right = text == claim.right.strip()
    if not right and not unchanged:
        numbers = _NUMBER.findall(text.replace("$", ""))
        right = bool(numbers) and every_step_right(claim.question, text) and any(
            _to_fraction(x) == claim.value for x in numbers[-2:]
        )  # fmt: skip
    if claim.wrong:
        return "fixed" if right and not unchanged else "still_wrong"
    if unchanged:
        return "kept"
    return "changed_right" if right else "broken"


_TOPICS = {
    "train": {
        "tips": ["sleeping better", "learning a language", "keeping a plant alive", "running a first 5k",
                 "writing a cover letter", "cooking rice", "staying hydrated", "taking better photos",
                 "reading more books", "keeping a tidy desk", "saving energy at home", "learning to swim"],
        "explain": ["how a rainbow forms", "what photosynthesis is", "how vaccines work", "why leaves change colour",
                    "what a black hole is", "how a bicycle stays upright", "what inflation means", "how tides work",
                    "what DNA does", "how a compass works", "why we have time zones", "what a volcano is"],
        "list": ["uses of a rubber band", "animals that live in the desert", "healthy breakfast ideas",
                 "things to pack for a picnic", "famous bridges", "ways to reuse glass jars", "board games for families",
                 "fruits rich in vitamin C", "indoor hobbies", "musical instruments with strings"],
        "howto": ["fold a paper airplane", "clean a cast iron pan", "change a bike tire", "make a cup of tea",
                  "plant tomatoes", "write a haiku", "tie a tie", "start a journal", "brew coffee with a French press",
                  "wash a wool sweater"],
    },
    "test": {
        "tips": ["staying focused while studying", "public speaking", "keeping a budget", "sleeping on a plane",
                 "making new friends", "caring for a dog", "packing a suitcase", "drinking less coffee",
                 "growing herbs indoors", "memorizing names", "working from home", "learning to draw"],
        "explain": ["why the sky is blue", "how a refrigerator keeps food cold", "what gravity is",
                    "how bees make honey", "what causes thunder", "how the heart pumps blood", "what a calendar year is",
                    "why bread rises", "how recycling works", "what an echo is", "how a lighthouse works",
                    "why the moon has phases"],
        "list": ["uses of a paperclip", "birds that cannot fly", "vegetables that grow underground",
                 "things to do on a rainy day", "kinds of clouds", "ways to reduce plastic waste", "classic novels",
                 "sports played with a ball", "spices used in baking", "planets in the solar system"],
        "howto": ["boil an egg", "sew on a button", "wrap a present", "make a paper boat", "clean a window",
                  "set up a tent", "make lemonade", "iron a shirt", "plant a tree", "write a thank-you note"],
    },
}
_QUESTION_FORMS = {
    "tips": ["Give me three tips for {t}.", "What are some tips for {t}?"],
    "explain": ["Explain {t}.", "Can you explain {t} in simple terms?"],
    "list": ["Name three {t}.", "List four {t}."],
    "howto": ["How do I {t}?", "What are the steps to {t}?"],
}


def other_questions(split: str = "train") -> list[str]:
    """Non-arithmetic questions on the topics of ``split`` (the two splits share no topic), two forms each."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return [form.format(t=t) for kind, topics in _TOPICS[split].items() for t in topics for form in _QUESTION_FORMS[kind]]
