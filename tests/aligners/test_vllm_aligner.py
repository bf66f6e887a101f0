"""VLLMAligner's look at its server (no vLLM needed: an httpx mock transport plays the server)."""

import warnings

import httpx
import pytest

from transformers_stream_aligner import AlignmentRequest
from transformers_stream_aligner.aligners.vllm import VLLMAligner
from transformers_stream_aligner.errors import VLLMUpstreamError

MODELS = {"data": [{"id": "smol", "parent": None}, {"id": "aligner", "parent": "smol"}]}
METRICS = 'vllm:lora_requests_info{max_lora="1",running_lora_adapters=""} 1.0\n'


def test_an_unreachable_server_is_checked_again_and_then_warned_about(tiny_llama):
    _, tok = tiny_llama
    up = {"now": False}

    def server(request):
        if not up["now"]:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        if request.url.path == "/metrics":
            return httpx.Response(200, text=METRICS)
        return httpx.Response(200, json={"choices": [{"index": 0, "token_ids": [tok.eos_token_id], "finish_reason": "stop"}]})

    aligner = VLLMAligner("http://127.0.0.1:9", model="aligner", tokenizer=tok)
    aligner._client = httpx.Client(base_url=aligner.base_url, transport=httpx.MockTransport(server))
    request = AlignmentRequest("q", "", "one two.")
    with pytest.raises(VLLMUpstreamError, match="failed"):
        aligner.correct([request])  # down: the check is skipped, the call reports the server
    up["now"] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert aligner.correct([request]) == [""]
        aligner.correct([request])
    problems = [w for w in caught if "--max-loras 2" in str(w.message)]
    assert len(problems) == 1  # checked once the server answered, and only once


def test_a_copy_bias_is_refused_unless_overridden(tiny_llama, tmp_path):
    """vLLM cannot apply ``copy_bias``: a config with one is refused with the way out; ``copy_bias=0.0`` serves it."""
    from transformers_stream_aligner import StreamAlignerConfig

    model, tok = tiny_llama
    with pytest.raises(ValueError, match="copy_bias=0.0"):
        VLLMAligner("http://127.0.0.1:9", model="aligner", tokenizer=tok, config=StreamAlignerConfig(copy_bias=2.0))
    StreamAlignerConfig(copy_bias=2.0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="copy_bias"):
        VLLMAligner.from_pretrained(tmp_path, base_url="http://127.0.0.1:9", model="aligner")
    aligner = VLLMAligner.from_pretrained(tmp_path, base_url="http://127.0.0.1:9", model="aligner", copy_bias=0.0)
    assert aligner.config.copy_bias == 0.0


def test_the_edit_rule_applies_to_served_corrections_and_kept_sentences_are_not_sent(tiny_llama):
    """edits="numbers": a served correction that changes words keeps the sentence; a sentence without a digit is not
    sent; one with a number changed comes through (through the calculator too)."""
    from transformers_stream_aligner import RejectedCorrection, StreamAlignerConfig

    _, tok = tiny_llama
    served = {"So 2 + 2 = 5.": "So 2 + 2 = <<2 + 2=5>>.", "It is 3 pm.": "It was 3 pm."}
    sent = []

    def server(request):
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        if request.url.path == "/metrics":
            return httpx.Response(200, text='vllm:lora_requests_info{max_lora="2",running_lora_adapters=""} 1.0\n')
        import json

        prompts = json.loads(request.content)["prompt"]
        sent.extend(tok.decode(p) for p in prompts)
        lasts = [next(k for k in served if k in tok.decode(p)) for p in prompts]
        return httpx.Response(200, json={"choices": [
            {"index": i, "token_ids": tok(served[last], add_special_tokens=False).input_ids + [tok.eos_token_id],
             "finish_reason": "stop"} for i, last in enumerate(lasts)]})  # fmt: skip

    config = StreamAlignerConfig(instruction_template="S: {last}\nC: ", prompt_wrapper="{instruction}", calculator=True,
                                 edits="numbers")  # fmt: skip
    aligner = VLLMAligner("http://127.0.0.1:9", model="aligner", tokenizer=tok, config=config)
    aligner._client = httpx.Client(base_url=aligner.base_url, transport=httpx.MockTransport(server))
    out = aligner.correct([AlignmentRequest("q", "", s) for s in ("So 2 + 2 = 5.", "Rest well.", "It is 3 pm.")])
    assert out == ["So 2 + 2 = 4.", "Rest well.", "It is 3 pm."]
    assert isinstance(out[2], RejectedCorrection) and out[2].correction == "It was 3 pm."
    assert len(sent) == 2 and not any("Rest well." in p for p in sent)
    assert aligner.correct([AlignmentRequest("q", "", "Rest well.")]) == ["Rest well."] and len(sent) == 2
