import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformers_stream_aligner import split_sentences
from transformers_stream_aligner.runtime.boundary.splitter import find_sentence_end, split_whitespace


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It is 3.5 m long. Next one.", ["It is 3.5 m long.", " Next one."]),
        ("We add 3 and 4. Then we stop.", ["We add 3 and 4.", " Then we stop."]),
        ("Use tools, e.g. a hammer. Done.", ["Use tools, e.g. a hammer.", " Done."]),
        ("Steps:\n1. Mix it.\n2. Bake it.", ["Steps:", "\n1. Mix it.", "\n2. Bake it."]),
        ("Wait... what? Yes.", ["Wait... what?", " Yes."]),
        ("Well... i see. Ok.", ["Well... i see.", " Ok."]),
        ("Wait... Then go.", ["Wait...", " Then go."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', " Then he left."]),
        ("(See above.) Next.", ["(See above.)", " Next."]),
        ("Dr. Smith arrived. He sat.", ["Dr. Smith arrived.", " He sat."]),
        ("Line one\nLine two", ["Line one", "\nLine two"]),
        ("Para one.\n\nPara two.", ["Para one.", "\n\nPara two."]),
        ("你好。我很好！谢谢？", ["你好。", "我很好！", "谢谢？"]),
        ("Really?! Yes.", ["Really?!", " Yes."]),
        ("Open file.txt now. Ok.", ["Open file.txt now.", " Ok."]),
        ("no terminator at all", ["no terminator at all"]),
        ("```\ncode = 1\n```", ["```", "\ncode = 1", "\n```"]),
        ("", []),
        ("   ", ["   "]),
    ],
)
def test_split_cases(text, expected):
    assert split_sentences(text) == expected
    assert "".join(split_sentences(text)) == text


def test_look_ahead_undecided_until_next_character():
    assert find_sentence_end("It is 3.") is None  # may become 3.5
    assert find_sentence_end("It is 3.5") is None
    assert find_sentence_end("It is 3. ") is None  # next word decides (lowercase continues)
    assert find_sentence_end("It is 3. T") == 8
    assert find_sentence_end("e.g. t") is None
    assert find_sentence_end("It is 3.", final=True) == 8
    assert find_sentence_end("Done.\n") == 5
    assert find_sentence_end("你好。") is None  # a closing quote may follow
    assert find_sentence_end("你好。我") == 3


def test_blank_prefix_is_not_a_sentence():
    assert find_sentence_end("\n\n") is None
    assert find_sentence_end("\n\nHi.\n") == 5


def test_split_whitespace():
    assert split_whitespace("\n\n  Hello.  ") == ("\n\n  ", "Hello.", "  ")
    assert split_whitespace("   ") == ("   ", "", "")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab A1.?!…。\n \t\"')e.g3")), max_size=80))
def test_sentences_concatenate_back_exactly(text):
    pieces = split_sentences(text)
    assert "".join(pieces) == text
    assert all(pieces)
    # every piece but possibly the first has content after its leading whitespace
    for piece in pieces[1:]:
        assert piece.strip() or piece is pieces[-1]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_unicode_concatenates_back(text):
    assert "".join(split_sentences(text)) == text
