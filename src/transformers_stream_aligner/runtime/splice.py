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
    >>> from transformers_stream_aligner.runtime.boundary.tracker import Sentence
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

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..tokens import longest_common_prefix, special_token_ids, tokenize_plain_text
from .aligner_call import UnfinishedCorrection
from .boundary.tracker import Sentence, decode_span

__all__ = ["CorrectionCheck", "SpliceResult", "check_correction", "corrected_ids", "marker_token_ids", "splice_correction"]


@dataclass(frozen=True)
class CorrectionCheck:
    """The verdict on one correction: ``problem`` (``None`` if usable) and the corrected ids (with the sentence's
    whitespace), ``None`` when the correction is unusable or leaves the sentence unchanged; ``note``: why a usable
    answer still keeps the original sentence (a warning for the user)."""

    problem: str | None
    ids: list[int] | None
    note: str | None = None

    @property
    def unchanged(self) -> bool:
        return self.problem is None and self.ids is None


def check_correction(
    tokenizer: Any, answer: Any, sentence: Sentence, *, max_correction_tokens: int, ids: Sequence[int] | None = None
) -> CorrectionCheck:
    """Check the aligner's ``answer`` for ``sentence``: a non-empty string (surrounding whitespace ignored) of valid
    Unicode that stays plain text and has at most ``max_correction_tokens`` tokens. An
    :class:`~.aligner_call.UnfinishedCorrection` keeps the sentence (with a ``note``). With the row's ``ids``, the
    sentence's control and added tokens stay in the corrected ids (:func:`corrected_ids`). Does not mutate anything."""
    content = sentence.content
    if not isinstance(answer, str):
        return CorrectionCheck(f"the aligner returned {type(answer).__name__}, not str, for sentence {content!r}", None)
    if not answer.strip():
        return CorrectionCheck(f"the aligner returned empty text for sentence {content!r}", None)
    corrected = answer.strip()
    if corrected == content:
        return CorrectionCheck(None, None)
    if isinstance(answer, UnfinishedCorrection):
        return CorrectionCheck(
            None, None, f"the aligner did not finish its correction of sentence {content!r} (it reached its "
            f"max_correction_tokens without an EOS): {corrected[:200]!r}; keeping the original sentence",
        )  # fmt: skip
    try:
        corrected.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate: not text any tokenizer can take
        return CorrectionCheck(
            f"the aligner's correction of sentence {content!r} is not valid Unicode text ({err.reason} at "
            f"character {err.start}): {corrected[:200]!r}",
            None,
        )
    try:
        new_ids = corrected_ids(tokenizer, sentence.lead + corrected + sentence.trail, sentence, ids)
    except ValueError as err:
        return CorrectionCheck(f"the aligner's correction of sentence {content!r} is unusable: {err}", None)
    n_tokens = len(new_ids) - len(tokenize_plain_text(tokenizer, sentence.lead + sentence.trail))
    if n_tokens > max_correction_tokens:
        return CorrectionCheck(
            f"the aligner's correction of sentence {content!r} has {n_tokens} tokens, over "
            f"max_correction_tokens={max_correction_tokens}: {corrected[:200]!r}",
            None,
        )
    return CorrectionCheck(None, new_ids)


def marker_token_ids(tokenizer: Any) -> frozenset[int]:
    """Tokens that plain text never becomes (:func:`~..tokens.tokenize_plain_text`): special tokens and every added
    token (``<think>``, ``<tool_call>``, a chat template's markers)."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return special_token_ids(tokenizer) | frozenset(int(i) for i in added)


def corrected_ids(tokenizer: Any, text: str, sentence: Sentence, ids: Sequence[int] | None = None) -> list[int]:
    """The upstream's ids for the corrected sentence ``text`` (its whitespace included).

    ``text`` is plain text: tokenized with :func:`~..tokens.tokenize_plain_text`, it never becomes a control token.
    The aligner was shown the sentence as plain text too: special tokens are skipped, added tokens that are not
    special (``<think>``) appear as their text. So that a correction keeps what it leaves as shown, the sentence's
    marker tokens (:func:`marker_token_ids`) in ``ids[sentence.start:sentence.cut]`` stay where the correction keeps
    the text around them (a character diff of the shown and the corrected text): a skipped special token always stays,
    at the nearest edge of a stretch the aligner rewrote; a shown added token stays while its text is unchanged. The
    text between two kept markers keeps its original tokens where it is unchanged and is tokenized as plain text
    where it is not. Without ``ids``, or in a sentence without marker tokens, the whole text is tokenized. Does not
    mutate anything.
    """
    tokens = list(ids[sentence.start : sentence.cut]) if ids is not None else []
    markers = marker_token_ids(tokenizer)
    if not markers.intersection(tokens):
        return tokenize_plain_text(tokenizer, text)
    shown = sentence.text
    # The original as runs of ordinary tokens and single markers, each with its span in the shown text.
    bounds = [0] + [k for k in range(1, len(tokens)) if tokens[k] in markers or tokens[k - 1] in markers] + [len(tokens)]
    offsets = [len(decode_span(tokenizer, ids, sentence.start, sentence.start + k)) for k in bounds]
    if offsets[-1] != len(shown) or any(offsets[i] > offsets[i + 1] for i in range(len(offsets) - 1)):
        return tokenize_plain_text(tokenizer, text)  # the shown text does not split at the markers: no anchors
    opcodes = difflib.SequenceMatcher(None, shown, text, autojunk=False).get_opcodes()

    def kept_at(lo: int, hi: int) -> int | None:
        """Where the shown span ``[lo, hi)`` stands in ``text`` if the correction left it unchanged."""
        for tag, i1, i2, j1, _ in opcodes:
            if tag == "equal" and i1 <= lo and hi <= i2:
                return j1 + lo - i1
        return None

    def nearest(o: int) -> int:
        """Where the shown offset ``o`` stands in ``text``: inside a rewritten stretch, its nearer edge."""
        for tag, i1, i2, j1, j2 in opcodes:
            if i1 <= o <= i2:
                return j1 + o - i1 if tag == "equal" else (j1 if o - i1 <= i2 - o else j2)
        return len(text)

    out: list[int] = []
    at, last_bound, last_offset = 0, 0, 0  # position in text; the original bound and offset after the last kept marker
    for n in range(len(bounds) - 1):
        a, b, lo, hi = bounds[n], bounds[n + 1], offsets[n], offsets[n + 1]
        if not (b - a == 1 and tokens[a] in markers):
            continue
        where = nearest(lo) if lo == hi else kept_at(lo, hi)
        if where is None:
            continue  # a shown marker the aligner changed: its text goes with the text around it
        where = max(where, at)
        between = text[at:where]
        out += tokens[last_bound:a] if between == shown[last_offset:lo] else tokenize_plain_text(tokenizer, between)
        out.append(tokens[a])
        at, last_bound, last_offset = where + (hi - lo), b, hi
    rest = text[at:]
    out += tokens[last_bound:] if rest == shown[last_offset:] else tokenize_plain_text(tokenizer, rest)
    return out


@dataclass(frozen=True)
class SpliceResult:
    """A row's ids after a splice.

    Attributes:
        ids: the new ids: everything before the sentence, then the corrected ids (cut at ``max_length``).
        corrected_ids: the corrected ids as they stand in ``ids``.
        keep: how many of the old ids are still valid (``start`` + the longest common prefix of the original
            sentence and the correction): the engine keeps its state for them and recomputes the rest.
        truncated: the correction overran ``max_length`` and was cut: the row's token budget is spent.
    """

    ids: list[int]
    corrected_ids: list[int]
    keep: int
    truncated: bool = False


def splice_correction(
    ids: Sequence[int], sentence: Sentence, corrected_ids: Sequence[int], *, max_length: int, tokenizer: Any = None
) -> SpliceResult:
    """``corrected_ids`` in place of ``ids[sentence.start:]`` (the sentence and its look-ahead), the whole cut at
    ``max_length`` ids: a correction that overruns the token budget keeps what fits, and with ``tokenizer`` no
    half character (up to three more tokens go when the cut falls inside one). Does not mutate its inputs."""
    start = sentence.start
    corrected = list(corrected_ids)
    common = longest_common_prefix(ids[start : sentence.cut], corrected)
    if start + len(corrected) > max_length:
        room = max(0, max_length - start)
        whole = (k for k in range(room, max(0, room - 4), -1) if not _ends_inside_a_character(tokenizer, corrected[:k]))
        corrected = corrected[: next(whole, room) if tokenizer is not None else room]
        truncated = True
    else:
        truncated = False
    new = list(ids[:start]) + corrected
    return SpliceResult(new, corrected, min(start + common, len(new)), truncated)


def _ends_inside_a_character(tokenizer: Any, ids: Sequence[int]) -> bool:
    """Whether ``ids`` stop inside a character (a byte-level tokenizer's unfinished UTF-8 sequence: U+FFFD)."""
    return bool(ids) and tokenizer.decode(list(ids), skip_special_tokens=True).endswith("\ufffd")
