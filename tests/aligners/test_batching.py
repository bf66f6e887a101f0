"""BatchingAligner: concurrent loops' aligner calls go together into one call of the wrapped aligner."""

import threading
import time

import pytest

from transformers_stream_aligner import AlignmentRequest, StreamAlignmentError, stream_aligned_generate
from transformers_stream_aligner.aligners.batching import BatchingAligner

from ..helpers import prompt_ids
from ..tiny_models import cached_tiny


def _requests(tag, n):
    return [AlignmentRequest("q", "", f"{tag}-{i}.") for i in range(n)]


def test_concurrent_callers_share_one_call_and_each_gets_its_own_answers():
    calls = []

    def correct(requests):
        calls.append([r.last for r in requests])
        return [r.last.upper() for r in requests]

    class Aligner:
        pass

    aligner = Aligner()
    aligner.correct = correct
    results = {}
    with BatchingAligner(aligner, window=0.2) as batching:
        threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, batching.correct(_requests(t, t + 1))))
                   for t in range(5)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for t in range(5):
        assert results[t] == [f"{t}-{i}.".upper() for i in range(t + 1)]
    assert len(calls) < 5 and batching.stats.callers == 5 and batching.stats.requests == 15
    assert batching.stats.largest_batch == max(len(c) for c in calls) > 1


def test_max_batch_calls_without_waiting_for_the_window():
    with BatchingAligner(lambda q, p, last: last, window=30, max_batch=2) as batching:
        start = time.monotonic()
        assert batching.correct(_requests("a", 2)) == ["a-0.", "a-1."]
        assert time.monotonic() - start < 10


def test_a_failing_aligner_fails_every_caller_of_the_batch_and_the_next_batch_works():
    state = {"fail": True}

    def correct(q, p, last):
        if state["fail"]:
            raise ConnectionError("down")
        return last

    errors = []
    with BatchingAligner(correct, window=0.2) as batching:
        def call(tag):
            try:
                batching.correct(_requests(tag, 1))
            except ConnectionError as err:
                errors.append(err)

        threads = [threading.Thread(target=call, args=(t,)) for t in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(errors) == 3
        state["fail"] = False
        assert batching.correct(_requests("b", 1)) == ["b-0."]


def test_wrong_answer_counts_and_closed_aligners_are_errors():
    batching = BatchingAligner(type("A", (), {"correct": staticmethod(lambda requests: ["x"])})(), window=0)
    with pytest.raises(ValueError, match="one correction per request"):
        batching.correct(_requests("c", 2))
    batching.close()
    with pytest.raises(RuntimeError, match="closed"):
        batching.correct(_requests("c", 1))
    with pytest.raises(ValueError, match="window"):
        BatchingAligner(lambda q, p, last: last, window=-1)


def test_generate_through_a_batching_aligner_from_threads_equals_alone():
    """Stream-aligned generate calls on several threads (each its own model copy) share the aligner's calls."""
    import torch

    def rewrite(q, p, last):
        return last if last.startswith("Indeed") else "Indeed, " + last

    import copy

    model0, tok = cached_tiny("llama")
    models = [copy.deepcopy(model0) for _ in range(3)]
    prompts = [prompt_ids(tok, t) for t in ("The cat is", "The answer", "A dog")]
    settings = {"tokenizer": tok, "max_new_tokens": 40, "do_sample": False}
    alone = [stream_aligned_generate(model0, p, aligner=rewrite, **settings) for p in prompts]
    results = {}
    with BatchingAligner(rewrite, window=0.1) as batching:
        def run(i):
            results[i] = stream_aligned_generate(models[i], prompts[i], aligner=batching, **settings)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for i in range(3):
        assert torch.equal(results[i], alone[i])
    assert batching.stats.callers >= 3


def test_stream_alignment_error_keeps_its_type_through_the_batcher():
    model, tok = cached_tiny("llama")

    def fails(q, p, last):
        raise ConnectionError("aligner down")

    with BatchingAligner(fails, window=0) as batching, pytest.raises(StreamAlignmentError, match="aligner down"):
        stream_aligned_generate(model, prompt_ids(tok), aligner=batching, tokenizer=tok, max_new_tokens=30, do_sample=False)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_max_in_flight_lets_a_batch_start_while_another_is_running(in_flight):
    # Two callers in two batches (max_batch=1); each call waits until two calls run at once. One call at a time
    # (the default) never gets there: the first call gives up, and both callers still get an answer.
    meeting = threading.Barrier(2, timeout=1.5)
    met = []

    def correct(requests):
        try:
            meeting.wait()
            met.append(True)
        except threading.BrokenBarrierError:
            met.append(False)
        return [r.last.upper() for r in requests]

    results = {}
    with BatchingAligner(type("A", (), {"correct": staticmethod(correct)})(), window=0, max_batch=1,
                         max_in_flight=in_flight) as batching:  # fmt: skip
        threads = [threading.Thread(target=lambda t=t: results.__setitem__(t, batching.correct(_requests(t, 1))))
                   for t in range(2)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == {0: ["0-0."], 1: ["1-0."]}
    assert batching.stats.calls == 2
    assert met == ([True, True] if in_flight == 2 else [False, False])


def test_max_in_flight_is_checked_and_close_waits_for_running_calls():
    with pytest.raises(ValueError, match="max_in_flight"):
        BatchingAligner(lambda q, p, last: last, max_in_flight=0)
    done = []

    def slow(q, p, last):
        time.sleep(0.3)
        done.append(last)
        return last

    batching = BatchingAligner(slow, window=0, max_in_flight=4)
    caller = threading.Thread(target=lambda: batching.correct(_requests("x", 1)))
    caller.start()
    time.sleep(0.1)
    batching.close()  # the running call ends before close returns
    assert done == ["x-0."]
    caller.join()
    assert "max_in_flight=4" in repr(batching)
