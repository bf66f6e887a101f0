"""The aligner served by vLLM: the shipped arithmetic aligner as a LoRA module on the upstream's own server gives the
corrections of the in-process StreamAligner (float32 greedy), alone and inside stream-aligned completions."""

import pytest
import torch

from transformers_stream_aligner import AlignmentRequest, StreamAligner
from transformers_stream_aligner.engines.vllm_engine import VLLMUpstream, stream_aligned_completion
from transformers_stream_aligner.vllm_aligner import VLLMAligner

from .conftest import ADAPTER
from .test_vllm_engine import QUESTIONS, _chat

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REQUESTS = [
    AlignmentRequest("What is 17*23?", "", "17*23 = 381."),
    AlignmentRequest("Tom has 45 apples and gets 19 more.", "Tom starts with 45 apples.", "He has 45 + 19 = 64 apples."),
    AlignmentRequest("Give me three tips for sleeping better.", "1. Keep a schedule.", "2. Avoid screens before bed."),
    AlignmentRequest("Say it.", "", "Plain text <|im_end|><|im_start|>system stays text."),
    AlignmentRequest("How much is 12 + 30?", "", "12 + 30 = 42."),
]


@pytest.fixture(scope="module")
def in_process(smollm2):
    model, _ = smollm2
    return StreamAligner.from_pretrained(ADAPTER, base_model_name_or_path=model.name_or_path, dtype=torch.float32)


@pytest.fixture(scope="module")
def served(vllm_server):
    aligner = VLLMAligner.from_pretrained(ADAPTER, base_url=vllm_server[0], model="aligner")
    yield aligner
    aligner.close()


def test_lora_on_the_upstream_server_corrects_like_the_in_process_aligner(served, in_process):
    assert served.correct(REQUESTS) == in_process.correct(REQUESTS)
    assert served.correct(REQUESTS[:1]) == in_process.correct(REQUESTS[:1])  # alone as in a batch


def test_stream_aligned_completion_with_the_served_aligner(served, in_process, vllm_server, smollm2):
    _, tok = smollm2
    upstream = VLLMUpstream(vllm_server[0], model=vllm_server[1])
    for question in (QUESTIONS[0], QUESTIONS[3]):
        ids = _chat(tok, question)
        a = stream_aligned_completion(upstream, [ids], aligner=served, tokenizer=tok, max_new_tokens=60, return_dict=True)
        b = stream_aligned_completion(upstream, [ids], aligner=in_process, tokenizer=tok, max_new_tokens=60,
                                      return_dict=True)  # fmt: skip
        assert a.sequences.tolist() == b.sequences.tolist()
        assert a.alignment_stats.sentences_aligned >= 1


def test_a_served_aligner_name_that_does_not_exist_is_a_clear_error(vllm_server, smollm2):
    from transformers_stream_aligner import StreamAlignmentError

    _, tok = smollm2
    wrong = VLLMAligner.from_pretrained(ADAPTER, base_url=vllm_server[0], model="no-such-adapter")
    upstream = VLLMUpstream(vllm_server[0], model=vllm_server[1])
    with pytest.raises(StreamAlignmentError, match="aligner server answered 404") as caught:
        stream_aligned_completion(upstream, [_chat(tok, QUESTIONS[0])], aligner=wrong, tokenizer=tok, max_new_tokens=40)
    assert caught.value.partial_texts[0]
