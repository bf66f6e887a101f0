"""Token-id helpers every stage shares: one id normalizer, one longest common prefix, control-token ids and
plain-text tokenization.

Example:

    >>> token_id_list(2, [2, 7], None)  # merged in order, without repeats
    [2, 7]
    >>> longest_common_prefix([5, 6, 7, 8], [5, 6, 9])
    2
    >>> longest_common_prefix("abc", "abd")  # any sequences
    2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["longest_common_prefix", "special_token_ids", "token_id_list", "tokenize_plain_text"]


def token_id_list(*values: Any) -> list[int]:
    """Token ids given as ``None``, an int, a tensor or a list (e.g. ``eos_token_id`` of a generation config
    or a tokenizer), as one list of ints: several values are merged in order, each id kept once."""
    ids: list[int] = []
    for value in values:
        if value is None:
            continue
        if hasattr(value, "flatten") and hasattr(value, "tolist"):  # a tensor
            value = value.flatten().tolist()
        for v in value if isinstance(value, (list, tuple, set, frozenset)) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return ids


def longest_common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common prefix of two sequences (token ids, strings, ...)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids the tokenizer treats as control tokens: special tokens and added tokens marked special."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for idx, tok in decoder.items():
        if getattr(tok, "special", False):
            ids.add(int(idx))
    return frozenset(ids)


#: A chat template that renders the first message's content and nothing else (see :func:`tokenize_plain_text`).
PLAIN_TEXT_TEMPLATE = "{{ messages[0]['content'] }}"


def tokenize_plain_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` as plain text: no BOS/EOS added, control-token strings (``"<|im_end|>"``) encoded as
    ordinary text.

    A ``transformers`` tokenizer does this with its own sanitizer, ``apply_chat_template(...,
    sanitize_control_tokens=True)`` on :data:`PLAIN_TEXT_TEMPLATE`, which leaves the tokenizer untouched: the
    ``split_special_tokens=True`` keyword instead flips a flag on the Rust tokenizer that every thread shares. Text
    without control-token strings gets the ids ``tokenizer(text, add_special_tokens=False)`` gives. Other objects
    are called as ``tokenizer(text, add_special_tokens=False, split_special_tokens=True)``.

    Raises ``ValueError`` if the result still contains a control token (a tokenizer that produces it from plain
    text): text from a model or a user must never become control tokens. Does not mutate anything.
    """
    if not text:
        return []
    if hasattr(tokenizer, "apply_chat_template"):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            chat_template=PLAIN_TEXT_TEMPLATE,
            tokenize=True,
            return_dict=False,
            sanitize_control_tokens=True,
        )
    else:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    bad = special_token_ids(tokenizer).intersection(ids)
    if bad:
        names = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(bad))
        raise ValueError(f"text {text!r} tokenizes to control token(s) {names}")
    return list(ids)
