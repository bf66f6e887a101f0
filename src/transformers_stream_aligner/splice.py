"""The splice: put a corrected sentence in place of the original one, token-exactly.

A correction is tokenized with the *upstream* tokenizer, without added special tokens and with
special-token strings kept as plain text (an aligner that writes ``<|im_end|>`` cannot end the
upstream's turn). The original sentence's surrounding whitespace is re-attached, so paragraphs,
lists and code keep their layout. Only tokens after the longest common prefix of the original and
corrected ids need recomputing; :mod:`.cache` cuts the KV cache back to that prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["longest_common_prefix", "special_token_ids", "tokenize_plain_text"]


def longest_common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids the upstream treats as control tokens: special tokens and added tokens marked special."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for idx, tok in decoder.items():
        if getattr(tok, "special", False):
            ids.add(int(idx))
    return frozenset(ids)


def tokenize_plain_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as plain text: no BOS/EOS added, special-token strings not recognised.

    Raises ``ValueError`` if the result still contains a control token (a tokenizer that cannot split
    special tokens): aligner text must never become control tokens of the upstream.
    """
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    bad = special_token_ids(tokenizer).intersection(ids)
    if bad:
        names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(bad))
        raise ValueError(f"text {text!r} tokenizes to control token(s) {names} of the upstream")
    return list(ids)
