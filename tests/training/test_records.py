"""build-dataset: records from answer pairs (sentence matching) and on-policy (upstream + corrector)."""

import json

import pytest

from transformers_stream_aligner import TrainingDataError, stream_aligned_generate, validate_records
from transformers_stream_aligner.cli import main as cli_main
from transformers_stream_aligner.training.records import read_questions, records_from_pairs, records_on_policy

from ..helpers import rewrite

PAIRS = [
    {
        "question": "What is 17*23?",
        "answer": "Let me compute. 17*23 = 381. So the answer is 381.",
        "corrected_answer": "Let me compute. 17*23 = 391. So the answer is 391.",
    },
    {  # an inserted sentence, a deleted one, layout (newlines) kept in the prefix
        "question": "List two tips.",
        "answer": "Tips:\n\n1. Sleep well.\n2. Eat junk.\nThat is all. Bye.",
        "corrected_answer": "Tips:\n\n1. Sleep well.\n2. Eat vegetables. They help.\nThat is all.",
    },
]


def test_records_from_pairs_table():
    records, report = records_from_pairs(PAIRS)
    got = [(r["prefix"], r["last"], r["correction"]) for r in records]
    assert got == [
        ("", "Let me compute.", "Let me compute."),
        ("Let me compute.", "17*23 = 381.", "17*23 = 391."),
        ("Let me compute. 17*23 = 391.", "So the answer is 381.", "So the answer is 391."),
        ("", "Tips:", "Tips:"),
        ("Tips:", "1. Sleep well.", "1. Sleep well."),
        ("Tips:\n\n1. Sleep well.", "2. Eat junk.", "2. Eat vegetables. They help."),
        ("Tips:\n\n1. Sleep well.\n2. Eat vegetables. They help.", "That is all.", "That is all."),
    ]
    assert all(r["question"] == PAIRS[i > 2]["question"] for i, r in enumerate(records))
    assert (report.pairs, report.records, report.changed, report.inserted, report.deleted) == (2, 7, 3, 1, 1)
    assert validate_records(records) == records  # valid training records


def test_pairs_errors_name_the_pair_and_field():
    with pytest.raises(TrainingDataError, match="record 1, field 'corrected_answer': missing"):
        records_from_pairs([PAIRS[0], {"question": "q", "answer": "a."}])
    with pytest.raises(TrainingDataError, match="record 0, field 'answer': is empty"):
        records_from_pairs([{**PAIRS[0], "answer": ""}])


def test_on_policy_records_are_what_the_corrector_saw(tiny_llama):
    """Each record's prefix is the corrected answer so far; the last record + its correction is the final answer
    (up to the max_new_tokens cut)."""
    model, tok = tiny_llama
    questions = ["The cat is", "Is my friend ok?", "A dog"]
    records = records_on_policy(model, tok, questions, rewrite, max_new_tokens=40, batch_size=2, progress=False)
    assert validate_records(records) == records
    assert any(r["correction"] != r["last"] for r in records) and any(r["correction"] == r["last"] for r in records)
    for q in questions:
        mine = [r for r in records if r["question"] == q]
        assert mine and mine[0]["prefix"] == ""
        for before, after in zip(mine, mine[1:], strict=False):
            assert " ".join(after["prefix"].split()) == " ".join((before["prefix"] + " " + before["correction"]).split())
        assert all(r["correction"] == rewrite(q, r["prefix"], r["last"]) for r in mine)
        # the same stream-aligned run on its own ends with exactly the recorded corrections
        enc = tok.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = stream_aligned_generate(
            model, enc["input_ids"], tokenizer=tok, aligner=rewrite, aligner_question=q, max_new_tokens=40
        )
        answer = " ".join(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).split())
        recorded = " ".join((mine[-1]["prefix"] + " " + mine[-1]["correction"]).split())
        # max_new_tokens bounds the corrected answer, so its last correction may be cut short
        assert recorded.startswith(answer) and len(answer) > len(" ".join(mine[-1]["prefix"].split()))
    with pytest.raises(ValueError, match="do_sample"):
        records_on_policy(model, tok, questions, rewrite, num_samples=2)


def test_cli_build_dataset_pairs_and_on_policy(tiny_llama, tmp_path, capsys):
    model, tok = tiny_llama
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(PAIRS))
    out = tmp_path / "records.jsonl"
    assert cli_main(["build-dataset", "--pairs", str(pairs), "--output", str(out)]) == 0
    assert "7 records from 2 pairs (3 changed" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 7
    assert cli_main(["build-dataset", "--pairs", str(pairs), "--output", str(out)]) == 2
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    upstream = tmp_path / "upstream"
    model.save_pretrained(upstream)
    tok.save_pretrained(upstream)
    questions = tmp_path / "questions.txt"
    questions.write_text("The cat is\n\nA dog\n")
    assert read_questions(questions) == ["The cat is", "A dog"]
    code = cli_main(
        ["build-dataset", "--questions", str(questions), "--upstream", str(upstream), "--corrector", "tests.helpers:rewrite",
         "--output", str(out), "--overwrite", "--max-new-tokens", "30", "--num-samples", "2", "--do-sample",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    assert "from 2 questions x 2" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and {r["question"] for r in lines} == {"The cat is", "A dog"}
    assert all(set(r) == {"question", "prefix", "last", "correction"} for r in lines)
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
