"""``VLLMUpstream`` keeps one HTTP client for every call and thread (a served loop used to make one per request, with
its own SSL context and pool); an engine's close ends its streams but leaves the shared client open; the upstream's
``close`` closes it and a later call opens a new one. No server is contacted."""

import threading

import pytest

pytest.importorskip("httpx")

from transformers_stream_aligner.outputs import AlignmentStats  # noqa: E402
from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMEngine, VLLMUpstream  # noqa: E402


def test_one_client_for_every_call_and_thread_until_closed():
    upstream = VLLMUpstream("http://127.0.0.1:9/", model="m", api_key="k")
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(upstream.client())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = seen[0]
    assert all(client is first for client in seen)
    assert str(first.base_url) == "http://127.0.0.1:9" and first.headers["Authorization"] == "Bearer k"

    engine = VLLMEngine(upstream, [], tokenizer=None, stats=AlignmentStats(), terminators=".", max_sentence_tokens=8,
                        eos_token_ids=[0])  # fmt: skip
    engine.close()
    assert not first.is_closed and upstream.client() is first  # an engine's close leaves the shared client open

    upstream.close()
    assert first.is_closed
    again = upstream.client()
    assert again is not first and not again.is_closed
    upstream.close()


def test_copies_and_reprs_do_not_share_or_show_the_client():
    import dataclasses

    upstream = VLLMUpstream("http://127.0.0.1:9", model="m")
    client = upstream.client()
    copy = dataclasses.replace(upstream, model="other")
    assert copy.client() is not client
    assert "_client" not in repr(upstream) and upstream == dataclasses.replace(upstream)
    upstream.close()
    copy.close()


def test_a_call_s_sampling_replaces_the_upstream_s_and_shares_its_client():
    upstream = VLLMUpstream("http://127.0.0.1:9", model="m")
    default = VLLMEngine(upstream, [], tokenizer=None, stats=AlignmentStats(), terminators=".", max_sentence_tokens=8,
                         eos_token_ids=[0])  # fmt: skip
    sampled = VLLMEngine(upstream, [], tokenizer=None, stats=AlignmentStats(), terminators=".", max_sentence_tokens=8,
                         eos_token_ids=[0], sampling={"temperature": 0.7, "seed": 3})  # fmt: skip
    assert default.sampling == {"temperature": 0} and sampled.sampling == {"temperature": 0.7, "seed": 3}
    assert default._client is sampled._client is upstream.client()
    default.close()
    sampled.close()
    upstream.close()


def test_stream_aligned_completion_takes_a_sampling_override():
    import inspect

    from transformers_stream_aligner.generation.completion import stream_aligned_completion

    parameter = inspect.signature(stream_aligned_completion).parameters["sampling"]
    assert parameter.default is None and parameter.kind is inspect.Parameter.KEYWORD_ONLY
