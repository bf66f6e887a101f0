"""The prompt side: which question the aligner is told the upstream is answering.

``generate`` only sees token ids. When the caller does not pass ``aligner_question``, the question is
recovered from the prompt: if the upstream tokenizer has a chat template, the last user message is
cut out of the rendered prompt using the template's own turn markers (so a ``pipeline`` given chat
messages passes the user's message, not the system prompt and markup); otherwise the prompt decoded
without special tokens is the question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..tokens import longest_common_prefix

__all__ = ["question_from_prompt"]

_SENTINEL = "\u2063STREAM_ALIGNER_SENTINEL\u2063"


_MARKERS: dict[tuple[str, str | None, str | None], tuple[str, str] | None] = {}


def _user_turn_markers(tokenizer: Any) -> tuple[str, str] | None:
    """(text right before a user message, text right after it) for this chat template, or None."""
    key = (tokenizer.chat_template, getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None))
    if key not in _MARKERS:
        _MARKERS[key] = _find_user_turn_markers(tokenizer)
    return _MARKERS[key]


def _find_user_turn_markers(tokenizer: Any) -> tuple[str, str] | None:
    try:
        one = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        two = tokenizer.apply_chat_template(
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": _SENTINEL},
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # templates that need tools, strict alternation, etc.
        return None
    if _SENTINEL not in one or _SENTINEL not in two:
        return None
    head_one, head_two = one[: one.index(_SENTINEL)], two[: two.index(_SENTINEL)]
    tail_one, tail_two = one[one.index(_SENTINEL) + len(_SENTINEL) :], two[two.index(_SENTINEL) + len(_SENTINEL) :]
    before = head_one[len(head_one) - longest_common_prefix(head_one[::-1], head_two[::-1]) :]
    after = tail_one[: longest_common_prefix(tail_one, tail_two)]
    if not before.strip() or not after.strip():
        return None
    return before, after


def question_from_prompt(tokenizer: Any, prompt_ids: Sequence[int]) -> str:
    """The question the aligner should see for ``prompt_ids`` (see the module docstring)."""
    ids = list(prompt_ids)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        markers = _user_turn_markers(tokenizer)
        if markers is not None:
            before, after = markers
            rendered = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            start = rendered.rfind(before)
            if start >= 0:
                start += len(before)
                end = rendered.find(after, start)
                if end >= 0:
                    return rendered[start:end].strip()
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
