"""The boundary stage: where a sentence's tokens end inside a generated sequence.

Text rules live in :mod:`.sentence_splitter`; this module maps them onto token positions. A cut is
only placed on a token boundary whose text after the sentence end is whitespace, so no token is
ever split and the text of the pieces concatenates back to the decoded sequence exactly.

* :func:`find_token_boundary` finds the first sentence end in a span of ids;
* :class:`SentenceTracker` finds the same cut while tokens arrive, with constant work per token (the
  stopping criterion of the transformers engine and any streaming engine use it);
* :func:`next_step` is the loop's question for one row: is its answer over, does it hold a complete sentence,
  or does the upstream have to generate more? :class:`Sentence` is the sentence it found, as text.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import regex

from .splitter import DEFAULT_TERMINATORS, find_sentence_end, scan_sentence_end, split_whitespace

__all__ = [
    "DEFAULT_MAX_SENTENCE_TOKENS",
    "Sentence",
    "SentenceStep",
    "SentenceTracker",
    "decode_span",
    "find_token_boundary",
    "next_step",
]

#: Where a sentence that never ends is cut (tokens), so that text without a terminator cannot run unaligned.
DEFAULT_MAX_SENTENCE_TOKENS = 256


def decode_span(tokenizer: Any, ids: Sequence[int], start: int, end: int) -> str:
    """Decode ``ids[start:end]`` as it reads inside the whole sequence.

    Decoding a slice on its own can lose a leading space (SentencePiece) that the same tokens show in
    context, so the token before ``start`` is decoded with it and its text removed again. Special
    tokens are skipped and tokenization spaces are not cleaned up.
    """
    if end <= start:
        return ""
    kw = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    if start > 0:
        context = tokenizer.decode(list(ids[start - 1 : start]), **kw)
        full = tokenizer.decode(list(ids[start - 1 : end]), **kw)
        if full.startswith(context):
            return full[len(context) :]
    return tokenizer.decode(list(ids[start:end]), **kw)


def _first_cut_at_or_after(tokenizer: Any, ids: Sequence[int], start: int, end: int, text: str, p: int) -> int | None:
    """Smallest token index ``k`` in ``(start, end]`` whose decoded prefix covers ``text[:p]`` with only
    whitespace beyond ``p``; ``None`` if the token that crosses ``p`` carries content past it."""
    # The sentence end is usually within the last couple of tokens: walk back from the end.
    k = end
    while k - 1 > start:
        shorter = decode_span(tokenizer, ids, start, k - 1)
        if len(shorter) < p or shorter[:p] != text[:p]:
            break
        k -= 1
    piece = decode_span(tokenizer, ids, start, k)
    if len(piece) < p or piece[:p] != text[:p] or piece[p:].strip():
        return None
    return k


def _cluster_starts(text: str) -> set[int]:
    """Offsets in ``text`` where a character as a reader sees it begins (a grapheme cluster: a letter with its
    combining marks, an emoji with its modifiers or a ZWJ sequence), excluding 0 and those whose first code point is
    not finished yet (U+FFFD, which a byte-level tokenizer shows for an unfinished UTF-8 sequence)."""
    return {m.start() for m in regex.finditer(r"\X", text) if m.start() > 0 and text[m.start()] != "\ufffd"}


def _whole_head(tokenizer: Any, ids: Sequence[int], start: int, k: int, text: str) -> str | None:
    """``ids[start:k]`` decoded, if that is a beginning of ``text`` (``ids[start:end]`` decoded) that does not stop
    inside a character (U+FFFD at its end); else ``None``."""
    head = decode_span(tokenizer, ids, start, k)
    return head if text.startswith(head) and not head.endswith("\ufffd") else None


def _cut_at_limit(tokenizer: Any, ids: Sequence[int], start: int, end: int, max_sentence_tokens: int | None) -> int | None:
    """The cut of a sentence ``ids[start:end]`` that has not ended but holds ``max_sentence_tokens`` tokens: the
    first token boundary from the limit on that falls between two characters as a reader sees them, never inside a
    multi-byte character (whose half would reach the aligner and the answer as U+FFFD) nor inside an emoji sequence
    or a letter with its combining marks.

    The cut moves forward, never back: the tokens before the limit stay in the sentence, the character that straddles
    the limit is finished by the tokens that complete it, and where tokens straddle characters the cut waits for the
    next boundary. Whether a boundary separates two characters depends on the character after it, so, as for a
    sentence end, the cut is known one character later (the look-ahead tokens start the next sentence): ``None``
    until then."""
    if max_sentence_tokens is None or end - start <= max_sentence_tokens:
        return None
    text = decode_span(tokenizer, ids, start, end)
    starts = _cluster_starts(text)
    for k in range(start + max_sentence_tokens, end):
        head = _whole_head(tokenizer, ids, start, k, text)
        if head is not None and len(head) in starts:
            return k
    return None


def _final_cut(tokenizer: Any, ids: Sequence[int], start: int, end: int, text: str) -> int:
    """The cut of the last piece of a row, ``ids[start:end]`` decoded as ``text``: ``end``, unless the piece ends
    inside a character (the budget or a stopping criterion stopped the upstream there): then the cut is the last
    token boundary before that unfinished character, which becomes a piece of its own that the aligner is not shown."""
    if not text.endswith("\ufffd"):
        return end
    for k in range(end - 1, max(start, end - 8), -1):
        head = _whole_head(tokenizer, ids, start, k, text)
        if head is not None and not text[len(head) :].strip("\ufffd"):
            return k
    return end


def find_token_boundary(
    tokenizer: Any,
    ids: Sequence[int],
    start: int,
    end: int,
    *,
    final: bool,
    terminators: str = DEFAULT_TERMINATORS,
    max_sentence_tokens: int | None = None,
) -> int | None:
    """Return the token index that ends the first sentence in ``ids[start:end]``, or ``None``.

    The sentence is ``ids[start:cut]``; tokens after ``cut`` (the look-ahead) belong to the next
    sentence. With ``final=True`` (end of answer or of the token budget) the remainder always forms
    a sentence, so the result is never ``None`` for non-empty input: a trailing whitespace-only tail
    stays with the last sentence. With ``max_sentence_tokens``, a sentence that reached that many
    tokens without ending is cut at the first boundary from there on between two characters (see
    :func:`_cut_at_limit`); a span longer than that (a draft) gets the cut the tokens would have had as they
    arrived, which is what :class:`SentenceTracker` gives.
    """
    if end <= start:
        return None
    if max_sentence_tokens is not None and end - start > max_sentence_tokens:
        for k in range(start + max_sentence_tokens + 1, end + 1):  # as the tokens arrived
            cut = _first_boundary(tokenizer, ids, start, k, False, terminators, max_sentence_tokens)
            if cut is not None:
                return cut
        if not final:
            return None
    return _first_boundary(tokenizer, ids, start, end, final, terminators, max_sentence_tokens)


def _first_boundary(
    tokenizer: Any, ids: Sequence[int], start: int, end: int, final: bool, terminators: str, max_sentence_tokens: int | None
) -> int | None:
    """:func:`find_token_boundary` on ``ids[start:end]`` as if no token came after ``end``."""
    text = decode_span(tokenizer, ids, start, end)
    content_end = len(text.rstrip())
    pos = 0
    while True:
        p = find_sentence_end(text, pos, final=final, terminators=terminators)
        if p is None:
            break
        if p >= content_end:
            return _final_cut(tokenizer, ids, start, end, text) if final else _first_cut_at_or_after(tokenizer, ids, start, end, text, p)
        cut = _first_cut_at_or_after(tokenizer, ids, start, end, text, p)
        if cut is not None:
            return cut
        pos = p  # the token crossing this end also holds the next sentence's start: merge them
    if final:
        return _final_cut(tokenizer, ids, start, end, text)
    return _cut_at_limit(tokenizer, ids, start, end, max_sentence_tokens)


class SentenceTracker:
    """Finds where one sentence ends while its tokens arrive, with constant work per token.

    :func:`find_token_boundary` decodes and scans the whole sentence each time it is called, so calling
    it after every new token costs time that grows with the sentence. The tracker gives the same cut
    (``find_token_boundary(tokenizer, tokens, start, len(tokens), final=False, ...)``) but decodes only
    the newest token (``tokenizers``' ``DecodeStream``) and scans only the new text
    (:func:`~.sentence_splitter.scan_sentence_end`). Once the text shows a sentence end, the cut is
    placed by :func:`find_token_boundary` itself (once per sentence), which also checks that the
    incremental text is the text it decodes; if it ever is not, or the end is of the rare kind that
    merges with the next sentence, the tracker falls back to calling :func:`find_token_boundary` on
    every token for the rest of the sentence. Slow (Python) tokenizers always use that fallback.

    Args:
        tokenizer: the upstream tokenizer.
        tokens: the tokens so far: ``start`` tokens of context (0 or 1) then the sentence's tokens. The
            list is copied.
        start: index in ``tokens`` where the sentence starts.
        terminators, max_sentence_tokens: as in :func:`find_token_boundary`.

    Example:

        >>> from transformers import AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained("path/to/model")  # doctest: +SKIP
        >>> ids = tok(" It is 3.5 m long. Next", add_special_tokens=False).input_ids  # doctest: +SKIP
        >>> tracker = SentenceTracker(tok, [], 0)  # doctest: +SKIP
        >>> [tracker.push(t) for t in ids][-1] == len(ids) - 1  # the cut, before " Next"  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        tokenizer: Any,
        tokens: Sequence[int],
        start: int,
        *,
        terminators: str = DEFAULT_TERMINATORS,
        max_sentence_tokens: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokens = list(tokens)
        self.start = start
        self.terminators = terminators
        self.max_sentence_tokens = max_sentence_tokens
        self.text = ""
        self.resume = 0
        self.pending_from = start  # tokens from here on are not in ``text`` yet (an unfinished character)
        self._special = frozenset(getattr(tokenizer, "all_special_ids", None) or [])
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend
        self._stream = None
        self.exact = backend is None  # fall back to find_token_boundary on every token
        if not self.exact:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(ids=self.tokens[:start], skip_special_tokens=True)
            tokens, self.tokens = self.tokens, self.tokens[:start]
            for token in tokens[start:]:
                self.tokens.append(token)
                self._append(token)

    def _append(self, token: int) -> None:
        chunk = self._stream.step(self._backend, token)
        if chunk is not None:
            self.text += chunk
            self.pending_from = len(self.tokens)
        elif token in self._special and self.pending_from == len(self.tokens) - 1:
            self.pending_from = len(self.tokens)  # a skipped special token: nothing is waiting

    def _exact(self) -> int | None:
        return find_token_boundary(
            self.tokenizer,
            self.tokens,
            self.start,
            len(self.tokens),
            final=False,
            terminators=self.terminators,
            max_sentence_tokens=self.max_sentence_tokens,
        )

    def push(self, token: int | None = None) -> int | None:
        """Add ``token`` (``None``: only check the tokens given so far); return the cut or ``None``."""
        if token is not None:
            self.tokens.append(token)
            if not self.exact:
                self._append(token)
        if self.exact:
            return self._exact()
        # Tokens of an unfinished character are decoded as the full decode shows them (U+FFFD); that text
        # will change, so the scan position is kept only when nothing is waiting.
        pending = self.pending_from < len(self.tokens)
        text = self.text
        if pending:
            text += decode_span(self.tokenizer, self.tokens, self.pending_from, len(self.tokens))
        end, resume = scan_sentence_end(text, 0, self.resume, final=False, terminators=self.terminators)
        if not pending:
            self.resume = resume
        if end is not None:
            if decode_span(self.tokenizer, self.tokens, self.start, len(self.tokens)) != text:
                self.exact = True  # the incremental text drifted: be exact from now on
                return self._exact()
            cut = self._exact()
            if cut is None:
                self.exact = True  # the end shares a token with the next sentence: rare, be exact
            return cut
        return _cut_at_limit(self.tokenizer, self.tokens, self.start, len(self.tokens), self.max_sentence_tokens)


@dataclass(frozen=True)
class Sentence:
    """A complete sentence of a row: the tokens ``ids[start:cut]``, decoded in context as ``text``, which is
    ``lead + content + trail`` (the surrounding whitespace split off; ``content`` is what the aligner sees)."""

    start: int
    cut: int
    text: str
    lead: str
    content: str
    trail: str

    @classmethod
    def at(cls, tokenizer: Any, ids: Sequence[int], start: int, cut: int) -> Sentence:
        """The sentence ``ids[start:cut]`` (decoded with :func:`decode_span`). Does not mutate ``ids``."""
        text = decode_span(tokenizer, ids, start, cut)
        lead, content, trail = split_whitespace(text)
        return cls(start, cut, text, lead, content, trail)


@dataclass(frozen=True)
class SentenceStep:
    """What a row needs next (:func:`next_step`).

    ``kind`` is one of

    * ``"eos"``: the answer ended at ``eos_at`` (an EOS right at the sentence start): the tail ``ids[eos_at:]``
      is its last piece;
    * ``"finished"``: no more tokens will come and nothing is left to align;
    * ``"generate"``: the sentence is not complete yet, the upstream must generate more;
    * ``"sentence"``: ``ids[start:cut]`` is a complete sentence; ``final`` says that no more tokens follow it in
      this row (an EOS, the token budget or a stopping criterion ended it).
    """

    kind: str
    cut: int | None = None
    eos_at: int | None = None
    final: bool = False


def next_step(
    tokenizer: Any,
    ids: Sequence[int],
    start: int,
    *,
    eos_token_ids: Collection[int],
    stopped: bool,
    known_cut: int | None = None,
    terminators: str = DEFAULT_TERMINATORS,
    max_sentence_tokens: int | None = None,
) -> SentenceStep:
    """The next step of a row whose current sentence starts at ``ids[start]``.

    Args:
        tokenizer, terminators, max_sentence_tokens: as in :func:`find_token_boundary`.
        eos_token_ids: the upstream's end-of-answer tokens.
        stopped: no more tokens will be generated for this row (its budget is spent or a stopping criterion
            ended it): what it has is final.
        known_cut: the cut an upstream round already found for this sentence (not searched again).

    Does not mutate ``ids``.
    """
    eos_pos = next((i for i in range(start, len(ids)) if ids[i] in eos_token_ids), None)
    region_end = eos_pos if eos_pos is not None else len(ids)
    final = eos_pos is not None or stopped
    if start >= region_end:
        if eos_pos is not None:
            return SentenceStep("eos", eos_at=eos_pos, final=True)
        if final:
            return SentenceStep("finished", final=True)
    cut = known_cut
    if cut is None:
        cut = find_token_boundary(
            tokenizer,
            ids,
            start,
            region_end,
            final=final,
            terminators=terminators,
            max_sentence_tokens=max_sentence_tokens,
        )
    if cut is None:
        return SentenceStep("generate")
    return SentenceStep("sentence", cut=cut, final=final)
