r"""Which edits an aligner may make: ``StreamAlignerConfig.edits``.

An aligner that checks arithmetic has no business changing words. With ``edits="numbers"`` the aligner stage holds
it to that: a correction may differ from the sentence only in its numbers (a result, a sign, a decimal written out)
and, for a calculator aligner (:mod:`.aligner_calculator`), in the calculations it inserts. Anything else (a word
miscopied, text dropped, a sentence repeated until the token limit) is a copy error: the sentence is kept as it was
and the aligner stage returns it as a :class:`~.aligner.RejectedCorrection`. ``edits="any"`` (the default) leaves
the aligner's text alone.

The rule compares *skeletons*: the text with every number written as ``#`` and every complete calculation
``<<expression=stated>>`` counted as one number. While the aligner is still writing, :func:`may_edit_numbers_only`
tells whether its text so far can still end as an allowed correction, so a correction that has already broken the
rule (a loop that repeats part of the sentence, say) is stopped at once instead of running to
``max_correction_tokens``.

Example:

    >>> edits_numbers_only("So, 58 - 37 = 21 left.", "So, 58 - 37 = 15 left.")
    True
    >>> edits_numbers_only("Membrance can be fun.", "Memorizing names can be fun.")
    False
    >>> may_edit_numbers_only("The coins are <<80 - 40=40>> - 240 = <<240", "The coins are 240 - 240 = 0 coins.")
    True
    >>> may_edit_numbers_only("The coins are <<80 - 40=40>> - 240 = <<240 - 40=200>> - 240", "The coins are 240 - 240 = 0 coins.")
    False
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

from .calculator import CALCULATION

__all__ = ["EDITS", "EditRuleStoppingCriteria", "correct_with_rule", "edits_numbers_only", "kept_by_rule",
           "may_edit_numbers_only", "number_skeleton", "numbers_only_stop_rule"]  # fmt: skip

#: The values of ``StreamAlignerConfig.edits``.
EDITS = ("any", "numbers")

# A number: digits with ``,`` or ``.`` groups, and a minus sign when it stands at the start, after a space, ``=``, ``(``
# or ``$``.
_NUMBER = re.compile(r"(?:(?<![^\s=($])-)?\d+(?:[.,]\d+)*")
_MAX_GROWTH = 16  # digits a number may gain over the sentence's (the calculator's results have at most 15)
# What an unfinished calculation at the end of the text may hold so far.
_OPEN_CALCULATION = re.compile(r"<<[^<>=\n]*(?:=\s*\$?\s*-?[\d,]*(?:\.\d*)?\s*)?\Z")
_MAX_OPEN = 160


def number_skeleton(text: str) -> str:
    """``text`` with each complete calculation and each number written as ``#``. Pure.

    >>> number_skeleton("Add 83 and 58 to get <<83 + 58=141>> (-2.5 left, 1,200 in all).")
    'Add # and # to get # (# left, # in all).'
    """
    return _NUMBER.sub("#", CALCULATION.sub("0", text))


def _digits(text: str) -> list[int]:
    """The digit count of each number of ``text``, in order, a complete calculation counting as none."""
    return [sum(c.isdigit() for c in m.group()) for m in _NUMBER.finditer(CALCULATION.sub("0", text))]


def _numbers_bounded(text: str, sentence: str) -> bool:
    """Each number of ``text`` has at most 16 digits more than the sentence's number in its place (a number that
    only grows, ``1011111...``, is no correction)."""
    return all(n <= s + _MAX_GROWTH for n, s in zip(_digits(text), _digits(sentence), strict=False))  # a partial output has fewer


def edits_numbers_only(correction: str, sentence: str) -> bool:
    """Whether ``correction`` differs from ``sentence`` only in numbers and calculations (surrounding whitespace
    aside), and no number has grown by more than 16 digits. Pure."""
    correction, sentence = correction.strip(), sentence.strip()
    return number_skeleton(correction) == number_skeleton(sentence) and _numbers_bounded(correction, sentence)


def kept_by_rule(edits: str, sentence: str) -> bool:
    """Whether the rule ``edits`` leaves ``sentence`` only one allowed correction, the sentence itself: with
    ``"numbers"``, a sentence without a digit (and without a ``#`` or ``<<``, which the skeleton reads). Whatever the aligner
    wrote, the aligner stage would return the sentence, so it answers such a sentence without the model. Pure.

    >>> kept_by_rule("numbers", "Sleep is important."), kept_by_rule("numbers", "2. Sleep."), kept_by_rule("any", "Hi.")
    (True, False, False)
    """
    return edits == "numbers" and "<<" not in sentence and not any(c.isdigit() or c == "#" for c in sentence)


def correct_with_rule(edits: str, requests: Sequence[Any], correct: Callable[[list[Any]], list[str]]) -> list[str]:
    """One correction per request (``AlignmentRequest`` s): each sentence the rule ``edits`` can only keep
    (:func:`kept_by_rule`) is answered here, the others by one call of ``correct`` with them, in order (no call when
    every sentence is kept). Calls ``correct``; mutates nothing.

    >>> correct_with_rule("numbers", [type("R", (), {"last": s}) for s in ("Rest.", "2 + 2 = 5.")],
    ...                   lambda todo: [r.last.replace("5", "4") for r in todo])
    ['Rest.', '2 + 2 = 4.']
    """
    kept = [r.last.strip() if kept_by_rule(edits, r.last) else None for r in requests]
    todo = [r for r, out in zip(requests, kept, strict=True) if out is None]
    answers = iter(correct(todo) if todo else [])
    return [next(answers) if out is None else out for out in kept]


def may_edit_numbers_only(partial: str, sentence: str) -> bool:
    """Whether a correction that begins with ``partial`` can still end as one :func:`edits_numbers_only` allows:
    its skeleton is a beginning of the sentence's, once an unfinished calculation or number at its end is set aside.
    A number grown by more than 16 digits, an unfinished calculation that cannot be one (a stated result that is not
    a number, a second ``=`` or ``<<`` inside, longer than 160 characters) or
    extra text after the sentence's end is not. Pure.

    >>> may_edit_numbers_only("So, 4 + 64 = <<4 + 64=12 + 64", "So, 4 + 64 = 12 + 64 = 680.")
    False
    """
    text = partial.lstrip()
    start = text.rfind("<<")
    if start != -1 and text.find(">>", start) == -1:
        if text.endswith(">"):
            text = text[:-1]  # the first half of its ">>"
        if _OPEN_CALCULATION.match(text, start) is None or len(text) - start > _MAX_OPEN:
            return False
        text = text[:start] + "0"  # the calculation will stand for a number
    elif text.endswith("<"):
        text = text[:-1]  # the first half of a "<<"
    elif re.search(r"(?<![^\s=($])-\Z", text):
        text = text[:-1]  # the sign of a number still to come
    if not _numbers_bounded(text, sentence.strip()):
        return False
    skeleton = number_skeleton(text)
    target = number_skeleton(sentence.strip())
    if skeleton.endswith("#"):
        # The number may go on ("1" of "1,250") or be a calculation's stated result: the rest must still fit.
        return target.startswith(skeleton)
    if re.search(r"#[.,]\Z", skeleton) and target.startswith(skeleton[:-1]):
        return True  # "1," may become "1,250"; "2." may become "2.5"
    return target.startswith(skeleton)


def numbers_only_stop_rule(tokenizer: Any, sentence: str) -> Callable[[Sequence[int]], bool]:
    """The stop rule for one sentence (``AlignerDecoder.generate(stop_rules=...)``): ``True`` once the tokens the
    aligner wrote so far, decoded, can no longer become an allowed correction (:func:`may_edit_numbers_only`)."""

    def stop(ids: Sequence[int]) -> bool:
        return not may_edit_numbers_only(tokenizer.decode(list(ids), skip_special_tokens=True), sentence)

    return stop


class EditRuleStoppingCriteria(StoppingCriteria):
    """The same stop rules inside the stock ``generate`` (the aligner's fallback decoding): a row stops once its rule
    says so. ``rules``: one per row of the batch; ``prompt_length``: the padded prompt's width (the new tokens follow
    it). One instance per ``generate`` call: it remembers the rows it stopped and does not decode them again."""

    def __init__(self, rules: Sequence[Callable[[Sequence[int]], bool]], *, prompt_length: int) -> None:
        self.rules = list(rules)
        self.prompt_length = int(prompt_length)
        self.stopped = [False] * len(self.rules)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :].tolist()
        for b, (rule, row) in enumerate(zip(self.rules, new, strict=True)):
            self.stopped[b] = self.stopped[b] or rule(row)
        return torch.tensor(self.stopped, dtype=torch.bool, device=input_ids.device)
