"""The splice stage: check a correction and put it in place of the original sentence, token-exactly.

A correction is tokenized with the *upstream* tokenizer as plain text (no BOS/EOS added, special-token strings
kept as characters: an aligner that writes ``<|im_end|>`` cannot end the upstream's turn), with the original
sentence's surrounding whitespace re-attached, so paragraphs, lists and code keep their layout. The new ids
replace the sentence *and* its look-ahead (which was conditioned on the old text); only tokens after the
longest common prefix of the original and corrected ids need recomputing, which the engine's cache stage does.

Example (a stand-in tokenizer with one id per character):

    >>> class Chars:
    ...     all_special_ids = []
    ...     def __call__(self, text, **kw):
    ...         return {"input_ids": [ord(c) for c in text]}
    >>> from transformers_stream_aligner.boundary import Sentence
    >>> ids = [ord(c) for c in "Hi. 2+2=5. Ok"]
    >>> sentence = Sentence(3, 10, " 2+2=5.", " ", "2+2=5.", "")
    >>> check = check_correction(Chars(), "2+2=4.", sentence, max_correction_tokens=64)
    >>> check.problem, "".join(map(chr, check.ids))
    (None, ' 2+2=4.')
    >>> result = splice_correction(ids, sentence, check.ids, max_length=100)
    >>> "".join(map(chr, result.ids)), result.keep
    ('Hi. 2+2=4.', 8)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .boundary import Sentence
from .tokens import longest_common_prefix, tokenize_plain_text

__all__ = ["CorrectionCheck", "SpliceResult", "check_correction", "splice_correction"]


@dataclass(frozen=True)
class CorrectionCheck:
    """The verdict on one correction: ``problem`` (``None`` if usable) and the corrected ids (with the sentence's
    whitespace), ``None`` when the correction is unusable or leaves the sentence unchanged."""

    problem: str | None
    ids: list[int] | None

    @property
    def unchanged(self) -> bool:
        return self.problem is None and self.ids is None


def check_correction(tokenizer: Any, answer: Any, sentence: Sentence, *, max_correction_tokens: int) -> CorrectionCheck:
    """Check the aligner's ``answer`` for ``sentence``: a non-empty string (surrounding whitespace ignored) that stays
    plain text and has at most ``max_correction_tokens`` tokens. Does not mutate anything."""
    content = sentence.content
    if not isinstance(answer, str):
        return CorrectionCheck(f"the aligner returned {type(answer).__name__}, not str, for sentence {content!r}", None)
    if not answer.strip():
        return CorrectionCheck(f"the aligner returned empty text for sentence {content!r}", None)
    corrected = answer.strip()
    if corrected == content:
        return CorrectionCheck(None, None)
    try:
        ids = tokenize_plain_text(tokenizer, sentence.lead + corrected + sentence.trail)
    except ValueError as err:
        return CorrectionCheck(f"the aligner's correction of sentence {content!r} is unusable: {err}", None)
    n_tokens = len(ids) - len(tokenize_plain_text(tokenizer, sentence.lead + sentence.trail))
    if n_tokens > max_correction_tokens:
        return CorrectionCheck(
            f"the aligner's correction of sentence {content!r} has {n_tokens} tokens, over "
            f"max_correction_tokens={max_correction_tokens}: {corrected[:200]!r}",
            None,
        )
    return CorrectionCheck(None, ids)


@dataclass(frozen=True)
class SpliceResult:
    """A row's ids after a splice.

    Attributes:
        ids: the new ids: everything before the sentence, then the corrected ids (cut at ``max_length``).
        corrected_ids: the corrected ids as they stand in ``ids``.
        keep: how many of the old ids are still valid (``start`` + the longest common prefix of the original
            sentence and the correction): the engine keeps its state for them and recomputes the rest.
    """

    ids: list[int]
    corrected_ids: list[int]
    keep: int


def splice_correction(ids: Sequence[int], sentence: Sentence, corrected_ids: Sequence[int], *, max_length: int) -> SpliceResult:
    """``corrected_ids`` in place of ``ids[sentence.start:]`` (the sentence and its look-ahead), the whole cut at
    ``max_length`` ids (a correction that overruns the token budget keeps what fits). Does not mutate its inputs."""
    start = sentence.start
    corrected = list(corrected_ids)
    common = longest_common_prefix(ids[start : sentence.cut], corrected)
    new = list(ids[:start]) + corrected
    if len(new) > max_length:
        corrected = corrected[: max(0, max_length - start)]
        new = new[:max_length]
    return SpliceResult(new, corrected, min(start + common, len(new)))
