"""Bad input to the command line and the dataset builder: one ``error:`` line and exit code 2, nothing lost."""

import json

import pytest

from transformers_stream_aligner.cli import main as cli_main
from transformers_stream_aligner.training.records import OnPolicyReport, records_from_pairs, records_on_policy

PAIR = {"question": "Q?", "answer": "One. Two.", "corrected_answer": "One. Three."}


def _error_line(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stream-aligner {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_cli_one_line_errors(tmp_path, capsys):
    """Item 13: non-UTF-8 input, surrogates in records, an output path that is a directory, a missing base model."""
    latin1 = tmp_path / "pairs.jsonl"
    latin1.write_bytes(json.dumps(PAIR).replace("One", "Caf\\u00e9").encode().replace(b"\\u00e9", b"\xe9") + b"\n")
    assert cli_main(["build-dataset", "--pairs", str(latin1), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "is not UTF-8 text" in _error_line(capsys, "build-dataset")

    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text(json.dumps({**PAIR, "answer": "One \\ud800. Two."}).replace("\\\\ud800", "\\ud800") + "\n")
    assert cli_main(["build-dataset", "--pairs", str(surrogate), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "not valid Unicode text" in _error_line(capsys, "build-dataset")

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(PAIR) + "\n")
    assert cli_main(["build-dataset", "--pairs", str(good), "--output", str(tmp_path)]) == 2
    assert "is a directory" in _error_line(capsys, "build-dataset")
    assert cli_main(["build-dataset", "--pairs", str(good), "--output", str(tmp_path), "--overwrite"]) == 2
    assert "is a directory" in _error_line(capsys, "build-dataset")

    records = tmp_path / "records.jsonl"
    assert cli_main(["build-dataset", "--pairs", str(good), "--output", str(records)]) == 0
    capsys.readouterr()
    code = cli_main(["train", "--base-model", str(tmp_path / "no-such-model"), "--train-file", str(records),
                     "--output-dir", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    _error_line(capsys, "train")
    assert not (tmp_path / "out").exists()


def test_pairs_records_grow_linearly_with_the_answer():
    """Item 14: a long answer's records keep their prefix within max_prefix_chars (whole trailing sentences)."""
    answer = " ".join(f"Sentence {i} is fine." for i in range(3000))
    pair = {"question": "Q?", "answer": answer, "corrected_answer": answer.replace("Sentence 2999", "Line 2999")}
    records, report = records_from_pairs([pair], max_prefix_chars=1000)
    assert len(records) == 3000 and report.prefix_shortened > 2900
    assert max(len(r["prefix"]) for r in records) <= 1000
    assert sum(len(json.dumps(r)) for r in records) < 3000 * 1200  # linear, not ~3000**2 * 10
    full, _ = records_from_pairs([pair], max_prefix_chars=None)
    for short, whole in zip(records, full, strict=True):
        assert whole["prefix"].endswith(short["prefix"])  # the same text, its last whole sentences
        assert short["prefix"] == "" or whole["prefix"] == short["prefix"] or short["prefix"].startswith("Sentence")
    assert records[-1]["correction"] == "Line 2999 is fine."


def test_on_policy_build_keeps_its_records_when_the_corrector_fails(tiny_llama, caplog):
    """Item 14: a corrector that fails once loses only what it failed on."""
    model, tok = tiny_llama
    calls = {"n": 0}

    def flaky(question, prefix, last):
        calls["n"] += 1
        if question == "A dog":
            raise ConnectionError("corrector unavailable")
        return last

    report = OnPolicyReport()
    questions = ["The cat is", "A dog", "Dr. Smith said"]
    records = records_on_policy(model, tok, questions, flaky, max_new_tokens=30, batch_size=1, progress=False,
                                report=report)  # fmt: skip
    assert {r["question"] for r in records} == {"The cat is", "Dr. Smith said"}
    assert report.batches == 3 and len(report.failures) == 1 and "questions 1-1" in report.failures[0]
    assert report.records == len(records) and "corrector unavailable" in caplog.text
    with pytest.raises(RuntimeError, match="every batch failed"):
        records_on_policy(model, tok, ["A dog"], flaky, max_new_tokens=30, progress=False)
    side = tok.padding_side
    records_on_policy(model, tok, questions[:1], flaky, max_new_tokens=10, progress=False)
    assert tok.padding_side == side  # the shared tokenizer is never flipped
