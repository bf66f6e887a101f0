"""The loop and the engine seam: another engine plugs in without touching the loop and gives the same answer."""

import torch

from transformers_stream_aligner import stream_aligned_generate
from transformers_stream_aligner.aligners.config import StreamAlignerConfig
from transformers_stream_aligner.aligners.model import as_correction_fn
from transformers_stream_aligner.runtime.boundary.tracker import SentenceTracker
from transformers_stream_aligner.runtime.engines import RoundOutcome, UpstreamEngine
from transformers_stream_aligner.runtime.loop import AlignmentLoop, RowState
from transformers_stream_aligner.runtime.plan import GenerationPlan
from transformers_stream_aligner.runtime.streamers import StreamerDriver

from ..helpers import RecordingAligner, assert_rewrite_exact, prompt_ids


class UncachedEngine(UpstreamEngine):
    """A second engine: greedy decoding by full forwards of each row's ids (no cache, no batching), with the
    boundary stage's tracker. Rows that wait for the aligner do not draft."""

    def __init__(self, model, rows, *, tokenizer, eos, settings):
        self.model, self.tokenizer, self.eos, self.settings = model, tokenizer, set(eos), settings
        self.calls = []

    def run_round(self, rows, drafting):
        self.calls.append(("round", [r.index for r in rows], [r.index for r in drafting]))
        outcomes = {r.index: RoundOutcome() for r in drafting}
        for row in rows:
            lo = max(row.start - 1, 0)
            tracker = SentenceTracker(
                self.tokenizer, row.ids[lo:], row.start - lo, terminators=self.settings.terminators,
                max_sentence_tokens=self.settings.max_sentence_tokens,
            )  # fmt: skip
            new, cut = [], None
            while len(new) < row.budget_left:
                with torch.no_grad():
                    token = int(self.model(torch.tensor([row.ids + new])).logits[0, -1].argmax())
                new.append(token)
                if token in self.eos:
                    break
                found = tracker.push(token)
                if found is not None:
                    cut = found + lo
                    break
            outcomes[row.index] = RoundOutcome(new, cut=cut)
        return outcomes

    def replace_tail(self, row, keep):
        self.calls.append(("replace", row.index, keep))

    def drop_rows(self, rows):
        self.calls.append(("drop", [r.index for r in rows]))

    def close(self):
        self.closed = getattr(self, "closed", 0) + 1


def _plan(tok, ids, aligner, engine_factory, *, max_new_tokens, streamer=None):
    rows = [ids[0].tolist()]
    return GenerationPlan(
        tokenizer=tok,
        correct=as_correction_fn(aligner),
        settings=StreamAlignerConfig(),
        prompt_ids=ids,
        rows=rows,
        questions=["q"],
        max_new_tokens=max_new_tokens,
        eos_token_ids=frozenset([tok.eos_token_id]),
        pad_token_id=tok.pad_token_id,
        invalid_correction="raise",
        completed_rows="draft",
        streamer=StreamerDriver(streamer),
        engine_factory=engine_factory,
        return_dict=True,
    )


def _uncached_factory(model, tok, engines):
    """An engine factory for the plan that keeps every engine it makes in ``engines``."""

    def factory(rows, stats):
        engines.append(UncachedEngine(model, rows, tokenizer=tok, eos=[tok.eos_token_id], settings=StreamAlignerConfig()))
        return engines[-1]

    return factory


def test_a_second_engine_gives_what_the_transformers_engine_gives(tiny_llama):
    model, tok = tiny_llama
    ids = prompt_ids(tok)
    engines = []
    factory = _uncached_factory(model, tok, engines)

    aligner = RecordingAligner()
    loop = AlignmentLoop(_plan(tok, ids, aligner, factory, max_new_tokens=60))
    out = loop.output(loop.run())
    reference = stream_aligned_generate(model, ids, max_new_tokens=60, do_sample=False, aligner=RecordingAligner(),
                                        tokenizer=tok, return_dict_in_generate=True)  # fmt: skip
    assert torch.equal(out.sequences, reference.sequences)
    assert [r.to_dict() for r in out.alignment_trace[0]] == [r.to_dict() for r in reference.alignment_trace[0]]
    assert_rewrite_exact(model, out.sequences, out.alignment_trace[0])
    # the loop told the engine about every splice, and each splice kept a prefix of the old tokens
    replaced = [c for c in engines[0].calls if c[0] == "replace"]
    assert len(replaced) == sum(r.changed for r in out.alignment_trace[0]) >= 1
    assert engines[0].calls[-1] == ("drop", [0])


def test_the_engine_is_closed_once_whether_the_call_succeeds_or_fails(tiny_llama):
    """An engine holds connections and threads (vLLM's): a failed call must release them too."""
    import pytest

    from transformers_stream_aligner import StreamAlignmentError

    model, tok = tiny_llama
    ids = prompt_ids(tok)
    engines = []
    factory = _uncached_factory(model, tok, engines)

    def fails_on_second(question, prefix, last):
        if prefix:
            raise ConnectionError("aligner down")
        return last

    loop = AlignmentLoop(_plan(tok, ids, lambda q, p, last: last, factory, max_new_tokens=30))
    loop.run()
    with pytest.raises(StreamAlignmentError):
        AlignmentLoop(_plan(tok, ids, fails_on_second, factory, max_new_tokens=60)).run()
    assert [engine.closed for engine in engines] == [1, 1]


def test_row_state_budget_and_advance():
    row = RowState(index=3, ids=[1, 2, 3], prompt_len=3, question="q", max_new_tokens=5)
    assert row.start == 3 and row.budget_left == 5
    row.ids += [4, 5]
    row.known_cut = 5
    row.advance(5)
    assert (row.start, row.known_cut, row.budget_left) == (5, None, 3)


def test_streamer_driver_adapts_any_streamer():
    class Plain:  # a transformers-style streamer without alignment hooks
        def __init__(self):
            self.got = []

        def put(self, value):
            self.got.append(value.tolist())

        def end(self):
            self.got.append("end")

    class Record:
        corrected_ids = [7, 8]
        row = 0

    plain = Plain()
    driver = StreamerDriver(plain)
    driver.prompt(torch.tensor([[1, 2]]))
    driver.record(Record())
    driver.row_end(0)  # a plain streamer has no per-row events: nothing happens
    driver.end()
    assert plain.got == [[[1, 2]], [7, 8], "end"] and driver.on_draft is None
    silent = StreamerDriver(None)  # no streamer: every event is a no-op
    silent.prompt(torch.tensor([[1]]))
    silent.record(Record())
    silent.end()
