"""``pipeline("text-generation", model=model, tokenizer=tok)(..., aligner=...)`` whatever way stream alignment was
enabled: patched without a tokenizer, the mixin class, a model directory carrying the custom_generate folder, the
folder or the callable named per call. The pipeline's tokenizer is used; chat input gives the aligner the last user
message; ``batch_size``, ``return_full_text`` and ``continue_final_message`` behave as stock."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, pipeline

from transformers_stream_aligner import (
    StreamAlignedGenerationMixin,
    enable_stream_alignment,
    stream_aligned_decoding,
    stream_aligned_generate,
)

from ..helpers import rewrite
from ..tiny_models import cached_tiny
from .test_custom_generate import dirs  # noqa: F401 - the saved tiny model and the exported folder

ROUTES = ["patched-without-tokenizer", "mixin-class", "model-directory", "folder-per-call", "callable-per-call"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The answer"}]


class AlignedLlama(StreamAlignedGenerationMixin, LlamaForCausalLM):
    pass


class Recorder:
    """A rewriting aligner that records the questions it is asked."""

    def __init__(self):
        self.questions = []

    def __call__(self, question, prefix, last):
        self.questions.append(question)
        return rewrite(question, prefix, last)


def _route(name, dirs):  # noqa: F811
    """(pipeline, the keywords each call adds) for an enabling route."""
    _, tok = cached_tiny("llama")
    load = {"dtype": torch.float64}
    extra = {}
    if name == "patched-without-tokenizer":
        model = enable_stream_alignment(AutoModelForCausalLM.from_pretrained(dirs["model"], **load))
    elif name == "mixin-class":
        model = AlignedLlama.from_pretrained(dirs["model"], **load)
    elif name == "model-directory":
        model = AutoModelForCausalLM.from_pretrained(dirs["carrying"], trust_remote_code=True, **load)
    elif name == "folder-per-call":
        model = AutoModelForCausalLM.from_pretrained(dirs["model"], **load)
        extra = {"custom_generate": str(dirs["method"]), "trust_remote_code": True}
    else:
        model = AutoModelForCausalLM.from_pretrained(dirs["model"], **load)
        extra = {"custom_generate": stream_aligned_decoding}
    return pipeline("text-generation", model=model, tokenizer=tok), extra


def _expected(ids, max_new_tokens=50):
    """What the patched route gives on the same prompt ids."""
    model, tok = cached_tiny("llama")
    return stream_aligned_generate(model, ids, aligner=rewrite, tokenizer=tok, max_new_tokens=max_new_tokens, do_sample=False)


@pytest.mark.parametrize("route", ROUTES)
def test_text_and_chat_input(route, dirs):  # noqa: F811
    _, tok = cached_tiny("llama")
    pipe, extra = _route(route, dirs)
    aligner = Recorder()
    text = pipe("The answer", aligner=aligner, max_new_tokens=50, do_sample=False, **extra)[0]["generated_text"]
    ids = tok("The answer", return_tensors="pt").input_ids
    assert text == tok.decode(_expected(ids)[0], skip_special_tokens=True)
    assert set(aligner.questions) == {"The answer"}
    aligner = Recorder()
    chat = pipe(CHAT, aligner=aligner, max_new_tokens=50, do_sample=False, **extra)[0]["generated_text"]
    assert chat[:-1] == CHAT and chat[-1]["role"] == "assistant"
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    expected = _expected(ids)
    assert chat[-1]["content"] == tok.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)
    assert aligner.questions and set(aligner.questions) == {"The answer"}  # the last user message, not the system prompt


@pytest.mark.parametrize("route", ROUTES)
def test_batch_size_and_return_full_text(route, dirs):  # noqa: F811
    pipe, extra = _route(route, dirs)
    prompts = ["The answer", "My friend is", "The cat"]
    kwargs = {"aligner": rewrite, "max_new_tokens": 40, "do_sample": False, **extra}
    one_by_one = [pipe(p, return_full_text=False, **kwargs)[0]["generated_text"] for p in prompts]
    batched = [r[0]["generated_text"] for r in pipe(prompts, batch_size=3, return_full_text=False, **kwargs)]
    assert batched == one_by_one
    full = [r[0]["generated_text"] for r in pipe(prompts, batch_size=2, **kwargs)]
    assert full == [p + g for p, g in zip(prompts, one_by_one, strict=True)]


@pytest.mark.parametrize("route", ROUTES)
def test_continue_final_message(route, dirs):  # noqa: F811
    _, tok = cached_tiny("llama")
    pipe, extra = _route(route, dirs)
    chat = [{"role": "user", "content": "The answer"}, {"role": "assistant", "content": "The cat is"}]
    result = pipe(chat, aligner=rewrite, max_new_tokens=40, do_sample=False, continue_final_message=True, **extra)
    message = result[0]["generated_text"][-1]
    ids = tok.apply_chat_template(chat, continue_final_message=True, return_tensors="pt", return_dict=True)["input_ids"]
    expected = _expected(ids, max_new_tokens=40)
    assert message["role"] == "assistant" and message["content"].startswith("The cat is")
    assert message["content"] == "The cat is" + tok.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)
