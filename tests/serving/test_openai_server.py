"""``stream-aligner serve`` with the upstream in process (SmolLM2-135M-Instruct, float32) on 127.0.0.1, stopped by its
process id: answers equal in-process stream-aligned generation, the stream carries the corrected text only, a client
that leaves cancels its request, limits and bad input are clear errors. The vLLM route: tests/vllm/test_vllm_serve.py."""

import os
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.serving_aligners import identity, rewrite
from transformers_stream_aligner import stream_aligned_generate

from ..helpers import free_port, running_server

pytestmark = pytest.mark.smollm2

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ["What is 17*23? Explain briefly.", "Give me three tips for sleeping better."]
MAX_TOKENS = 60


def _start(smollm2, tmp_path_factory, aligner, *flags):
    model, _ = smollm2
    port = free_port()
    command = [str(Path(sys.executable).parent / "stream-aligner"), "serve", "--model", model.name_or_path,
               "--aligner", aligner, "--port", str(port), *flags]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("stream-aligner-serve") / "serve.log"
    return base, running_server(command, health_url=f"{base}/health", log_path=log, env=env, cwd=ROOT, timeout=180)


@pytest.fixture(scope="module")
def endpoint(smollm2, tmp_path_factory):
    base, server = _start(smollm2, tmp_path_factory, "tests.serving_aligners:rewrite", "--max-tokens-limit", "200")
    with server:
        yield base


def _reference(smollm2, question, aligner):
    model, tok = smollm2
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
    out = stream_aligned_generate(model, ids, aligner=aligner, tokenizer=tok, max_new_tokens=MAX_TOKENS, do_sample=False,
                                  return_dict_in_generate=True)  # fmt: skip
    return tok.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True), out


@pytest.mark.parametrize("question", QUESTIONS)
def test_answers_equal_in_process_stream_aligned_generation(endpoint, smollm2, question):
    expected, out = _reference(smollm2, question, rewrite)
    client = OpenAI(base_url=f"{endpoint}/v1", api_key="none", timeout=300, max_retries=0)
    messages = [{"role": "user", "content": question}]
    answer = client.chat.completions.create(model="stream-aligned", messages=messages, max_tokens=MAX_TOKENS)
    assert answer.choices[0].message.content == expected
    trace = answer.model_extra["alignment_trace"]
    assert [r["corrected_text"] for r in trace] == [r.corrected_text for r in out.alignment_trace[0]]
    stream = client.chat.completions.create(model="stream-aligned", messages=messages, max_tokens=MAX_TOKENS, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == expected and [p for p in pieces if p][0].startswith("Indeed")


def test_completions_take_a_string_or_token_ids(endpoint, smollm2):
    model, tok = smollm2
    prompt = "The capital of France is"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    by_text = httpx.post(f"{endpoint}/v1/completions", json={"prompt": prompt, "max_tokens": 20}, timeout=120).json()
    by_ids = httpx.post(f"{endpoint}/v1/completions", json={"prompt": ids, "max_tokens": 20}, timeout=120).json()
    assert by_text["choices"][0]["text"] == by_ids["choices"][0]["text"]
    assert by_text["choices"][0]["text"].strip().startswith("Indeed") and by_text["object"] == "text_completion"


def test_bad_requests_are_clear_errors_and_nothing_is_loaded(endpoint):
    url = f"{endpoint}/v1/chat/completions"
    messages = [{"role": "user", "content": "Hi"}]
    cases = [
        ({"model": "/etc/passwd", "messages": messages}, 404, "does not exist"),
        ({"model": "HuggingFaceTB/SmolLM2-1.7B", "messages": messages}, 404, "does not exist"),
        ({"messages": messages, "max_tokens": 201}, 400, "limit of 200"),
        ({"messages": messages, "max_tokens": 0}, 400, "positive"),
        ({"messages": messages, "temperature": 0.7}, 400, "greedily"),
        ({"messages": messages, "stop": ["."]}, 400, "stop"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text"),
        ({"messages": []}, 400, "non-empty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ({"messages": messages, "n": 2}, 400, "n=1"),
        ({"messages": messages, "logprobs": True}, 400, "logprobs"),
    ]
    for body, status, words in cases:
        answer = httpx.post(url, json=body, timeout=30)
        assert answer.status_code == status and words in answer.json()["error"]["message"], (body, answer.text)
    assert httpx.post(f"{endpoint}/v1/completions", json={"prompt": ["a", "b"]}, timeout=30).status_code == 400
    models = httpx.get(f"{endpoint}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["stream-aligned"]


def test_a_client_that_leaves_cancels_its_request(smollm2, tmp_path_factory):
    base, server = _start(smollm2, tmp_path_factory, "tests.serving_aligners:slow_identity")
    body = {"messages": [{"role": "user", "content": QUESTIONS[1]}], "max_tokens": 200, "stream": True}
    with server:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if '"content"' in line and '"content": ""' not in line:
                    break
        deadline = time.monotonic() + 5  # the answer has ~10 more sentences at 1 s each: only a cancel ends it this soon
        while httpx.get(f"{base}/health", timeout=10).json()["active_requests"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{base}/health", timeout=10).json()["active_requests"] == 0
        # the model is free again: the next request is answered in full
        expected, _ = _reference(smollm2, "Hi", identity)
        answer = httpx.post(f"{base}/v1/chat/completions", timeout=300,
                            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS}).json()  # fmt: skip
        assert answer["choices"][0]["message"]["content"] == expected
