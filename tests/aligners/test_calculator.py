"""The aligner's calculator (aligner_calculator.py): calculations in a correction evaluated, never eval-ed."""

import logging
from fractions import Fraction

import pytest

from transformers_stream_aligner import AlignmentRequest, StreamAligner, StreamAlignerConfig
from transformers_stream_aligner.aligners.calculator import calculate, evaluate_expression, expand_calculations
from transformers_stream_aligner.errors import CalculationError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45+19 = <<45+19=64>>.", "45+19 = 64."),  # right: kept as written
        ("58 - 37 = <<58 - 37=15>> left.", "58 - 37 = 21 left."),  # wrong: the value
        ("<<17*23=381>>", "391"),
        ("<<2,768+2,782=5,550>>", "5,550"),
        ("<<2,768+2,782=5,551>>", "5,550"),  # the stated result's style: thousands separators
        ("<<1768+2782=4,551>>", "4,550"),
        ("$<<24 + 40=68>>", "$64"),
        ("<<$24 + $40=$68>>", "$64"),  # a $ inside is read past; the stated one is kept
        ("<<10/3=3.33>>", "3.33"),  # right to the precision it is written with
        ("<<10/3=3.3>>", "3.3"),
        ("<<10/3=3.4>>", "3.33"),
        ("<<4.5 + 2.25=7.0>>", "6.75"),
        ("<<1.5 + 2.5=4.0>>", "4.0"),
        ("<<3 - 10=-7>>", "-7"),
        ("<<3 - 10=7>>", "-7"),
        ("<<(2 + 3) × 4=21>>", "20"),
        ("<<84 ÷ 21=3>>", "4"),
        ("<<17 x 23>>", "391"),  # no stated result: the value
        ("<<12 − 5 – 2=4>>", "5"),
        ("No arithmetic. <<5 * 5=25>> and <<6*6=35>>.", "No arithmetic. 25 and 36."),
    ],
)
def test_right_results_are_kept_as_written_and_wrong_ones_get_the_value(text, expected):
    assert expand_calculations(text) == expected


def test_text_without_calculations_is_returned_unchanged():
    for text in ["", "Plain prose.", "2. **Keep a schedule**: go to bed at 10.", "a < b and c > d"]:
        assert expand_calculations(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "<<__import__('os').system('true')=1>>",  # never eval-ed
        "<<2 ** 10=1024>>",
        "<<9 * 9 * 9 9=1>>",
        "<<1/0=1>>",
        "<<(1 + 2=3>>",
        "<<1 + =3>>",
        "<<=3>>",
        "<<1234567890123456 + 1=1>>",  # numbers of more than 15 digits
        "<<" + "+".join(["1"] * 17) + "=17>>",  # more than 16 numbers
        "<<" + "(" * 40 + "1" + ")" * 40 + "=1>>",
        "<<2 + 2=four>>",
        "x = <<2 + 2=4",  # unfinished
        "x = 2 + 2=4>>",
    ],
)
def test_what_is_not_a_calculation_raises(text):
    with pytest.raises(CalculationError):
        expand_calculations(text)


def test_markers_the_sentence_itself_has_are_text():
    sentence = "Use x << 2 to double it."
    assert expand_calculations(sentence, sentence) == sentence
    with pytest.raises(CalculationError):
        expand_calculations("Use x << 2 to double it.", "Use x to double it.")


def test_evaluation_is_exact():
    assert evaluate_expression("0.1 + 0.2") == Fraction(3, 10)
    assert evaluate_expression("-(3 - 5) * 2") == 4
    assert evaluate_expression("1,000 / 8") == 125


def test_calculate_keeps_the_sentence_when_a_calculation_cannot_be_done(caplog):
    with caplog.at_level(logging.WARNING):
        assert calculate("x = <<two plus two=5>>.", "x = 5.") == "x = 5."
    assert "cannot be done" in caplog.text
    assert calculate("x = <<2+2=5>>.", "x = 5.") == "x = 4."


def test_config_round_trips_the_calculator(tmp_path):
    config = StreamAlignerConfig(calculator=True, instruction_template="S: {last}\nC: ", prompt_wrapper="{instruction}")
    config.save_pretrained(tmp_path)
    assert StreamAlignerConfig.from_pretrained(tmp_path).calculator is True
    with pytest.raises(ValueError, match="calculator must be bool"):
        StreamAlignerConfig(calculator="yes")


class _FixedDecoder:
    """Stands in for the aligner's decoder: every prompt decodes to the ids of ``text``."""

    def __init__(self, ids):
        self.ids = ids

    def generate(self, prompts, *, sources, max_new_tokens, stop_rules=None):
        return [list(self.ids) for _ in prompts]


@pytest.mark.parametrize("calculator", [True, False])
def test_stream_aligner_does_the_calculations_its_model_writes(tiny_llama, calculator):
    model, tok = tiny_llama
    aligner = StreamAligner(model, tok, StreamAlignerConfig(calculator=calculator, max_correction_tokens=64))
    written = "So 17*23 = <<17*23=381>>."
    ids = tok(written, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == written
    aligner._fast_decoder = lambda: _FixedDecoder(ids)
    out = aligner.correct([AlignmentRequest("What is 17*23?", "", "So 17*23 = 381.")] * 2)
    assert out == (["So 17*23 = 391."] * 2 if calculator else [written] * 2)
