"""Sentence boundaries on token ids: where a sentence's tokens end inside a generated sequence.

Text rules live in :mod:`.sentence_splitter`; this module maps them onto token positions. A cut is
only placed on a token boundary whose text after the sentence end is whitespace, so no token is
ever split and the text of the pieces concatenates back to the decoded sequence exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .sentence_splitter import DEFAULT_TERMINATORS, find_sentence_end

__all__ = ["decode_span", "find_token_boundary"]


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
    tokens without ending is cut at ``end``.
    """
    if end <= start:
        return None
    text = decode_span(tokenizer, ids, start, end)
    content_end = len(text.rstrip())
    pos = 0
    while True:
        p = find_sentence_end(text, pos, final=final, terminators=terminators)
        if p is None:
            break
        if p >= content_end:
            return end if final else _first_cut_at_or_after(tokenizer, ids, start, end, text, p)
        cut = _first_cut_at_or_after(tokenizer, ids, start, end, text, p)
        if cut is not None:
            return cut
        pos = p  # the token crossing this end also holds the next sentence's start: merge them
    if final:
        return end
    if max_sentence_tokens is not None and end - start >= max_sentence_tokens:
        return end
    return None
