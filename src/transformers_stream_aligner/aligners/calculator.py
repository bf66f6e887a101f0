r"""The aligner's calculator: arithmetic an aligner writes as ``<<expression=stated>>`` is evaluated, not guessed.

A small aligner finds *where* a sentence states a result and copies text well, but it cannot compute two-digit
arithmetic (docs/results.md). An aligner trained with ``StreamAlignerConfig(calculator=True)`` therefore writes each
result it checks as a calculation: the expression the sentence claims, and the result as the sentence states it,

    ``So, 58 - 37 = 15 left.``  ->  the aligner writes  ``So, 58 - 37 = <<58-37=15>> left.``

and this module turns the annotation into text (the way GSM8K's calculator annotations ``<<48/2=24>>`` are used
while sampling, and Toolformer's tool calls): the stated result is kept, character for character, when it is the
value of the expression to the precision it is written with (``<<45+19=64>>`` -> ``64``, ``<<10/3=3.33>>`` ->
``3.33``); otherwise the value replaces it, written in the stated result's style (thousands separators, a ``$``).
So a sentence whose results are right comes back exactly as it was, and only a wrong result changes.

It is the aligner stage's last step (:meth:`~.aligner.StreamAligner.correct`, :class:`~.vllm_aligner.VLLMAligner`),
before the correction is checked and spliced. Expressions are parsed here, never ``eval``-ed: numbers (``1,234``,
``2.5``, a ``$`` before them is ignored), ``+ - * / × ÷ x − –`` and parentheses, at most 16 numbers of at most 15
digits each. A correction with an annotation that is not one of those (or a stray ``<<``/``>>``) raises
:class:`CalculationError`: the aligner stage keeps the original sentence then.

Example:

    >>> expand_calculations("So, 58 - 37 = <<58-37=15>> left, and 45+19 = <<45+19=64>>.")
    'So, 58 - 37 = 21 left, and 45+19 = 64.'
    >>> expand_calculations("That is $<<1,250 + 2,500=3,700>> in all.")
    'That is $3,750 in all.'
    >>> expand_calculations("Each gets <<10 / 3=3.33>> cups.")
    'Each gets 3.33 cups.'
    >>> expand_calculations("No arithmetic here.")
    'No arithmetic here.'
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

from ..errors import CalculationError

logger = logging.getLogger(__name__)

__all__ = ["CALCULATION", "CalculationError", "calculate", "evaluate_expression", "expand_calculations", "format_result"]

#: One annotation: ``<<expression>>`` or ``<<expression=stated>>``.
CALCULATION = re.compile(r"<<([^<>=\n]*)(?:=([^<>=\n]*))?>>")
_MAX_NUMBERS = 16
_MAX_DIGITS = 15
_TOKEN = re.compile(r"\s*(?:(\d{1,3}(?:,\d{3})+(?![\d,])|\d+(?:\.\d+)?|\.\d+)|([-+*/×÷x−–()]))")
_CANON = {"+": "+", "-": "-", "−": "-", "–": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/", "(": "(", ")": ")"}
_STATED = re.compile(r"\s*(\$?)\s*(-?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?\s*")


def _tokens(expression: str) -> list[tuple[str, str]]:
    text = expression.replace("$", "").rstrip()
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise CalculationError(f"not an arithmetic expression: {expression!r}")
        number, op = m.groups()
        if number is not None:
            if len(number.replace(",", "").replace(".", "")) > _MAX_DIGITS:
                raise CalculationError(f"a number of more than {_MAX_DIGITS} digits in {expression!r}")
            out.append(("num", number.replace(",", "")))
        else:
            out.append(("op", _CANON[op]))
        pos = m.end()
    if not out:
        raise CalculationError("an empty calculation")
    if sum(kind == "num" for kind, _ in out) > _MAX_NUMBERS:
        raise CalculationError(f"more than {_MAX_NUMBERS} numbers in {expression!r}")
    return out


def evaluate_expression(expression: str) -> Fraction:
    """The exact value of an arithmetic expression (usual precedence, unary minus, parentheses), as a ``Fraction``.
    Raises :class:`CalculationError` for anything else.

    >>> evaluate_expression("17*23"), evaluate_expression("(2 + 3) × 4 - -1"), evaluate_expression("7 ÷ 2")
    (Fraction(391, 1), Fraction(21, 1), Fraction(7, 2))
    """
    tokens = _tokens(expression)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom(depth: int) -> Fraction:
        if depth > _MAX_NUMBERS:
            raise CalculationError(f"nested too deeply: {expression!r}")
        token = peek()
        if token is None:
            raise CalculationError(f"an expression ends too early: {expression!r}")
        kind, value = take()
        if kind == "num":
            return Fraction(value)
        if value == "-":
            return -atom(depth + 1)
        if value == "(":
            inner = sum_(depth + 1)
            if take_if(")"):
                return inner
        raise CalculationError(f"not an arithmetic expression: {expression!r}")

    def take_if(op: str) -> bool:
        if peek() == ("op", op):
            take()
            return True
        return False

    def product(depth: int) -> Fraction:
        value = atom(depth)
        while peek() in (("op", "*"), ("op", "/")):
            op = take()[1]
            right = atom(depth)
            if op == "/" and right == 0:
                raise CalculationError(f"a division by zero in {expression!r}")
            value = value * right if op == "*" else value / right
        return value

    def sum_(depth: int) -> Fraction:
        value = product(depth)
        while peek() in (("op", "+"), ("op", "-")):
            op = take()[1]
            right = product(depth)
            value = value + right if op == "+" else value - right
        return value

    result = sum_(0)
    if pos != len(tokens):
        raise CalculationError(f"not an arithmetic expression: {expression!r}")
    return result


def format_result(value: Fraction, *, decimals: int = 0, thousands: bool = False, currency: bool = False) -> str:
    """``value`` written as a stated result: a whole number as it is, otherwise rounded to ``max(decimals, 2)``
    places without trailing zeros; with ``thousands`` separators and a ``currency`` sign if asked.

    >>> format_result(Fraction(3750), thousands=True, currency=True), format_result(Fraction(10, 3))
    ('$3,750', '3.33')
    """
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value.denominator == 1:
        whole, frac = value.numerator, ""
    else:
        places = max(decimals, 2)
        scaled = round(value * 10**places)
        whole, rest = divmod(scaled, 10**places)
        frac = f"{rest:0{places}d}".rstrip("0")
    digits = f"{whole:,}" if thousands else str(whole)
    return ("$" if currency else "") + sign + digits + ("." + frac if frac else "")


def _agrees(value: Fraction, stated: re.Match[str]) -> bool:
    number = Fraction((stated.group(2) or "") + stated.group(3).replace(",", "") + ("." + stated.group(4) if stated.group(4) else ""))
    decimals = len(stated.group(4) or "")
    if not decimals:
        return number == value
    return abs(number - value) <= Fraction(1, 2 * 10**decimals)


def _expand_one(match: re.Match[str]) -> str:
    expression, stated = match.group(1), match.group(2)
    value = evaluate_expression(expression)
    if stated is None or not stated.strip():
        thousands = "," in expression
        return format_result(value, thousands=thousands)
    parsed = _STATED.fullmatch(stated)
    if parsed is None:
        raise CalculationError(f"the stated result {stated!r} is not a number")
    if _agrees(value, parsed):
        return stated.strip()
    return format_result(value, decimals=len(parsed.group(4) or ""), thousands="," in parsed.group(3) or "," in expression,
                         currency=bool(parsed.group(1)))  # fmt: skip


def expand_calculations(text: str, source: str = "") -> str:
    """``text`` with every ``<<expression=stated>>`` replaced by the stated result if it is right and by the value
    otherwise (``<<expression>>``: by the value). Raises :class:`CalculationError` for an annotation it cannot
    evaluate or a ``<<``/``>>`` left over (more of them than ``source``, the sentence corrected, has: a sentence may
    hold them as text). Pure: returns a new string."""
    out, pos = [], 0
    for m in CALCULATION.finditer(text):
        out.append(text[pos : m.start()])
        out.append(_expand_one(m))
        pos = m.end()
    out.append(text[pos:])
    result = "".join(out)
    if any(result.count(mark) > source.count(mark) for mark in ("<<", ">>")):
        raise CalculationError(f"an unfinished calculation in {text[:200]!r}")
    return result


def calculate(correction: str, sentence: str) -> str:
    """The aligner stage's use of :func:`expand_calculations`: the correction with its calculations done, or
    ``sentence`` (the original, kept, with a warning) when one of them cannot be evaluated. Pure.

    >>> calculate("17*23 = <<17*23=381>>.", "17*23 = 381."), calculate("x = <<two plus two>>.", "x = 5.")
    ('17*23 = 391.', 'x = 5.')
    """
    try:
        return expand_calculations(correction, sentence)
    except CalculationError as err:
        logger.warning("aligner correction of %r has a calculation that cannot be done (%s); keeping the sentence",
                       sentence[:80], err)  # fmt: skip
        return sentence
