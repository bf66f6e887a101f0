"""``make eval`` (examples/arithmetic/evaluation.py): interval arithmetic, and the evaluation's plumbing on a tiny model (float64)."""

import json
import re

import pytest

from examples.arithmetic.evaluation import (
    answer_questions,
    error_cases_markdown,
    evaluate_arithmetic,
    markdown_table,
    paired_bootstrap,
    product_claim_probe,
    wilson_interval,
)
from examples.arithmetic.task import check_arithmetic, is_correct, make_problems, parse_problem
from transformers_stream_aligner import StreamAligner, StreamAlignerConfig, enable_stream_alignment


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(50, 100, (0.4038, 0.5962)), (0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)), (37, 200, (0.1373, 0.2446))],
)
def test_wilson_interval(k, n, expected):
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-4)


def test_paired_bootstrap():
    same = [True, False, True, True]
    assert paired_bootstrap(same, same) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([True] * 5, [False] * 5) == (1.0, 1.0, 1.0)
    a = [True] * 30 + [False] * 70
    b = [False] * 10 + [True] * 20 + [False] * 70
    diff, lo, hi = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.1) and lo < 0.1 < hi and lo > 0
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)  # seeded
    with pytest.raises(ValueError):
        paired_bootstrap([True], [True, False])


def _claims(text):
    return re.findall(r"\d+\s*\*\s*\d+\s*=\s*\d+", text)


def test_evaluation_on_a_tiny_model(tiny_llama, tmp_path):
    model, tok = tiny_llama
    enable_stream_alignment(model, tok)
    trained = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=24))
    report = evaluate_arithmetic(model, tok, trained, n=8, seed=3, batch_size=4, max_new_tokens=40, progress=False)
    problems = make_problems(8, seed=3, split="test")
    rows = report["rows"]
    assert [r["question"] for r in rows] == [p.question for p in problems]
    plain, _ = answer_questions(model, tok, [p.question for p in problems], batch_size=8, max_new_tokens=40, progress=False)
    assert [r["plain"]["answer"] for r in rows] == plain  # batching and padding do not change greedy answers
    for r, p in zip(rows, problems, strict=True):
        for condition in ("plain", "stream-trained", "stream-checker", "posthoc-trained"):
            assert r[condition]["correct"] == is_correct(p, r[condition]["answer"])
        # the exact checker leaves no wrong "a*b = c" claim in its stream-aligned answers
        assert check_arithmetic(p.question, "", r["stream-checker"]["answer"]) == r["stream-checker"]["answer"]
        assert [s[1] for s in r["stream-checker"]["sentences"]] == [check_arithmetic(p.question, "", s[0]) for s in r["stream-checker"]["sentences"]]
    assert any(check_arithmetic(p.question, "", a) != a for p, a in zip(problems, plain, strict=True))
    summary = report["summary"]
    assert summary["plain"]["correct"] == sum(r["plain"]["correct"] for r in rows)
    assert summary["stream-checker"]["answers_changed"] > 0
    assert set(summary["stream-trained"]["minus_plain"]) == {"difference", "ci95"}
    assert "| stream-checker |" in markdown_table(report)
    json.dumps(report)  # the CLI writes it as JSON
    # plain and stream-checker do not depend on the aligner: a second aligner's run may reuse them, same figures
    again = evaluate_arithmetic(model, tok, trained, n=8, seed=3, batch_size=4, max_new_tokens=40, progress=False,
                                conditions=("plain", "stream-trained", "stream-checker"), reuse=report)  # fmt: skip
    assert again["summary"]["plain"] == summary["plain"] and again["summary"]["stream-checker"] == summary["stream-checker"]
    assert [r["stream-trained"] for r in again["rows"]] == [r["stream-trained"] for r in rows]
    with pytest.raises(ValueError, match="other problems"):
        evaluate_arithmetic(model, tok, trained, n=4, seed=3, batch_size=4, max_new_tokens=40, progress=False,
                            conditions=("plain",), reuse=report)  # fmt: skip


def test_evaluation_refuses_unknown_conditions(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(ValueError, match="unknown conditions"):
        evaluate_arithmetic(model, tok, None, n=2, conditions=["plain", "magic"])
    with pytest.raises(ValueError, match="need an aligner"):
        evaluate_arithmetic(model, tok, None, n=2, conditions=["stream-trained"])


@pytest.mark.parametrize(
    ("sentences", "kind"),
    [
        ([["17*23 = 381.", "17*23 = 381."]], "missed"),
        ([["17*23 = 381.", "17*23 = 401."]], "wrong fix"),
        ([["17*23 = 391.", "17*23 = 392."]], "broke"),
        ([["Let us multiply.", "Let us multiply."], ["It is big.", "It is big."]], "no checkable result"),
        ([["17*23 = 381.", "17*23 = 391."], ["So 17*3 = 50.", "So 17*3 = 50."]], "missed"),
    ],
)
def test_classify_error(sentences, kind):
    from examples.arithmetic.evaluation import classify_error

    assert classify_error("What is 17*23?", sentences) == kind


def test_product_claim_probe_scores_what_the_aligner_writes():
    from examples.arithmetic.task import check_arithmetic_worked

    exact = product_claim_probe(check_arithmetic_worked, n=24, seed=1)
    assert exact["right_product"]["k"] == exact["every_step_right"]["k"] == 24 and exact["kept_unchanged"] == 0
    identity = product_claim_probe(lambda q, p, last: last, n=24, seed=1)
    assert identity["right_product"]["k"] == 0 and identity["kept_unchanged"] == 24  # every claim is wrong
    # The right product after a wrong step counts as a right product, not as every step right.
    def sloppy(question, prefix, last):
        p = parse_problem(question)
        return f"{p.a}*{p.b} = {p.a * p.b + 10} - 1 = {p.a * p.b}."

    probe = product_claim_probe(sloppy, n=24, seed=1)
    assert probe["right_product"]["k"] == 24 and probe["every_step_right"]["k"] == 0
    assert len(probe["examples"]) == 10 and all(last != fixed for last, fixed in probe["examples"])


def test_error_cases_markdown():
    analysis = {"cases": [
        {"question": "What is 17*23?", "expected": "391", "kind": "wrong fix", "answer": "17*23 = " + "9 + " * 40 + "1.",
         "changed_sentences": [["17*23 = 381.", "17*23 = 17*20 + 17*3 = 10*20 + 7*20 + 10*3 + 7*3 = 200 + 140 + 30 + 18 = 340 + 58 = 398."]]},
        {"question": "a | b", "expected": "1", "kind": "missed", "answer": "x", "changed_sentences": []},
    ]}  # fmt: skip
    lines = error_cases_markdown(analysis, width=30).splitlines()
    assert len(lines) == 4 and all(line.count(" | ") == 5 for line in [lines[0], *lines[2:]])
    assert "| a \\| b |" in lines[3]  # a pipe in a cell is escaped
    assert "`17*23 = 381.` → `…0 + 30 + 18 = 340 + 58 = 398.`" in lines[2]  # the last 30 characters
    assert lines[2].endswith(" | 17*23 = " + "9 + " * 18 + "… |")  # the first 80 characters of the answer
    assert "| missed | nothing |" in lines[3]


def test_claims_probe_judges_by_construction_and_counts_unfinished_corrections():
    from examples.arithmetic.claims import make_claims
    from examples.arithmetic.evaluation import claims_probe
    from transformers_stream_aligner import UnfinishedCorrection

    identity = claims_probe(lambda q, p, last: last, n=70)
    assert identity["right_broken"]["k"] == 0 and identity["right_changed"]["k"] == 0 and identity["wrong_fixed"]["k"] == 0
    truth = {c.last: c.right for c in make_claims(70, split="test")}
    oracle = claims_probe(lambda q, p, last: truth[last], n=70)
    assert oracle["wrong_fixed"]["k"] == oracle["wrong_fixed"]["n"] > 0 and oracle["right_changed"]["k"] == 0
    breaker = claims_probe(lambda q, p, last: last.replace("=", "= 1"), n=70)
    assert breaker["right_broken"]["k"] > 0

    class Unfinished:
        def correct(self, requests):
            return [UnfinishedCorrection(r.last + " and so on") for r in requests]

    assert claims_probe(Unfinished(), n=14)["unfinished"] == 14


def test_sentence_outcomes_and_the_before_after_table():
    from examples.arithmetic.evaluation import precision_table, sentence_outcomes

    q = "What is 17*23?"
    rows = [{"question": q, "stream-trained": {"sentences": [["17*23 = 381.", "17*23 = 391."], ["45+19 = 64.", "45+19 = 54."],
                                                             ["Sleep well.", "Sleep well."], ["2+2 = 5.", "2+2 = 5."]]}}]
    out = sentence_outcomes({"rows": rows})
    assert out["wrong_fixed"]["k"] == 1 and out["wrong_fixed"]["n"] == 2
    assert out["right_broken"]["k"] == 1 and out["right_broken"]["n"] == 2 and out["right_changed"]["k"] == 1
    table = precision_table({"before": {"sentences": out}, "after": {"sentences": out, "unfinished": 0}})
    assert "| held-out problems: right sentences broken | 1 / 2 = 50.0%" in table and table.count("\n") == 11


def test_eval_refuses_a_zero_count(capsys):
    """Bad input to ``python -m examples.arithmetic.evaluation``: argparse's one error line and exit code 2 (in process:
    ``main`` is what ``-m`` runs)."""
    from examples.arithmetic.evaluation import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--n", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --n: must be >= 1, got 0" in err and "Traceback" not in err
