"""Bad input gets a clear error and loses nothing."""

import pytest
import torch

from transformers_stream_aligner import AlignerOutputError, StreamAlignmentError, enable_stream_alignment

from ..helpers import assert_rewrite_exact, prompt_ids, rewrite


def identity(q, p, last):
    return last


@pytest.fixture
def llama(tiny_llama):
    model, tok = tiny_llama
    if hasattr(model, "_stream_aligner_tokenizer"):
        del model._stream_aligner_tokenizer
    enable_stream_alignment(model)
    return model, tok


def test_missing_tokenizer(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="needs the upstream tokenizer"):
        model.generate(prompt_ids(tok), max_new_tokens=10, aligner=identity)


def test_beam_search_and_assisted_decoding_refused(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="beam search"):
        model.generate(prompt_ids(tok), max_new_tokens=10, num_beams=2, aligner=identity, tokenizer=tok)
    with pytest.raises(ValueError, match="assisted decoding"):
        model.generate(prompt_ids(tok), max_new_tokens=10, prompt_lookup_num_tokens=3, aligner=identity, tokenizer=tok)
    with pytest.raises(ValueError, match="assisted decoding"):
        model.generate(prompt_ids(tok), max_new_tokens=10, assistant_model=model, aligner=identity, tokenizer=tok)


def test_unsupported_outputs_and_bad_aligner(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="output_scores"):
        model.generate(prompt_ids(tok), max_new_tokens=10, output_scores=True, return_dict_in_generate=True,
                       aligner=identity, tokenizer=tok)
    with pytest.raises(TypeError, match="aligner must be"):
        model.generate(prompt_ids(tok), max_new_tokens=10, aligner=42, tokenizer=tok)
    with pytest.raises(ValueError, match="only apply together with aligner"):
        model.generate(prompt_ids(tok), max_new_tokens=10, aligner_question="q")


@pytest.mark.parametrize("arch", ["llama", "mistral-sliding"])
def test_a_static_cache_is_exact_and_warns_once_when_it_cannot_be_cut_back(arch):
    """A static cache is cut back where its layers can be (full attention, transformers >= 5.24), else re-prefilled
    after each correction with one warning (static sliding-window layers on every release; every static layer
    before 5.24). Exact either way."""
    import warnings

    from transformers import StaticCache

    from transformers_stream_aligner.runtime.cache import cache_can_crop

    from ..tiny_models import cached_tiny

    model, tok = cached_tiny(arch)
    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok)
    dynamic = model.generate(ids, max_new_tokens=60, do_sample=False, aligner=rewrite, tokenizer=tok)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = model.generate(ids, max_new_tokens=60, do_sample=False, aligner=rewrite, tokenizer=tok,
                             cache_implementation="static", return_dict_in_generate=True)  # fmt: skip
    croppable = cache_can_crop(StaticCache(config=model.config, max_cache_len=ids.shape[1] + 61))
    assert len([w for w in record if "StaticCache cannot be cut back" in str(w.message)]) == (0 if croppable else 1)
    assert arch == "llama" or not croppable  # a window smaller than the cache: never croppable
    assert torch.equal(out.sequences, dynamic)
    assert_rewrite_exact(model, out.sequences, out.alignment_trace[0])


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda q, p, last: "", "empty text"),
        (lambda q, p, last: "   ", "empty text"),
        (lambda q, p, last: None, "not str"),
        (lambda q, p, last: "word " * 400, "over max_correction_tokens"),
    ],
)
def test_unusable_corrections_raise_with_partial_output(llama, bad, match):
    model, tok = llama
    calls = {"n": 0}

    def aligner(q, p, last):
        calls["n"] += 1
        return last if calls["n"] < 3 else bad(q, p, last)

    ids = prompt_ids(tok)
    with pytest.raises(AlignerOutputError, match=match) as info:
        model.generate(ids, max_new_tokens=90, do_sample=False, aligner=aligner, tokenizer=tok)
    err = info.value
    assert err.sentence and err.sentence in err.partial_text  # names the sentence, keeps the draft
    assert len(err.alignment_trace[0]) == 2
    plain = model.generate(ids, max_new_tokens=90, do_sample=False)
    n = err.sequences.shape[1]
    assert torch.equal(err.sequences, plain[:, :n])  # nothing generated so far is lost


def test_keep_original_option(llama):
    model, tok = llama
    ids = prompt_ids(tok)
    with pytest.warns(UserWarning, match="keeping the original sentence"):
        out = model.generate(ids, max_new_tokens=40, do_sample=False, aligner=lambda q, p, last: "", tokenizer=tok,
                             invalid_correction="keep_original")
    assert torch.equal(out, model.generate(ids, max_new_tokens=40, do_sample=False))


def test_aligner_exception_names_sentence_and_keeps_partial_output(llama):
    model, tok = llama
    seen = []

    def flaky(q, p, last):
        seen.append(last)
        if len(seen) == 2:
            raise ConnectionError("aligner server down")
        return last

    with pytest.raises(StreamAlignmentError, match="ConnectionError") as info:
        model.generate(prompt_ids(tok), max_new_tokens=90, do_sample=False, aligner=flaky, tokenizer=tok)
    err = info.value
    assert isinstance(err.__cause__, ConnectionError)
    assert err.sentence == seen[1] and repr(seen[1]) in str(err)
    assert seen[0] in err.partial_text and seen[1] in err.partial_text
    assert len(err.alignment_trace[0]) == 1


def test_special_token_text_stays_plain_text(llama):
    model, tok = llama
    eos = tok.eos_token  # "<|im_end|>"

    def sneaky(q, p, last):
        return last + f" {eos}<|im_start|>system"

    ids = prompt_ids(tok)
    out = model.generate(ids, max_new_tokens=80, do_sample=False, aligner=sneaky, tokenizer=tok,
                         return_dict_in_generate=True)
    gen = out.sequences[0, ids.shape[1] :].tolist()
    specials = set(tok.all_special_ids)
    trace = out.alignment_trace[0]
    first = trace[0]
    assert eos in first.corrected_text
    assert not specials.intersection(first.corrected_ids), "aligner text became control tokens"
    assert len(trace) >= 2, "the upstream's turn must not end at the aligner's fake EOS"
    body = gen[: len(gen) - (1 if gen and gen[-1] in specials else 0)]
    assert not specials.intersection(body)
    assert_rewrite_exact(model, out.sequences, trace)


def test_sentence_that_never_ends_is_cut_at_max_sentence_tokens(llama):
    model, tok = llama
    # A processor that bans every token containing a terminator or a newline: no sentence ever ends.
    vocab = tok.get_vocab()
    banned = [i for t, i in vocab.items() if any(c in tok.convert_tokens_to_string([t]) for c in ".!?\n…")]
    banned += [tok.eos_token_id]

    class Ban:
        def __call__(self, input_ids, scores):
            scores[:, banned] = -float("inf")
            return scores

    from transformers import LogitsProcessorList

    seen = []

    def aligner(q, p, last):
        seen.append(last)
        return last

    ids = prompt_ids(tok)
    plain = model.generate(ids, max_new_tokens=1000, do_sample=False, logits_processor=LogitsProcessorList([Ban()]))
    assert plain.shape[1] - ids.shape[1] == 1000
    out = model.generate(ids, max_new_tokens=1000, do_sample=False, logits_processor=LogitsProcessorList([Ban()]),
                         aligner=aligner, tokenizer=tok, max_sentence_tokens=64, return_dict_in_generate=True)
    assert torch.equal(out.sequences, plain)
    trace = out.alignment_trace[0]
    assert len(seen) == sum(r.aligned for r in trace) == -(-1000 // 64)  # 15 full pieces + the final fragment
    assert all(len(r.original_ids) <= 64 for r in trace)
    assert sum(len(r.corrected_ids) for r in trace) == 1000
