"""Special and added tokens inside a sentence: the aligner is shown plain text (special tokens skipped, added tokens
that are not special as their text); an identity aligner gives plain ``generate``'s tokens, and a correction keeps the
sentence's special and added tokens where it leaves the text around them as shown."""

import copy

import pytest
import torch

from transformers_stream_aligner import stream_aligned_generate
from transformers_stream_aligner.runtime.boundary.tracker import Sentence
from transformers_stream_aligner.runtime.splice import corrected_ids, marker_token_ids

from ..helpers import assert_rewrite_exact
from ..tiny_models import cached_tiny

PROMPTS = ["The cat is", "The answer", "Dr. Smith", "My friend"]


def insist(question, prefix, last):
    """Rewrites every sentence away from the marker: "indeed" before its last character."""
    return last[:-1] + " indeed" + last[-1:]


def _writes_marker(arch, marker, instead_of=" was", added=False):
    """A copy of the tiny model (and tokenizer) that writes ``marker`` where it would write ``instead_of``: the
    marker's output row is that word's, slightly stronger, and its input embedding the word's, so it writes the marker
    mid-sentence and goes on as after the word. ``added``: ``marker`` is first added to the tokenizer as a token that
    is not special (as ``<think>`` is in reasoning models)."""
    model, tok = cached_tiny(arch)
    model, tok = copy.deepcopy(model), copy.deepcopy(tok)
    if added:
        tok.add_tokens([marker])
        model.resize_token_embeddings(len(tok))
    marker_id = tok.convert_tokens_to_ids(marker)
    word = tok(instead_of, add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        model.get_input_embeddings().weight[marker_id] = model.get_input_embeddings().weight[word]
        model.get_output_embeddings().weight[marker_id] = model.get_output_embeddings().weight[word] * 1.02  # (tied: both)
    return model, tok, marker_id


CASES = [("<|endoftext|>", False), ("<|im_start|>", False), ("<think>", True)]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize(("marker", "added"), CASES, ids=["non-eos-special", "chat-marker", "added-think"])
def test_identity_gives_plain_tokens_with_markers_mid_sentence(arch, marker, added):
    model, tok, marker_id = _writes_marker(arch, marker, added=added)
    inside = 0
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        plain = model.generate(ids, max_new_tokens=60, do_sample=False)
        out = stream_aligned_generate(model, ids, aligner=lambda q, p, last: last, tokenizer=tok, max_new_tokens=60,
                                      do_sample=False, return_dict_in_generate=True)  # fmt: skip
        assert torch.equal(plain, out.sequences), (arch, marker, text)
        inside += sum(marker_id in r.original_ids[1:-1] for r in out.alignment_trace[0] if r.aligned)
    assert inside >= 1, "the model should write the marker inside sentences"


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize(("marker", "added"), CASES, ids=["non-eos-special", "chat-marker", "added-think"])
def test_a_correction_keeps_the_sentences_markers(arch, marker, added):
    model, tok, marker_id = _writes_marker(arch, marker, added=added)
    kept = 0
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt").input_ids
        out = stream_aligned_generate(model, ids, aligner=insist, tokenizer=tok, max_new_tokens=60, do_sample=False,
                                      return_dict_in_generate=True)  # fmt: skip
        trace = out.alignment_trace[0]
        assert_rewrite_exact(model, out.sequences, trace)  # the next sentence is generated from the corrected ids
        for r in trace[:-1]:  # the last piece may be cut by the token budget
            if r.changed and marker_id in r.original_ids:
                assert r.corrected_ids.count(marker_id) == r.original_ids.count(marker_id), (r.original_text, r.corrected_text)
                kept += 1
    assert kept >= 1, "some corrected sentence should hold the marker"


def test_corrected_ids_keep_markers_and_the_unchanged_tokens_around_them():
    _, tok = cached_tiny("llama")
    sp = tok.convert_tokens_to_ids("<|endoftext|>")
    head = tok(" The answer", add_special_tokens=False).input_ids
    tail = tok(" was wrong.", add_special_tokens=False).input_ids
    ids = head + [sp] + tail
    sentence = Sentence.at(tok, ids, 0, len(ids))
    assert sentence.content == "The answer was wrong." and sp in marker_token_ids(tok)
    fixed = corrected_ids(tok, " The answer was right.", sentence, ids)
    assert fixed[: len(head) + 1] == head + [sp] and tok.decode(fixed, skip_special_tokens=True) == " The answer was right."
    fixed = corrected_ids(tok, " An answer was wrong.", sentence, ids)
    assert fixed[-len(tail) - 1 :] == [sp] + tail and tok.decode(fixed, skip_special_tokens=True) == " An answer was wrong."
    fixed = corrected_ids(tok, " Something else entirely.", sentence, ids)
    assert fixed.count(sp) == 1 and tok.decode(fixed, skip_special_tokens=True) == " Something else entirely."
    # text that spells a control token stays text
    fixed = corrected_ids(tok, " The answer<|im_end|> was wrong.", sentence, ids)
    assert tok.eos_token_id not in fixed and fixed.count(sp) == 1
