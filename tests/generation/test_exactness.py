"""Stream alignment is exact: identity aligner == plain generate; rewriting aligner == uncached decoding."""

import inspect

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from transformers_stream_aligner import StreamAlignedGenerationMixin, enable_stream_alignment
from transformers_stream_aligner.compat import CACHE_KEYS, generate_cache_key

from ..helpers import RecordingAligner, assert_rewrite_exact, prompt_ids, rewrite


def identity(question, prefix, last):
    return last


def test_identity_equals_plain_generate(tiny):
    model, tok = tiny
    enable_stream_alignment(model, tok)
    for text in ["The cat is", "My friend", "\n1."]:
        ids = prompt_ids(tok, text)
        plain = model.generate(ids, max_new_tokens=90, do_sample=False)
        out = model.generate(ids, max_new_tokens=90, do_sample=False, aligner=identity, return_dict_in_generate=True)
        assert torch.equal(plain, out.sequences)
        trace = out.alignment_trace[0]
        assert sum(r.aligned for r in trace) >= 3, "the tiny model should write several sentences"
        assert not any(r.changed for r in trace)


def test_rewriting_aligner_is_exact(tiny):
    model, tok = tiny
    enable_stream_alignment(model, tok)
    changed = 0
    for text in ["The cat is", "The answer", "Dr. Smith"]:
        ids = prompt_ids(tok, text)
        out = model.generate(ids, max_new_tokens=90, do_sample=False, aligner=rewrite, return_dict_in_generate=True)
        trace = out.alignment_trace[0]
        changed += sum(r.changed for r in trace)
        assert_rewrite_exact(model, out.sequences, trace)
        # the corrected texts make up the decoded answer
        assert "".join(r.corrected_text for r in trace) == tok.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True)
    assert changed >= 2, "the rewriting aligner should change some sentences"


def test_identity_with_sampling_equals_plain_sampling(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok)
    torch.manual_seed(123)
    plain = model.generate(ids, max_new_tokens=60, do_sample=True, top_k=0, temperature=1.0)
    torch.manual_seed(123)
    aligned = model.generate(ids, max_new_tokens=60, do_sample=True, top_k=0, temperature=1.0, aligner=identity)
    assert torch.equal(plain, aligned)


def test_sampling_with_rewriting_aligner_runs(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    torch.manual_seed(0)
    out = model.generate(prompt_ids(tok), max_new_tokens=60, do_sample=True, aligner=rewrite, return_dict_in_generate=True)
    n = prompt_ids(tok).shape[1]
    assert out.sequences.shape[1] <= n + 60
    trace = out.alignment_trace[0]
    assert [t for r in trace for t in r.corrected_ids] == out.sequences[0, n:].tolist()  # records tile the output
    assert any(r.changed for r in trace)


def test_max_new_tokens_bounds_the_corrected_output(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)

    def longer(q, p, last):
        return last + " It is very good indeed, as everyone knows."

    ids = prompt_ids(tok)
    for budget in (5, 17, 40):
        out = model.generate(ids, max_new_tokens=budget, do_sample=False, aligner=longer, return_dict_in_generate=True)
        assert out.sequences.shape[1] - ids.shape[1] <= budget
        assert sum(len(r.corrected_ids) for r in out.alignment_trace[0]) == out.sequences.shape[1] - ids.shape[1]


def test_user_cache_and_mixin_class(tiny_llama):
    model, tok = tiny_llama

    class AlignedLlama(StreamAlignedGenerationMixin, LlamaForCausalLM):
        pass

    aligned = AlignedLlama(model.config).to(torch.float64).eval()
    aligned.load_state_dict(model.state_dict())
    ids = prompt_ids(tok)
    plain = aligned.generate(ids, max_new_tokens=50, do_sample=False)  # no aligner: stock generate
    for key in CACHE_KEYS:  # the cache under either name: `cache` (transformers >= 5.24) or `past_key_values`
        cache = DynamicCache(config=aligned.config)
        out = aligned.generate(
            ids, max_new_tokens=50, do_sample=False, aligner=rewrite, tokenizer=tok, return_dict_in_generate=True,
            **{key: cache},
        )
        assert getattr(out, generate_cache_key()) is cache  # the output's field under this release's name
        assert ids.shape[1] < cache.get_seq_length() <= out.sequences.shape[1] - 1  # used, never ahead of the output
        assert_rewrite_exact(model, out.sequences, out.alignment_trace[0])
    with pytest.raises(ValueError, match="not both"):
        aligned.generate(ids, max_new_tokens=5, aligner=rewrite, tokenizer=tok, cache=DynamicCache(config=aligned.config),
                         past_key_values=DynamicCache(config=aligned.config))  # fmt: skip
    ident = aligned.generate(ids, max_new_tokens=50, do_sample=False, aligner=identity, tokenizer=tok)
    assert torch.equal(plain, ident)


def test_the_mixin_keeps_the_stock_generate_signature(tiny_llama):
    model, tok = tiny_llama

    class AlignedLlama(StreamAlignedGenerationMixin, LlamaForCausalLM):
        pass

    calls = []

    class OwnGenerate(LlamaForCausalLM):
        def generate(self, inputs=None, *, house_rule: bool = False, **kwargs):
            """A model class with a generate of its own."""
            calls.append("own")
            return super().generate(inputs, **kwargs)

    class AlignedOwn(StreamAlignedGenerationMixin, OwnGenerate):
        pass

    class Overriding(StreamAlignedGenerationMixin, OwnGenerate):
        def generate(self, *args, **kwargs):  # a subclass's own override reaches the mixin, then the class's own
            calls.append("overriding")
            return super().generate(*args, **kwargs)

    assert inspect.signature(AlignedLlama.generate) == inspect.signature(LlamaForCausalLM.generate)
    assert inspect.signature(AlignedOwn.generate) == inspect.signature(OwnGenerate.generate)
    aligned = AlignedOwn(model.config).to(torch.float64).eval()
    aligned.load_state_dict(model.state_dict())
    ids = prompt_ids(tok)
    assert inspect.signature(aligned.generate) == inspect.signature(OwnGenerate(model.config).generate)
    plain = model.generate(ids, max_new_tokens=30, do_sample=False)
    assert torch.equal(aligned.generate(ids, max_new_tokens=30, do_sample=False, house_rule=True), plain)
    assert torch.equal(aligned.generate(ids, max_new_tokens=30, do_sample=False, aligner=identity, tokenizer=tok), plain)
    calls.clear()
    overriding = Overriding(model.config).to(torch.float64).eval()
    overriding.load_state_dict(model.state_dict())
    assert torch.equal(overriding.generate(ids, max_new_tokens=30, do_sample=False), plain)
    assert calls == ["overriding", "own"]


def test_without_aligner_generate_is_untouched(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    ids = prompt_ids(tok)
    a = model.generate(ids, max_new_tokens=20, do_sample=False)
    b = type(model).generate(model, ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(a, b)
    out = model.generate(ids, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    assert not hasattr(out, "alignment_trace")


def test_object_with_correct_method_gets_one_request_per_sentence(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    corrector = RecordingAligner()
    out = model.generate(prompt_ids(tok), max_new_tokens=60, do_sample=False, aligner=corrector,
                         return_dict_in_generate=True)
    via_fn = model.generate(prompt_ids(tok), max_new_tokens=60, do_sample=False, aligner=rewrite)
    assert torch.equal(out.sequences, via_fn)
    assert len(corrector.batches) == sum(r.aligned for r in out.alignment_trace[0])
    last_aligned = [r for r in out.alignment_trace[0] if r.aligned][-1]
    assert corrector.batches[-1][0].last == last_aligned.original_text.strip()
