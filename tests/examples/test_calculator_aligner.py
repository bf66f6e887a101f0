"""The calculator aligner's recipe (examples/arithmetic/build_calculator_aligner.py) and its corrector."""

import json
import re

import pytest

from examples.arithmetic import build_calculator_aligner as calc
from examples.arithmetic.claims import judge_claim, make_claims
from examples.arithmetic.task import annotate_calculations, check_arithmetic, make_problems
from transformers_stream_aligner import AlignmentRequest, StreamAlignerConfig, expand_calculations
from transformers_stream_aligner.aligners.calculator import evaluate_expression


@pytest.mark.parametrize("split", ["train", "test"])
def test_annotated_claims_expand_to_their_right_form(split):
    """The targets are right by construction: expanded, every claim in every written form is kept or fixed."""
    outcomes = {judge_claim(c, expand_calculations(annotate_calculations(c.question, "", c.last), c.last))
                for c in make_claims(300, seed=4, split=split)}  # fmt: skip
    assert outcomes == {"kept", "fixed"}


def test_annotations_expand_to_what_the_checker_corrects():
    problem = make_problems(1, seed=3, split="train", word_fraction=1.0)[0]
    sentences = [f"So {problem.a} + {problem.b} = 7 and 12 - 5 = 7.", "The answer is 4,000 + 1,234 = 5,234, which is 5,234.",
                 "We multiply 12 by 11 to get 121.", f"That leaves 3 {problem.unit}.", "2. **Rest**: sleep for 8 hours."]  # fmt: skip
    for s in sentences:
        annotated = annotate_calculations(problem.question, "", s)
        assert expand_calculations(annotated, s) == check_arithmetic(problem.question, "", s), s
    assert annotate_calculations(problem.question, "", sentences[-1]) == sentences[-1]  # nothing to check: a copy


def test_records_mix_on_policy_sentences_claims_and_text_to_copy():
    on_policy = [{"question": "What is 58 - 37?", "prefix": "", "last": "So, 58 - 37 = 15."},
                 {"question": "What is 58 - 37?", "prefix": "So, 58 - 37 = 21.", "last": "The answer is 21."},
                 {"question": "Give me three tips.", "prefix": "", "last": "2. Keep a schedule."},
                 {"question": "What is 17*23?", "prefix": "", "last": "17*23 = 381."}]  # fmt: skip
    train, counts = calc.build_records(on_policy, seed=0, claims=20, claims_wrong=0.5, products=4, items=10)
    assert counts["dropped_probes"] == 1 and counts["on_policy_checked"] == 3 and counts["on_policy_unchecked_kept"] == 1
    assert counts["trained_on"] == len(train) == 3 + 1 + 20 + 4 + counts["copies"] - 1
    by_last = {r["last"]: r["correction"] for r in train}
    assert by_last["So, 58 - 37 = 15."] == "So, 58 - 37 = <<58 - 37=15>>."
    assert by_last["The answer is 21."] == "The answer is <<58 - 37=21>>."
    assert by_last["2. Keep a schedule."] == "2. Keep a schedule."
    assert all("17*23" not in r["last"] for r in train)
    assert train == calc.build_records(on_policy, seed=0, claims=20, claims_wrong=0.5, products=4, items=10)[0]


def test_the_config_turns_the_calculator_on_with_a_short_plain_prompt():
    from transformers import AutoTokenizer

    from examples.arithmetic import ARITHMETIC_ALIGNER

    smollm2_tokenizer = AutoTokenizer.from_pretrained(ARITHMETIC_ALIGNER)  # SmolLM2's, shipped beside the adapter
    config = calc.calculator_config()
    assert config.calculator and config.prompt_wrapper == "{instruction}" and config.max_correction_tokens == 256
    a = config.encode_prompt(smollm2_tokenizer, question="What is 2+2?", prefix="ignored", last="2+2 = 5.")
    b = config.encode_prompt(smollm2_tokenizer, question="What is 2+2?", prefix="other", last="So 4.")
    assert len(a) < 40 and a[:12] == b[:12]  # the question's part is shared: the aligner's KV reuse feeds the rest
    assert StreamAlignerConfig.from_dict(json.loads(config.to_json_string())) == config


def _build(tmp_path, *extra):
    """``make aligner``'s build from two collected records, with ``extra`` flags; the built aligner and its report."""
    from examples.arithmetic import load_arithmetic_aligner

    records = tmp_path / "greedy.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "What is 58 - 37?", "prefix": "", "last": "So, 58 - 37 = 15."},
        {"question": "Give me three tips.", "prefix": "", "last": "2. Keep a schedule."}]))  # fmt: skip
    out = tmp_path / "aligner"
    argv = ["--records", str(records), "--work-dir", str(tmp_path / "work"), "--output", str(out), "--tune-share", "0",
            "--no-progress", *extra]  # fmt: skip
    assert calc.main(argv) == 0
    report = json.loads((out / "build_report.json").read_text())
    aligner = load_arithmetic_aligner(out)
    assert report["recipe"] == "calculator" and report["records"]["with_calculations"] > 0
    assert aligner.config.calculator and aligner.config.instruction_template == calc.INSTRUCTION
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    return aligner, report


@pytest.mark.smollm2
def test_build_trains_a_calculator_aligner_from_collected_records(tmp_path, smollm2_path):
    """Every step of the build, each as small as it goes (one training step): records, LoRA training on SmolLM2,
    float16, the installed folder, loaded back with the calculator on. The recipe at a scale that learns is
    test_build_recipe_learns_to_write_calculations (``make test-slow``)."""
    _, report = _build(tmp_path, "--claims", "2", "--products", "1", "--items", "2", "--statements", "2", "--batch-size", "16")
    assert report["training"]["steps"] == 1


@pytest.mark.slow
def test_build_recipe_learns_to_write_calculations(tmp_path, smollm2_path):
    """The recipe with the shipped build's result statements (700) and a few claims and copies: about a hundred LoRA
    steps on SmolLM2; the training loss ends low and the aligner writes a held-in result as a calculation, which the
    calculator corrects."""
    aligner, report = _build(tmp_path, "--claims", "6", "--products", "2", "--items", "4")
    assert report["training"]["steps"] > 50 and report["training"]["loss"] < 0.5
    question = "Tom has 45 apples and gives away 19. How many apples does Tom have left?"
    wrong, right = AlignmentRequest(question, "", "So Tom has 30 apples left."), AlignmentRequest(question, "", "So Tom has 26 apples left.")
    assert aligner.correct([wrong, right]) == ["So Tom has 26 apples left.", "So Tom has 26 apples left."]


def test_result_statements_take_the_operator_from_the_question():
    from examples.arithmetic.task import parse_problem

    records = calc.result_statements(200, seed=1)
    assert records == calc.result_statements(200, seed=1) and len(records) == 200
    annotated = [r for r in records if "<<" in r["correction"]]
    assert 0.6 * len(records) < len(annotated) < len(records)  # sentences that state no result are copied
    for r in annotated:
        p = parse_problem(r["question"])
        (expression,) = re.findall(r"<<([^=]*)=", r["correction"])
        assert p.split == "train" and evaluate_expression(expression) == p.answer  # the question's own a op b
        assert expand_calculations(r["correction"], r["last"]) == check_arithmetic(r["question"], "", r["last"])
    gave_away = [r for r in annotated if "gave away" in r["question"]]
    assert gave_away and all(" - " in r["correction"] for r in gave_away)
