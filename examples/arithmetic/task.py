"""Arithmetic: seeded problems, an exact checker aligner and final-answer scoring.

The task of the project's trained demo aligner. Problems are bare expressions ("What is 17*23?") and short
word problems with 1-2 digit operands and one of + - x /. Every operand triple belongs to exactly one split
(a hash of ``a op b``), so held-out problems are never seen in training, whatever the seeds.

:func:`check_arithmetic` is an *exact* aligner: it recomputes every result it can verify and changes nothing
else. It fixes

* written claims ``a op b = c`` (also chains ``17*23 = 17*20 + 17*3 = 340 + 51 = 381``: a chain claims that
  every side equals its first expression; bare numbers that do not are set to its value, expressions are
  left as written) and worded ones ("17 times 23 is 381", "the sum of
  45 and 19 is 54");
* statements of the final result when the operands are known from the question ("so the total is 45",
  "Tom has 45 apples now"): a number that follows *answer/total/result/...* or names the problem's unit
  and is neither an operand nor the right value is replaced by the right value.

>>> check_arithmetic("What is 17*23?", "", "17*23 = 381.")
'17*23 = 391.'
>>> check_arithmetic("What is 45 + 19?", "45 plus 19 is 64.", "So the answer is 63.")
'So the answer is 64.'
>>> p = make_problems(3, seed=0, split="test")[0]
>>> p.split, parse_problem(p.question) == p
('test', True)
>>> final_answer("17*23 = 17*20 + 17*3 = 340 + 51 = 391. The answer is 391.")
391.0
"""

from __future__ import annotations

import dataclasses
import random
import re
import zlib
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

__all__ = [
    "PROBES",
    "annotate_calculations",
    "ArithmeticProblem",
    "check_arithmetic",
    "check_arithmetic_precise",
    "check_arithmetic_worked",
    "every_step_right",
    "final_answer",
    "involves_probe",
    "judge_sentence",
    "is_correct",
    "make_problems",
    "parse_problem",
    "synthetic_product_claims",
    "worked_product",
]

_OP_CANON = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "x": "*", "×": "*", "/": "/", "÷": "/"}
_OP = r"[+\-−–*x×/÷]"
_NUM = r"\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+(?:\.\d+)?"
_EXPR = rf"-?(?:{_NUM})(?:\s*{_OP}\s*(?:{_NUM}))*"
# A chain "expr = expr (= expr)*", not glued to a word, a decimal point or another operator.
_CHAIN = re.compile(rf"(?<![\w.,]){_EXPR}(?:\s*=\s*{_EXPR})+(?![\d]|\.\d)")
_NUMBER = re.compile(rf"-?(?:{_NUM})")
_WORD_OPS = {
    "plus": "+", "added to": "+", "minus": "-", "less": "-", "take away": "-",
    "times": "*", "multiplied by": "*", "divided by": "/", "over": "/",
}  # fmt: skip
_WORD_VERB = r"(?:is|equals|is equal to|=|gives|makes|gives us|results in)"
_WORD_CLAIM = re.compile(
    rf"(?<![\w.,])(\d+)\s+({'|'.join(_WORD_OPS)})\s+(\d+)\s*,?\s+"
    rf"{_WORD_VERB}\s+(-?(?:{_NUM}))(?![\d]|\.\d|\s*{_OP}\s*\d)",
    re.IGNORECASE,
)
_NAMED_CLAIM = re.compile(
    rf"\b(sum|difference|product|quotient)\s+(?:of|between)\s+(\d+)\s+and\s+(\d+)\s*,?\s+{_WORD_VERB}\s+(-?(?:{_NUM}))(?![\d]|\.\d|\s*{_OP}\s*\d)",
    re.IGNORECASE,
)
_NAMED_OPS = {"sum": "+", "difference": "-", "product": "*", "quotient": "/"}
# "17*23 is 391", "30*19 is equal to 519": an expression with at least one operator, a verb, a number.
_VERBAL_CHAIN = re.compile(
    rf"(?<![\w.,])(-?(?:{_NUM})(?:\s*{_OP}\s*(?:{_NUM}))+)\s+(?:is equal to|is equivalent to|equals|is|gives|makes)\s+"
    rf"(-?(?:{_NUM}))(?![\d]|\.\d|\s*{_OP}\s*\d)"
)
# "add 21 to 37, which gives us 38", "multiply 22 by 15 to get 315", "subtracting 48 from 81 gives 22".
_VERB_CLAIM = re.compile(
    rf"\b(add|adding|multiply|multiplying|subtract|subtracting|divide|dividing)\s+(\d+)\s+(and|to|by|from)\s+(\d+)"
    rf"[^.?!\d]{{0,25}}?\b(?:to get|to find|gives|gives us|gives you|results in|which is|we get|you get|equals|is)\s+"
    rf"(-?(?:{_NUM}))(?![\d]|\.\d|\s*{_OP}\s*\d)",
    re.IGNORECASE,
)
# "So, 1111 is the answer."
_IS_ANSWER = re.compile(rf"(-?(?:{_NUM}))\s+is\s+(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|result|total)\b", re.IGNORECASE)
_RESULT_WORDS = re.compile(
    r"\b(?:answer|total|result|sum|difference|product|quotient|altogether|in all)\b",
    re.IGNORECASE,
)

_NAMES = ["Tom", "Anna", "Sam", "Mia", "Leo", "Zoe", "Ben", "Ella"]
_UNITS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells"]
# One template per operator; {unit} is what the answer counts.
_WORD_TEMPLATES = {
    "+": "{name} has {a} {unit} and gets {b} more. How many {unit} does {name} have now?",
    "-": "{name} had {a} {unit} and gave away {b}. How many {unit} are left?",
    "*": "There are {a} boxes with {b} {unit} in each box. How many {unit} are there in total?",
    "/": "{a} {unit} are shared equally among {b} friends. How many {unit} does each friend get?",
}
_BARE_TEMPLATES = ["What is {a} {sym} {b}?", "Compute {a}{sym}{b}.", "How much is {a} {sym} {b}?"]
_SYMBOLS = {"+": ["+"], "-": ["-"], "*": ["*", "×"], "/": ["/", "÷"]}


@dataclasses.dataclass(frozen=True)
class ArithmeticProblem:
    """One problem: ``a op b`` asked as ``question``; ``unit`` is what a word problem's answer counts."""

    a: int
    op: str
    b: int
    question: str
    unit: str | None = None

    @property
    def answer(self) -> Fraction:
        return _apply(Fraction(self.a), self.op, Fraction(self.b))

    @property
    def split(self) -> str:
        """``"test"`` for one operand triple in five (by a hash of ``a op b``), else ``"train"``."""
        return "test" if zlib.crc32(f"{self.a}{self.op}{self.b}".encode()) % 5 == 0 else "train"


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b


def draw_operands(op: str, rng: random.Random) -> tuple[int, int]:
    """Operands of one problem as :func:`make_problems` draws them: 2-99; a division's dividend and divisor with a
    whole quotient; a subtraction's result not negative. Advances ``rng``.

    >>> a, b = draw_operands("/", random.Random(0)); a % b == 0 and 2 <= b <= 49 and a <= 99
    True
    """
    if op == "/":
        b = rng.randint(2, 49)
        return b * rng.randint(2, 99 // b), b
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return (b, a) if op == "-" and a < b else (a, b)


def make_problems(n: int, *, seed: int = 0, split: str = "train", word_fraction: float = 0.5) -> list[ArithmeticProblem]:
    """``n`` distinct problems of one split, seeded: operators equally often, operands 2-99 (a division's
    dividend and divisor too, with a whole quotient; a subtraction's result is not negative).

    Args:
        n: how many.
        seed: the random seed (same seed, same list).
        split: ``"train"`` (held-in) or ``"test"`` (held-out); no operand triple is in both.
        word_fraction: the share of word problems (the rest are bare expressions).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(seed)
    out: list[ArithmeticProblem] = []
    seen: set[tuple[int, str, int]] = set()
    ops = ["+", "-", "*", "/"]
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * (n + 10):
            raise ValueError(f"could not draw {n} distinct {split} problems (about 60 divisions exist in 'test')")
        op = ops[len(out) % 4]
        a, b = draw_operands(op, rng)
        key = (a, op, b)
        probe = ArithmeticProblem(a, op, b, "")
        if key in seen or probe.split != split:
            continue
        seen.add(key)
        if rng.random() < word_fraction:
            unit = rng.choice(_UNITS)
            q = _WORD_TEMPLATES[op].format(name=rng.choice(_NAMES), a=a, b=b, unit=unit)
            out.append(ArithmeticProblem(a, op, b, q, unit))
        else:
            q = rng.choice(_BARE_TEMPLATES).format(a=a, b=b, sym=rng.choice(_SYMBOLS[op]))
            out.append(ArithmeticProblem(a, op, b, q))
    return out


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for field, group in (("name", r"(?P<name>\w+)"), ("a", r"(?P<a>\d+)"), ("b", r"(?P<b>\d+)"), ("unit", r"(?P<unit>\w+)")):
        pattern = pattern.replace(re.escape("{" + field + "}"), group, 1)
        pattern = pattern.replace(re.escape("{" + field + "}"), rf"(?P={field})")
    return re.compile(pattern)


_WORD_PATTERNS = {op: _template_regex(t) for op, t in _WORD_TEMPLATES.items()}
_QUESTION_EXPR = re.compile(rf"(?<![\w.])(\d+)\s*({_OP})\s*(\d+)(?!\d|\.\d|\s*{_OP}\s*\d)")


def parse_problem(question: str) -> ArithmeticProblem | None:
    """The problem a question asks: one of :func:`make_problems`' word templates, or a question with one
    ``a op b`` expression in it. ``None`` if it is neither."""
    for op, pattern in _WORD_PATTERNS.items():
        m = pattern.fullmatch(question.strip())
        if m:
            return ArithmeticProblem(int(m["a"]), op, int(m["b"]), question, m["unit"])
    found = _QUESTION_EXPR.findall(question)
    if len(found) == 1:
        a, op, b = found[0]
        if _OP_CANON[op] == "/" and int(b) == 0:
            return None
        return ArithmeticProblem(int(a), _OP_CANON[op], int(b), question)
    return None


# ---------------------------------------------------------------------------------------------- checking
def _to_fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.2f}".rstrip("0").rstrip(".")


def _agrees(written: str, value: Fraction) -> bool:
    """``written`` states ``value`` to the precision it is written with (``3.33`` for 10/3 agrees)."""
    number = _to_fraction(written)
    decimals = len(written.split(".")[1]) if "." in written else 0
    return abs(number - value) <= Fraction(1, 2 * 10**decimals) if decimals else number == value


def _evaluate(expr: str) -> Fraction | None:
    """Value of ``NUM (OP NUM)*`` with the usual precedence; ``None`` on division by zero."""
    tokens = re.findall(rf"{_NUM}|{_OP}", expr.strip())
    negative = expr.strip().startswith("-") and tokens and tokens[0] in "-−–"
    if negative:
        tokens = tokens[1:]
    values = [_to_fraction(tokens[0]) * (-1 if negative else 1)]
    ops: list[str] = []
    for i in range(1, len(tokens), 2):
        op, num = _OP_CANON[tokens[i]], _to_fraction(tokens[i + 1])
        if op in "*/":
            if op == "/" and num == 0:
                return None
            values[-1] = _apply(values[-1], op, num)
        else:
            ops.append(op)
            values.append(num)
    total = values[0]
    for op, v in zip(ops, values[1:], strict=True):
        total = _apply(total, op, v)
    return total


def _is_bare(expr: str) -> bool:
    return _NUMBER.fullmatch(expr.strip()) is not None


def _claim_edits(text: str) -> list[tuple[int, int, str]]:
    """Edits ``(start, end, new)`` of the written and worded claims in ``text`` (:func:`_calculation_spans`); spans of
    checked claims are returned with ``new`` equal to the old text when they were right."""
    edits = []
    for start, end, expression in _calculation_spans(text):
        value = _evaluate(expression)
        if value is not None:  # unverifiable: a division by zero
            written = text[start:end]
            edits.append((start, end, written if _agrees(written, value) else _format(value)))
    return edits


def _result_spans(text: str, problem: ArithmeticProblem, taken: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans of final-result statements: a number after a result word (up to the end of its clause) or right before
    the problem's unit, that is not an operand and not inside a checked claim."""
    operands = {Fraction(problem.a), Fraction(problem.b)}
    candidates: list[re.Match[str]] = []
    for w in _RESULT_WORDS.finditer(text):
        clause_end = len(text)
        stop = re.search(r"[,;:!?]|\.(?!\d)", text[w.end() :])
        if stop:
            clause_end = w.end() + stop.start()
        candidates += list(_NUMBER.finditer(text, w.end(), clause_end))
    candidates += list(_IS_ANSWER.finditer(text))
    if problem.unit:
        candidates += list(re.finditer(rf"(-?(?:{_NUM}))\s+{re.escape(problem.unit)}\b", text))
    spans, done = [], set()
    for m in candidates:
        start, end = m.span(1) if m.re.groups else m.span()
        if start in done or any(s <= start < e for s, e in taken):
            continue
        done.add(start)
        if text[max(0, start - 1) : start].isalnum() or _to_fraction(text[start:end]) in operands:
            continue
        spans.append((start, end))
    return spans


def _result_edits(text: str, problem: ArithmeticProblem, taken: Sequence[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """Edits of the final-result statements (:func:`_result_spans`) that are not the answer."""
    answer = problem.answer
    return [(start, end, _format(answer)) for start, end in _result_spans(text, problem, taken)
            if not _agrees(text[start:end], answer)]  # fmt: skip


def check_arithmetic(question: str, prefix: str, last: str) -> str:
    """An exact arithmetic aligner: ``last`` with every wrong result it can verify recomputed (see the module
    docstring); nothing else changes. Usable wherever an aligner is accepted, e.g.
    ``model.generate(..., aligner=check_arithmetic)`` or ``stream-aligner build-dataset --corrector
    examples.arithmetic.task:check_arithmetic``.

    >>> check_arithmetic("Tom has 45 apples and gets 19 more. How many apples does Tom have now?", "",
    ...                  "So the total is 63, and Tom has 63 apples.")
    'So the total is 64, and Tom has 64 apples.'
    >>> check_arithmetic("What is 96 - 47?", "", "First, 96 - 40 = 56, then 56 - 7 = 48.")
    'First, 96 - 40 = 56, then 56 - 7 = 49.'
    """
    claims = _claim_edits(last)
    edits = [e for e in claims if last[e[0] : e[1]] != e[2]]
    problem = parse_problem(question)
    if problem is not None:
        taken = [(s, e) for s, e, _ in claims] + [(m.start(), m.end()) for m in _CHAIN.finditer(last)]
        edits += _result_edits(last, problem, taken)
    out, pos = [], 0
    for start, end, new in sorted(set(edits)):
        if start < pos:
            continue  # overlapping edits: the first one wins
        out.append(last[pos:start] + new)
        pos = end
    return "".join(out) + last[pos:]



def _calculation_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, expression)`` of every stated result :func:`check_arithmetic` verifies in ``text`` (claims, not
    final-result statements): the span of the result as written and the expression it claims to be the value of."""
    spans: list[tuple[int, int, str]] = []
    for m in _CHAIN.finditer(text):
        sides, pos = [], m.start()
        for part in re.split(r"(\s*=\s*)", m.group()):
            if part.strip() and part.strip() != "=":
                start = pos + (len(part) - len(part.lstrip()))
                sides.append((start, start + len(part.strip()), part.strip()))
            pos += len(part)
        first = next((side for _, _, side in sides if not _is_bare(side)), None)
        if first is None or _evaluate(first) is None:
            continue
        seen_expression = False
        for start, end, side in sides:
            if not _is_bare(side):
                seen_expression = True
            elif seen_expression:
                spans.append((start, end, first))
    for m in _WORD_CLAIM.finditer(text):
        spans.append((m.start(4), m.end(4), f"{m.group(1)} {_WORD_OPS[m.group(2).lower()]} {m.group(3)}"))
    for m in _NAMED_CLAIM.finditer(text):
        spans.append((m.start(4), m.end(4), f"{m.group(2)} {_NAMED_OPS[m.group(1).lower()]} {m.group(3)}"))
    for m in _VERB_CLAIM.finditer(text):
        verb, x, y, how = m.group(1).lower(), m.group(2), m.group(4), m.group(3).lower()
        if verb.startswith("subtract"):
            spans.append((m.start(5), m.end(5), f"{y} - {x}" if how == "from" else f"{x} - {y}"))
        elif how in ("by", "and") and not verb.startswith("add"):
            spans.append((m.start(5), m.end(5), f"{x} {'*' if verb.startswith('multipl') else '/'} {y}"))
        elif verb.startswith("add") and how in ("to", "and"):
            spans.append((m.start(5), m.end(5), f"{x} + {y}"))
    for m in _VERBAL_CHAIN.finditer(text):
        if _evaluate(m.group(1)) is not None:
            spans.append((m.start(2), m.end(2), m.group(1)))
    return spans


def annotate_calculations(question: str, prefix: str, last: str) -> str:
    """``last`` with every result :func:`check_arithmetic` would verify written as a calculation,
    ``<<expression=stated>>`` (right or wrong; ``$`` signs read past; a statement of the final result as the
    question's own ``a op b``), for an aligner that calls the library's
    calculator (``StreamAlignerConfig(calculator=True)``, :mod:`transformers_stream_aligner.aligners.calculator`):
    the corrector behind the calculator aligner's data. Everything else is kept as written; expanding the
    calculations gives :func:`check_arithmetic`'s claim corrections.

    >>> annotate_calculations("", "", "So, 58 - 37 = 15 left, and 45 plus 19 is 64.")
    'So, 58 - 37 = <<58 - 37=15>> left, and 45 plus 19 is <<45 + 19=64>>.'
    >>> annotate_calculations("", "", "That is $24 + $40 = $68, then subtract 37 from 58 to get 21.")
    'That is $24 + $40 = $<<24 + 40=68>>, then subtract 37 from 58 to get <<58 - 37=21>>.'
    >>> annotate_calculations("Sam had 85 coins and gave away 41. How many coins are left?", "", "So Sam has 21 coins left.")
    'So Sam has <<85 - 41=21>> coins left.'
    >>> annotate_calculations("", "", "2. Keep a regular schedule.")
    '2. Keep a regular schedule.'
    """
    kept = [i for i, ch in enumerate(last) if ch != "$"]  # positions in ``last`` of the characters of ``bare``
    bare = "".join(last[i] for i in kept)
    spans = _calculation_spans(bare)
    problem = parse_problem(question)
    if problem is not None:
        taken = [(s, e) for s, e, _ in spans] + [(m.start(), m.end()) for m in _CHAIN.finditer(bare)]
        sym = {"+": "+", "-": "-", "*": "*", "/": "/"}[problem.op]
        spans += [(s, e, f"{problem.a} {sym} {problem.b}") for s, e in _result_spans(bare, problem, taken)]
    out, pos = [], 0
    for start, end, expression in sorted(set(spans)):
        begin, stop = kept[start], kept[end - 1] + 1
        if begin < pos:
            continue  # overlapping claims: the first one wins
        out.append(last[pos:begin] + f"<<{expression}={last[begin:stop]}>>")
        pos = stop
    return "".join(out) + last[pos:]

# ------------------------------------------------------------------------------------- worked products
# The example; kept out of every training record so that the test on it measures generalisation.
PROBES: frozenset[tuple[int, str, int]] = frozenset({(17, "*", 23), (23, "*", 17)})
_PRODUCT_CLAIM = re.compile(rf"(?<![\w.,])(\d+)(\s*)([*x×])(\s*)(\d+)(\s*=\s*)(-?(?:{_NUM}))(?![\d]|\.\d|\s*[=*x×/÷+\-−–]\s*\d)")
# Text before a product that makes it part of a longer expression ("2 + 17*23 = 393"); "x" only as a word.
_OPERATOR_BEFORE = re.compile(r"(?:[=*×/÷+\-−–]|(?<![A-Za-z])x)\s*$")


def _parts(n: int) -> list[int]:
    """The non-zero place-value parts of ``n``: 17 -> [10, 7], 20 -> [20], 7 -> [7]."""
    return [p for p in (n - n % 10, n % 10) if p] or [0]


def worked_product(a: int, b: int, *, sym: str = "*") -> str:
    """The right-hand side of ``a*b = ...`` worked by place value, each step a one-digit product or a sum.

    >>> worked_product(17, 23)
    '17*20 + 17*3 = 10*20 + 7*20 + 10*3 + 7*3 = 200 + 140 + 30 + 21 = 340 + 51 = 391'
    >>> worked_product(27, 3, sym=" × ")
    '20 × 3 + 7 × 3 = 60 + 21 = 81'
    >>> worked_product(20, 30), worked_product(7, 8)
    ('600', '56')
    """
    op = sym  # as the claim wrote it: "*", " × " ...
    pa, pb = _parts(a), _parts(b)
    sides: list[str] = []
    if len(pb) == 2:
        sides.append(" + ".join(f"{a}{op}{y}" for y in pb))
        if len(pa) == 2:  # every one-digit product written out, then its value
            sides.append(" + ".join(f"{x}{op}{y}" for y in pb for x in pa))
            sides.append(" + ".join(str(x * y) for y in pb for x in pa))
        sides.append(" + ".join(str(a * y) for y in pb))
    elif len(pa) == 2:
        sides.append(" + ".join(f"{x}{op}{b}" for x in pa))
        sides.append(" + ".join(str(x * b) for x in pa))
    sides.append(str(a * b))
    return " = ".join(sides)


def check_arithmetic_worked(question: str, prefix: str, last: str) -> str:
    """:func:`check_arithmetic`, then every plain product claim ``a*b = c`` with an operand of two digits is
    shown worked (:func:`worked_product`), right or wrong: the corrector behind the shipped aligner's data. A
    one-step product of two-digit numbers is beyond a 135M model; one-digit products and sums are not.

    >>> check_arithmetic_worked("What is 17*23?", "", "17*23 = 381.")
    '17*23 = 17*20 + 17*3 = 10*20 + 7*20 + 10*3 + 7*3 = 200 + 140 + 30 + 21 = 340 + 51 = 391.'
    >>> check_arithmetic_worked("What is 17*23?", "", "So 17 × 23 = 391 in total, and 7 * 8 = 56.")
    'So 17 × 23 = 17 × 20 + 17 × 3 = 10 × 20 + 7 × 20 + 10 × 3 + 7 × 3 = 200 + 140 + 30 + 21 = 340 + 51 = 391 in total, and 7 * 8 = 56.'
    """
    fixed = check_arithmetic(question, prefix, last)

    def expand(m: re.Match[str]) -> str:
        a, b = int(m.group(1)), int(m.group(5))
        if (a < 10 and b < 10) or _OPERATOR_BEFORE.search(m.string, 0, m.start()):
            return m.group()
        sym = m.group(2) + m.group(3) + m.group(4)
        return f"{m.group(1)}{sym}{m.group(5)}{m.group(6)}{worked_product(a, b, sym=sym)}"

    return _PRODUCT_CLAIM.sub(expand, fixed)


def check_arithmetic_precise(question: str, prefix: str, last: str) -> str:
    """:func:`check_arithmetic`, then a product claim it *changed* (a wrong one) with both operands under 100 and one
    of two digits is shown worked (:func:`worked_product`); right claims, products with a larger operand and
    everything else stay as written. The corrector behind the precise aligner's data: change only what is wrong,
    show the work only where a small model needs it, and never more than about 80 tokens of it.

    >>> check_arithmetic_precise("What is 17*23?", "", "17*23 = 381.")
    '17*23 = 17*20 + 17*3 = 10*20 + 7*20 + 10*3 + 7*3 = 200 + 140 + 30 + 21 = 340 + 51 = 391.'
    >>> check_arithmetic_precise("What is 17*23?", "", "So 17 × 23 = 391, and 45+19 = 54.")
    'So 17 × 23 = 391, and 45+19 = 64.'
    >>> check_arithmetic_precise("What is 170*23?", "", "170*23 = 3920.")
    '170*23 = 3910.'
    """
    fixed = check_arithmetic(question, prefix, last)
    if fixed == last:
        return last

    def expand(m: re.Match[str]) -> str:
        a, b = int(m.group(1)), int(m.group(5))
        if m.group() in last or max(a, b) < 10 or max(a, b) > 99 or _OPERATOR_BEFORE.search(m.string, 0, m.start()):
            return m.group()
        sym = m.group(2) + m.group(3) + m.group(4)
        return f"{m.group(1)}{sym}{m.group(5)}{m.group(6)}{worked_product(a, b, sym=sym)}"

    return _PRODUCT_CLAIM.sub(expand, fixed)


def every_step_right(question: str, text: str) -> bool:
    """Whether every side of every chain in ``text`` has the value of its first (expressions included, unlike
    :func:`check_arithmetic`, which leaves expressions as written) and the checker would change nothing.

    >>> every_step_right("What is 17*23?", "17*23 = 17*20 + 17*3 = 340 + 51 = 391.")
    True
    >>> every_step_right("What is 17*23?", "17*23 = 17*20 + 17*3 = 340 + 41 = 391.")
    False
    """
    for m in _CHAIN.finditer(text):
        values = {_evaluate(side) for side in re.split(r"\s*=\s*", m.group()) if side.strip()}
        if len(values) != 1 or None in values:
            return False
    return check_arithmetic(question, "", text) == text


def judge_sentence(question: str, text: str) -> str:
    """The exact checker as a judge of one sentence: ``"wrong"`` when it would change a result or a step of a chain
    is wrong, ``"right"`` when it holds a claim the checker verified, ``"unchecked"`` when there is nothing to check
    (prose, list items). Used to mark sentences, never to correct them.

    >>> judge_sentence("What is 17*23?", "17*23 = 381."), judge_sentence("What is 17*23?", "17*23 = 391.")
    ('wrong', 'right')
    >>> judge_sentence("Give me three tips for sleeping better.", "2. Keep a regular schedule.")
    'unchecked'
    """
    if check_arithmetic(question, "", text) != text or not every_step_right(question, text):
        return "wrong"
    return "right" if _claim_edits(text) else "unchecked"


def involves_probe(text: str) -> bool:
    """Whether ``text`` writes one of :data:`PROBES` (``17*23``, ``23 × 17`` ...)."""
    for a, _, b in PROBES:
        if re.search(rf"(?<!\d){a}\s*(?:[*x×]|times)\s*{b}(?!\d)", text):
            return True
    return False


_CLAIM_TEMPLATES = [
    "{a}{s}{b} = {c}.",
    "So, {a}{s}{b} = {c}.",
    "The answer is {a}{s}{b} = {c}.",
    "{a}{s}{b} = {c}, so the answer is {c}.",
    "To find the total, we multiply: {a}{s}{b} = {c}.",
]
_WORD_CLAIM_TEMPLATES = [
    "There are {a} boxes with {b} {unit} in each, so there are {a}{s}{b} = {c} {unit} in total.",
    "To find the total number of {unit}, we multiply {a} by {b}: {a}{s}{b} = {c} {unit}.",
    "So the total is {a}{s}{b} = {c} {unit}.",
]


def _near_miss(value: int, rng: random.Random) -> int:
    """A wrong result of the kinds SmolLM2 writes: one digit off, a carry lost, a neighbour's product."""
    digits = list(str(value))
    kind = rng.randrange(4)
    if kind == 0:
        i = rng.randrange(len(digits))
        digits[i] = str((int(digits[i]) + rng.choice([1, 2, 8, 9])) % 10)
        wrong = int("".join(digits))
    elif kind == 1:
        wrong = value + rng.choice([-100, -10, 10, 100])
    elif kind == 2:
        wrong = value + rng.choice([-1, 1]) * rng.randint(2, 99)
    else:
        wrong = int(str(value)[:-1] or "0") if len(digits) > 1 else value + 1
    return wrong if wrong != value and wrong >= 0 else value + 10


def synthetic_product_claims(
    n: int, *, seed: int = 0, wrong_fraction: float = 0.7, split: str = "train", corrector: Any = None
) -> list[dict[str, str]]:
    """``n`` records ``{question, prefix, last, correction}`` whose last sentence claims a product of a
    problem of ``split`` (two operands 2-99, one of two digits; never one of :data:`PROBES`), wrong in
    ``wrong_fraction`` of them; the correction is ``corrector``'s (default :func:`check_arithmetic_worked`: every
    product worked out; :func:`check_arithmetic_precise`: only wrong ones), seeded. Held-in
    (``"train"``) ones are training data; held-out ones probe an aligner sentence by sentence.

    >>> r = synthetic_product_claims(1, seed=3)[0]
    >>> r["correction"] == check_arithmetic_worked(r["question"], r["prefix"], r["last"])
    True
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    while len(out) < n:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if max(a, b) < 10 or (a, "*", b) in PROBES or ArithmeticProblem(a, "*", b, "").split != split:
            continue
        c = _near_miss(a * b, rng) if rng.random() < wrong_fraction else a * b
        s = rng.choice(["*", "*", " * ", " × ", "×"])
        if rng.random() < 0.5:
            unit = rng.choice(_UNITS)
            question = _WORD_TEMPLATES["*"].format(name=rng.choice(_NAMES), a=a, b=b, unit=unit)
            last = rng.choice(_WORD_CLAIM_TEMPLATES).format(a=a, b=b, c=c, s=s, unit=unit)
        else:
            question = rng.choice(_BARE_TEMPLATES).format(a=a, b=b, sym=s.strip())
            last = rng.choice(_CLAIM_TEMPLATES).format(a=a, b=b, c=c, s=s)
        out.append({"question": question, "prefix": "", "last": last,
                    "correction": (corrector or check_arithmetic_worked)(question, "", last)})  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------- scoring
_RESULT_POSITION = re.compile(
    rf"(?:=|\b(?:is|are|equals|be|gets?|has|have|makes|gives|of)\b|\banswer\b\s*:?)\s*\**\s*\$?(-?(?:{_NUM}))(?![\d]|\.\d)",
    re.IGNORECASE,
)


def final_answer(answer: str) -> float | None:
    """The number an answer gives as its result: the last number in a result position (after ``=``, *is*,
    *equals*, *gets*, *has*, *answer:* ...), else the last number in the text; ``None`` if there is none."""
    found = _RESULT_POSITION.findall(answer)
    if not found:
        found = _NUMBER.findall(answer)
    return float(_to_fraction(found[-1])) if found else None


def is_correct(problem: ArithmeticProblem, answer: str) -> bool:
    """Whether ``answer``'s :func:`final_answer` is the problem's result (to two decimals for a division)."""
    value = final_answer(answer)
    return value is not None and abs(Fraction(value) - problem.answer) < Fraction(1, 200)
