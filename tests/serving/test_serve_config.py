"""``ServeConfig``'s defaults where the issue left them to us: overlap and concurrent aligner calls are on when vLLM
decodes the aligner (where they pay, docs/benchmarks.md), off otherwise; the operator's values win; bad values are
clear errors. Pure: nothing is loaded."""

import pytest

from transformers_stream_aligner.aligners.batching import BatchingAligner
from transformers_stream_aligner.serving.openai.config import ServeConfig

VLLM = {"upstream_url": "http://127.0.0.1:9", "tokenizer": "tok", "aligner": "dir"}


@pytest.mark.parametrize(
    ("fields", "overlap", "in_flight"),
    [
        ({**VLLM, "aligner_vllm_model": "aligner"}, True, 8),  # the LoRA route: vLLM decodes the aligner
        (VLLM, False, 1),  # vLLM upstream, aligner in process
        ({"model": "m", "aligner": "dir"}, False, 1),  # everything in process
        ({**VLLM, "aligner_vllm_model": "aligner", "overlap": False, "aligner_in_flight": 2}, False, 2),
    ],
)
def test_overlap_and_in_flight_defaults(fields, overlap, in_flight):
    config = ServeConfig(**fields)
    assert (config.overlap, config.aligner_in_flight) == (overlap, in_flight)


def test_bad_in_flight_is_a_clear_error():
    with pytest.raises(ValueError, match="--aligner-in-flight must be >= 1"):
        ServeConfig(model="m", aligner="dir", aligner_in_flight=0)


def test_the_server_batches_with_the_configured_in_flight():
    from transformers_stream_aligner.serving.openai.serving import StreamAlignedServer

    config = ServeConfig(**VLLM, upstream_model="smol", aligner_vllm_model="aligner")
    server = StreamAlignedServer(config, aligner=lambda q, p, last: last, tokenizer=object())  # nothing is contacted
    try:
        assert isinstance(server.aligner, BatchingAligner)
        assert (server.aligner.max_in_flight, server.aligner.window) == (8, config.batch_window)
    finally:
        server.aligner.close()
