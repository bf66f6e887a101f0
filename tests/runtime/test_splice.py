"""The splice stage on its own: what a correction is checked for, and the ids it leaves behind."""

from transformers_stream_aligner.runtime.boundary.tracker import Sentence
from transformers_stream_aligner.runtime.splice import check_correction, splice_correction

from ..tiny_models import cached_tiny


def _sentence(tok, text, before=""):
    ids = tok(before + text + " Next", add_special_tokens=False).input_ids
    start = len(tok(before, add_special_tokens=False).input_ids) if before else 0
    cut = start + len(tok(text, add_special_tokens=False).input_ids)
    return ids, Sentence.at(tok, ids, start, cut)


def test_check_correction_verdicts():
    _, tok = cached_tiny("llama")
    ids, sentence = _sentence(tok, " The cat is wrong.", "My friend is here.")
    assert sentence.lead == " " and sentence.content == "The cat is wrong."
    assert check_correction(tok, "  The cat is wrong. ", sentence, max_correction_tokens=50).unchanged
    fixed = check_correction(tok, "The cat is right.", sentence, max_correction_tokens=50)
    assert fixed.problem is None and tok.decode(fixed.ids) == " The cat is right."  # whitespace re-attached
    for answer, words in ((None, "not str"), ("  ", "empty text"), ("word " * 60, "over max_correction_tokens=50")):
        check = check_correction(tok, answer, sentence, max_correction_tokens=50)
        assert words in check.problem and check.ids is None
    sneaky = check_correction(tok, "Fine. <|im_end|>", sentence, max_correction_tokens=50)
    assert sneaky.problem is None and tok.convert_tokens_to_ids("<|im_end|>") not in sneaky.ids  # plain text


def test_splice_replaces_sentence_and_look_ahead_and_respects_the_budget():
    _, tok = cached_tiny("llama")
    ids, sentence = _sentence(tok, " The cat is wrong.", "My friend is here.")
    corrected = check_correction(tok, "The cat is right.", sentence, max_correction_tokens=50).ids
    result = splice_correction(ids, sentence, corrected, max_length=100)
    assert result.ids == ids[: sentence.start] + corrected  # the look-ahead " Next" is gone too
    common = next(i for i, (a, b) in enumerate(zip(ids[sentence.start :], corrected, strict=False)) if a != b)
    assert result.keep == sentence.start + common
    short = splice_correction(ids, sentence, corrected, max_length=sentence.start + 2)
    assert short.ids == ids[: sentence.start] + corrected[:2] and short.corrected_ids == corrected[:2]
    assert short.keep <= len(short.ids)
