"""The small from-scratch arithmetic aligner's recipe (examples/arithmetic/build_small_aligner.py)."""

import json
import re

import pytest

from examples.arithmetic import build_small_aligner as small
from examples.arithmetic.task import ArithmeticProblem, check_arithmetic_precise, involves_probe


def test_only_records_the_sentence_alone_shows_are_kept():
    assert small.self_contained({"last": "So, 42 - 7 = 31.", "correction": "So, 42 - 7 = 35."})
    assert small.self_contained({"last": "Sleep well.", "correction": "Sleep well."})
    assert not small.self_contained({"last": "So, the answer is 100.", "correction": "So, the answer is 60."})


def test_embedded_facts_are_held_in_and_corrected_by_the_checker():
    import re

    from examples.arithmetic.task import ArithmeticProblem

    carriers = ["Return the number of items in the given container.", "The value is kept in a cache."]
    rows = small.embedded_facts(200, seed=4, wrong_fraction=0.5, carriers=carriers)
    assert len(rows) == 200 and rows == small.embedded_facts(200, seed=4, wrong_fraction=0.5, carriers=carriers)
    for r in rows:
        assert r["correction"] == check_arithmetic_precise("", "", r["last"])
        a, op, b = re.search(r"(\d+) ?([-+*×x/÷]) ?(\d+) =", r["last"]).groups()
        op = {"×": "*", "x": "*", "÷": "/"}.get(op, op)
        assert ArithmeticProblem(int(a), op, int(b), "").split == "train" and not involves_probe(r["last"])
    changed = sum(r["correction"] != r["last"] for r in rows)
    assert 60 < changed < 140  # about half wrong, each one corrected
    assert any(r["last"].startswith(("Return", "The")) for r in rows)  # claims inside other text


def test_carried_claims_are_held_in_inside_other_text_and_judged_as_taught():
    from examples.arithmetic.claims import STYLES
    from examples.arithmetic.task import judge_sentence

    carriers = ["Return the number of items in the given container.", "The value is kept in a cache."]
    rows = small.carried_claims(140, seed=3, wrong_fraction=0.5, carriers=carriers)
    assert len(rows) == 140 and rows == small.carried_claims(140, seed=3, wrong_fraction=0.5, carriers=carriers)
    changed = [r for r in rows if r["last"] != r["correction"]]
    assert 30 < len(changed) < 110
    for r in rows:
        assert judge_sentence("", r["correction"]) != "wrong" and not involves_probe(r["last"])
    for r in changed:  # a wrong result, corrected in place: the rest of the sentence as it was, no worked form
        assert judge_sentence("", r["last"]) == "wrong" and r["correction"].count("=") == r["last"].count("=")
    starts = {r["last"].split()[0] for r in rows}
    assert {"Return", "The"} <= starts and any(s[0].isdigit() or s[0] == "$" for s in starts)  # start, middle, end
    assert any("," in r["last"] and "=" in r["last"] for r in rows) and len(STYLES) == 7


def test_arithmetic_facts_are_right_and_held_in():
    from examples.arithmetic.task import ArithmeticProblem

    facts = small.arithmetic_facts(400, seed=5)
    assert facts == small.arithmetic_facts(400, seed=5)
    ops = {"+": "+", "-": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/"}
    for left, result in facts:
        a, sym, b = left.replace(" ", "")[:-1].partition(next(c for c in left[1:] if c in ops and c != " "))
        problem = ArithmeticProblem(int(a), ops[sym], int(b), "")
        assert problem.answer == int(result) and problem.split == "train" and not involves_probe(left + result)
    assert {ops[c] for left, _ in facts for c in left if c in ops} == {"+", "-", "*", "/"}
    assert any(len(left.split()[0]) == 3 for left, _ in facts)  # wider operands too


def test_arithmetic_facts_in_context_come_after_other_text_and_stay_held_in():
    plain = small.arithmetic_facts(200, seed=5)
    assert plain == small.arithmetic_facts(200, seed=5, context=0.0)  # the default draws as before
    facts = small.arithmetic_facts(200, seed=5, context=0.6)
    after_text = [left for left, _ in facts if not left[0].isdigit() or ". " in left]
    assert 80 < len(after_text) < 160
    for left, result in facts:
        assert not involves_probe(left + result)
        for a, op, b in re.findall(r"(\d+)\s*([-+*/x×÷])\s*(\d+)\s*=", left):
            canon = {"x": "*", "×": "*", "÷": "/"}.get(op, op)
            assert ArithmeticProblem(int(a), canon, int(b), "").split == "train"  # earlier equations held-in too
    earlier = [re.match(r"(\d+) \+ (\d+) = (\d+)\. ", left) for left in after_text]
    assert any(earlier) and all(int(m[1]) + int(m[2]) == int(m[3]) for m in earlier if m)  # right, so no lesson to copy


def test_facts_are_encoded_with_the_loss_on_the_result_only():
    tokenizer = small.train_tokenizer(["12 + 34 = 46", "The end."] * 20, vocab_size=300)
    [row] = small.encode_facts(tokenizer, [("12 + 34 = ", "46")])
    assert tokenizer.decode(row["input_ids"]) == "12 + 34 = 46<|endoftext|>"
    kept = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert tokenizer.decode(kept) == "46<|endoftext|>" and row["labels"][-3:] == kept


class _Calculator:
    """Stands in for a model in ``arithmetic_accuracy``: completes each prompt with its result plus ``off``."""

    def __init__(self, tokenizer, off):
        self.tokenizer, self.off, self.training = tokenizer, off, True

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def generate(self, input_ids, attention_mask, **kwargs):
        import torch

        from examples.arithmetic.task import ArithmeticProblem

        rows = []
        for ids in input_ids:
            a, op, b, _ = self.tokenizer.decode(ids, skip_special_tokens=True).split()
            answer = int(ArithmeticProblem(int(a), op, int(b), "").answer) + self.off
            rows.append(self.tokenizer(str(answer), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id] * 4)
        width = min(len(r) for r in rows)
        return torch.cat([input_ids, torch.tensor([r[:width] for r in rows])], dim=1)


def test_arithmetic_accuracy_counts_right_completions_per_operator():
    tokenizer = small.train_tokenizer(["12 + 34 = 46", "7 * 8 = 56", "90 / 3 = 30", "5 - 2 = 3"] * 20, vocab_size=300)
    tokenizer.padding_side = "right"
    right, wrong = _Calculator(tokenizer, 0), _Calculator(tokenizer, 1)
    assert small.arithmetic_accuracy(right, tokenizer, n=40) == {"+": 1.0, "-": 1.0, "*": 1.0, "/": 1.0}
    assert small.arithmetic_accuracy(wrong, tokenizer, n=40) == {"+": 0.0, "-": 0.0, "*": 0.0, "/": 0.0}
    assert tokenizer.padding_side == "right" and right.training  # both left as they were


def test_inline_claims_are_held_in_corrected_by_the_checker_in_many_forms():
    from examples.arithmetic.task import check_arithmetic

    claims = small.inline_claims(300, seed=4, wrong_fraction=0.5)
    assert claims == small.inline_claims(300, seed=4, wrong_fraction=0.5)
    wrong = 0
    for sentence, correction, start, end in claims:
        assert check_arithmetic("", "", sentence).strip() == correction.strip()  # the checker sees what is taught
        assert sentence[:start] == correction[:start] and correction[start:end].isdigit()
        assert not involves_probe(sentence)
        wrong += sentence != correction
    assert 100 < wrong < 200
    lefts = " ".join(c[:s] for _, c, s, _ in claims)
    for form in ("=", "minus", "the product of", "Subtract", "dividing", " is "):
        assert form in lefts
    held_out = small.inline_claims(50, seed=4, split="test", wrong_fraction=1.0)
    assert all(s != c for s, c, _, _ in held_out) and not {c for _, c, _, _ in held_out} & {c for _, c, _, _ in claims}


def test_inline_claims_are_encoded_in_the_prompt_with_the_loss_on_the_result_only():
    claims = [("So, 58 - 37 = 15 left.", "So, 58 - 37 = 21 left.", 14, 16), ("12 + 5 = 18", "12 + 5 = 17", 9, 11)]
    tokenizer = small.train_tokenizer([c for pair in claims for c in pair[:2]] * 20 + [small.PROMPT], vocab_size=300)
    first, second = small.encode_inline(tokenizer, claims)
    assert tokenizer.decode(first["input_ids"]) == ">>> So, 58 - 37 = 15 left.\n<<< So, 58 - 37 = 21"  # cut after the result
    assert tokenizer.decode([t for t, label in zip(*first.values(), strict=True) if label != -100]) == "21"
    assert tokenizer.decode([t for t, label in zip(*second.values(), strict=True) if label != -100]) == "17<|endoftext|>"


class _InlineCalculator(_Calculator):
    """Stands in for a model in ``inline_accuracy``: writes the checker's result (plus ``off`` as a digit string)."""

    def generate(self, input_ids, attention_mask, **kwargs):
        import torch

        from examples.arithmetic.task import check_arithmetic

        rows = []
        for ids in input_ids:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            sentence, head = text.split(">>> ", 1)[1].split("\n<<< ", 1)
            result = check_arithmetic("", "", sentence)[len(head) :]
            digits = result[: len(result) - len(result.lstrip("0123456789"))]
            answer = digits if not self.off else digits + "1"
            rows.append(self.tokenizer(answer + " x", add_special_tokens=False)["input_ids"])
        width = max(len(r) for r in rows)
        rows = [r + [self.tokenizer.eos_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


def test_inline_accuracy_counts_results_written_right_in_the_sentence():
    texts = [c for s, c, _, _ in small.inline_claims(200, seed=1)] + [s for s, _, _, _ in small.inline_claims(200, seed=1)]
    tokenizer = small.train_tokenizer(texts + [small.PROMPT], vocab_size=400)
    right, wrong = _InlineCalculator(tokenizer, 0), _InlineCalculator(tokenizer, 1)
    assert small.inline_accuracy(right, tokenizer, n=40) == {"+": 1.0, "-": 1.0, "*": 1.0, "/": 1.0}
    assert small.inline_accuracy(wrong, tokenizer, n=40) == {"+": 0.0, "-": 0.0, "*": 0.0, "/": 0.0}
    assert tokenizer.padding_side == "right" and right.training


def test_records_add_claims_in_sentences_and_markdown_to_copy():
    rows, counts = small.records([], seed=0, claims=7, wrong_fraction=0.5, products=2, prose=10, on_policy_weight=0,
                                 prose_files=40, inline=30, markdown=20, items=10, direct=True)  # fmt: skip
    assert counts["markdown"] > 10 and any("**" in r["last"] and r["last"] == r["correction"] for r in rows)
    assert sum(r["question"] == "What is it?" for r in rows) == 30


def test_direct_records_correct_in_place():
    rows, _ = small.records([], seed=0, claims=28, wrong_fraction=0.5, products=8, prose=10, on_policy_weight=1,
                            prose_files=40, facts=20, carried=20, direct=True)  # fmt: skip
    changed = [r for r in rows if r["last"] != r["correction"]]
    assert changed and all(r["correction"].count("=") == r["last"].count("=") for r in changed)
    worked, _ = small.records([], seed=0, claims=28, wrong_fraction=0.5, products=8, prose=10, on_policy_weight=1,
                              prose_files=40)  # fmt: skip
    assert any(r["correction"].count("=") > r["last"].count("=") for r in worked)  # the default of old: worked forms


def test_records_mix_weights_and_leave_out_the_probe():
    on_policy = [
        {"question": "What is 12 + 5?", "prefix": "", "last": "12 + 5 = 18.", "correction": "12 + 5 = 17."},
        {"question": "What is 17*23?", "prefix": "", "last": "17*23 = 381.",
         "correction": check_arithmetic_precise("", "", "17*23 = 381.")},
        {"question": "What is 12 + 5?", "prefix": "We add.", "last": "So 12 + 5 = 17.", "correction": "So 12 + 5 = 17."},
    ]
    before = json.dumps(on_policy)
    rows, counts = small.records(on_policy + [{"question": "What is 12 + 5?", "prefix": "", "last": "So it is 18.",
                                               "correction": "So it is 17."}],
                                 seed=0, claims=14, wrong_fraction=0.5, products=4, prose=10, on_policy_weight=2,
                                 prose_files=40)  # fmt: skip
    assert json.dumps(on_policy) == before  # not modified
    assert not any(involves_probe(r[k]) for r in rows for k in ("prefix", "last", "correction"))
    assert sum(r["last"] == "12 + 5 = 18." for r in rows) == 2  # weighted twice
    assert not any(r["last"] == "So it is 18." for r in rows)  # wrong only given the question: left out
    assert counts["on_policy_self_contained"] == 3 and counts["dropped_probes"] == 2
    assert counts["prose"] > 0 and counts["trained_on"] == len(rows)
    assert any(r["last"] == r["correction"] and r["question"] for r in rows)


def test_tokenizer_reads_digits_one_by_one():
    tokenizer = small.train_tokenizer(["1234 + 5678 = 6912", "The answer is 42."] * 20, vocab_size=300)
    ids = tokenizer("9876")["input_ids"]
    assert len(ids) == 4 and tokenizer.decode(ids) == "9876"
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<pad>"


def test_build_end_to_end_makes_a_loadable_float16_aligner(tmp_path):
    from safetensors import safe_open

    from transformers_stream_aligner import AlignmentRequest, StreamAligner

    records = tmp_path / "greedy.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "What is 12 + 5?", "prefix": "", "last": "12 + 5 = 18.", "correction": "12 + 5 = 17."},
        {"question": "Give me a tip.", "prefix": "", "last": "Sleep well.", "correction": "Sleep well."},
    ]))  # fmt: skip
    out = tmp_path / "aligner"
    argv = ["--records", str(records), "--work-dir", str(tmp_path / "work"), "--output", str(out), "--claims", "20",
            "--products", "4", "--facts", "20", "--epochs", "1", "--prose", "10",
            "--prose-files", "40", "--hidden-size", "32", "--layers", "1", "--vocab-size", "400", "--batch-size", "8",
            "--copy-bias", "2.5", "--carried", "20", "--pretrain-steps", "3", "--inline-steps", "2",
            "--pretrain-batch-size", "16", "--inline", "20", "--markdown", "10", "--items", "10",
            "--no-progress"]  # fmt: skip
    assert small.main(argv) == 0
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    report = json.loads((out / "build_report.json").read_text())
    assert report["records"]["on_policy"] == 2 and report["training"]["steps"] > 0
    assert report["pretraining"]["step"] == 3 and report["inline_pretraining"]["step"] == 2
    for measured in (report["pretraining"], report["inline_pretraining"], report["training"]):  # bare and in sentences
        for key in ("held_out_accuracy", "held_out_inline_accuracy"):
            assert set(measured[key]) == set("+-*/") and all(0 <= v <= 1 for v in measured[key].values())
    aligner = StreamAligner.from_pretrained(out, local_files_only=True)
    assert aligner.config.instruction_template == small.PROMPT and aligner.config.copy_bias == 2.5
    [text] = aligner.correct([AlignmentRequest("What is 12 + 5?", "", "12 + 5 = 17.")])
    assert isinstance(text, str)
    # the quick paired measure replays a report's sentences through it
    from examples.arithmetic import replay

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"rows": [{"question": "What is 12 + 5?", "stream-trained": {"sentences": [
        ["12 + 5 = 18.", "12 + 5 = 17."], ["Sleep well.", "Sleep well."]]}}]}))  # fmt: skip
    assert replay.main(["--aligner", str(out), "--report", str(report), "--biases", "0,9", "--output", str(tmp_path / "r.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["copy_bias"] for r in rows] == [0.0, 9.0] and all(r["wrong"] == 1 and r["report_fixed"] == 1 for r in rows)


def test_build_says_where_the_on_policy_records_come_from(tmp_path, capsys):
    assert small.main(["--records", str(tmp_path / "missing.jsonl"), "--work-dir", str(tmp_path)]) == 2
    assert "make aligner-precise" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--claims", "--hidden-size", "--learning-rate", "--copy-bias"])
def test_every_setting_is_a_flag(flag):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        small.main(["--help"])
    assert flag in out.getvalue()


def test_competence_probe_counts_smollm2s_own_answers(smollm2):
    from examples.arithmetic.competence import KINDS, probe, read_number

    model, tokenizer = smollm2
    side = tokenizer.padding_side
    try:
        chosen = list(KINDS)[:2]
        result = probe(model, tokenizer, n=2, seed=0, batch_size=2, kinds=chosen)
    finally:
        tokenizer.padding_side = side
    assert list(result) == chosen
    for r in result.values():
        assert len(r["answers"]) == 2 and 0 <= r["right_when_stated"] <= r["stated"] <= 2
        recount = sum(read_number(ans) == str(eval(q)) for q, ans in r["answers"])  # noqa: S307
        assert r["right"] == recount


def test_arithmetic_pretraining_benchmark_reports_held_out_accuracy(tmp_path, capsys):
    from benchmarks import arithmetic_pretraining

    tokenizer = small.train_tokenizer(["12 + 34 = 46", "7 × 8 = 56", "90 ÷ 3 = 30", "The end."] * 20, vocab_size=300)
    tokenizer.save_pretrained(tmp_path / "tok")
    argv = ["--tokenizer", str(tmp_path / "tok"), "--output", str(tmp_path / "m"), "--steps", "4", "--batch-size", "8",
            "--eval-every", "2", "--hidden-size", "32", "--layers", "1"]  # fmt: skip
    assert arithmetic_pretraining.main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["step"] for x in lines] == [2, 4]
    assert set(lines[-1]["held_out_accuracy"]) == set(lines[-1]["held_out_inline_accuracy"]) == set("+-*/")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    # then in sentences, continuing that model
    argv = ["--base", str(tmp_path / "m"), "--output", str(tmp_path / "m2"), "--steps", "2", "--batch-size", "8",
            "--inline-share", "0.75", "--eval-every", "2"]  # fmt: skip
    assert arithmetic_pretraining.main(argv) == 0
    assert [json.loads(x)["step"] for x in capsys.readouterr().out.splitlines() if x.startswith("{")] == [2]


def test_pretraining_batches_mix_claims_in_sentences_and_bare_equations(monkeypatch):
    import torch

    tokenizer = small.train_tokenizer([c for _, c, _, _ in small.inline_claims(100, seed=1)] + [small.PROMPT], vocab_size=300)
    model = small.init_model(tokenizer, hidden_size=32, layers=1, seed=0)
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: seen.append(kw["input_ids"]) or forward(**kw))
    before = [p.detach().clone() for p in model.parameters()]
    rows = []
    small.pretrain_arithmetic(model, tokenizer, steps=2, batch_size=8, learning_rate=1e-3, inline_share=0.5,
                              eval_every=1, progress=False, log=rows.append)  # fmt: skip
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in seen[0]]
    assert sum(t.startswith(">>> ") for t in texts) == 4 and len(texts) == 8  # half of the batch in sentences
    assert [r["step"] for r in rows] == [1, 2] and model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
