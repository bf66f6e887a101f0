"""Every cut the library makes on its own (a sentence that reaches ``max_sentence_tokens`` without ending) falls
between two characters as a reader sees them: never inside a multi-byte character (U+FFFD would reach the aligner
and the answer), an emoji with its modifiers or ZWJ sequence, a flag, or a letter with its combining marks."""

import pytest
import regex
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from transformers_stream_aligner import stream_aligned_generate
from transformers_stream_aligner.runtime.boundary.tracker import SentenceTracker, find_token_boundary

from ..tiny_models import cached_tiny

TEXTS = {
    "emoji": "😀😀😀😀😀😀😀😀 ok",
    "zwj": "👨‍👩‍👧‍👦👩‍🔬👨‍👩‍👧‍👦🧑‍🤝‍🧑 ok",
    "modifiers": "👍🏽👋🏿🇫🇷🇯🇵👍🏽 ok",
    "cjk": "你好世界你好世界中文句子 ok",
    "combining": "e\u0301a\u0300o\u0308n\u0303e\u0301u\u0308 ok",
}


def _graphemes(text):
    return {m.start() for m in regex.finditer(r"\X", text)} | {len(text)}


def _cut(tok, ids, limit):
    """(the tracker's cut, find_token_boundary's cut as tokens arrive)."""
    tracker, tracked = SentenceTracker(tok, [], 0, max_sentence_tokens=limit), None
    for token in ids:
        if (tracked := tracker.push(token)) is not None:
            break
    exact = next((c for end in range(1, len(ids) + 1)
                  if (c := find_token_boundary(tok, ids, 0, end, final=False, max_sentence_tokens=limit)) is not None),
                 None)  # fmt: skip
    return tracked, exact


def _check_every_cut(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(regex.findall(r"\X", text))  # characters span several tokens
    boundaries = _graphemes(text)
    for limit in range(1, len(ids) - 3):
        tracked, exact = _cut(tok, ids, limit)
        assert tracked == exact is not None, (text, limit)
        head, rest = tok.decode(ids[:exact]), tok.decode(ids[exact:])
        assert head + rest == text and "\ufffd" not in head + rest, (text, limit, head)
        assert len(head) in boundaries and exact >= limit, (text, limit, head)  # forward, between characters
    # the whole span at once (a draft longer than the limit) gets the cut the tokens had as they arrived
    for limit in range(1, len(ids) - 3):
        assert find_token_boundary(tok, ids, 0, len(ids), final=False, max_sentence_tokens=limit) == _cut(tok, ids, limit)[1]


@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_a_limit_cut_falls_between_characters_byte_level(kind):
    _, tok = cached_tiny("llama")  # byte-level BPE: an emoji is up to 4 tokens
    _check_every_cut(tok, TEXTS[kind])


@pytest.mark.smollm2
@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_a_limit_cut_falls_between_characters_smollm2(smollm2_tokenizer, kind):
    _check_every_cut(smollm2_tokenizer, TEXTS[kind])  # merges that join the bytes of neighbouring characters


class WriteCyclically(LogitsProcessor):
    """Forces the upstream to write ``ids`` over and over (picking up where the text so far leaves off)."""

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, input_ids, scores):
        scores = torch.full_like(scores, -1e9)
        for row in range(input_ids.shape[0]):
            tail = input_ids[row].tolist()
            j = next((k for k in range(len(self.ids) - 1, 0, -1) if tail[-k:] == self.ids[:k]), 0)
            scores[row, self.ids[j]] = 0.0
        return scores


@pytest.mark.parametrize("kind", sorted(TEXTS))
def test_neither_the_aligner_nor_the_answer_gets_half_a_character(kind):
    model, tok = cached_tiny("llama")
    text = TEXTS[kind].replace(" ok", "")
    seen = []

    def append_ok(question, prefix, last):
        seen.append(last)
        return last + " ok"

    ids = tok("The cat is", return_tensors="pt").input_ids
    write = tok(text, add_special_tokens=False)["input_ids"]
    for limit in range(2, 10):
        out = stream_aligned_generate(model, ids, aligner=append_ok, tokenizer=tok, max_new_tokens=30, do_sample=False,
                                      max_sentence_tokens=limit, logits_processor=LogitsProcessorList([WriteCyclically(write)]),
                                      return_dict_in_generate=True)  # fmt: skip
        answer = tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True)
        for record in out.alignment_trace[0][:-1]:  # every piece but the last, which the budget may end mid-character
            assert "\ufffd" not in record.original_text and "\ufffd" not in record.corrected_text, (limit, record)
        assert answer.count("\ufffd") <= 1 and (answer.count("\ufffd") == 0 or answer.endswith("\ufffd")), (limit, answer)
    pieces = [s for s in seen if "\ufffd" not in s]
    assert pieces == seen and all(regex.fullmatch(r"(\X)+", s) for s in seen)
    for s in seen:  # each sentence the aligner saw is whole characters of the text written
        shown = {g for g in regex.findall(r"\X", s.replace(" ok", "")) if not g.isspace()}
        assert shown and shown <= set(regex.findall(r"\X", text)), s
