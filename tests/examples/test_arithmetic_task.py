"""The arithmetic example: the exact checker on a table of cases, problem generation and scoring."""

import json
from fractions import Fraction

import pytest

from examples.arithmetic.task import (
    PROBES,
    ArithmeticProblem,
    check_arithmetic,
    check_arithmetic_worked,
    every_step_right,
    final_answer,
    involves_probe,
    is_correct,
    make_problems,
    parse_problem,
    synthetic_product_claims,
    worked_product,
)

BARE = "What is 17*23?"
APPLES = "Tom has 45 apples and gets 19 more. How many apples does Tom have now?"

# (question, sentence, expected correction); the sentence itself when nothing is wrong.
CASES = [
    # written claims
    (BARE, "17*23 = 381.", "17*23 = 391."),
    (BARE, "17*23 = 391.", "17*23 = 391."),
    (BARE, "17 × 23 = 381", "17 × 23 = 391"),
    (BARE, "17 x 23 = 381, so that is it.", "17 x 23 = 391, so that is it."),
    ("What is 96 - 47?", "96 - 47 = 51.", "96 - 47 = 49."),
    ("What is 5 - 9?", "5 - 9 = 4.", "5 - 9 = -4."),
    ("What is 84 / 7?", "84 / 7 = 13.", "84 / 7 = 12."),
    ("What is 84 ÷ 7?", "84 ÷ 7 = 12.", "84 ÷ 7 = 12."),
    ("What is 10 / 3?", "10 / 3 = 3.33, roughly.", "10 / 3 = 3.33, roughly."),
    ("What is 10 / 3?", "10 / 3 = 3.5, roughly.", "10 / 3 = 3.33, roughly."),
    ("What is 99*99?", "99*99 = 9,800.", "99*99 = 9801."),
    ("What is 99*99?", "99*99 = 9,801.", "99*99 = 9,801."),
    # chains: every bare number must equal the first expression; expressions are left as written
    (BARE, "17*23 = 17*20 + 17*3 = 340 + 51 = 381.", "17*23 = 17*20 + 17*3 = 340 + 51 = 391."),
    (BARE, "17*23 = 17*20 + 17*3 = 340 + 41 = 391.", "17*23 = 17*20 + 17*3 = 340 + 41 = 391."),
    (BARE, "First, 17*20 = 34, then 17*3 = 51.", "First, 17*20 = 340, then 17*3 = 51."),
    ("x", "2 + 3 * 4 = 20.", "2 + 3 * 4 = 14."),
    ("x", "3 + 89 = 10 * 10 = 100.", "3 + 89 = 10 * 10 = 92."),
    ("x", "7 / 0 = 10 + 2 = 9.", "7 / 0 = 10 + 2 = 9."),  # unverifiable: its first expression divides by zero
    ("x", "381 = 17*23.", "381 = 17*23."),  # a bare number before the first expression is left as written
    # worded claims
    ("What is 30*19?", "30*19 is equal to 519.", "30*19 is equal to 570."),
    ("What is 30*19?", "30*19 is 570.", "30*19 is 570."),
    ("x", "45 plus 19 is 63.", "45 plus 19 is 64."),
    ("x", "17 times 23 equals 381.", "17 times 23 equals 391."),
    ("x", "The product of 17 and 23 is 381.", "The product of 17 and 23 is 391."),
    ("x", "The difference between 81 and 48 is 22.", "The difference between 81 and 48 is 33."),
    ("x", "We add 95 and 60, which results in 150.", "We add 95 and 60, which results in 155."),
    ("x", "Now, we can multiply 22 by 15 to get 315.", "Now, we can multiply 22 by 15 to get 330."),
    ("x", "Subtracting 48 from 81 gives 22.", "Subtracting 48 from 81 gives 33."),
    ("x", "Divide 84 by 7 to get 11.", "Divide 84 by 7 to get 12."),
    # a worded claim whose "result" starts an expression is not a claim; the written one is checked
    ("x", "We multiply 147 by 13, which gives us 147*13 = 1921.", "We multiply 147 by 13, which gives us 147*13 = 1911."),
    ("x", "45 plus 19 is 45 + 19 = 63.", "45 plus 19 is 45 + 19 = 64."),
    # final results, operands known from the question
    ("What is 45 + 19?", "So the answer is 63.", "So the answer is 64."),
    ("What is 45 + 19?", "So the total is 64.", "So the total is 64."),
    ("How much is 61 * 50?", "So, 1111 is the answer.", "So, 3050 is the answer."),
    (APPLES, "Tom has 45 apples and gets 19 more.", "Tom has 45 apples and gets 19 more."),
    (APPLES, "So the total is 63, and Tom has 63 apples.", "So the total is 64, and Tom has 64 apples."),
    (APPLES, "Now Tom has 64 apples.", "Now Tom has 64 apples."),
    ("Anna had 50 coins and gave away 12. How many coins are left?", "Anna has 28 coins left.", "Anna has 38 coins left."),
    ("96 stickers are shared equally among 8 friends. How many stickers does each friend get?",
     "Each friend gets 14 stickers.", "Each friend gets 12 stickers."),  # fmt: skip
    # nothing it can verify: unchanged
    (BARE, "To calculate 17*23, you multiply 17 by 23.", "To calculate 17*23, you multiply 17 by 23."),
    (BARE, "This is a multiplication problem.", "This is a multiplication problem."),
    ("Give me a tip.", "The answer is 42.", "The answer is 42."),
    (BARE, "There are 7 days in a week.", "There are 7 days in a week."),
    ("x", "Version 2.0 = 2 + 0.", "Version 2.0 = 2 + 0."),
]


@pytest.mark.parametrize(("question", "sentence", "expected"), CASES)
def test_checker_table(question, sentence, expected):
    assert check_arithmetic(question, "", sentence) == expected


def test_checker_is_idempotent_on_its_own_output():
    for question, sentence, _ in CASES:
        once = check_arithmetic(question, "", sentence)
        assert check_arithmetic(question, "", once) == once


def test_problems_are_seeded_distinct_and_split():
    train = make_problems(400, seed=1, split="train")
    assert train == make_problems(400, seed=1, split="train")
    assert train != make_problems(400, seed=2, split="train")
    test = make_problems(200, seed=1, split="test")
    keys = lambda ps: {(p.a, p.op, p.b) for p in ps}  # noqa: E731
    assert len(keys(train)) == 400 and len(keys(test)) == 200
    assert not keys(train) & keys(test)
    assert not keys(make_problems(400, seed=7, split="train")) & keys(test)
    assert {p.op for p in train} == {"+", "-", "*", "/"}
    for p in train + test:
        assert 2 <= p.a <= 99 and 2 <= p.b <= 99
        assert p.answer.denominator == 1 and p.answer >= 0
        assert parse_problem(p.question) == p
    words = sum(p.unit is not None for p in train)
    assert 120 < words < 280


def test_parse_problem_rejects_what_it_cannot_read():
    assert parse_problem("Give me three tips.") is None
    assert parse_problem("What is 2+3 and 4+5?") is None
    assert parse_problem("What is 7 / 0?") is None
    assert parse_problem("What is 12 × 3?") == ArithmeticProblem(12, "*", 3, "What is 12 × 3?")


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("17*23 = 391.", 391),
        ("17*23 = 17*20 + 17*3 = 340 + 51 = 391. The answer is 391.", 391),
        ("The answer is 391 (17 times 23).", 391),
        ("So, 1111 is the answer.", 1111),
        ("Tom has 64 apples now.", 64),
        ("The product of 17 and 23 is 391.", 391),
        ("Each friend gets **12** stickers.", 12),
        ("Nothing here.", None),
    ],
)
def test_final_answer(answer, value):
    assert final_answer(answer) == value


def test_is_correct():
    p = ArithmeticProblem(17, "*", 23, BARE)
    assert p.answer == Fraction(391)
    assert is_correct(p, "17*23 = 391.")
    assert not is_correct(p, "17*23 = 381.")
    assert not is_correct(p, "I do not know.")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (17, 23, "17*20 + 17*3 = 10*20 + 7*20 + 10*3 + 7*3 = 200 + 140 + 30 + 21 = 340 + 51 = 391"),
        (99, 99, "99*90 + 99*9 = 90*90 + 9*90 + 90*9 + 9*9 = 8100 + 810 + 810 + 81 = 8910 + 891 = 9801"),
        (27, 3, "20*3 + 7*3 = 60 + 21 = 81"),
        (4, 56, "4*50 + 4*6 = 200 + 24 = 224"),
        (17, 20, "10*20 + 7*20 = 200 + 140 = 340"),
        (30, 40, "1200"),
        (7, 8, "56"),
    ],
)
def test_worked_product(a, b, expected):
    assert worked_product(a, b) == expected
    assert every_step_right("", f"{a}*{b} = {expected}.")  # every step is right


def test_worked_product_over_all_operands():
    for a in range(2, 100):
        for b in range(2, 100):
            chain = worked_product(a, b, sym=" × ")
            assert chain.endswith(f" {a * b}") or chain == str(a * b)
            assert every_step_right("", f"{a} × {b} = {chain}.")


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("17*23 = 381.", "17*23 = 17*20 + 17*3 = 10*20 + 7*20 + 10*3 + 7*3 = 200 + 140 + 30 + 21 = 340 + 51 = 391."),
        ("17*23 = 391.", "17*23 = 17*20 + 17*3 = 10*20 + 7*20 + 10*3 + 7*3 = 200 + 140 + 30 + 21 = 340 + 51 = 391."),  # right: still worked
        ("So 11 * 84 = 840 cards.", "So 11 * 84 = 11 * 80 + 11 * 4 = 10 * 80 + 1 * 80 + 10 * 4 + 1 * 4 = 800 + 80 + 40 + 4 = 880 + 44 = 924 cards."),
        ("7 * 8 = 54, and 45 + 19 = 63.", "7 * 8 = 56, and 45 + 19 = 64."),  # one-digit products stay one step
        ("17*23 = 17*20 + 17*3 = 340 + 51 = 381.", "17*23 = 17*20 + 17*3 = 340 + 51 = 391."),  # a chain: not expanded
        ("2 + 17*23 = 393.", "2 + 17*23 = 393."),  # not a plain product claim
        ("2 x 17*23 = 782.", "2 x 17*23 = 782."),
        ("In each box 12 * 34 = 400.", "In each box 12 * 34 = 12 * 30 + 12 * 4 = 10 * 30 + 2 * 30 + 10 * 4 + 2 * 4 = 300 + 60 + 40 + 8 = 360 + 48 = 408."),
        ("There are 12 boxes.", "There are 12 boxes."),
    ],
)
def test_worked_checker(sentence, expected):
    assert check_arithmetic_worked(BARE, "", sentence) == expected
    assert check_arithmetic_worked(BARE, "", expected) == expected  # idempotent


def test_synthetic_product_claims_are_held_in_seeded_and_never_the_probe():
    records = synthetic_product_claims(600, seed=5)
    assert records == synthetic_product_claims(600, seed=5)
    assert records != synthetic_product_claims(600, seed=6)
    held_out = {(p.a, p.b) for p in make_problems(50, seed=0, split="test") if p.op == "*"}
    wrong = 0
    for r in records:
        problem = parse_problem(r["question"])
        assert problem is not None and problem.op == "*" and problem.split == "train"
        assert (problem.a, problem.b) not in held_out and (problem.a, "*", problem.b) not in PROBES
        assert r["prefix"] == "" and r["correction"] == check_arithmetic_worked(r["question"], "", r["last"])
        assert is_correct(problem, r["correction"]) and not involves_probe(r["last"])
        wrong += not is_correct(problem, r["last"])
    assert 0.6 < wrong / len(records) < 0.8


def test_involves_probe():
    assert involves_probe("So 17*23 = 381.") and involves_probe("23 × 17 is") and involves_probe("17 times 23")
    assert not involves_probe("117*23 = 2691.") and not involves_probe("17*230") and not involves_probe("17 + 23")


def test_every_step_right_checks_expressions_too():
    assert every_step_right(BARE, "17*23 = 17*20 + 17*3 = 200 + 140 + 30 + 21 = 340 + 51 = 391.")
    assert not every_step_right(BARE, "17*23 = 17*20 + 17*3 = 200 + 140 + 30 + 21 = 340 + 41 = 391.")  # the checker passes it
    assert check_arithmetic(BARE, "", "17*23 = 17*20 + 17*3 = 200 + 140 + 30 + 21 = 340 + 41 = 391.").endswith("= 391.")
    assert not every_step_right(BARE, "17*23 = 381.") and not every_step_right(BARE, "5/0 = 3.")
    assert every_step_right(BARE, "No numbers here.")


def test_build_assembles_training_records_without_the_probe():
    from examples.arithmetic.build_aligner import assemble

    def rec(last, correction=None):
        return {"question": "What is 12*34?", "prefix": "", "last": last, "correction": correction or last}

    records = [rec(f"{i} + 1 = {i + 1}.") for i in range(30)] + [rec(f"{i} + 1 = 0.", f"{i} + 1 = {i + 1}.") for i in range(10)]
    records += [rec("So 17*23 = 381.", "So 17*23 = 391."), {**rec("It is 408."), "prefix": "First, 23 × 17 = 391."}]
    train, counts = assemble(records, claims=25, copies_per_change=None, seed=0)
    assert counts["collected"] == 42 and counts["collected_changed"] == 11 and counts["claims"] + counts["dropped_probes"] == 27
    assert counts["trained_on"] == 40 + counts["claims"] and train == assemble(records, claims=25, copies_per_change=None, seed=0)[0]
    assert not any(involves_probe(r[k]) for r in train for k in ("prefix", "last", "correction"))
    on_policy = [r for r in train if r["question"] == "What is 12*34?"]
    assert sum(r["last"] != r["correction"] for r in on_policy) == 10 and len(on_policy) == 40  # every copy kept
    balanced, _ = assemble(records, claims=0, copies_per_change=1.0, seed=0)
    assert len(balanced) == 20 and sum(r["last"] != r["correction"] for r in balanced) == 10
    with_products, counts = assemble(records, claims=0, copies_per_change=None, seed=0, synthetic=30)
    assert counts["dropped_probes"] == 2 and counts["claims"] == 30 and len(with_products) == 70  # products are no probes


def test_check_arithmetic_precise_changes_only_wrong_results_and_works_only_wrong_two_digit_products():
    from examples.arithmetic.task import check_arithmetic_precise

    right = ["17*23 = 391.", "45+19 = 64.", "2. Keep a regular schedule.", "170*23 = 3910.", "So 7 * 8 = 56 and 45 -40 = 5."]
    for text in right:
        assert check_arithmetic_precise(BARE, "", text) == text
    assert check_arithmetic_precise(BARE, "", "17*23 = 381.").endswith("= 340 + 51 = 391.")
    assert check_arithmetic_precise(BARE, "", "170*23 = 3920.") == "170*23 = 3910."  # no worked form for a big operand
    assert check_arithmetic_precise(BARE, "", "45+19 = 54.") == "45+19 = 64."


def test_claims_are_seeded_held_apart_and_judged_by_construction():
    from examples.arithmetic.claims import (
        _FRAMES,
        STYLES,
        judge_claim,
        make_claims,
        other_questions,
        precise_correction,
    )

    train, test = make_claims(300, seed=0, split="train"), make_claims(300, seed=0, split="test")
    assert train == make_claims(300, seed=0, split="train") and train != make_claims(300, seed=1, split="train")
    assert {c.style for c in test} == set(STYLES) and {c.op for c in test} == {"+", "-", "*", "/"}
    assert 0.3 < sum(c.wrong for c in test) / len(test) < 0.5
    assert not {c.question for c in train} & {c.question for c in test}  # operands held apart
    assert not set(_FRAMES["train"]) & set(_FRAMES["test"])  # and the sentence frames
    assert not set(other_questions("train")) & set(other_questions("test"))
    for c in test:
        assert judge_claim(c, c.last) == ("still_wrong" if c.wrong else "kept")
        assert judge_claim(c, c.right) == ("fixed" if c.wrong else "kept")
        assert judge_claim(c, precise_correction(c)) == ("fixed" if c.wrong else "kept")
    wrong = next(c for c in test if c.wrong)
    right = next(c for c in test if not c.wrong and c.style == "plain")
    assert judge_claim(right, right.last + " Indeed.") == "changed_right"
    assert judge_claim(right, wrong.last) == "broken" and judge_claim(wrong, wrong.last.replace(".", "!")) == "still_wrong"


@pytest.mark.parametrize("recipe, corrector, passes, claims, synthetic", [("v2", "check_arithmetic_worked", 2, 0, 1000),
                                                                          ("precise", "check_arithmetic_precise", 1, 1000, 400)])
def test_build_recipes_set_their_settings(recipe, corrector, passes, claims, synthetic, monkeypatch, tmp_path):
    from examples.arithmetic import build_aligner

    calls, seen = [], {}

    def collect(questions, **kwargs):
        calls.append(kwargs)
        return []

    def stop(records, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(build_aligner, "collect_records", collect)
    monkeypatch.setattr(build_aligner, "assemble", stop)
    with pytest.raises(SystemExit):
        build_aligner.main(["--recipe", recipe, "--work-dir", str(tmp_path), "--no-progress"])
    assert len(calls) == passes and all(c["corrector"] == corrector for c in calls)
    assert seen["claims"] == claims and seen["synthetic"] == synthetic
    assert seen["synthetic_corrector"] == corrector  # precise: right product claims copied, wrong ones worked
    assert seen["claims_wrong"] == (0.4 if recipe == "v2" else 0.5)


def test_precise_product_claims_keep_right_ones_and_work_wrong_ones():
    from examples.arithmetic.task import check_arithmetic_precise, synthetic_product_claims

    records = synthetic_product_claims(60, seed=2, wrong_fraction=0.5, corrector=check_arithmetic_precise)
    kept = [r for r in records if r["correction"] == r["last"]]
    worked = [r for r in records if r["correction"] != r["last"]]
    assert kept and worked
    assert all(r["correction"].count("=") >= 3 for r in worked)  # worked out by place value
    assert all(check_arithmetic_precise(r["question"], "", r["correction"]) == r["correction"] for r in records)


def test_copy_bias_sweep_counts_what_an_aligner_does(tmp_path):
    """The sweep's held-in sets and counts, with two stand-in aligners: one that copies (nothing changed, nothing
    fixed) and the exact checker (every wrong claim it can parse fixed, nothing right broken); the bias is set on a
    replaced config, never on the one given."""
    from examples.arithmetic import copy_bias_sweep
    from examples.arithmetic.task import check_arithmetic_precise
    from transformers_stream_aligner import StreamAlignerConfig

    records = [{"question": "What is 2+3?", "prefix": "", "last": "2 + 3 = 5.", "correction": "2 + 3 = 5."},
               {"question": "What is 4*3?", "prefix": "", "last": "4*3 = 12.", "correction": "4*3 = 12."},
               *({"question": "Tips?", "prefix": "", "last": f"Tip {i}: sleep well.", "correction": f"Tip {i}: sleep well."}
                 for i in range(4)),
               {"question": "What is 2+3?", "prefix": "", "last": "2 + 3 = 6.", "correction": "2 + 3 = 5."}]  # fmt: skip
    path = tmp_path / "greedy.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    kept, claims = copy_bias_sweep.held_in_sets(str(path), n_records=10, n_claims=40, claims_seed=5)
    assert all(r["correction"] == r["last"] for r in kept) and len(kept) == 4  # unchanged and not picked (6 - 2)
    assert all(c.split == "train" for c in claims)

    class Stand:
        def __init__(self, fn):
            self.config, self.fn = StreamAlignerConfig(), fn

        def reset_cache(self):
            pass

        def correct(self, requests):
            return [self.fn(r.question, r.prefix, r.last) for r in requests]

    config = StreamAlignerConfig()
    copier = Stand(lambda q, p, last: last)
    copier.config = config
    row = copy_bias_sweep.sweep_one(copier, 2.0, kept, claims)
    assert config.copy_bias == 0.0 and copier.config.copy_bias == 2.0
    assert row["prose_changed"] == 0 and row["claims_right_broken"] == 0 and row["claims_wrong_fixed"] == 0
    assert row["claims_wrong_n"] > 0 and row["claims_right_n"] + row["claims_wrong_n"] == 40
    checker = copy_bias_sweep.sweep_one(Stand(check_arithmetic_precise), 0.0, kept, claims)
    assert checker["claims_wrong_fixed"] > 0 and checker["claims_right_broken"] == 0
