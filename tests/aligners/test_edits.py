"""The edit rule (``StreamAlignerConfig.edits``, :mod:`transformers_stream_aligner.aligners.edits`): an aligner that
may change numbers only keeps the sentence when it changes anything else, and its decoding stops as soon as it has."""

import logging

import pytest

from transformers_stream_aligner import AlignmentRequest, RejectedCorrection, StreamAligner, StreamAlignerConfig
from transformers_stream_aligner.aligners.decoding import AlignerDecoder
from transformers_stream_aligner.aligners.edits import (
    edits_numbers_only,
    may_edit_numbers_only,
    number_skeleton,
    numbers_only_stop_rule,
)

SENTENCE = "The remaining coins are 240 - 240 = 0 coins."


@pytest.mark.parametrize(
    ("correction", "allowed"),
    [
        ("The remaining coins are 240 - 240 = 0 coins.", True),
        ("The remaining coins are 240 - 200 = 40 coins.", True),  # an operand is a number too
        ("The remaining coins are 240 - 240 = <<240 - 240=0>> coins.", True),  # a calculation counts as a number
        ("The remaining coins are 240 - 240 = -3.5 coins.", True),
        ("  The remaining coins are 240 - 240 = 0 coins.  ", True),  # surrounding whitespace
        ("The remaining coin are 240 - 240 = 0 coins.", False),  # a word
        ("The remaining coins are 240 - 240 = 0 coins", False),  # the full stop dropped
        ("The remaining coins are 240 - 240 = 0 coins. The remaining coins are 0.", False),  # text added
        ("The remaining coins are 240-240 = 0 coins.", False),  # spacing is text
        ("", False),
    ],
)
def test_only_numbers_may_change(correction, allowed):
    assert edits_numbers_only(correction, SENTENCE) is allowed


def test_skeleton_reads_number_forms():
    assert number_skeleton("$1,250.50 and -3 (-4) x-5 and 2.") == "$# and # (#) x-# and #."


@pytest.mark.parametrize(
    ("correction", "sentence"),
    [
        ("The remaining coins are 240 - 240 = <<240 - 240=0>> coins.", SENTENCE),
        ("The remaining coins are 240 - 200 = 40 coins.", SENTENCE),
        ("Altogether, 2,208+5,509 = <<2,208+5,509=7,707>> stamps.", "Altogether, 2,208+5,509 = 7,707 stamps."),
        ("Tom has 51 - 97 = -46 marbles.", "Tom has 51 - 97 = 1 marbles."),
        ("First, $735 * $48 = $<<735 * 48=35375>>.", "First, $735 * $48 = $35375."),
    ],
)
def test_every_beginning_of_an_allowed_correction_may_go_on(correction, sentence):
    assert edits_numbers_only(correction, sentence)
    assert all(may_edit_numbers_only(correction[:k], sentence) for k in range(len(correction) + 1))


@pytest.mark.parametrize(
    "partial",
    [
        "The remaining coins are <<80 - 40=240>> - 240 = <<240 - 40=240>> - 240",  # a loop that repeats the sentence
        "The remaining coins are 240 - 240 = <<240 - 240=0=0",  # two results in one calculation
        "The remaining coins are 240 - 240 = <<240 - 240=zero",  # a stated result that is not a number
        "The remaining coins are 240 - 240 = <<" + "1 + " * 60,  # a calculation that never ends
        "The remaining coins are 240 - 240 = 0 coins. And",  # text after the end
        "Membrance",
    ],
)
def test_a_correction_that_broke_the_rule_is_seen_while_it_is_written(partial):
    assert not may_edit_numbers_only(partial, SENTENCE)


def test_config_checks_and_round_trips_the_rule(tmp_path):
    config = StreamAlignerConfig(edits="numbers")
    config.save_pretrained(tmp_path)
    assert StreamAlignerConfig.from_pretrained(tmp_path).edits == "numbers"
    with pytest.raises(ValueError, match="edits must be one of 'any', 'numbers'"):
        StreamAlignerConfig(edits="words")


def _aligner(tiny, **config):
    model, tok = tiny
    return StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=48, **config))


REQUESTS = [AlignmentRequest("What is 240 - 240?", "", SENTENCE), AlignmentRequest("Why?", "", "Because 2 + 2 = 4.")]


def test_a_rejected_correction_is_the_sentence_and_its_decoding_stops_early(tiny_llama, caplog):
    free = _aligner(tiny_llama).correct(REQUESTS)  # the tiny random model writes text unlike the sentence
    assert all(not edits_numbers_only(text, r.last) for text, r in zip(free, REQUESTS, strict=True))
    aligner = _aligner(tiny_llama, edits="numbers")
    with caplog.at_level(logging.WARNING, logger="transformers_stream_aligner.aligners.model"):
        out = aligner.correct(REQUESTS)
    assert out == [r.last for r in REQUESTS]
    assert all(isinstance(o, RejectedCorrection) for o in out)
    assert "changes more than numbers" in caplog.text
    stats = aligner.decoding_stats
    assert stats.stopped_rows == 2
    assert stats.output_tokens < 2 * 48  # stopped before the token limit
    for o, full in zip(out, free, strict=True):  # what it wrote is where greedy decoding was when the rule fired
        assert full.startswith(o.correction)


def test_the_stop_is_the_same_in_the_fast_decoder_and_in_generate(tiny_llama):
    one_token = _aligner(tiny_llama, edits="numbers", copy_draft_tokens=0).correct(REQUESTS)
    stock = _aligner(tiny_llama, edits="numbers", copy_draft_tokens=0, reuse_kv_cache=False)
    assert stock._fast_decoder() is None
    out = stock.correct(REQUESTS)
    assert [o.correction for o in out] == [o.correction for o in one_token]
    assert out == [r.last for r in REQUESTS]


def test_decoder_stop_rules_end_a_row_at_a_greedy_prefix(tiny_llama):
    model, tok = tiny_llama
    prompts = [tok("Sentence: a b c\nChecked:").input_ids, tok("Sentence: 1 + 2 = 3.\nChecked:").input_ids]
    decoder = AlignerDecoder(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id or 0)
    full = decoder.generate(prompts, sources=[[], []], max_new_tokens=24)
    decoder.reset()
    rules = [lambda ids: len(ids) >= 5, None]
    out = decoder.generate(prompts, sources=[[], []], max_new_tokens=24, stop_rules=rules)
    assert len(full[0]) > 5 and out[0] == full[0][:5] and out[1] == full[1]
    assert decoder.stats.stopped_rows == 1
    with pytest.raises(ValueError, match="stop rules"):
        decoder.generate(prompts, sources=[[], []], max_new_tokens=4, stop_rules=[None])


def test_stop_rule_reads_decoded_text(tiny_llama):
    _, tok = tiny_llama
    rule = numbers_only_stop_rule(tok, "So 2 + 2 = 4.")
    assert rule(tok("So 2 + 2 = <<2 + 2=", add_special_tokens=False).input_ids) is False
    assert rule(tok("So 2 + 2 = 4. Also", add_special_tokens=False).input_ids) is True


def test_a_sentence_the_rule_can_only_keep_is_answered_without_the_model(tiny_llama):
    requests = [AlignmentRequest("Why?", "", "Sleep is important."), REQUESTS[1], AlignmentRequest("Tips?", "", "Rest.")]
    with_model = _aligner(tiny_llama, edits="numbers")
    with_model._fast_decoder()  # built now, so that its counters can be read
    full = [with_model._correct_batch([r])[0] for r in requests]  # the model asked about every sentence
    aligner = _aligner(tiny_llama, edits="numbers")
    out = aligner.correct(requests)
    assert out == full == [r.last for r in requests]
    assert aligner.decoding_stats.calls == 1 and aligner.decoding_stats.prompt_tokens == len(aligner._encode_prompt(requests[1]))
    assert aligner.correct(requests[::2]) == [requests[0].last, requests[2].last]
    assert aligner.decoding_stats.calls == 1  # no model call at all
    assert _aligner(tiny_llama).correct(requests[:1]) != [requests[0].last]  # without the rule the model is asked


def test_a_number_that_only_grows_is_stopped():
    sentence = "1. **10111** is a number."
    assert edits_numbers_only("1. **10111** is a number.", sentence)
    assert edits_numbers_only("1. **" + "9" * 21 + "** is a number.", sentence)  # 16 digits more: still a number
    assert not may_edit_numbers_only("1. **10111" + "1" * 17, sentence)
    assert not edits_numbers_only("1. **10111" + "1" * 17 + "** is a number.", sentence)
    assert may_edit_numbers_only("So 999 * 999 = <<999 * 999=" + "9" * 6, "So 999 * 999 = 1.")  # inside a calculation
