"""The trained arithmetic aligner shipped in the package (LoRA on SmolLM2-135M-Instruct), offline."""

import json

import pytest
import torch

from examples.arithmetic import ARITHMETIC_ALIGNER, load_arithmetic_aligner
from examples.arithmetic.task import every_step_right, final_answer
from examples.smollm2 import default_cache_dir
from transformers_stream_aligner import AlignmentRequest, enable_stream_alignment
from transformers_stream_aligner.aligners.adapter import adapter_names

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def shipped(smollm2):
    cache = default_cache_dir()
    return load_arithmetic_aligner(cache_dir=cache)


def test_shipped_artefact_is_small_safetensors_and_portable():
    files = {p.name: p.stat().st_size for p in ARITHMETIC_ALIGNER.iterdir()}
    assert "adapter_model.safetensors" in files and "stream_aligner_config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    assert sum(files.values()) < 16 * 2**20  # a rank-16 adapter in float16 and the tokenizer
    adapter = json.loads((ARITHMETIC_ALIGNER / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # no machine path
    report = json.loads((ARITHMETIC_ALIGNER / "build_report.json").read_text())
    assert report["recipe"] == "calculator" and report["total_s"] > 0  # the recipe that ships
    assert report["records"]["with_calculations"] > 0 and "dropped_probes" in report["records"]
    config = json.loads((ARITHMETIC_ALIGNER / "stream_aligner_config.json").read_text())
    assert config["calculator"] is True and config["max_correction_tokens"] == 256


def test_shipped_aligner_loads_offline_and_answers(shipped):
    assert adapter_names(shipped.model) == {"default"}  # the adapter is on the embedded SmolLM2
    assert shipped.config.max_correction_tokens == 256 and shipped.config.calculator
    (fixed,) = shipped.correct(
        [AlignmentRequest("Tom has 45 apples and gets 19 more. How many apples does Tom have now?", "",
                          "Tom has 45 + 19 = 54 apples now.")]
    )  # fmt: skip
    assert fixed == "Tom has 45 + 19 = 64 apples now."


# The sentences issue 19 names: the aligner shipped before (v2) broke the right ones (45+19 = 64 -> 54 was a strict
# xfail) and renumbered list items; this one keeps every right sentence and fixes the wrong ones.
KEPT = [("What is 45+19?", "45+19 = 64."), ("q", "2+1=3"), ("q", "3*20=60"), ("q", "24 + 40 = $64"), ("q", "180-135=45"),
        ("What is 170*23?", "170*23 = 3910."), ("How much is 64 * 8?", "64 * 8 = 512."),
        ("Give me three tips for sleeping better.", "2. Keep a regular schedule."),
        ("Give me three tips for sleeping better.", "3. **Avoid screens**: turn off your phone an hour before bed.")]  # fmt: skip
FIXED = [("Mia has 58 marbles and gets 37 more. How many marbles does Mia have now?", "58 - 37 = 15.", "58 - 37 = 21."),
         ("How much is 64 * 8?", "64 * 8 = 502.", "64 * 8 = 512."), ("q", "So 45 -40 = 6 left.", "So 45 -40 = 5 left."),
         ("q", "The total cost is $1,250 + $2,500 = $3,700.", "The total cost is $1,250 + $2,500 = $3,750."),
         ("q", "The product of 12 and 13 is 146.", "The product of 12 and 13 is 156.")]  # fmt: skip


def test_shipped_aligner_keeps_right_sentences_and_fixes_wrong_ones(shipped):
    requests = [AlignmentRequest(q, "", s) for q, s in KEPT] + [AlignmentRequest(q, "", s) for q, s, _ in FIXED]
    assert shipped.correct(requests, batch_size=4) == [s for _, s in KEPT] + [f for _, _, f in FIXED]


def test_shipped_aligner_fixes_17_times_23(shipped):
    # 17*23 is in no training record (PROBES): the aligner writes the calculation, the library's calculator does it.
    (fixed,) = shipped.correct([AlignmentRequest("What is 17*23?", "", "17*23 = 381.")])
    assert fixed == "17*23 = 391." and final_answer(fixed) == 391 and every_step_right("What is 17*23?", fixed)


def test_shipped_aligner_corrects_in_context(smollm2, shipped):
    model, tok = smollm2
    enable_stream_alignment(model, tok)
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is 17*23?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    plain = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    assert "381" in tok.decode(plain[0, inputs["input_ids"].shape[1] :])  # SmolLM2's own answer is wrong
    with torch.no_grad():
        out = model.generate(**inputs, aligner=shipped, aligner_question="What is 17*23?", max_new_tokens=96,
                             do_sample=False, return_dict_in_generate=True)  # fmt: skip
    text = tok.decode(out.sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "391" in text and "381" not in text
    assert any(r.changed for r in out.alignment_trace[0])


def test_one_copy_of_smollm2_gives_the_two_copy_answers(smollm2, shipped):
    """The shipped adapter on the upstream SmolLM2 itself: the upstream alone is the plain model, corrections (single,
    batched, with the aligner's KV reuse) and stream-aligned answers are those of the adapter on a second copy."""
    from examples.smollm2 import load_smollm2

    plain, tok = smollm2
    cache = default_cache_dir()
    upstream, _ = load_smollm2(cache)  # a model of its own: the one-copy aligner adds its adapter to it
    one = load_arithmetic_aligner(base_model=upstream)
    assert one.adapter_switch is not None and shipped.adapter_switch is None  # one copy vs two
    requests = [AlignmentRequest("What is 17*23?", "", "17*23 = 381."),
                AlignmentRequest("Tom has 45 apples and gets 19 more. How many apples does Tom have now?", "",
                                 "Tom has 45 + 19 = 54 apples now."),
                AlignmentRequest("Give me three tips for sleeping better.", "1. Keep a schedule.", "2. Avoid screens.")]  # fmt: skip
    expected = shipped.correct(requests)
    assert one.correct(requests) == expected and one.correct(requests[:1]) == expected[:1]
    assert one.correct(requests) == expected and one.decoding_stats.reused_tokens > 0  # KV reuse between calls
    enable_stream_alignment(plain, tok)
    enable_stream_alignment(upstream, tok)
    question = "What is 17*23?"
    inputs = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)  # fmt: skip
    assert torch.equal(upstream.generate(**inputs, max_new_tokens=40, do_sample=False),
                       plain.generate(**inputs, max_new_tokens=40, do_sample=False))  # fmt: skip
    options = {"aligner_question": question, "max_new_tokens": 96, "do_sample": False, "return_dict_in_generate": True}
    with torch.no_grad():
        got = upstream.generate(**inputs, aligner=one, **options)
        want = plain.generate(**inputs, aligner=shipped, **options)
    assert torch.equal(got.sequences, want.sequences) and any(r.changed for r in got.alignment_trace[0])
    assert one.adapter_switch.forwards_on > 0 and not one.adapter_switch.is_on


def test_demo_uses_the_shipped_aligner_and_judges_plain_and_aligned_side_by_side(capsys):
    from examples.arithmetic.demo import main

    assert main(["What is 17*23?", "--max-new-tokens", "80", "--width", "200"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "the shipped arithmetic aligner" in out and "on the upstream itself, one copy of the weights" in out
    assert "plain:          17*23 = 381." in out and "stream-aligned: 17*23 = 391." in out
    assert "[WRONG] 17*23 = 381." in out and "[FIXED] 17*23 = 391.  (was: 17*23 = 381.)" in out  # the judged columns
    assert "final answer (right: 391): plain WRONG (381), stream-aligned right (391)" in out
    assert "the aligner FIXED 1, BROKE 0" in out and "final answers right: plain 0/1, stream-aligned 1/1" in out
    assert "Loading weights" not in captured.out + captured.err  # quiet: no per-load progress bars


def test_demo_questions_are_drawn_from_held_out_problems_by_a_seed():
    from examples.arithmetic.claims import other_questions
    from examples.arithmetic.demo import default_questions, mark_aligned
    from examples.arithmetic.task import make_problems, parse_problem

    questions = default_questions(0)
    assert questions == default_questions(0) and questions != default_questions(1) and len(questions) == 4
    assert all(parse_problem(q).split == "test" for q in questions[:3]) and questions[3] in other_questions("test")
    assert [q for q in questions[:3]] == [p.question for p in make_problems(3, seed=0, split="test")]
    q = "What is 17*23?"
    assert mark_aligned(q, "17*23 = 381.", "17*23 = 391.", True) == "FIXED"
    assert mark_aligned(q, "17*23 = 391.", "17*23 = 381.", True) == "BROKEN"
    assert mark_aligned(q, "17*23 = 381.", "17*23 = 381.", False) == "still wrong"
    assert mark_aligned(q, "17*23 = 381.", "17*23 = 383.", True) == "still wrong"
    assert mark_aligned(q, "2. Sleep well.", "3. Sleep well.", True) == "CHANGED"
    assert mark_aligned(q, "17*23 = 391.", "17*23 = 17*20 + 17*3 = 340 + 51 = 391.", True) == "rewritten"
    assert mark_aligned(q, "2. Sleep well.", "2. Sleep well.", False) == "kept"
