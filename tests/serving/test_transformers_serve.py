"""The ``transformers serve`` recipe, over HTTP: a model directory carrying the custom_generate folder and the
server's aligners (``stream_aligner_serving.json``), served by transformers' own OpenAI-compatible server on
127.0.0.1, queried with the ``openai`` client and httpx, stopped by its process id.

The upstream is the embedded SmolLM2-135M-Instruct (float32), the default aligner a checker of the results of
sums, differences and products (tests/serving_aligners.py); ``identity`` is on the allow-list too. A request may pick a name from the list, never a path.
"""

import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from transformers_stream_aligner import export_custom_generate, stream_aligned_generate

from ..helpers import free_port, running_server
from ..serving_aligners import check_results

pytestmark = pytest.mark.smollm2

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is 17*23?"
MAX_TOKENS = 60


@pytest.fixture(scope="module")
def served(smollm2, tmp_path_factory):
    """(base url, model directory): the server runs for the module and is stopped by its process id."""
    model, _ = smollm2
    directory = tmp_path_factory.mktemp("served") / "smollm2-aligned"
    directory.mkdir()
    for path in Path(model.name_or_path).iterdir():  # the converted checkpoint, linked, plus the folder
        (directory / path.name).symlink_to(path)
    export_custom_generate(
        directory,
        aligners={"arith": "tests.serving_aligners:check_results", "identity": "tests.serving_aligners:identity",
                  "fails": "tests.serving_aligners:fails_on_second"},
        default_aligner="arith",
    )
    port = free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(directory), "--trust-remote-code",
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    base = f"http://127.0.0.1:{port}"
    with running_server(command, health_url=f"{base}/health", log_path=directory.parent / "server.log", env=env,
                        cwd=ROOT, timeout=180):  # fmt: skip
        yield base, str(directory)


@pytest.fixture(scope="module")
def reference(smollm2):
    """What one process gives for QUESTION: plain, and stream-aligned with the checker."""
    model, tok = smollm2
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
    settings = {"max_new_tokens": MAX_TOKENS, "do_sample": False}
    plain = model.generate(ids, **settings)
    aligned = stream_aligned_generate(model, ids, aligner=check_results, tokenizer=tok, return_dict_in_generate=True,
                                      **settings)  # fmt: skip
    decode = lambda out: tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)  # noqa: E731
    changed = [r for r in aligned.alignment_trace[0] if r.changed]
    return {"plain": decode(plain), "aligned": decode(aligned.sequences), "changed": changed}


def _client(base):
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_the_question_needs_a_correction(reference):
    assert reference["changed"] and reference["aligned"] != reference["plain"]


def test_chat_completion_is_the_stream_aligned_answer(served, reference):
    base, model = served
    answer = _client(base).chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS, temperature=0
    )
    assert answer.choices[0].message.content == reference["aligned"]


def test_streaming_sends_corrected_text_only(served, reference):
    base, model = served
    stream = _client(base).chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == reference["aligned"]
    for record in reference["changed"]:
        assert record.original_text.strip() not in "".join(pieces)  # the wrong sentence never reached the client


def test_a_request_picks_an_aligner_from_the_allow_list(served, reference):
    base, model = served
    config = json.dumps({"stream_aligner": "identity", "max_new_tokens": MAX_TOKENS, "do_sample": False})
    answer = _client(base).chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], extra_body={"generation_config": config}
    )
    assert answer.choices[0].message.content == reference["plain"]  # identity == plain generation


@pytest.mark.parametrize("name", ["/etc/passwd", str(ROOT / "examples" / "arithmetic" / "trained_aligner"), "os:system"])
def test_a_request_cannot_name_anything_else(served, name):
    base, model = served
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}],
            "generation_config": json.dumps({"stream_aligner": name, "max_new_tokens": 5})}  # fmt: skip
    with httpx.Client(timeout=120) as client:
        refused = client.post(f"{base}/v1/chat/completions", json=body).status_code
    assert refused in (400, 500)  # serve's answer to a ValueError from generate: 500 up to transformers 5.24, 400 after
    with httpx.Client(timeout=120) as client:
        streamed = client.post(f"{base}/v1/chat/completions", json={**body, "stream": True})
    assert "not one this server offers" in streamed.text and "'arith'" in streamed.text
    assert '"finish_reason":"stop"' not in streamed.text  # a refused request does not look like a finished answer
    with httpx.Client(timeout=120) as client:  # and the server goes on serving
        after = client.post(f"{base}/v1/chat/completions", json={**body, "generation_config": None, "max_tokens": 5})
    assert after.status_code == 200


def test_an_aligner_that_fails_mid_answer_is_an_error_event_not_a_finished_answer(served):
    base, model = served
    body = {"model": model, "messages": [{"role": "user", "content": "Give me three tips for sleeping better."}],
            "stream": True, "generation_config": json.dumps({"stream_aligner": "fails", "max_new_tokens": 80})}  # fmt: skip
    with httpx.Client(timeout=120) as client:
        streamed = client.post(f"{base}/v1/chat/completions", json=body).text
    assert "aligner service unavailable" in streamed
    assert '"finish_reason":"stop"' not in streamed
