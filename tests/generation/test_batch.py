"""Batched stream alignment: every row gets exactly what it gets alone; one aligner call per round."""

import threading
import warnings

import pytest
import torch
from transformers import TextStreamer

from transformers_stream_aligner import (
    AlignerOutputError,
    StreamAlignerIteratorStreamer,
    StreamAlignmentError,
    enable_stream_alignment,
)

from ..helpers import RecordingAligner, rewrite

PROMPTS = ["The cat is", "My friend looks very good. The answer", "Dr. Smith", "\n1.", "A dog"]


def identity(question, prefix, last):
    return last


def _eos(tok, marks="?"):
    # The tiny models never write <|im_end|>; "?" as a second EOS makes some rows end early.
    return [tok.eos_token_id, *(tok.convert_tokens_to_ids(m) for m in marks)]


EARLY_END = {"llama": "?", "gpt2": "?", "qwen2": "?Ċ"}  # marks that end some rows early for each model (Ċ: a newline)


def _left_batch(tok, prompts=PROMPTS):
    tok.padding_side = "left"
    return tok(prompts, return_tensors="pt", padding=True)


def _alone(model, tok, prompt, aligner, **kw):
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, aligner=aligner, return_dict_in_generate=True, **kw)
    return out.sequences[0, ids.shape[1] :].tolist(), out.alignment_trace[0]


def _assert_rows_equal_alone(model, tok, out, width, aligner, prompts=PROMPTS, **kw):
    pad = tok.pad_token_id
    ended_early = 0
    for row, prompt in enumerate(prompts):
        alone, trace = _alone(model, tok, prompt, aligner, **kw)
        generated = out.sequences[row, width:].tolist()
        assert generated[: len(alone)] == alone, f"row {row} differs from its run alone"
        assert generated[len(alone) :] == [pad] * (len(generated) - len(alone))
        batch_trace = out.alignment_trace[row]
        assert [(r.original_ids, r.corrected_ids, r.corrected_text) for r in batch_trace] == [
            (r.original_ids, r.corrected_ids, r.corrected_text) for r in trace
        ]
        n_prompt = len(tok(prompt).input_ids)
        assert all(b.row == row and b.start == a.start + width - n_prompt for a, b in zip(trace, batch_trace, strict=True))
        ended_early += len(alone) < kw["max_new_tokens"]
    return ended_early


@pytest.mark.parametrize("completed_rows", ["draft", "hold"])
@pytest.mark.parametrize("aligner", [identity, rewrite], ids=["identity", "rewrite"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_batch_rows_equal_rows_alone(arch, aligner, completed_rows):
    from ..tiny_models import cached_tiny

    model, tok = cached_tiny(arch)
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    kw = dict(max_new_tokens=60, do_sample=False, eos_token_id=_eos(tok, EARLY_END[arch]))
    out = model.generate(**batch, aligner=aligner, return_dict_in_generate=True, completed_rows=completed_rows, **kw)
    ended_early = _assert_rows_equal_alone(model, tok, out, batch.input_ids.shape[1], aligner, **kw)
    assert ended_early >= 1, "some row should end before the others"
    assert len({len(tok(p).input_ids) for p in PROMPTS}) >= 3, "prompts of different lengths"
    stats = out.alignment_stats
    assert stats.rounds >= 3 and 0 < stats.held_share < 1
    # when rows that ended leave the batch: test_finished_rows_leave_the_batch_when_it_halves
    if aligner is rewrite:
        assert stats.sentences_changed >= 3
        assert sum(r.changed for trace in out.alignment_trace for r in trace) == stats.sentences_changed


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_finished_rows_leave_the_batch_when_it_halves(arch):
    """Finished rows stay in the upstream's batch (held) until at most half of it is left, then leave together:
    each forward's batch is the previous one or at most half of it, and the rows are still those of each alone."""
    from ..tiny_models import cached_tiny

    model, tok = cached_tiny(arch)
    enable_stream_alignment(model, tok)
    prompts = PROMPTS * 2  # 10 rows, ending at different times
    batch = _left_batch(tok, prompts)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    kw = dict(max_new_tokens=60, do_sample=False, eos_token_id=_eos(tok, EARLY_END[arch]))
    try:
        out = model.generate(**batch, aligner=identity, return_dict_in_generate=True, **kw)
    finally:
        hook.remove()
    assert sizes[0] == len(prompts) and sizes[-1] < len(prompts), sizes
    shrinks = [(a, b) for a, b in zip(sizes, sizes[1:], strict=False) if b != a]
    assert shrinks and all(b <= a // 2 for a, b in shrinks), shrinks
    ended_early = _assert_rows_equal_alone(model, tok, out, batch.input_ids.shape[1], identity, prompts=prompts, **kw)
    assert ended_early > len(prompts) // 2


def test_identity_batch_equals_plain_batched_generate(tiny):
    model, tok = tiny
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    kw = dict(max_new_tokens=60, do_sample=False, eos_token_id=_eos(tok))
    plain = model.generate(**batch, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sliding-window model warns that it goes row by row
        out = model.generate(**batch, aligner=identity, **kw)
    assert torch.equal(plain, out)


def test_drafting_rows_save_forwards_and_hold_mode_pads(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    kw = dict(max_new_tokens=60, do_sample=False, return_dict_in_generate=True)
    stats = {}
    for mode in ("draft", "hold"):
        out = model.generate(**batch, aligner=identity, completed_rows=mode, **kw)
        stats[mode] = out.alignment_stats
    # identity aligner: drafted sentences are all kept, so fewer rounds and far fewer wasted slots
    assert stats["draft"].rounds < stats["hold"].rounds
    assert stats["draft"].held_share < stats["hold"].held_share / 2
    with pytest.raises(ValueError, match="completed_rows"):
        model.generate(**batch, aligner=identity, completed_rows="wait", max_new_tokens=5)


def test_one_aligner_call_per_round_with_all_ready_rows(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)

    aligner = RecordingAligner()
    batch = _left_batch(tok)
    out = model.generate(**batch, aligner=aligner, max_new_tokens=60, do_sample=False, return_dict_in_generate=True)
    aligned = sum(r.aligned for trace in out.alignment_trace for r in trace)
    assert sum(len(c) for c in aligner.batches) == aligned
    assert len(aligner.batches) == out.alignment_stats.aligner_calls
    assert max(len(c) for c in aligner.batches) == len(PROMPTS), "all rows should share an aligner call"
    assert len(aligner.batches) < aligned / 2


def test_right_padding_is_handled(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    kw = dict(max_new_tokens=40, do_sample=False, eos_token_id=_eos(tok), aligner=rewrite)
    left = model.generate(**_left_batch(tok), **kw)
    tok.padding_side = "right"
    right_batch = tok(PROMPTS, return_tensors="pt", padding=True)
    tok.padding_side = "left"
    assert bool((right_batch.attention_mask[:, -1] == 0).any()), "the batch should be right-padded"
    right = model.generate(**right_batch, **kw)
    width = right_batch.input_ids.shape[1]
    assert torch.equal(right[:, :width], right_batch.input_ids)  # the prompt comes back as given
    assert torch.equal(right[:, width:], left[:, width:])  # the same answers


def test_mask_inferred_from_padding_when_not_given(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    kw = dict(max_new_tokens=30, do_sample=False, aligner=rewrite)
    assert torch.equal(model.generate(batch.input_ids, **kw), model.generate(**batch, **kw))


def test_num_return_sequences_with_sampling(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok, PROMPTS[:2])
    torch.manual_seed(0)
    out = model.generate(**batch, aligner=rewrite, do_sample=True, num_return_sequences=3, max_new_tokens=40,
                         return_dict_in_generate=True)
    width = batch.input_ids.shape[1]
    assert out.sequences.shape[0] == 6 and len(out.alignment_trace) == 6
    for row in range(6):
        assert torch.equal(out.sequences[row, :width], batch.input_ids[row // 3])
        trace = out.alignment_trace[row]
        pieces = [t for r in trace for t in r.corrected_ids]
        generated = out.sequences[row, width:].tolist()
        assert generated[: len(pieces)] == pieces and len(pieces) <= 40
        assert all(t == tok.pad_token_id for t in generated[len(pieces) :])
    assert len({tuple(out.sequences[row].tolist()) for row in range(3)}) > 1, "samples should differ"
    with pytest.raises(ValueError, match="do_sample"):
        model.generate(**batch, aligner=rewrite, num_return_sequences=2, max_new_tokens=5)


def _fails_for_row(bad_prompt):
    def aligner(question, prefix, last):
        return "" if bad_prompt in question and prefix else rewrite(question, prefix, last)

    return aligner


def test_aligner_failure_names_the_row_and_keeps_other_rows(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    with pytest.raises(AlignerOutputError) as info:
        model.generate(**batch, aligner=_fails_for_row("Dr. Smith"), max_new_tokens=60, do_sample=False)
    err = info.value
    assert err.row == 2 and str(err).startswith("row 2:") and "empty" in str(err)
    assert err.sequences.shape[0] == len(PROMPTS) and len(err.alignment_trace) == len(PROMPTS)
    assert err.sentence and err.sentence in err.partial_texts[2] and err.partial_text == err.partial_texts[2]
    # the other rows' sentences of the same aligner call were accepted, not lost
    width = batch.input_ids.shape[1]
    for row in (0, 1, 3, 4):
        trace = err.alignment_trace[row]
        assert len(trace) == len(err.alignment_trace[2]) + 1
        pieces = [t for r in trace for t in r.corrected_ids]
        assert err.sequences[row, width : width + len(pieces)].tolist() == pieces

    with pytest.warns(UserWarning, match="row 2: the aligner returned empty text"):
        out = model.generate(**batch, aligner=_fails_for_row("Dr. Smith"), max_new_tokens=60, do_sample=False,
                             invalid_correction="keep_original", return_dict_in_generate=True)
    assert all(out.alignment_trace[row] for row in range(len(PROMPTS)))


def test_aligner_exception_in_a_batch(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)

    def broken(question, prefix, last):
        raise RuntimeError("aligner down")

    with pytest.raises(StreamAlignmentError, match=r"rows 0, 1, 2, 3, 4\): aligner down") as info:
        model.generate(**_left_batch(tok), aligner=broken, max_new_tokens=30, do_sample=False)
    assert info.value.row is None and len(info.value.partial_texts) == len(PROMPTS)
    assert all(text.strip() for text in info.value.partial_texts)  # every row's draft is kept


def test_per_row_streamer_events(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    streamer = StreamAlignerIteratorStreamer(tok, per_row=True, timeout=60)
    result = {}

    def work():
        result["out"] = model.generate(**batch, aligner=rewrite, streamer=streamer, max_new_tokens=40,
                                       do_sample=False, eos_token_id=_eos(tok), return_dict_in_generate=True)

    thread = threading.Thread(target=work)
    thread.start()
    events = list(streamer)
    thread.join()
    out = result["out"]
    finished = [e.row for e in events if e.finished]
    assert sorted(finished) == list(range(len(PROMPTS)))
    for row in range(len(PROMPTS)):
        texts = [e.text for e in events if e.row == row and not e.finished]
        assert "".join(texts) == "".join(r.corrected_text for r in out.alignment_trace[row])
        assert [e.record for e in events if e.row == row and not e.finished] == out.alignment_trace[row]
        assert events.index(next(e for e in events if e.row == row and e.finished)) > max(
            i for i, e in enumerate(events) if e.row == row and not e.finished
        )
    # a row that ended early finishes before the last event of the longest row
    assert events.index(next(e for e in events if e.finished)) < len(events) - len(PROMPTS)


def test_plain_streamer_with_batch_is_a_clear_error(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    with pytest.raises(ValueError, match="per_row=True"):
        model.generate(**_left_batch(tok), aligner=identity, streamer=TextStreamer(tok), max_new_tokens=5)


def test_static_cache_with_batch_is_a_clear_error(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    with pytest.raises(ValueError, match="StaticCache only works for one sequence"):
        model.generate(**_left_batch(tok), aligner=identity, cache_implementation="static", max_new_tokens=5)


def test_empty_prompt_row_is_a_clear_error(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    batch.attention_mask[1] = 0
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        model.generate(**batch, aligner=identity, max_new_tokens=5)


def test_sliding_window_batch_goes_row_by_row_exactly():
    from ..tiny_models import cached_tiny

    model, tok = cached_tiny("mistral-sliding")
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    kw = dict(max_new_tokens=50, do_sample=False, eos_token_id=_eos(tok))
    with pytest.warns(UserWarning, match="one after another"):
        out = model.generate(**batch, aligner=rewrite, return_dict_in_generate=True, **kw)
    _assert_rows_equal_alone(model, tok, out, batch.input_ids.shape[1], rewrite, **kw)
    with pytest.warns(UserWarning, match="one after another"), pytest.raises(AlignerOutputError) as info:
        model.generate(**batch, aligner=_fails_for_row("Dr. Smith"), **kw)
    assert info.value.row == 2 and str(info.value).startswith("row 2:")
    assert len(info.value.alignment_trace[0]) >= 2 and info.value.alignment_trace[3] == []


def test_pipeline_batch(tiny_llama):
    from transformers import pipeline

    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    tok.padding_side = "left"
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    kw = dict(aligner=rewrite, max_new_tokens=30, do_sample=False)
    batched = pipe(PROMPTS[:4], batch_size=4, **kw)
    single = [pipe(p, **kw) for p in PROMPTS[:4]]
    assert [b[0]["generated_text"] for b in batched] == [s[0]["generated_text"] for s in single]


def test_stop_strings_and_user_criteria_stop_rows_like_plain_generate(tiny_llama):
    from transformers import StoppingCriteria, StoppingCriteriaList

    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    batch = _left_batch(tok)
    kw = dict(max_new_tokens=60, do_sample=False, stop_strings=["wrong"], tokenizer=tok)
    plain = model.generate(**batch, **kw)
    out = model.generate(**batch, aligner=identity, return_dict_in_generate=True, **kw)
    assert torch.equal(plain, out.sequences)
    width = batch.input_ids.shape[1]
    texts = [tok.decode(out.sequences[row, width:], skip_special_tokens=True) for row in range(len(PROMPTS))]
    stopped = [row for row, text in enumerate(texts) if text.endswith("wrong")]
    assert len(stopped) >= 2

    class StopRowOneAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([row == 1 for row in range(input_ids.shape[0])]) & (input_ids.shape[1] > width + 12)

    out = model.generate(**batch, aligner=identity, max_new_tokens=40, do_sample=False, return_dict_in_generate=True,
                         stopping_criteria=StoppingCriteriaList([StopRowOneAfter()]))
    lengths = [sum(len(r.corrected_ids) for r in trace) for trace in out.alignment_trace]
    assert lengths[1] < 40 and max(lengths) == 40


def test_repetition_penalty_in_a_batch_warns(tiny_llama):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    with pytest.warns(UserWarning, match="repetition_penalty"):
        model.generate(**_left_batch(tok), aligner=identity, max_new_tokens=5, repetition_penalty=1.2)
