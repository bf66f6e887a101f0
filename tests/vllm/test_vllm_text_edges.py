"""Issue 39 on the vLLM engine: a sentence cut at ``max_sentence_tokens`` falls between characters, and special tokens
the upstream writes inside a sentence stay (identity ≡ plain vLLM; a correction keeps them). Run by ``make test-vllm``."""

import httpx
import pytest
import regex

from transformers_stream_aligner.generation.completion import stream_aligned_completion
from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMUpstream

from .test_vllm_engine import _chat, identity

pytestmark = [pytest.mark.vllm, pytest.mark.smollm2]

# One of the added tokens of SmolLM2's tokenizer (<repo_name> ... <empty_output>, flagged special, not among its named
# special tokens). Its named ones cannot be used here: with a bias large enough to be written at all, SmolLM2 writes
# nothing else after them; after this one it goes on writing text.
MARKER = "<jupyter_text>"
BIAS = 16.0  # SmolLM2 then writes it once or twice per answer and goes on writing text (calibrated with transformers)


def _complete(base, model, ids, max_tokens, **sampling):
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True,
            "skip_special_tokens": False, **sampling}  # fmt: skip
    return httpx.post(f"{base}/v1/completions", json=body, timeout=120).json()["choices"][0]["token_ids"]


def _continuations_hold(upstream, out, **sampling):
    seq = out.sequences[0].tolist()
    for record in out.alignment_trace[0]:
        if record.original_ids:
            redo = _complete(upstream.base_url, upstream.model, seq[: record.start], len(record.original_ids), **sampling)
            assert redo == record.original_ids, f"record at {record.start} is not vLLM's continuation"


def test_limit_cuts_fall_between_characters(vllm_server, smollm2):
    base, model = vllm_server
    _, tok = smollm2
    upstream = VLLMUpstream(base, model=model)
    ids = _chat(tok, "Reply with a row of twenty emoji, including family and flag emoji, and no words.")
    plain = _complete(base, model, ids, 60)
    assert len(tok.decode(plain)) < len(plain), "the answer should hold characters of several tokens"
    seen = []

    def append_ok(question, prefix, last):
        seen.append(last)
        return last + " ok"

    answer = tok.decode(plain)
    boundaries = {m.start() for m in regex.finditer(r"\X", answer)}
    for limit in (2, 3, 5, 7):
        out = stream_aligned_completion(upstream, [ids], aligner=identity, tokenizer=tok, max_new_tokens=60,
                                        max_sentence_tokens=limit, return_dict=True)  # fmt: skip
        assert out.sequences[0, len(ids) :].tolist() == plain, limit
        # every identity piece ends between two characters of the answer
        ends = [len(tok.decode(out.sequences[0, len(ids) : r.start + len(r.corrected_ids)])) for r in out.alignment_trace[0]]
        assert all(e in boundaries or e == len(answer) for e in ends), limit
        out = stream_aligned_completion(upstream, [ids], aligner=append_ok, tokenizer=tok, max_new_tokens=60,
                                        max_sentence_tokens=limit, return_dict=True)  # fmt: skip
        _continuations_hold(upstream, out)
        for record in out.alignment_trace[0][:-1]:
            assert "\ufffd" not in record.original_text + record.corrected_text, (limit, record)
    assert seen and not any("\ufffd" in s for s in seen)


def test_added_tokens_inside_sentences_stay(vllm_server, smollm2):
    base, model = vllm_server
    _, tok = smollm2
    marker = tok.convert_tokens_to_ids(MARKER)
    sampling = {"logit_bias": {str(marker): BIAS}}
    upstream = VLLMUpstream(base, model=model, sampling={"temperature": 0, **sampling})
    inside = kept = 0

    def insist(question, prefix, last):
        return last[:-1] + " indeed" + last[-1:]

    for question in ["Why is the sky blue?", "Give me three tips for sleeping better."]:
        ids = _chat(tok, question)
        plain = _complete(base, model, ids, 80, **sampling)
        out = stream_aligned_completion(upstream, [ids], aligner=identity, tokenizer=tok, max_new_tokens=80, return_dict=True)
        assert out.sequences[0, len(ids) :].tolist() == plain
        inside += sum(marker in r.original_ids[1:-1] for r in out.alignment_trace[0] if r.aligned)
        out = stream_aligned_completion(upstream, [ids], aligner=insist, tokenizer=tok, max_new_tokens=80, return_dict=True)
        _continuations_hold(upstream, out, **sampling)
        for r in out.alignment_trace[0][:-1]:
            if r.changed and marker in r.original_ids:
                assert r.corrected_ids.count(marker) == r.original_ids.count(marker), (r.original_text, r.corrected_text)
                kept += 1
    assert inside >= 1 and kept >= 1
