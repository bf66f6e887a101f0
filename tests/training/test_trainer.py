"""Training an aligner: data checks, label masking, truncation, train -> infer (full and LoRA), atomic output."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from transformers_stream_aligner import (
    AlignerTrainingConfig,
    AlignmentRequest,
    StreamAligner,
    StreamAlignerConfig,
    TrainingDataError,
    encode_records,
    read_records,
    train_aligner,
    validate_records,
)
from transformers_stream_aligner.aligners.adapter import adapter_names
from transformers_stream_aligner.cli import main as cli_main
from transformers_stream_aligner.training.data import IGNORE_INDEX, encode_record

from ..helpers import populate_hub_cache

RECORD = {
    "question": "What is 17*23?",
    "prefix": "The cat is fine.",
    "last": "17*23 = 381.",
    "correction": "17*23 = 391.",
}


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny_base(tiny_llama, tmp_path_factory):
    """The tiny Llama saved in float32 as a base model directory (what `--base-model` points at)."""
    model, tok = tiny_llama
    path = tmp_path_factory.mktemp("tiny-base")
    copy.deepcopy(model).to(torch.float32).save_pretrained(path)  # the shared float64 model stays untouched
    tok.save_pretrained(path)
    return path


def _quiet(**kwargs):
    return dict(disable_tqdm=True, use_cpu=True, **kwargs)


# ------------------------------------------------------------------------------------------- reading and checking
@pytest.mark.parametrize(
    "records, match",
    [
        ([{**RECORD, "correction": None}], r"record 0, field 'correction': must be a string, got NoneType"),
        ([RECORD, {k: v for k, v in RECORD.items() if k != "last"}], r"record 1, field 'last': missing"),
        ([RECORD, RECORD, {**RECORD, "prefix": 3}], r"record 2, field 'prefix': must be a string, got int"),
        ([{**RECORD, "correction": "  "}], r"record 0, field 'correction': is empty"),
        ([RECORD, ["not", "an", "object"]], r"record 1: expected an object"),
        ([{**RECORD, "last": "17*23 <|im_end|> = 381."}], r"record 0, field 'last': contains the special token '<\|im_end\|>'"),
    ],
)
def test_bad_records_name_record_and_field(tiny_llama, tmp_path, records, match):
    _, tok = tiny_llama
    path = _write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(TrainingDataError, match=match) as info:
        validate_records(read_records(path), source=str(path), tokenizer=tok)
    assert str(path) in str(info.value)


def test_unreadable_and_empty_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(TrainingDataError, match="empty"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(TrainingDataError, match="holds no records"):
        read_records(tmp_path / "empty.json")
    (tmp_path / "bad.jsonl").write_text(json.dumps(RECORD) + "\n{oops\n")
    with pytest.raises(TrainingDataError, match="line 2 is not valid JSON"):
        read_records(tmp_path / "bad.jsonl")
    (tmp_path / "obj.json").write_text(json.dumps(RECORD))
    with pytest.raises(TrainingDataError, match="must hold a list"):
        read_records(tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl")


def test_json_list_and_extra_fields_warned(tmp_path, caplog):
    (tmp_path / "data.json").write_text(json.dumps([{**RECORD, "source": "math"}, RECORD]))
    with caplog.at_level("WARNING"):
        clean = validate_records(read_records(tmp_path / "data.json"))
    assert clean == [RECORD, RECORD]
    assert "'source' (in 1 records)" in caplog.text


def test_hub_data_file_from_offline_cache(tmp_path):
    """hf://datasets/<owner>/<name>/<file> resolves through huggingface_hub's cache with HF_HUB_OFFLINE=1."""
    src = tmp_path / "src"
    src.mkdir()
    _write_jsonl(src / "math.jsonl", [RECORD, {**RECORD, "last": "2+2 = 5."}])
    hub = tmp_path / "hub"
    populate_hub_cache(src, hub, "someone/stream-aligner-data", repo_type="dataset")
    script = textwrap.dedent(
        """
        import json
        from transformers_stream_aligner import read_records
        try:  # a file the cached repo does not have fails clearly, offline
            read_records("hf://datasets/someone/stream-aligner-data/other.jsonl")
            missing = "read"
        except Exception as err:
            missing = f"{type(err).__name__}: {err}"
        print(json.dumps([read_records("hf://datasets/someone/stream-aligner-data/math.jsonl"), missing]))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), HF_HOME=str(tmp_path / "home"))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    records, missing = json.loads(res.stdout.strip().splitlines()[-1])
    assert records[1]["last"] == "2+2 = 5."
    assert missing.startswith("FileNotFoundError") and "someone/stream-aligner-data/other.jsonl" in missing, missing


def test_datasets_route_for_a_data_set_directory(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [RECORD, {**RECORD, "last": "2+2 = 5."}])
    records = read_records(folder, split="train")
    assert validate_records(records) == [RECORD, {**RECORD, "last": "2+2 = 5."}]


# ------------------------------------------------------------------------------------------- tokenizing
def _check_masking(tok, config, record):
    ex = encode_record(record, tok, config)
    prompt = config.encode_prompt(tok, question=record["question"], prefix=record["prefix"], last=record["last"])
    # the prompt is tokenized exactly as StreamAligner.correct tokenizes it at inference
    text = config.build_prompt(question=record["question"], prefix=record["prefix"], last=record["last"], tokenizer=tok)
    assert prompt == tok(text, add_special_tokens=config.prompt_adds_special_tokens(tok))["input_ids"]
    target = tok(record["correction"].strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex["input_ids"] == prompt + target
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    for i, (token, label) in enumerate(zip(ex["input_ids"], ex["labels"], strict=True)):
        if i < len(prompt):
            assert label == IGNORE_INDEX, f"prompt token {i} ({tok.convert_ids_to_tokens(token)!r}) has a label"
        else:
            assert label == token, f"target token {i} is not its own label"
    kept = [t for t, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE_INDEX]
    assert tok.decode(kept) == record["correction"].strip() + tok.eos_token
    return prompt


@pytest.mark.smollm2
def test_label_masking_token_by_token_on_smollm2_tokenizer(smollm2_tokenizer):
    from transformers_stream_aligner import GEMMA_WRAPPER

    tok = smollm2_tokenizer
    record = {**RECORD, "prefix": "Let me compute.\n\n1. First, 17*20 = 340.", "correction": " 17*23 = 391. "}
    prompt = _check_masking(tok, StreamAlignerConfig(), record)
    decoded = tok.decode(prompt)
    assert decoded.startswith("<|im_start|>") and decoded.endswith("<|im_start|>assistant\n")
    assert "##Answer_Prefix: Let me compute.\n\n1. First, 17*20 = 340. | ##Answer_Last_Sentence: 17*23 = 381." in decoded
    assert tok.convert_ids_to_tokens(encode_record(record, tok, StreamAlignerConfig())["labels"][-1]) == "<|im_end|>"
    # the reference's raw wrapper: tokens after "model" are the target, nothing else is
    _check_masking(tok, StreamAlignerConfig(prompt_wrapper=GEMMA_WRAPPER), record)


def test_truncation_drops_leading_prefix_sentences_never_the_correction(tiny_llama):
    _, tok = tiny_llama
    config = StreamAlignerConfig()
    prefix = " ".join(f"Sentence number {i} is here." for i in range(40))
    record = {**RECORD, "prefix": prefix}
    full = encode_record(record, tok, config)
    limit = len(full["input_ids"]) - 60
    short = encode_record(record, tok, config, max_length=limit)
    assert len(short["input_ids"]) <= limit and short["meta"]["truncated"]
    n_target = sum(1 for label in short["labels"] if label != IGNORE_INDEX)
    assert short["input_ids"][-n_target:] == full["input_ids"][-n_target:]  # correction + EOS intact
    text = tok.decode(short["input_ids"])
    assert "Sentence number 39 is here." in text and "Sentence number 0 is here." not in text
    assert "##Answer_Prefix: Sentence number" in text  # cut at a sentence start
    hopeless = {**RECORD, "question": "Why? " * 200}
    examples, report = encode_records([record, hopeless, RECORD], tok, config, max_length=limit, progress=False)
    assert (report.records, report.examples, report.truncated, report.dropped) == (3, 2, 1, 1)
    assert report.dropped_indices == [1] and report.longest <= limit


# ------------------------------------------------------------------------------------------- train -> infer
def test_cli_train_then_infer_full_fine_tune(tiny_base, tmp_path, capsys):
    data = _write_jsonl(tmp_path / "one.jsonl", [RECORD] * 16)
    out = tmp_path / "aligner"
    code = cli_main(
        [
            "train", "--base-model", str(tiny_base), "--train-file", str(data), "--eval-file", str(data),
            "--output-dir", str(out), "--num-train-epochs", "10", "--learning-rate", "3e-3",
            "--per-device-train-batch-size", "8", "--gradient-accumulation-steps", "1", "--max-length", "256",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert f"aligner saved to {out}" in printed and "20 steps" in printed and "eval loss" in printed
    files = sorted(os.listdir(out))
    assert {"model.safetensors", "stream_aligner_config.json", "tokenizer.json", "README.md"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    assert not (tmp_path / "aligner-checkpoints").exists()  # Trainer checkpoints removed after success
    assert sorted(os.listdir(tmp_path)) == ["aligner", "one.jsonl"]  # no staging directory left behind
    card = (out / "README.md").read_text()
    for row in ("| training records | 16 |", "| learning rate | 0.003 |", "| schedule | cosine |",
                "| Adam betas | (0.9, 0.95) |", "| warm-up | 0.03 of the steps |", "| method | full fine-tuning |",
                "| optimizer steps | 20 |"):  # fmt: skip
        assert row in card, row
    aligner = StreamAligner.from_pretrained(out)
    assert aligner.config.base_model == str(tiny_base)
    assert aligner.correct([AlignmentRequest(RECORD["question"], RECORD["prefix"], RECORD["last"])]) == [
        RECORD["correction"]
    ]


def test_cli_train_with_the_calculator_then_infer(tiny_base, tmp_path):
    """--calculator: the records write results as calculations; the trained aligner writes them too, and its
    corrections come out evaluated (a wrong stated result replaced, a right one kept as written)."""
    records = [{"question": "What is 17*23?", "prefix": "", "last": "So 17*23 = 381.", "correction": "So 17*23 = <<17*23=381>>."}]
    data = _write_jsonl(tmp_path / "calc.jsonl", records * 16)
    out = tmp_path / "aligner"
    code = cli_main(
        [
            "train", "--base-model", str(tiny_base), "--train-file", str(data), "--output-dir", str(out),
            "--num-train-epochs", "20", "--learning-rate", "3e-3", "--per-device-train-batch-size", "8",
            "--max-length", "256", "--calculator", "--edits", "numbers", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    aligner = StreamAligner.from_pretrained(out)
    card = (out / "README.md").read_text()
    assert aligner.config.calculator and "Calculator: on (`calculator: true`)" in card
    assert aligner.config.edits == "numbers" and 'Edits: numbers only (`edits: "numbers"`)' in card
    assert aligner.correct([AlignmentRequest("What is 17*23?", "", "So 17*23 = 381.")]) == ["So 17*23 = 391."]
    raw = StreamAligner(aligner.model, aligner.tokenizer, dataclasses.replace(aligner.config, calculator=False))
    assert raw.correct([AlignmentRequest("What is 17*23?", "", "So 17*23 = 381.")]) == ["So 17*23 = <<17*23=381>>."]


def test_train_then_infer_lora_adapter(tiny_base, tmp_path):
    from peft import LoraConfig

    data = _write_jsonl(tmp_path / "one.jsonl", [RECORD] * 16)
    out = tmp_path / "lora-aligner"
    result = train_aligner(
        tiny_base,
        data,
        AlignerTrainingConfig(output_dir=str(out), num_train_epochs=10, learning_rate=2e-2, **_quiet()),
        lora_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert result.lora["target_modules"] == "all-linear" and result.global_step == 20
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "stream_aligner_config.json"} <= files
    assert "model.safetensors" not in files  # an adapter, not a copy of the base
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_base)
    assert "LoRA adapter" in (out / "README.md").read_text()
    request = AlignmentRequest(RECORD["question"], RECORD["prefix"], RECORD["last"])
    aligner = StreamAligner.from_pretrained(out)
    assert adapter_names(aligner.model) == {"default"}  # the adapter on its base
    assert aligner.correct([request]) == [RECORD["correction"]]
    # the base named in adapter_config.json may live elsewhere on another machine
    moved = tmp_path / "moved-base"
    moved.mkdir()
    for f in tiny_base.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    again = StreamAligner.from_pretrained(out, base_model_name_or_path=moved)
    assert again.correct([request]) == [RECORD["correction"]]
    offline = StreamAligner.from_pretrained(out, base_model_name_or_path=moved, local_files_only=True)
    assert offline.correct([request]) == [RECORD["correction"]]
    base_only = StreamAligner.from_pretrained(tiny_base)
    assert base_only.correct([request]) != [RECORD["correction"]]  # the adapter is what learned it


# ------------------------------------------------------------------------------------------- copy-bias training
def test_copy_targets_are_the_copy_tokens_the_aligner_biases_at_inference(tiny_llama):
    from transformers_stream_aligner.aligners.copy_draft import CopyTracker

    _, tok = tiny_llama
    aligner_source = StreamAligner.__new__(StreamAligner)  # only _source_ids' inputs: the tokenizer and its EOS
    aligner_source.tokenizer, aligner_source._eos_token_ids = tok, [tok.eos_token_id]
    for record in (RECORD, {**RECORD, "correction": RECORD["last"]}, {**RECORD, "correction": "Fine: 17*23 = 391 now."}):
        ex = encode_record(record, tok, StreamAlignerConfig(), copy_targets=True)
        assert len(ex["copy_ids"]) == len(ex["labels"])
        start = ex["meta"]["prompt_tokens"]
        assert ex["copy_ids"][:start] == [IGNORE_INDEX] * start
        tracker = CopyTracker(aligner_source._source_ids(record["last"]))  # as the decoder pushes tokens
        expected = []
        for token in ex["labels"][start:]:
            copy = tracker.next_token()
            expected.append(IGNORE_INDEX if copy is None else copy)
            tracker.push(token)
        assert ex["copy_ids"][start:] == expected
    assert "copy_ids" not in encode_record(RECORD, tok, StreamAlignerConfig())


def test_copy_biased_loss_is_the_models_loss_at_zero_bias_and_favours_copies(tiny_llama):
    from transformers_stream_aligner.training.trainer import copy_biased_loss

    model, tok = tiny_llama
    ex = encode_record({**RECORD, "correction": RECORD["last"]}, tok, StreamAlignerConfig(), copy_targets=True)
    ids, labels, copies = (torch.tensor([ex[k]]) for k in ("input_ids", "labels", "copy_ids"))
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    assert torch.allclose(copy_biased_loss(out.logits, labels, copies, 0.0), out.loss.float(), atol=1e-6)
    # a pure copy: every target has a copy token (the target itself), so a bias can only lower the loss
    assert copy_biased_loss(out.logits, labels, copies, 4.0) < copy_biased_loss(out.logits, labels, copies, 0.0)
    mixed = copy_biased_loss(out.logits, labels, copies, 4.0, plain_weight=0.5)
    assert torch.allclose(mixed, copy_biased_loss(out.logits, labels, copies, 4.0) + 0.5 * out.loss.float(), atol=1e-6)


def test_train_with_copy_bias_saves_an_aligner_that_runs_with_it(tiny_base, tmp_path):
    data = _write_jsonl(tmp_path / "one.jsonl", [RECORD] * 16)
    out = tmp_path / "biased"
    result = train_aligner(
        tiny_base, data, AlignerTrainingConfig(output_dir=str(out), num_train_epochs=10, learning_rate=3e-3,
                                               per_device_train_batch_size=8, copy_bias=3.0,
                                               copy_bias_plain_weight=0.5, **_quiet()),
        eval_file=data,
    )  # fmt: skip
    assert result.global_step == 20 and result.eval_loss is not None and result.eval_loss < 1.0
    aligner = StreamAligner.from_pretrained(out)
    assert aligner.config.copy_bias == 3.0
    assert "| loss | copy bias 3 on the copy token's logit + 0.5 x plain cross-entropy |" in (out / "README.md").read_text()
    assert aligner.correct([AlignmentRequest(RECORD["question"], RECORD["prefix"], RECORD["last"])]) == [
        RECORD["correction"]
    ]
    # the CLI flags come from the config dataclass
    code = cli_main(["train", "--base-model", str(tiny_base), "--train-file", str(data), "--output-dir",
                     str(tmp_path / "cli"), "--num-train-epochs", "1", "--copy-bias", "2", "--copy-bias-plain-weight",
                     "0.5", "--no-progress"])  # fmt: skip
    assert code == 0 and StreamAligner.from_pretrained(tmp_path / "cli").config.copy_bias == 2.0
    with pytest.raises(ValueError, match="copy_bias must be a finite number >= 0"):
        AlignerTrainingConfig(output_dir=str(tmp_path / "x"), copy_bias=-1.0)
    with pytest.raises(ValueError, match="copy_bias_plain_weight must be"):
        AlignerTrainingConfig(output_dir=str(tmp_path / "x"), copy_bias_plain_weight=float("nan"))


# ------------------------------------------------------------------------------------------- nothing partial
def test_bad_data_writes_nothing(tiny_base, tmp_path, capsys):
    out = tmp_path / "aligner"
    bad = _write_jsonl(tmp_path / "bad.jsonl", [RECORD, {**RECORD, "question": 7}])
    code = cli_main(["train", "--base-model", str(tiny_base), "--train-file", str(bad), "--output-dir", str(out)])
    assert code == 2
    assert "error: " + str(bad) + ", record 1, field 'question': must be a string, got int" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainingDataError, match="empty"):
        train_aligner(tiny_base, empty, AlignerTrainingConfig(output_dir=str(out), **_quiet()))
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "empty.jsonl"]


def test_failure_during_training_leaves_output_dir_as_it_was(tiny_base, tmp_path):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise RuntimeError("power cut")

    data = _write_jsonl(tmp_path / "one.jsonl", [RECORD] * 16)
    out = tmp_path / "aligner"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier aligner")
    config = AlignerTrainingConfig(output_dir=str(out), num_train_epochs=2, **_quiet())
    with pytest.raises(FileExistsError, match="not empty"):
        train_aligner(tiny_base, data, config)
    config = AlignerTrainingConfig(output_dir=str(out), num_train_epochs=2, overwrite_output_dir=True, **_quiet())
    with pytest.raises(RuntimeError, match="power cut"):
        train_aligner(tiny_base, data, config, callbacks=[Boom()])
    assert os.listdir(out) == ["keep.txt"]
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p or ".replaced-" in p]
    # with overwrite, a successful run replaces the old directory as a whole
    train_aligner(tiny_base, data, config)
    assert "keep.txt" not in os.listdir(out) and (out / "model.safetensors").is_file()


def test_checkpoints_and_resume(tiny_base, tmp_path):
    data = _write_jsonl(tmp_path / "one.jsonl", [RECORD] * 16)
    out = tmp_path / "aligner"
    kwargs = _quiet(save_steps=2, keep_checkpoints=True)
    first = train_aligner(tiny_base, data, AlignerTrainingConfig(output_dir=str(out), max_steps=4, **kwargs))
    assert first.global_step == 4
    checkpoints = sorted(os.listdir(tmp_path / "aligner-checkpoints"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    resumed = train_aligner(
        tiny_base,
        data,
        AlignerTrainingConfig(output_dir=str(out), max_steps=6, overwrite_output_dir=True, **kwargs),
        resume_from_checkpoint=True,
    )
    assert resumed.global_step == 6


def test_cli_push_to_hub_pushes_the_finished_aligner_once(tiny_base, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    commits = []

    def fake_create_repo(self, repo_id, **kwargs):
        assert kwargs["private"] is True
        return SimpleNamespace(repo_id=repo_id)

    def fake_create_commit(self, repo_id, operations, **kwargs):
        files = {op.path_in_repo: open(op.path_or_fileobj, "rb").read() for op in operations}
        commits.append((repo_id, files))
        return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    data = _write_jsonl(tmp_path / "one.jsonl", [RECORD] * 8)
    args = ["train", "--base-model", str(tiny_base), "--train-file", str(data), "--output-dir", str(tmp_path / "out"),
            "--max-steps", "2", "--save-steps", "1", "--no-progress", "--push-to-hub", "me/my-aligner", "--hub-private"]  # fmt: skip
    assert cli_main(args) == 0
    assert "pushed: https://hub.example/me/my-aligner/commit/1" in capsys.readouterr().out
    assert len(commits) == 1  # the finished aligner only, not Trainer's checkpoints
    repo_id, files = commits[0]
    assert repo_id == "me/my-aligner"
    assert {"model.safetensors", "tokenizer.json", "stream_aligner_config.json", "README.md"} <= set(files)
    assert not [name for name in files if "checkpoint" in name or name.endswith((".bin", ".pt"))]
    card = files["README.md"].decode()
    assert 'StreamAligner.from_pretrained("me/my-aligner")' in card and "| optimizer steps | 2 |" in card
