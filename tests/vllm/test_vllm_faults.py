"""Faults of a real vLLM server (one of its own, on 127.0.0.1): paused past the timeout, killed in the middle of a
request. Each is a clear StreamAlignmentError naming the server, with the output so far; nothing is left running."""

import os
import signal
import time

import httpx
import pytest

from transformers_stream_aligner import StreamAlignmentError
from transformers_stream_aligner.errors import VLLMUpstreamError
from transformers_stream_aligner.generation.completion import stream_aligned_completion
from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMUpstream

from ..helpers import free_port, running_server
from .conftest import vllm_command, vllm_env, wait_until_idle
from .test_vllm_engine import QUESTIONS, _chat, _complete

pytestmark = [pytest.mark.vllm, pytest.mark.smollm2]


@pytest.fixture(scope="module")
def doomed_server(smollm2, tmp_path_factory):
    """(base url, process) of a vLLM server these tests may pause and kill."""
    model, _ = smollm2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("vllm-faults") / "server.log"
    with running_server(vllm_command(model.name_or_path, port), health_url=f"{base}/health", log_path=log_path,
                        env=vllm_env(), timeout=600) as process:  # fmt: skip
        yield base, process


def identity(question, prefix, last):
    return last


def test_a_server_that_stops_answering_times_out_with_the_partial_output(doomed_server, smollm2):
    base, process = doomed_server
    _, tok = smollm2
    ids = _chat(tok, QUESTIONS[1])
    plain = _complete(base, "smol", ids, 80)
    paused = []

    def pause_after_first(question, prefix, last):
        if not paused:
            os.killpg(process.pid, signal.SIGSTOP)  # the server hangs: no more tokens, no errors
            paused.append(time.monotonic())
        return last

    upstream = VLLMUpstream(base, model="smol", timeout=3)
    try:
        with pytest.raises(StreamAlignmentError, match="timed out") as caught:
            stream_aligned_completion(upstream, [ids], aligner=pause_after_first, tokenizer=tok, max_new_tokens=80)
        assert time.monotonic() - paused[0] < 30
    finally:
        os.killpg(process.pid, signal.SIGCONT)
    err = caught.value
    assert isinstance(err.__cause__, VLLMUpstreamError) and base in str(err)
    generated = err.sequences[0, len(ids) :].tolist()
    assert generated and plain[: len(generated)] == generated  # the first sentence is kept
    assert wait_until_idle(base, timeout=30) == (0.0, 0.0)  # the server recovered with nothing left running
    assert _complete(base, "smol", ids, 80) == plain


def test_a_server_killed_in_the_middle_of_a_request(doomed_server, smollm2):
    """With overlap the upstream request is streaming while the aligner runs: the server dies under it."""
    base, process = doomed_server
    _, tok = smollm2
    ids = _chat(tok, QUESTIONS[1])
    plain = _complete(base, "smol", ids, 120)

    def kill_while_drafting(question, prefix, last):
        if prefix:  # second sentence: the request drafting the third is open
            time.sleep(0.3)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        return last

    upstream = VLLMUpstream(base, model="smol", timeout=10)
    with pytest.raises(StreamAlignmentError, match="vLLM server") as caught:
        stream_aligned_completion(upstream, [ids], aligner=kill_while_drafting, tokenizer=tok, max_new_tokens=120,
                                  overlap=True)  # fmt: skip
    err = caught.value
    generated = err.sequences[0, len(ids) :].tolist()
    assert len(err.alignment_trace[0]) >= 1 and plain[: len(generated)] == generated
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/health", timeout=2)
