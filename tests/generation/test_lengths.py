"""Length settings as stock ``generate`` has them: the same warnings and errors for the same settings, and
``min_new_tokens`` / ``min_length`` counted across rounds, exactly."""

import warnings

import pytest
import torch
from transformers import GenerationMixin
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from transformers_stream_aligner import stream_aligned_generate

from ..helpers import prompt_ids, rewrite


def identity(question, prefix, last):
    return last


def _often_generated_token(model, tok, ids):
    """A token the plain answer produces after its first sentence: used as an extra EOS so that EOS comes early."""
    plain = GenerationMixin.generate(model, ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1] :].tolist()
    return plain[len(plain) // 3]


def _eos(model, tok, ids):
    return [tok.eos_token_id, _often_generated_token(model, tok, ids)]


@pytest.mark.parametrize("minimum", [0, 1, 5, 12, 25, 60])
def test_min_new_tokens_identity_equals_plain_generate(tiny, minimum):
    model, tok = tiny
    ids = prompt_ids(tok, "The cat is wrong. The dog")
    settings = {"max_new_tokens": 50, "do_sample": False, "eos_token_id": _eos(model, tok, ids), "min_new_tokens": minimum}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # min 60 > max 50 is warned about by both
        plain = GenerationMixin.generate(model, ids, **settings)
        aligned = stream_aligned_generate(model, ids, aligner=identity, tokenizer=tok, **settings)
    assert torch.equal(aligned, plain)


def test_min_new_tokens_is_what_matters(tiny_llama):
    """The extra EOS ends the plain answer early; the minimum makes it longer (so the tests above test something)."""
    model, tok = tiny_llama
    ids = prompt_ids(tok, "The cat is wrong. The dog")
    eos = _eos(model, tok, ids)
    short = GenerationMixin.generate(model, ids, max_new_tokens=50, do_sample=False, eos_token_id=eos)
    long = GenerationMixin.generate(model, ids, max_new_tokens=50, do_sample=False, eos_token_id=eos, min_new_tokens=25)
    assert short.shape[1] - ids.shape[1] < 25 <= long.shape[1] - ids.shape[1]


@pytest.mark.parametrize("minimum", [10, 30])
def test_min_length_and_min_new_tokens_in_a_padded_batch(tiny_llama, minimum):
    model, tok = tiny_llama
    tok.padding_side = "left"
    batch = tok(["The cat is wrong. The dog", "My friend"], return_tensors="pt", padding=True)
    eos = _eos(model, tok, batch["input_ids"][:1, -6:])
    for settings in ({"min_new_tokens": minimum}, {"min_length": batch["input_ids"].shape[1] + minimum}):
        settings = {"max_new_tokens": 45, "do_sample": False, "eos_token_id": eos, "pad_token_id": tok.pad_token_id, **settings}
        plain = GenerationMixin.generate(model, **batch, **settings)
        aligned = stream_aligned_generate(model, **batch, aligner=identity, tokenizer=tok, **settings)
        assert torch.equal(aligned, plain), settings


def test_min_new_tokens_with_a_rewriting_aligner_counts_the_corrected_text(tiny_llama):
    """Each sentence is what one uncached call from the corrected text gives with the minimum still left, and EOS
    never comes before the minimum."""
    model, tok = tiny_llama
    ids = prompt_ids(tok, "The answer")
    eos = _eos(model, tok, ids)
    minimum = 30
    out = stream_aligned_generate(model, ids, aligner=rewrite, tokenizer=tok, max_new_tokens=60, do_sample=False,
                                  eos_token_id=eos, min_new_tokens=minimum, return_dict_in_generate=True)  # fmt: skip
    seq = out.sequences[0].tolist()
    start = ids.shape[1]
    trace = out.alignment_trace[0]
    assert any(r.changed for r in trace), "the aligner changed nothing: the test would not test the count"
    for rec in trace:
        if not rec.aligned:
            continue
        left = max(minimum - (rec.start - start), 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a minimum past this sentence's length is warned about
            redo = GenerationMixin.generate(model, torch.tensor([seq[: rec.start]]), max_new_tokens=len(rec.original_ids),
                                            do_sample=False, use_cache=False, eos_token_id=eos, min_new_tokens=left)  # fmt: skip
        assert redo[0, rec.start :].tolist() == rec.original_ids
    ends = [i for i, t in enumerate(seq[start:]) if t in eos]
    assert not ends or ends[0] >= minimum


# ---------------------------------------------------------------------------------------------- warnings parity
LENGTH_CASES = {
    "default max_length": {},
    "max_new_tokens and max_length": {"max_new_tokens": 8, "max_length": 40},
    "min_new_tokens over the maximum": {"max_new_tokens": 8, "min_new_tokens": 50},
    "min_length over the maximum": {"max_new_tokens": 8, "min_length": 100},
    "min_new_tokens and min_length": {"max_new_tokens": 8, "min_new_tokens": 3, "min_length": 4},
}


def _length_messages(call):
    """The warnings and transformers log lines about lengths that ``call`` gives."""
    logger = hf_logging.get_logger("transformers.generation.utils")
    with warnings.catch_warnings(record=True) as caught, CaptureLogger(logger) as logs:
        warnings.simplefilter("always")
        call()
    texts = [str(w.message) for w in caught] + [line for line in logs.out.splitlines() if line]
    return sorted(t for t in texts if "length" in t or "max_new_tokens" in t or "min_new_tokens" in t)


@pytest.mark.parametrize("case", sorted(LENGTH_CASES))
def test_length_warnings_are_those_of_generate(tiny_llama, case):
    model, tok = tiny_llama
    ids = prompt_ids(tok, "The cat is wrong. The dog")
    settings = {"do_sample": False, **LENGTH_CASES[case]}
    stock = _length_messages(lambda: GenerationMixin.generate(model, ids, **settings))
    ours = _length_messages(lambda: stream_aligned_generate(model, ids, aligner=identity, tokenizer=tok, **settings))
    assert stock, "the case warns about nothing: it tests nothing"
    assert ours == stock


def test_prompt_longer_than_max_length_is_generates_error(tiny_llama):
    model, tok = tiny_llama
    ids = prompt_ids(tok, "The cat is wrong. The dog")
    with pytest.raises(ValueError) as stock:
        GenerationMixin.generate(model, ids, max_length=3)
    with pytest.raises(ValueError) as ours:
        stream_aligned_generate(model, ids, aligner=identity, tokenizer=tok, max_length=3)
    assert str(ours.value) == str(stock.value)


def test_a_model_default_max_length_does_not_warn_per_round(tiny_llama):
    model, tok = tiny_llama
    ids = prompt_ids(tok, "The cat is wrong. The dog")
    saved = model.generation_config.max_length
    model.generation_config.max_length = 200
    try:
        stock = _length_messages(lambda: GenerationMixin.generate(model, ids, max_new_tokens=40, do_sample=False))
        ours = _length_messages(
            lambda: stream_aligned_generate(model, ids, aligner=identity, tokenizer=tok, max_new_tokens=40, do_sample=False)
        )
    finally:
        model.generation_config.max_length = saved
    assert len(stock) == 1 and ours == stock  # one "Both max_new_tokens and max_length" line, not one per round
