"""Stream alignment over a vLLM server (issue 17's engine): exact on SmolLM2 float32 greedy, the same records and
errors as on the transformers engine. Run by ``make test-vllm`` (marker ``vllm``; ``make test`` leaves them out)."""

import asyncio
import time

import httpx
import pytest

from transformers_stream_aligner import StreamAlignmentError
from transformers_stream_aligner.aligners.batching import BatchingAligner
from transformers_stream_aligner.errors import VLLMUpstreamError
from transformers_stream_aligner.generation.completion import astream_aligned_completion, stream_aligned_completion
from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMUpstream

from ..serving_aligners import check_results
from .conftest import wait_until_idle

pytestmark = [pytest.mark.vllm, pytest.mark.smollm2]

QUESTIONS = ["What is 17*23? Explain briefly.", "Give me three tips for sleeping better.", "Why is the sky blue?",
             "Tom has 45 apples and gets 19 more. How many apples does he have?"]  # fmt: skip
MAX_NEW = 80


def identity(question, prefix, last):
    return last


def rewrite(question, prefix, last):
    """Changes every sentence: each next sentence must then be vLLM's continuation of the corrected text."""
    return last if last.startswith("Indeed") else "Indeed, " + last


def _chat(tok, question):
    return list(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_dict=True)["input_ids"])  # fmt: skip


def _complete(base, model, ids, max_tokens):
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True,
            "skip_special_tokens": False}  # fmt: skip
    answer = httpx.post(f"{base}/v1/completions", json=body, timeout=120).json()
    return answer["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
def upstream(vllm_server):
    base, model = vllm_server
    return VLLMUpstream(base, model=model)


@pytest.mark.parametrize("question", QUESTIONS)
def test_identity_equals_plain_vllm_completion(upstream, smollm2, question):
    _, tok = smollm2
    ids = _chat(tok, question)
    plain = _complete(upstream.base_url, upstream.model, ids, MAX_NEW)
    out = stream_aligned_completion(upstream, [ids], aligner=identity, tokenizer=tok, max_new_tokens=MAX_NEW,
                                    return_dict=True)  # fmt: skip
    generated = out.sequences[0, len(ids) :].tolist()
    assert generated[: len(plain)] == plain and len(generated) == len(plain)
    assert sum(r.aligned for r in out.alignment_trace[0]) >= 1


@pytest.mark.parametrize("question", QUESTIONS[:3])
def test_every_next_sentence_is_vllms_continuation_of_the_corrected_text(upstream, smollm2, question):
    _, tok = smollm2
    ids = _chat(tok, question)
    out = stream_aligned_completion(upstream, [ids], aligner=rewrite, tokenizer=tok, max_new_tokens=MAX_NEW,
                                    return_dict=True)  # fmt: skip
    seq = out.sequences[0].tolist()
    trace = out.alignment_trace[0]
    assert any(r.changed for r in trace), "the aligner changed nothing: the test would not test a splice"
    for record in trace:
        if record.original_ids:
            redo = _complete(upstream.base_url, upstream.model, seq[: record.start], len(record.original_ids))
            assert redo == record.original_ids, f"record at {record.start} is not vLLM's continuation"


def test_a_batch_gives_each_row_what_it_gets_alone(upstream, smollm2):
    _, tok = smollm2
    prompts = [_chat(tok, q) for q in QUESTIONS[:3]]
    batch = stream_aligned_completion(upstream, prompts, aligner=check_results, tokenizer=tok, max_new_tokens=MAX_NEW)
    width = max(len(p) for p in prompts)
    for row, prompt in enumerate(prompts):
        alone = stream_aligned_completion(upstream, [prompt], aligner=check_results, tokenizer=tok,
                                          max_new_tokens=MAX_NEW)  # fmt: skip
        mine = [t for t in batch[row, width:].tolist()]
        theirs = alone[0, len(prompt) :].tolist()
        assert mine[: len(theirs)] == theirs


def test_the_arithmetic_checker_fixes_17_times_23(upstream, smollm2):
    _, tok = smollm2
    ids = _chat(tok, "What is 17*23?")
    out = stream_aligned_completion(upstream, [ids], aligner=check_results, tokenizer=tok, max_new_tokens=40,
                                    return_dict=True)  # fmt: skip
    assert "391" in tok.decode(out.sequences[0, len(ids) :]) and any(r.changed for r in out.alignment_trace[0])


def test_a_server_that_is_not_there_is_a_clear_error(smollm2):
    _, tok = smollm2
    port = 9  # discard: nothing listens on 127.0.0.1:9
    upstream = VLLMUpstream(f"http://127.0.0.1:{port}", model="smol", timeout=5)
    with pytest.raises(StreamAlignmentError, match="vLLM server") as caught:
        stream_aligned_completion(upstream, [_chat(tok, "Hi")], aligner=identity, tokenizer=tok, max_new_tokens=10)
    assert isinstance(caught.value.__cause__, VLLMUpstreamError) and caught.value.sequences is not None


def test_an_aligner_that_fails_keeps_the_partial_output(upstream, smollm2):
    _, tok = smollm2

    def fails_on_second(question, prefix, last):
        if prefix:
            raise ConnectionError("aligner service unavailable")
        return last

    with pytest.raises(StreamAlignmentError, match="aligner service unavailable") as caught:
        stream_aligned_completion(upstream, [_chat(tok, QUESTIONS[1])], aligner=fails_on_second, tokenizer=tok,
                                  max_new_tokens=MAX_NEW)  # fmt: skip
    assert caught.value.alignment_trace[0] and caught.value.partial_texts[0]
    assert wait_until_idle(upstream.base_url) == (0.0, 0.0), "a request was left running in vLLM"


# ---------------------------------------------------------------------------------------------- overlap
@pytest.mark.parametrize("aligner", [identity, rewrite, check_results], ids=["identity", "rewrite", "arithmetic"])
def test_overlap_gives_the_same_tokens(upstream, smollm2, aligner):
    """Drafting the next sentence while the aligner works changes nothing in the output: a kept draft is the
    continuation a new request would give, a dropped one is replaced by it."""
    _, tok = smollm2
    for question in QUESTIONS[:3]:
        ids = _chat(tok, question)
        plain = stream_aligned_completion(upstream, [ids], aligner=aligner, tokenizer=tok, max_new_tokens=MAX_NEW,
                                          return_dict=True)  # fmt: skip
        drafted = stream_aligned_completion(upstream, [ids], aligner=aligner, tokenizer=tok, max_new_tokens=MAX_NEW,
                                            return_dict=True, overlap=True)  # fmt: skip
        assert drafted.sequences.tolist() == plain.sequences.tolist()
        assert [r.corrected_ids for r in drafted.alignment_trace[0]] == [r.corrected_ids for r in plain.alignment_trace[0]]


def test_overlap_keeps_drafts_of_unchanged_sentences_and_drops_changed_ones(upstream, smollm2):
    _, tok = smollm2
    ids = _chat(tok, QUESTIONS[1])

    def slow(aligner):
        def correct(question, prefix, last):
            time.sleep(0.5)  # the upstream drafts meanwhile
            return aligner(question, prefix, last)

        return correct

    kept = stream_aligned_completion(upstream, [ids], aligner=slow(identity), tokenizer=tok, max_new_tokens=MAX_NEW,
                                     return_dict=True, overlap=True).alignment_stats  # fmt: skip
    assert kept.draft_tokens_kept > 0 and kept.draft_tokens_discarded == 0
    assert kept.upstream_requests < kept.sentences_aligned  # drafts continued the same requests
    dropped = stream_aligned_completion(upstream, [ids], aligner=slow(rewrite), tokenizer=tok, max_new_tokens=MAX_NEW,
                                        return_dict=True, overlap=True).alignment_stats  # fmt: skip
    assert dropped.draft_tokens_discarded > 0 and dropped.draft_tokens_kept == 0


# ---------------------------------------------------------------------------------------------- concurrency
def test_concurrent_requests_on_asyncio_each_get_what_they_get_alone(upstream, smollm2):
    """8 requests at once, each with its own sentence loop; their aligner calls batched by one BatchingAligner."""
    _, tok = smollm2
    prompts = [_chat(tok, q) for q in QUESTIONS * 2]
    alone = [stream_aligned_completion(upstream, [p], aligner=check_results, tokenizer=tok, max_new_tokens=MAX_NEW)
             for p in prompts[:4]]  # fmt: skip
    calls = []

    def recording(requests):
        calls.append(len(requests))
        return [check_results(r.question, r.prefix, r.last) for r in requests]

    class Recording:
        correct = staticmethod(recording)

    async def all_at_once(batching):
        jobs = [astream_aligned_completion(upstream, [p], aligner=batching, tokenizer=tok, max_new_tokens=MAX_NEW)
                for p in prompts]  # fmt: skip
        return await asyncio.gather(*jobs)

    with BatchingAligner(Recording(), window=0.05) as batching:
        together = asyncio.run(all_at_once(batching))
    for i, out in enumerate(together):
        assert out.tolist() == alone[i % 4].tolist()
    assert batching.stats.callers > len(calls) and max(calls) > 1, "no aligner call was shared"


def test_cancelling_the_task_ends_the_engine_requests(upstream, smollm2, vllm_server):
    _, tok = smollm2
    ids = _chat(tok, QUESTIONS[1])

    async def cancel_soon():
        task = asyncio.create_task(astream_aligned_completion(upstream, [ids], aligner=identity, tokenizer=tok,
                                                              max_new_tokens=400))  # fmt: skip
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    # the answer runs for well over 3 s more: idle this soon means the request was ended, not finished
    assert wait_until_idle(vllm_server[0], timeout=3.0) == (0.0, 0.0)
