"""Faults: an exception at any stage (KeyboardInterrupt included) leaves every object usable.

Each test injects one exception into one stage of a stream-aligned ``generate`` (or of the aligner), checks what
the caller sees, then runs the same call again: it must equal a fresh run, and every streamer must have ended.
"""

import pytest
import torch

from transformers_stream_aligner import (
    AlignerOutputError,
    AlignmentRequest,
    StreamAligner,
    StreamAlignerConfig,
    StreamAlignmentError,
    stream_aligned_generate,
)
from transformers_stream_aligner.runtime import loop as loop_module
from transformers_stream_aligner.runtime.engines.transformers_engine import TransformersEngine

from ..helpers import prompt_ids
from ..tiny_models import cached_tiny


def indeed(question, prefix, last):
    """A rewriting aligner: every sentence changes (so every stage runs)."""
    return "Indeed, " + last


class CountingStreamer:
    """Any streamer: records what it gets, counts ``end`` calls."""

    def __init__(self, fail_on_put=None):
        self.puts, self.ends, self.fail_on_put = 0, 0, fail_on_put

    def put(self, value):
        self.puts += 1
        if self.puts == self.fail_on_put:
            raise RuntimeError("streamer broke")

    def end(self):
        self.ends += 1


def _failing_after(n, error):
    """A wrapper factory: the wrapped callable raises ``error`` on its ``n``-th call, else runs."""
    calls = {"n": 0}

    def wrap(fn):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise error
            return fn(*args, **kwargs)

        return wrapped

    return wrap


def _run(model, tok, aligner=indeed, **kwargs):
    return stream_aligned_generate(
        model, prompt_ids(tok), aligner=aligner, tokenizer=tok, max_new_tokens=40, do_sample=False, **kwargs
    )


ERRORS = {"RuntimeError": RuntimeError("injected"), "KeyboardInterrupt": KeyboardInterrupt()}


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("stage", ["upstream forward", "boundary", "aligner", "splice", "cache", "streamer"])
def test_a_fault_at_any_stage_leaves_everything_usable(tiny_llama, monkeypatch, stage, error):
    model, tok = tiny_llama
    fresh = _run(model, tok)
    exc = ERRORS[error]
    aligner = indeed
    streamer = CountingStreamer()
    with monkeypatch.context() as patch:
        wrap = _failing_after(3, exc)
        if stage == "upstream forward":
            patch.setattr(model, "forward", wrap(model.forward))
        elif stage == "boundary":
            patch.setattr(loop_module, "next_step", wrap(loop_module.next_step))
        elif stage == "aligner":
            aligner = wrap(indeed)
        elif stage == "splice":
            patch.setattr(loop_module, "splice_correction", wrap(loop_module.splice_correction))
        elif stage == "cache":
            patch.setattr(TransformersEngine, "replace_tail", wrap(TransformersEngine.replace_tail))
        else:
            streamer = CountingStreamer(fail_on_put=3)
            if error == "KeyboardInterrupt":
                streamer.put = wrap(streamer.put)
        expected = StreamAlignmentError if stage == "aligner" and error == "RuntimeError" else type(exc)
        with pytest.raises(expected) as caught:
            _run(model, tok, aligner=aligner, streamer=streamer)
    assert streamer.ends == 1, "the streamer must end on every exit path"
    if isinstance(caught.value, StreamAlignmentError):  # the aligner's failure carries the partial output
        assert caught.value.partial_texts and caught.value.sequences.shape[0] == 1
    again = CountingStreamer()
    assert torch.equal(_run(model, tok, streamer=again), fresh)
    assert again.ends == 1


def _tiny_aligner(arch_model_tok, **config):
    model, tok = arch_model_tok
    return StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=16, **config))


REQUESTS = [
    AlignmentRequest("Is the cat fine?", "The cat is here.", "The cat sat on the mat."),
    AlignmentRequest("Q", "A long prefix. With two sentences.", "The dog ran."),
]


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("settings", [{}, {"copy_draft_tokens": 0}, {"reuse_kv_cache": False}])
def test_a_fault_inside_an_aligner_forward_does_not_poison_the_aligner(tiny_llama, monkeypatch, error, settings):
    fresh = _tiny_aligner(tiny_llama, **settings).correct(REQUESTS)
    aligner = _tiny_aligner(tiny_llama, **settings)
    assert aligner.correct(REQUESTS[:1]) == fresh[:1]  # its KV cache now holds a prompt
    for n in (1, 2):  # the first forward of a call (prompt) and a later one (decoding)
        with monkeypatch.context() as patch:
            patch.setattr(aligner.model, "forward", _failing_after(n, ERRORS[error])(aligner.model.forward))
            with pytest.raises(type(ERRORS[error])):
                aligner.correct(REQUESTS)
        assert aligner.correct(REQUESTS) == fresh
        assert aligner.correct(REQUESTS[1:]) == fresh[1:]


def test_a_failed_aligner_inside_generate_is_usable_by_the_next_generate(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    qwen = cached_tiny("qwen2")  # the aligner: another model than the upstream
    fresh = _run(model, tok, aligner=_tiny_aligner(qwen))
    aligner = _tiny_aligner(qwen)
    assert aligner._fast_decoder() is not None  # built (its support probe runs forwards) before the fault is planted
    with monkeypatch.context() as patch:
        patch.setattr(aligner.model, "forward", _failing_after(2, RuntimeError("out of memory"))(aligner.model.forward))
        with pytest.raises(StreamAlignmentError, match="out of memory"):
            _run(model, tok, aligner=aligner)
    assert torch.equal(_run(model, tok, aligner=aligner), fresh)


def test_an_aligner_that_edits_its_request_list_is_answered_row_by_row(tiny_llama):
    """Item 9: the aligner gets a copy; the answers still line up with the rows."""
    model, tok = tiny_llama

    def greedy(requests):
        answers = ["Indeed, " + r.last for r in requests]
        requests.clear()  # a badly behaved aligner
        return answers

    class Greedy:
        correct = staticmethod(greedy)

    assert torch.equal(_run(model, tok, aligner=Greedy()), _run(model, tok))


def test_lone_surrogates_in_a_correction_are_a_clear_error_with_the_partial_output(tiny_llama):
    """Item 8: a correction with a lone surrogate is unusable text: AlignerOutputError, or the original with
    ``keep_original``."""
    model, tok = tiny_llama
    plain = _run(model, tok, aligner=lambda q, p, last: last)

    def broken(question, prefix, last):
        return last[:-1] + "\ud800" + last[-1:] if prefix else last  # the second sentence breaks

    with pytest.raises(AlignerOutputError, match="not valid Unicode") as caught:
        _run(model, tok, aligner=broken)
    assert caught.value.partial_texts[0] and caught.value.alignment_trace[0]
    with pytest.warns(UserWarning, match="not valid Unicode"):
        kept = _run(model, tok, aligner=broken, invalid_correction="keep_original")
    assert torch.equal(kept, plain)


@pytest.mark.parametrize("upstream_limit", [None, 2])
def test_a_rambling_stream_aligner_keeps_the_sentence_whatever_the_limits(tiny_llama, upstream_limit):
    """Item 7: a StreamAligner correction cut at its max_correction_tokens (no EOS) is an UnfinishedCorrection:
    the default generate() keeps the original sentence with a warning, never raises, however the text re-tokenizes
    upstream (``upstream_limit`` below the cut text's length would otherwise reject it)."""
    from transformers_stream_aligner import UnfinishedCorrection

    model, tok = tiny_llama
    rambler = StreamAligner(cached_tiny("qwen2")[0], tok, StreamAlignerConfig(max_correction_tokens=3))
    answers = []
    original_correct = rambler.correct

    def recording(requests):
        out = original_correct(requests)
        answers.extend(out)
        return out

    rambler.correct = recording
    extra = {} if upstream_limit is None else {"max_correction_tokens": upstream_limit}
    with pytest.warns(UserWarning, match="did not finish its correction"):
        out = _run(model, tok, aligner=rambler, return_dict_in_generate=True, **extra)
    unfinished = [a for a in answers if isinstance(a, UnfinishedCorrection)]
    assert unfinished, "the tiny aligner should ramble at 3 tokens"
    records = [r for r in out.alignment_trace[0] if r.aligned]
    assert len(records) == len(answers)
    for record, answer in zip(records, answers, strict=True):
        if isinstance(answer, UnfinishedCorrection):
            assert record.corrected_ids == record.original_ids
